"""quant_matmul: row sizes, dequantize, get_rows and matmul vs the numpy reference."""
import numpy as np
import pytest
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from cyserve.kernels import reference as R
from cyserve.kernels.cpu import quant_matmul as qm
from kernel_data import (DEQUANT_ATOL, DEQUANT_RTOL, MATMUL_RTOL, QUANT_WTYPES, WTYPES,
                         make_weight, matmul_atol, rng)


@pytest.mark.parametrize("wtype", WTYPES)
@pytest.mark.parametrize("K", [32, 96, 576])
def test_row_bytes_matches_gguf(wtype, K):
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(wtype)]
    assert qm.row_bytes(wtype, K) == K // block * size == R.row_bytes(wtype, K)


@pytest.mark.parametrize("wtype", QUANT_WTYPES + [R.F16, R.BF16])
def test_reference_dequantize_matches_gguf(wtype):
    w = make_weight(rng(1), 7, 160, wtype)
    expected = quants.dequantize(w, GGMLQuantizationType(wtype)).reshape(7, 160)
    np.testing.assert_array_equal(R.dequantize(w, wtype, 160), expected)


@pytest.mark.parametrize("wtype", WTYPES)
@pytest.mark.parametrize("N,K", [(1, 32), (5, 64), (13, 576)])
def test_dequantize_matches_reference(simd, wtype, N, K):
    w = make_weight(rng(N * K + wtype), N, K, wtype)
    out = qm.dequantize(w, wtype, K)
    assert out.shape == (N, K) and out.dtype == np.float32
    np.testing.assert_allclose(out, R.dequantize(w, wtype, K), rtol=DEQUANT_RTOL, atol=DEQUANT_ATOL)


@pytest.mark.parametrize("wtype", [R.F32, R.F16, R.BF16])
@pytest.mark.parametrize("K", [1, 7, 45])
def test_float_formats_take_any_K(simd, wtype, K):
    """Plain float weights need no blocks: K % 32 tails go through the scalar remainder."""
    w = make_weight(rng(K), 9, K, wtype)
    x = rng(K + 1).standard_normal((17, K)).astype(np.float32)
    np.testing.assert_array_equal(qm.dequantize(w, wtype, K), R.dequantize(w, wtype, K))
    out = np.empty((17, 9), np.float32)
    qm.matmul(x, w, wtype, out)
    np.testing.assert_allclose(out, R.matmul(x, w, wtype), rtol=MATMUL_RTOL, atol=matmul_atol(K))


def test_special_fp16_values_decode_exactly(simd):
    """Subnormals, infinities and signed zeros survive the scalar and F16C conversions."""
    vals = np.array([0.0, -0.0, 6e-8, -6e-8, 3e-5, 65504.0, -65504.0, np.inf, -np.inf] + [1.5] * 23,
                    np.float16)
    w = vals.view(np.uint8).reshape(1, -1)
    np.testing.assert_array_equal(qm.dequantize(w, R.F16, 32)[0], vals.astype(np.float32))


@pytest.mark.parametrize("wtype", WTYPES)
def test_get_rows(simd, wtype):
    w = make_weight(rng(3), 50, 96, wtype)
    ids = np.array([49, 0, 7, 7, 23], np.int32)
    out = np.empty((5, 96), np.float32)
    qm.get_rows(w, wtype, 96, ids, out)
    np.testing.assert_allclose(out, R.get_rows(w, wtype, 96, ids), rtol=DEQUANT_RTOL, atol=DEQUANT_ATOL)


@pytest.mark.parametrize("wtype", WTYPES)
@pytest.mark.parametrize("T", [1, 2, 3, 7, 17, 64])
@pytest.mark.parametrize("N,K", [(1, 32), (37, 96), (129, 576)])
def test_matmul_matches_reference(simd, wtype, T, N, K):
    r = rng(T * 1000 + N + wtype)
    w = make_weight(r, N, K, wtype)
    x = r.standard_normal((T, K)).astype(np.float32)
    out = np.full((T, N), np.nan, np.float32)
    qm.matmul(x, w, wtype, out)
    np.testing.assert_allclose(out, R.matmul(x, w, wtype), rtol=MATMUL_RTOL, atol=matmul_atol(K))


@pytest.mark.parametrize("wtype", [R.Q4_1, R.Q8_0])
def test_matmul_long_K_and_many_tokens(simd, wtype):
    """ffn_down-like K with enough tokens that x is walked in several L2-sized chunks."""
    r = rng(11)
    K, N, T = 1536, 21, 50
    w = make_weight(r, N, K, wtype)
    x = r.standard_normal((T, K)).astype(np.float32)
    out = np.empty((T, N), np.float32)
    qm.matmul(x, w, wtype, out)
    np.testing.assert_allclose(out, R.matmul(x, w, wtype), rtol=MATMUL_RTOL, atol=matmul_atol(K))


@pytest.mark.parametrize("T", [1, 9])
def test_matmul_same_bits_for_any_thread_count(simd, num_threads, T):
    """Each output element is computed by one thread in a fixed order: threads change nothing."""
    r = rng(5)
    w = make_weight(r, 301, 256, R.Q4_1)
    x = r.standard_normal((T, 256)).astype(np.float32)
    outs = []
    for n in (1, 2, 3):
        num_threads(n)
        out = np.empty((T, 301), np.float32)
        qm.matmul(x, w, R.Q4_1, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_matmul_weight_at_odd_address(simd):
    """GGUF tensors are aligned, but a sliced buffer may not be; decoding must not care."""
    w = make_weight(rng(8), 6, 64, R.Q4_1)
    buf = np.zeros(w.size + 1, np.uint8)
    buf[1:] = w.ravel()
    w_odd = buf[1:].reshape(w.shape)
    assert w_odd.ctypes.data % 2 == 1
    x = rng(9).standard_normal((3, 64)).astype(np.float32)
    out = np.empty((3, 6), np.float32)
    qm.matmul(x, w_odd, R.Q4_1, out)
    np.testing.assert_allclose(out, R.matmul(x, w, R.Q4_1), rtol=MATMUL_RTOL, atol=matmul_atol(64))
    np.testing.assert_allclose(qm.dequantize(w_odd, R.Q4_1, 64), R.dequantize(w, R.Q4_1, 64),
                               rtol=DEQUANT_RTOL, atol=DEQUANT_ATOL)


def test_read_only_weights_are_accepted():
    """Weights come from a read-only mmap of the GGUF file."""
    w = make_weight(rng(2), 4, 32, R.Q8_0)
    w.setflags(write=False)
    x = np.ones((1, 32), np.float32)
    out = np.empty((1, 4), np.float32)
    qm.matmul(x, w, R.Q8_0, out)
    np.testing.assert_allclose(out, R.matmul(x, w, R.Q8_0), rtol=MATMUL_RTOL, atol=matmul_atol(32))


def test_empty_batch_is_a_no_op():
    w = make_weight(rng(2), 4, 32, R.Q8_0)
    out = np.empty((0, 4), np.float32)
    qm.matmul(np.empty((0, 32), np.float32), w, R.Q8_0, out)
    assert out.shape == (0, 4)


# ---- malformed inputs: ValueError that says what to fix, nothing written ----

def _valid():
    w = make_weight(rng(4), 8, 64, R.Q4_0)
    return np.ones((2, 64), np.float32), w, np.zeros((2, 8), np.float32)


@pytest.mark.parametrize("wtype,K,match", [(7, 64, "unsupported wtype"), (R.Q4_0, 48, "multiple of 32"),
                                           (R.Q8_0, 0, "positive multiple")])
def test_row_bytes_rejects(wtype, K, match):
    with pytest.raises(ValueError, match=match):
        qm.row_bytes(wtype, K)


def test_matmul_rejects_malformed_inputs():
    x, w, out = _valid()
    with pytest.raises(ValueError, match="multiple of 32"):
        qm.matmul(np.ones((2, 48), np.float32), w, R.Q4_0, out)
    with pytest.raises(ValueError, match=r"w must be uint8\[N, 36\]"):
        qm.matmul(x, w[:, :30].copy(), R.Q4_0, out)
    with pytest.raises(ValueError, match=r"w must be uint8\[N, 40\]"):
        qm.matmul(x, w, R.Q4_1, out)  # Q4_0 bytes passed as Q4_1
    with pytest.raises(ValueError, match=r"out must be float32\[2, 8\]"):
        qm.matmul(x, w, R.Q4_0, np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match="unsupported wtype"):
        qm.matmul(x, w, 12, out)
    with pytest.raises(ValueError, match="dtype mismatch"):
        qm.matmul(x.astype(np.float64), w, R.Q4_0, out)
    with pytest.raises(ValueError, match="contiguous"):
        qm.matmul(np.ones((2, 128), np.float32)[:, ::2], w, R.Q4_0, out)
    with pytest.raises(ValueError, match="read-only"):
        ro = out.copy()
        ro.setflags(write=False)
        qm.matmul(x, w, R.Q4_0, ro)
    with pytest.raises(ValueError, match="overlap"):
        buf = np.zeros((2, 64), np.float32)
        qm.matmul(buf, make_weight(rng(4), 64, 64, R.F32), R.F32, buf)
    with pytest.raises(TypeError):
        qm.matmul(None, w, R.Q4_0, out)
    assert not out.any()


def test_get_rows_rejects_out_of_range_ids():
    _, w, _ = _valid()
    out = np.zeros((2, 64), np.float32)
    for bad in (8, -1):
        with pytest.raises(ValueError, match=rf"ids\[1\]={bad} is outside the 8 rows"):
            qm.get_rows(w, R.Q4_0, 64, np.array([0, bad], np.int32), out)
    with pytest.raises(ValueError, match=r"out must be float32\[2, 64\]"):
        qm.get_rows(w, R.Q4_0, 64, np.array([0, 1], np.int32), np.zeros((3, 64), np.float32))
    with pytest.raises(ValueError, match="dtype mismatch"):
        qm.get_rows(w, R.Q4_0, 64, np.array([0, 1], np.int64), out)
    assert not out.any()
