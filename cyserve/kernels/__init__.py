"""Compute kernels on plain arrays. Knows nothing of requests."""
