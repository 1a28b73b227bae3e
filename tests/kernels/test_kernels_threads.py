"""threads: the knobs every kernel module reads."""
import os

import numpy as np
import pytest

from cyserve.kernels.cpu import activation, threads


def test_default_num_threads_respects_affinity():
    n = threads.default_num_threads()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_set_and_get_num_threads(num_threads):
    num_threads(3)
    assert threads.get_num_threads() == 3
    with pytest.raises(ValueError, match=">= 1"):
        threads.set_num_threads(0)
    assert threads.get_num_threads() == 3


def test_cgroup_quota_caps_default(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_cpu_limit", lambda: 1.5)
    assert threads.default_num_threads() == 1


def test_set_simd_switches_every_module():
    """One switch, shared by all kernel modules (each .so links its own copy of the C code)."""
    a = np.full((1, 20), 1.0, np.float32)
    threads.set_simd(False)
    try:
        assert not threads.simd_enabled()
        activation.add(a, a)
    finally:
        threads.set_simd(True)
    assert threads.simd_enabled() == threads.simd_supported()
    np.testing.assert_array_equal(a, 2.0)


def test_c_level_entry_points_are_exported_for_cimport():
    """cyserve.fastpath cimports these (GIL-free) through the modules' C-API capsules."""
    from cyserve.kernels.cpu import attention, norm, quant_matmul, rope

    expected = {
        quant_matmul: {"matmul_nogil", "get_rows_nogil"},
        norm: {"rms_norm_nogil"},
        rope: {"rope_nogil"},
        activation: {"silu_mul_nogil", "add_nogil"},
        attention: {"reshape_and_cache_nogil", "paged_attention_nogil"},
        threads: {"current_num_threads", "current_simd"},
    }
    for module, names in expected.items():
        assert names <= set(module.__pyx_capi__), module.__name__
