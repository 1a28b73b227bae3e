"""Fixtures for the kernel parity tests: every kernel runs on every instruction set this CPU has
(scalar always, then avx2, avx_vnni, avx512_vnni where present)."""
import pytest

from cyserve.kernels.cpu import threads


@pytest.fixture(params=threads.supported_isas())
def simd(request):
    """Run the test once per instruction set of this CPU (the scalar twin included); yields
    whether it is a SIMD one, and restores the default afterwards."""
    threads.set_isa(request.param)
    assert threads.get_isa() == request.param
    yield request.param != "scalar"
    threads.set_isa("auto")


@pytest.fixture
def num_threads():
    """Set the kernel thread count inside a test; restored afterwards."""
    before = threads.get_num_threads()
    yield threads.set_num_threads
    threads.set_num_threads(before)
