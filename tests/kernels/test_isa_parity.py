"""Instruction-set dispatch: chosen once from CPUID, overridden by CYSERVE_ISA, and invisible in
the results: the quantized matmul gives the same bits on every level this CPU has (AVX-512 VNNI,
AVX-VNNI, AVX2) and on the scalar twin, for every format, at every batch size."""
import os
import subprocess
import sys

import numpy as np
import pytest

from cyserve.kernels.cpu import quant_matmul as qm
from cyserve.kernels.cpu import threads
from kernel_data import KQUANT_WTYPES, QUANT_WTYPES, make_weight, rng

# GEMV tiles, the GEMV/GEMM boundaries of both kernel families, every GEMM tile remainder of the
# widest tiles (6 and 4 tokens), several x chunks
BATCH_SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 33, 70]
CASES = ([(wt, N, K) for wt in QUANT_WTYPES for N, K in [(37, 96), (301, 576), (5, 2080)]]
         + [(wt, N, K) for wt in KQUANT_WTYPES for N, K in [(37, 256), (70, 768), (3, 2560)]])


def test_levels_are_ordered_and_scalar_is_always_there():
    supported = threads.supported_isas()
    assert supported[0] == "scalar"
    assert list(supported) == sorted(supported, key=threads.ISAS.index)
    assert threads.best_isa() == supported[-1]
    assert threads.get_isa() == threads.best_isa()  # the default (CYSERVE_ISA unset in tests)


def test_set_isa_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="unknown instruction set 'sse9'"):
        threads.set_isa("sse9")
    for name in set(threads.ISAS) - set(threads.supported_isas()):
        with pytest.raises(ValueError, match=f"this CPU cannot run {name}"):
            threads.set_isa(name)
    assert threads.get_isa() == threads.best_isa()


def _isa_in_subprocess(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CYSERVE_ISA=value)
    code = "from cyserve.kernels.cpu import threads; print(threads.get_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", list(threads.supported_isas()) + ["auto", "AVX2 "])
def test_environment_chooses_the_level(name):
    want = threads.best_isa() if name == "auto" else name.strip().lower()
    if want not in threads.supported_isas():
        pytest.skip("CPU lacks AVX2")
    done = _isa_in_subprocess(name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == want


def test_environment_naming_an_unknown_level_fails_clearly():
    done = _isa_in_subprocess("neon")
    assert done.returncode != 0
    assert "CYSERVE_ISA: unknown instruction set 'neon'" in done.stderr


def _matmul(x: np.ndarray, w: np.ndarray, wtype: int) -> np.ndarray:
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    qm.matmul(x, w, wtype, out)
    return out


@pytest.mark.parametrize("wtype,N,K", CASES)
def test_every_level_gives_the_scalar_twins_bits(num_threads, wtype, N, K):
    r = rng(wtype * 1000 + N)
    w = make_weight(r, N, K, wtype)
    x = (r.standard_normal((max(BATCH_SIZES), K)) * 2).astype(np.float32)
    num_threads(2)
    try:
        for T in BATCH_SIZES:
            threads.set_isa("scalar")
            want = _matmul(x[:T], w, wtype)
            for name in threads.supported_isas()[1:]:
                threads.set_isa(name)
                got = _matmul(x[:T], w, wtype)
                np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32),
                                              err_msg=f"{name} at T={T}")
    finally:
        threads.set_isa("auto")
