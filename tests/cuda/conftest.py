"""Fixtures of the GPU-path tests."""
import pytest


@pytest.fixture
def one_torch_thread():
    """torch's OpenMP pool and the CPU kernels' pool spin against each other on a small machine:
    tests that run torch on the CPU device beside the CPU kernels use one torch thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
