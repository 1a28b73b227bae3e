"""Fixtures for the kernel parity tests: every kernel runs in SIMD and in scalar mode."""
import pytest

from cyserve.kernels.cpu import threads


@pytest.fixture(params=["simd", "scalar"])
def simd(request):
    """Run the test once on the AVX2 path and once on the scalar twin; restore afterwards."""
    enabled = request.param == "simd"
    if enabled and not threads.simd_supported():
        pytest.skip("CPU lacks AVX2+FMA+F16C")
    threads.set_simd(enabled)
    assert threads.simd_enabled() == enabled
    yield enabled
    threads.set_simd(True)  # the default


@pytest.fixture
def num_threads():
    """Set the kernel thread count inside a test; restored afterwards."""
    before = threads.get_num_threads()
    yield threads.set_num_threads
    threads.set_num_threads(before)
