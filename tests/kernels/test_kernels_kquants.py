"""The K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) in quant_matmul: row sizes, dequantize and get_rows
against gguf's decoder, Q8_K activation quantization and the integer matmul against the numpy
reference (reference_kquants), bit for bit on the AVX2 path and the scalar twin, and within the
activation-quantization bound of the plain f32 product of the decoded weights."""
import numpy as np
import pytest
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from cyserve.kernels import reference as R
from cyserve.kernels.cpu import quant_matmul as qm
from cyserve.kernels.cpu import threads
from kernel_data import (F32_UNIT_ROUNDOFF, KQUANT_WTYPES, assert_within, int8_matmul_tol, make_weight,
                         rng)

# odd row counts, every 4-row group tail; K of 1, 3 and 10 super-blocks
SHAPES = [(1, 256), (5, 768), (13, 256), (38, 2560)]
# the 2-token tiles and their 1-token tail, up to a batch past 64
BATCHES = [1, 2, 3, 5, 8, 17, 33, 64, 70]
# f16 scale fields of a super-block (byte offsets), for random bytes with finite scales
SCALE_OFFSETS = {R.Q2_K: (80, 82), R.Q3_K: (108,), R.Q4_K: (0, 2), R.Q5_K: (0, 2), R.Q6_K: (208,)}


def random_blocks(seed: int, N: int, K: int, wtype: int) -> np.ndarray:
    """Every bit pattern of the packed fields (not only what a quantizer writes), scales finite
    and at most ~1 so products stay in range."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(wtype)]
    raw = rng(seed).integers(0, 256, (N, K // block * size), dtype=np.uint8)
    blocks = raw.reshape(-1, size)
    for off in SCALE_OFFSETS[wtype]:
        blocks[:, off + 1] &= 0x3B
    return raw


def gguf_dequantize(w: np.ndarray, wtype: int, K: int) -> np.ndarray:
    return quants.dequantize(w, GGMLQuantizationType(wtype)).reshape(w.shape[0], K)


def matmul(x: np.ndarray, w: np.ndarray, wtype: int) -> np.ndarray:
    out = np.full((x.shape[0], w.shape[0]), np.nan, np.float32)
    qm.matmul(x, w, wtype, out)
    return out


def q8k_error_bound(x: np.ndarray, w: np.ndarray, wtype: int) -> np.ndarray:
    """Per-element bound on |kernel - x @ W.T| (W the decoded weights, product in f64): each x_k
    moves by at most d_x/2 when quantized to Q8_K, so the product moves by at most
    sum_b d_x,b / 2 * sum_{k in b} |w_k|; plus f32 rounding: two fmas per super-block on an
    accumulator bounded by sum |w| |q_x d_x|, and the decode's one rounding per weight."""
    K = x.shape[1]
    _, dx, _ = R.quantize_activations_q8k(x)
    W = gguf_dequantize(w, wtype, K).astype(np.float64)
    nb = K // 256
    quant = 0.5 * dx.astype(np.float64) @ np.abs(W).reshape(W.shape[0], nb, 256).sum(-1).T
    mag = (np.abs(x.astype(np.float64)) + dx.repeat(256, axis=1)) @ np.abs(W).T
    return quant + (2 * nb + 4) * F32_UNIT_ROUNDOFF * mag + 1e-30


def both_paths():
    return [True, False] if threads.simd_supported() else [False]


@pytest.mark.parametrize("wtype", KQUANT_WTYPES)
@pytest.mark.parametrize("K", [256, 768, 2816])
def test_row_bytes_and_block_elems(wtype, K):
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(wtype)]
    assert qm.row_bytes(wtype, K) == K // block * size == R.row_bytes(wtype, K)
    assert qm.block_elems(wtype) == block == 256


def test_block_elems_of_every_format():
    for wtype in (R.F32, R.F16, R.BF16):
        assert qm.block_elems(wtype) == 1
    for wtype in (R.Q4_0, R.Q4_1, R.Q5_0, R.Q5_1, R.Q8_0):
        assert qm.block_elems(wtype) == 32
    with pytest.raises(ValueError, match="unsupported wtype 20"):
        qm.block_elems(20)


@pytest.mark.parametrize("wtype", KQUANT_WTYPES)
@pytest.mark.parametrize("N,K", SHAPES)
def test_dequantize_matches_gguf_exactly(simd, wtype, N, K):
    """Both twins decode with ggml's f32 formula: the same bits as gguf's decoder."""
    for w in (make_weight(rng(N + K + wtype), N, K, wtype), random_blocks(N * K + wtype, N, K, wtype)):
        out = qm.dequantize(w, wtype, K)
        assert out.shape == (N, K) and out.dtype == np.float32
        np.testing.assert_array_equal(out, gguf_dequantize(w, wtype, K))


@pytest.mark.parametrize("wtype", KQUANT_WTYPES)
def test_get_rows_matches_gguf(simd, num_threads, wtype):
    w = make_weight(rng(3), 301, 512, wtype)
    ids = np.array([300, 0, 7, 7, 150, 299, 1], np.int32)
    expected = gguf_dequantize(w[ids], wtype, 512)
    for n in (1, 2):
        num_threads(n)
        out = np.full((len(ids), 512), np.nan, np.float32)
        qm.get_rows(w, wtype, 512, ids, out)
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("wtype", KQUANT_WTYPES)
def test_our_quantizer_round_trips_through_the_kernel(simd, wtype):
    """reference_quants.quantize writes blocks our kernel decodes to near the input (the test
    models are written that way)."""
    W = rng(wtype).standard_normal((9, 1024)).astype(np.float32)
    back = qm.dequantize(R.quantize(W, wtype), wtype, 1024)
    rms = np.sqrt(((back - W) ** 2).mean() / (W ** 2).mean())
    assert rms < {R.Q2_K: 0.45, R.Q3_K: 0.2, R.Q4_K: 0.1, R.Q5_K: 0.05, R.Q6_K: 0.025}[wtype]


# ---- Q8_K activations: bit-exact against the reference on both paths ----

@pytest.mark.parametrize("T", [1, 3, 17, 130])
@pytest.mark.parametrize("K", [256, 768, 2560])
def test_quantize_activations_q8k_matches_reference(simd, num_threads, T, K):
    x = (rng(T + K).standard_normal((T, K)) * rng(K).uniform(0.01, 100.0, (T, 1))).astype(np.float32)
    expected = R.quantize_activations_q8k(x)
    for n in (1, 2):
        num_threads(n)
        got = qm.quantize_activations_q8k(x)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype and g.shape == e.shape
            np.testing.assert_array_equal(g, e)


def test_quantize_activations_q8k_edge_blocks(simd):
    """A zero block gives d = 0 and zero sums; .5 ties round to even; the maximum maps to +-127;
    a block below 2^-96 is zero; sums of 16 reach +-2032 without wrapping."""
    x = np.zeros((1, 1280), np.float32)
    x[0, 256:512] = 127.0                                     # d = 1, every q = 127
    x[0, 256:262] = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5]         # ties at d = 1
    x[0, 512:768] = -1e30 * (1 + rng(0).random(256))
    x[0, 768:1024] = rng(1).standard_normal(256) * 1e-38      # subnormals: the zero block
    x[0, 1024:1280] = rng(2).standard_normal(256) * 1e-20
    q, d, bs = qm.quantize_activations_q8k(x)
    for g, e in zip((q, d, bs), R.quantize_activations_q8k(x)):
        np.testing.assert_array_equal(g, e)
    assert d[0, 0] == 0 and not q[0, :256].any() and not bs[0, :16].any()
    assert d[0, 1] == 1.0
    np.testing.assert_array_equal(q[0, 256:262], [0, 2, 2, 0, -2, -2])
    assert bs[0, 17] == 16 * 127 and np.abs(q[0, 512:768]).max() == 127
    assert d[0, 3] == 0 and not q[0, 768:1024].any()
    err = np.abs(q[0, 1024:].astype(np.float64) * d[0, 4] - x[0, 1024:])
    assert (err <= d[0, 4] * (0.5 + 1e-6)).all()


def test_quantize_activations_q8k_rejects_bad_K():
    with pytest.raises(ValueError, match="multiple of 256"):
        qm.quantize_activations_q8k(np.ones((2, 288), np.float32))


# ---- matmul: the reference's arithmetic bit for bit ----

@pytest.mark.parametrize("wtype", KQUANT_WTYPES)
@pytest.mark.parametrize("T", BATCHES)
@pytest.mark.parametrize("N,K", SHAPES)
def test_matmul_matches_q8k_reference_exactly(simd, num_threads, wtype, T, N, K):
    """Exact integer super-block sums and the same fmas in the same order: the AVX2 tiles (4 rows
    x 2 tokens and every tail) and the scalar twin give the reference's bits, with 1 or 2
    threads; and the result is within the Q8_K rounding bound of the f32 product."""
    r = rng(T * 1000 + N + K + wtype)
    w = make_weight(r, N, K, wtype)
    x = r.standard_normal((T, K)).astype(np.float32)
    expected = R.matmul_q8k(x, w, wtype)
    for n in (1, 2):
        num_threads(n)
        np.testing.assert_array_equal(matmul(x, w, wtype), expected)
    W = gguf_dequantize(w, wtype, K).astype(np.float64)
    assert_within(expected, x.astype(np.float64) @ W.T, q8k_error_bound(x, w, wtype), "vs f32 product")


@pytest.mark.parametrize("wtype", KQUANT_WTYPES)
@pytest.mark.parametrize("T", [1, 2, 7])
def test_matmul_on_random_bytes_matches_reference(simd, wtype, T):
    """Every bit pattern of scales, mins and codes (Q6_K's negative int8 scales, Q3_K's 6-bit
    signed ones) goes through the same integer sums."""
    w = random_blocks(wtype + T, 21, 1024, wtype)
    x = rng(T).standard_normal((T, 1024)).astype(np.float32)
    np.testing.assert_array_equal(matmul(x, w, wtype), R.matmul_q8k(x, w, wtype))


@pytest.mark.parametrize("wtype", KQUANT_WTYPES)
@pytest.mark.parametrize("T,N,K", [(1, 129, 2560), (3, 37, 768), (17, 129, 256), (70, 21, 1536)])
def test_matmul_simd_equals_scalar_bits(wtype, T, N, K):
    if not threads.simd_supported():
        pytest.skip("CPU lacks AVX2+FMA+F16C")
    r = rng(T + N + K + wtype)
    w = make_weight(r, N, K, wtype)
    x = (r.standard_normal((T, K)) * 5.0).astype(np.float32)
    outs = []
    for enabled in both_paths():
        threads.set_simd(enabled)
        try:
            outs.append(matmul(x, w, wtype))
        finally:
            threads.set_simd(True)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("wtype", KQUANT_WTYPES)
def test_matmul_zero_activations_give_zero(simd, wtype):
    w = make_weight(rng(6), 9, 512, wtype)
    for T in (1, 6):
        np.testing.assert_array_equal(matmul(np.zeros((T, 512), np.float32), w, wtype), 0.0)


@pytest.mark.parametrize("wtype", KQUANT_WTYPES)
def test_matmul_weight_at_odd_address(simd, wtype):
    """Super-blocks are 84, 110, 144, 176 or 210 bytes: rows of a sliced buffer sit anywhere."""
    w = make_weight(rng(8), 6, 512, wtype)
    buf = np.zeros(w.size + 1, np.uint8)
    buf[1:] = w.ravel()
    w_odd = buf[1:].reshape(w.shape)
    assert w_odd.ctypes.data % 2 == 1
    x = rng(9).standard_normal((3, 512)).astype(np.float32)
    np.testing.assert_array_equal(matmul(x, w_odd, wtype), R.matmul_q8k(x, w, wtype))
    np.testing.assert_array_equal(qm.dequantize(w_odd, wtype, 512), gguf_dequantize(w, wtype, 512))


def test_matmul_rejects_K_off_the_super_block():
    w = make_weight(rng(4), 8, 256, R.Q4_K)
    with pytest.raises(ValueError, match="multiple of 256"):
        qm.matmul(np.ones((2, 288), np.float32), w, R.Q4_K, np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match=r"w must be uint8\[N, 210\]"):
        qm.matmul(np.ones((2, 256), np.float32), w, R.Q6_K, np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="multiple of 256"):
        qm.row_bytes(R.Q2_K, 128)


# ---- the real file: Gemma 3 270M Q4_K_M (Q4_K, Q6_K, Q5_0 and Q8_0 tensors) ----

GEMMA_TYPES = ["Q4_K", "Q6_K", "Q5_0", "Q8_0"]


@pytest.fixture(scope="module")
def gemma_tensors(gemma_path):
    """type name -> up to 3 of the file's matrices as raw rows uint8[rows, row_bytes] (views into
    the memory map; the vocabulary-sized embedding cut to 640 scattered rows)."""
    from cyserve.fastpath.model.gguf_file import GGUFFile

    f = GGUFFile(gemma_path)
    out: dict[str, list[tuple[str, np.ndarray, int]]] = {name: [] for name in GEMMA_TYPES}
    for t in f.tensors:
        name = t.tensor_type.name
        if name not in out or len(out[name]) == 3 or len(t.shape) != 2:
            continue
        K, rows = t.shape
        w = t.data.reshape(rows, -1)
        if rows > 4096:
            w = w[np.linspace(0, rows - 1, 640).astype(np.int64)]
        out[name].append((t.name, w, K))
    return out


@pytest.mark.parametrize("name", GEMMA_TYPES)
def test_gemma_file_tensors_decode_as_gguf_does(gemma_tensors, name):
    """Real tensors of every type the file holds: dequantize, get_rows and the matmul on both
    twins against gguf's decoder and the references."""
    wtype = int(GGMLQuantizationType[name])
    assert len(gemma_tensors[name]) == 3
    x = rng(wtype).standard_normal((3, 2048)).astype(np.float32)
    for tname, w, K in gemma_tensors[name]:
        expected = gguf_dequantize(w, wtype, K)
        ids = np.array([0, w.shape[0] - 1, w.shape[0] // 3], np.int32)
        xk = np.ascontiguousarray(x[:, :K])
        for enabled in both_paths():
            threads.set_simd(enabled)
            try:
                np.testing.assert_array_equal(qm.dequantize(w, wtype, K), expected, err_msg=tname)
                rows = np.empty((3, K), np.float32)
                qm.get_rows(w, wtype, K, ids, rows)
                np.testing.assert_array_equal(rows, expected[ids], err_msg=tname)
                got = matmul(xk, w, wtype)
            finally:
                threads.set_simd(True)
            if wtype in KQUANT_WTYPES:
                np.testing.assert_array_equal(got, R.matmul_q8k(xk, w, wtype), err_msg=tname)
            else:
                assert_within(got, R.matmul(xk, w, wtype), int8_matmul_tol(xk, w, wtype), tname)
