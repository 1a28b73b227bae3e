"""cyserve: a gRPC inference microservice for LLMs with a Cython and C hot path.

Layers (imports point down only): service -> fastpath -> kernels.
"""
__version__ = "0.1.0"
