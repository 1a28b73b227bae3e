"""quant_matmul: row sizes, dequantize, get_rows, activation quantization and matmul vs the
numpy reference (int8 semantics for quantized weights, exact f32 for float weights)."""
import numpy as np
import pytest
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cyserve.kernels import reference as R
from cyserve.kernels.cpu import quant_matmul as qm
from kernel_data import (DEQUANT_ATOL, DEQUANT_RTOL, MATMUL_RTOL, QUANT_WTYPES, WTYPES,
                         assert_within, int8_matmul_tol, make_weight, matmul_atol,
                         quantization_error_bound, rng)

FLOAT_WTYPES = [R.F32, R.F16, R.BF16]


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


@pytest.mark.parametrize("wtype", FLOAT_WTYPES)
@pytest.mark.parametrize("T", [1, 2, 3, 7, 17, 64])
@pytest.mark.parametrize("N,K", [(1, 32), (37, 96), (129, 576)])
def test_float_matmul_matches_reference(simd, wtype, T, N, K):
    r = rng(T * 1000 + N + wtype)
    w = make_weight(r, N, K, wtype)
    x = r.standard_normal((T, K)).astype(np.float32)
    out = np.full((T, N), np.nan, np.float32)
    qm.matmul(x, w, wtype, out)
    np.testing.assert_allclose(out, R.matmul(x, w, wtype), rtol=MATMUL_RTOL, atol=matmul_atol(K))


# ---- activation quantization: bit-exact against the reference on both paths ----

@pytest.mark.parametrize("T", [1, 3, 17, 300])
@pytest.mark.parametrize("K", [32, 96, 576, 1536])
def test_quantize_activations_matches_reference_exactly(simd, num_threads, T, K):
    x = rng(T + K).standard_normal((T, K)).astype(np.float32) * 3.0
    expected = R.quantize_activations(x)
    for n in (1, 2):
        num_threads(n)
        for got, want in zip(qm.quantize_activations(x), expected):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


def test_quantize_activations_edge_blocks(simd):
    """Zero blocks give d = 0 (no division by zero); exact .5 ties round to even; the block
    maximum maps to +-127; tiny and huge magnitudes keep their relative precision; a block below
    2^-96 (where 1 / d would overflow) is zero."""
    x = np.zeros((1, 192), np.float32)
    x[0, 32:64] = np.arange(32) - 15.5          # amax 15.5: x * 127/15.5, none a tie
    x[0, 64:96] = np.float32(127.0)             # d = 1 exactly, q = 127
    x[0, 64:72] = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -126.5]  # ties at d = 1
    x[0, 96:128] = rng(0).standard_normal(32) * 1e-25
    x[0, 128:160] = rng(1).standard_normal(32) * 1e30
    x[0, 160:192] = rng(2).standard_normal(32) * 1e-38  # includes subnormals
    q, d, s = qm.quantize_activations(x)
    rq, rd, rs = R.quantize_activations(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(s, rs)
    assert d[0, 0] == 0 and not q[0, :32].any() and s[0, 0] == 0
    assert d[0, 2] == 1.0
    np.testing.assert_array_equal(q[0, 64:72], [0, 2, 2, 0, -2, -2, 4, -126])
    assert np.abs(q).max() == 127
    assert d[0, 5] == 0 and not q[0, 160:].any()
    xb, qb = x[:, :160].reshape(5, 32).astype(np.float64), q[:, :160].reshape(5, 32)
    assert (np.abs(qb * d[0, :5, None] - xb) <= d[0, :5, None] * (0.5 + 1e-6)).all()


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.sampled_from([32, 64, 96])),
                  elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=True)))
def test_quantize_activations_any_finite_input(x):
    for enabled in (True, False):
        from cyserve.kernels.cpu import threads
        if enabled and not threads.simd_supported():
            continue
        threads.set_simd(enabled)
        try:
            for got, want in zip(qm.quantize_activations(x), R.quantize_activations(x)):
                np.testing.assert_array_equal(got, want)
        finally:
            threads.set_simd(True)


# ---- quantized matmul: int8 semantics, tight against the integer reference ----

QUANT_TS = [1, 2, 3, 4, 5, 7, 17, 64, 301]
QUANT_SHAPES = [(1, 32), (5, 96), (37, 96), (301, 576), (21, 1536)]


@pytest.mark.parametrize("wtype", QUANT_WTYPES)
@pytest.mark.parametrize("T", QUANT_TS)
@pytest.mark.parametrize("N,K", QUANT_SHAPES)
def test_quant_matmul_matches_int8_reference(simd, num_threads, wtype, T, N, K):
    """GEMV (T <= 4) and GEMM tiles with every row/token tail, 1 and 2 threads (same bits)."""
    r = rng(T * 1000 + N + wtype)
    w = make_weight(r, N, K, wtype)
    x = r.standard_normal((T, K)).astype(np.float32)
    outs = []
    for n in (1, 2):
        num_threads(n)
        out = np.full((T, N), np.nan, np.float32)
        qm.matmul(x, w, wtype, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert_within(outs[0], R.matmul(x, w, wtype), int8_matmul_tol(x, w, wtype), "vs int8 reference")
    assert_within(outs[0], R.matmul_dequantized(x, w, wtype), quantization_error_bound(x, w, wtype),
                  "vs f32 reference")


@pytest.mark.parametrize("wtype", QUANT_WTYPES)
@pytest.mark.parametrize("T,N,K", [(1, 129, 576), (3, 37, 1536), (17, 129, 576), (64, 21, 1536)])
def test_quant_matmul_simd_matches_scalar(wtype, T, N, K):
    """Both twins run the same integer algorithm: only the f32 summation order differs."""
    from cyserve.kernels.cpu import threads
    if not threads.simd_supported():
        pytest.skip("CPU lacks AVX2+FMA+F16C")
    r = rng(T + N + K + wtype)
    w = make_weight(r, N, K, wtype)
    x = r.standard_normal((T, K)).astype(np.float32)
    outs = []
    for enabled in (True, False):
        threads.set_simd(enabled)
        try:
            out = np.empty((T, N), np.float32)
            qm.matmul(x, w, wtype, out)
            outs.append(out)
        finally:
            threads.set_simd(True)
    assert_within(outs[0], outs[1], 2 * int8_matmul_tol(x, w, wtype), "AVX2 vs scalar")


def test_quant_matmul_streaming_gemv(simd, num_threads):
    """Weights over 8 MiB (the Q8_0 output layer) take the one-row-at-a-time GEMV."""
    r = rng(12)
    N, K = 14001, 576
    w = make_weight(r, N, K, R.Q8_0)
    assert w.nbytes > 8 << 20
    x = r.standard_normal((1, K)).astype(np.float32)
    outs = []
    for n in (1, 2):
        num_threads(n)
        out = np.full((1, N), np.nan, np.float32)
        qm.matmul(x, w, R.Q8_0, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert_within(outs[0], R.matmul(x, w, R.Q8_0), int8_matmul_tol(x, w, R.Q8_0), "streaming GEMV")


@pytest.mark.parametrize("wtype", QUANT_WTYPES)
def test_quant_matmul_zero_activations_give_zero(simd, wtype):
    """All-zero x blocks have d = s = 0: no NaN from 0/0, and the min terms vanish too."""
    w = make_weight(rng(6), 9, 96, wtype)
    for T in (1, 6):
        out = np.full((T, 9), np.nan, np.float32)
        qm.matmul(np.zeros((T, 96), np.float32), w, wtype, out)
        np.testing.assert_array_equal(out, 0.0)


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
    assert_within(out, R.matmul(x, w, R.Q4_1), int8_matmul_tol(x, w, R.Q4_1), "odd address")
    np.testing.assert_allclose(qm.dequantize(w_odd, R.Q4_1, 64), R.dequantize(w, R.Q4_1, 64),
                               rtol=DEQUANT_RTOL, atol=DEQUANT_ATOL)


def test_read_only_weights_are_accepted():
    """Weights come from a read-only mmap of the GGUF file."""
    w = make_weight(rng(2), 4, 32, R.Q8_0)
    w.setflags(write=False)
    x = np.ones((1, 32), np.float32)
    out = np.empty((1, 4), np.float32)
    qm.matmul(x, w, R.Q8_0, out)
    assert_within(out, R.matmul(x, w, R.Q8_0), int8_matmul_tol(x, w, R.Q8_0), "read-only weights")


def test_empty_batch_is_a_no_op():
    w = make_weight(rng(2), 4, 32, R.Q8_0)
    out = np.empty((0, 4), np.float32)
    qm.matmul(np.empty((0, 32), np.float32), w, R.Q8_0, out)
    assert out.shape == (0, 4)


# ---- malformed inputs: ValueError that says what to fix, nothing written ----

def _valid():
    w = make_weight(rng(4), 8, 64, R.Q4_0)
    return np.ones((2, 64), np.float32), w, np.zeros((2, 8), np.float32)


@pytest.mark.parametrize("wtype,K,match", [(9, 64, "unsupported wtype"), (20, 64, "unsupported wtype"), (R.Q4_0, 48, "multiple of 32"),
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
        qm.matmul(x, w, 20, out)
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


@pytest.mark.parametrize("wtype", QUANT_WTYPES)
def test_quant_matmul_rejects_malformed_inputs(wtype):
    w = make_weight(rng(4), 8, 64, wtype)
    rb = R.row_bytes(wtype, 64)
    x, out = np.ones((2, 64), np.float32), np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        qm.matmul(np.ones((2, 80), np.float32), w, wtype, out)
    with pytest.raises(ValueError, match=rf"w must be uint8\[N, {rb}\]"):
        qm.matmul(x, w[:, :-1].copy(), wtype, out)
    with pytest.raises(ValueError, match=r"out must be float32\[2, 8\]"):
        qm.matmul(x, w, wtype, np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="dtype mismatch"):
        qm.matmul(x, w.view(np.int8), wtype, out)
    with pytest.raises(ValueError, match="dtype mismatch"):
        qm.matmul(x, w, wtype, out.astype(np.float64))
    with pytest.raises(ValueError, match="overlap"):
        buf = np.zeros(2 * 64 + 8, np.float32)
        qm.matmul(buf[:128].reshape(2, 64), w, wtype, buf[120:136].reshape(2, 8))
    assert not out.any()


def test_quantize_activations_rejects_malformed_inputs():
    with pytest.raises(ValueError, match="multiple of 32"):
        qm.quantize_activations(np.ones((2, 48), np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        qm.quantize_activations(np.ones((2, 0), np.float32))
    with pytest.raises(ValueError, match="dtype mismatch"):
        qm.quantize_activations(np.ones((2, 64), np.float64))
    with pytest.raises(ValueError, match="dtype mismatch"):
        qm.quantize_activations(np.ones((2, 64), np.int32))
    with pytest.raises(ValueError, match="Buffer has wrong number of dimensions"):
        qm.quantize_activations(np.ones(64, np.float32))


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
