"""Deterministic test data and named tolerances for the kernel parity tests (ggml style), CPU
(tests/kernels) and GPU (tests/cuda) alike."""
import numpy as np
from cyserve.kernels import reference as R

# The 32-element formats (int8 activations in blocks of 32) and the K-quants (Q8_K activations).
QUANT_WTYPES = [R.Q4_0, R.Q4_1, R.Q5_0, R.Q5_1, R.Q8_0]
KQUANT_WTYPES = [R.Q2_K, R.Q3_K, R.Q4_K, R.Q5_K, R.Q6_K]
WTYPES = [R.F32, R.F16, R.BF16] + QUANT_WTYPES
CUDA_QUANT_WTYPES = [R.Q4_0, R.Q4_1, R.Q8_0]  # the formats the CUDA dequantizing GEMV reads

# Named tolerances. Decoding is exact but for one rounding (the SIMD path fuses q*d+m into an
# FMA); dot products add f32 rounding of order sqrt(K) * eps * |terms|.
DEQUANT_RTOL, DEQUANT_ATOL = 1e-6, 1e-7
MATMUL_RTOL, MATMUL_ATOL_PER_SQRT_K = 1e-5, 4e-6
NORM_RTOL, NORM_ATOL = 1e-5, 1e-6
ROPE_ATOL = 2e-6          # |x| ~ 1, cos/sin rounded to f32 once
ACT_RTOL, ACT_ATOL = 2e-6, 1e-6  # vectorised exp is within ~2 ulp
ATTN_RTOL, ATTN_ATOL = 1e-5, 1e-6  # outputs are convex mixes of fp16 values


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def make_weight(r: np.random.Generator, N: int, K: int, wtype: int) -> np.ndarray:
    """Raw rows uint8[N, row_bytes] of a random N x K weight in format wtype (the reference
    quantizers: the same bytes as gguf's where gguf has one)."""
    W = r.standard_normal((N, K)).astype(np.float32)
    return R.quantize(W, wtype)


def matmul_atol(K: int) -> float:
    return MATMUL_ATOL_PER_SQRT_K * np.sqrt(K)


F32_UNIT_ROUNDOFF = 2.0 ** -24
INT8_MATMUL_EXTRA_ROUNDINGS = 10  # products d_w*d_x, m_w*s_x, the hsum tree and the final add


def int8_matmul_tol(x: np.ndarray, w: np.ndarray, wtype: int) -> np.ndarray:
    """Per-element bound on |kernel - R.matmul| for a quantized wtype: the integer block sums are
    exact, so only f32 rounding differs. Summing n terms in f32 in any order errs by at most
    (n - 1) u sum|terms| (to first order); each of the nb scale terms is spread over 8 lanes, so
    the magnitude counts |d_w d_x| sum|q_w q_x| rather than |d_w d_x sum q_w q_x|."""
    K = x.shape[1]
    qx, dx, sx = R.quantize_activations(x)
    qw, dw, mw = R.weight_blocks(w, wtype, K)
    T, nb = dx.shape
    abs_isum = np.einsum("tbk,nbk->tnb", np.abs(qx.reshape(T, nb, 32).astype(np.int64)),
                         np.abs(qw.astype(np.int64)))
    mag = (abs_isum * np.abs(dw.astype(np.float64)[None] * dx.astype(np.float64)[:, None])
           + np.abs(mw.astype(np.float64)[None] * sx.astype(np.float64)[:, None])).sum(-1)
    return (nb + INT8_MATMUL_EXTRA_ROUNDINGS) * F32_UNIT_ROUNDOFF * mag + 1e-30


def quantization_error_bound(x: np.ndarray, w: np.ndarray, wtype: int) -> np.ndarray:
    """Per-element bound on |kernel - R.matmul_dequantized|: each x_k moves by at most d_x/2 when
    quantized, so the product moves by at most sum_b d_x,b / 2 * sum_{k in b} |w_k|; plus the f32
    rounding of the kernel (int8_matmul_tol) and of the reference's f32 decode (u |w_k x_k|)."""
    K = x.shape[1]
    _, dx, _ = R.quantize_activations(x)
    W = R.dequantize(w, wtype, K).astype(np.float64)                   # [N, K]
    T, nb = dx.shape
    absw_blocks = np.abs(W).reshape(W.shape[0], nb, 32).sum(-1)         # [N, nb]
    quant = 0.5 * dx.astype(np.float64) @ absw_blocks.T                 # [T, N]
    decode = 2 * F32_UNIT_ROUNDOFF * (np.abs(x.astype(np.float64)) @ np.abs(W).T)
    return quant + decode + int8_matmul_tol(x, w, wtype)


def assert_within(actual: np.ndarray, expected: np.ndarray, bound: np.ndarray, what: str) -> None:
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (f"{what}: |error| {err[worst]:.3g} > bound {bound[worst]:.3g} "
                                  f"at {worst}")


def f16_bits(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).view(np.uint16)


NAN_F16 = np.uint16(0x7E00)


class PagedBatch:
    """A batch of sequences over a shared paged cache, built the way the engine would.

    seqs: list of (context_len, q_len). Blocks are handed out in a shuffled order so a sequence's
    blocks are not contiguous; every slot no sequence owns holds NaN, so a kernel that reads past
    a context (or a wrong block) produces NaN instead of a plausible number.
    """

    def __init__(self, r, seqs, Hq, Hkv, Dh, BS, spare_blocks=3):
        self.seqs, self.Hq, self.Hkv, self.Dh, self.BS = seqs, Hq, Hkv, Dh, BS
        need = [(ctx + BS - 1) // BS for ctx, _ in seqs]
        NB = sum(need) + spare_blocks
        order = r.permutation(NB)
        max_blocks = max(need + [1]) + 1
        self.block_tables = np.full((len(seqs), max_blocks), -1, np.int32)  # -1 = never read
        self.k_cache = np.full((NB, Hkv, BS, Dh), NAN_F16, np.uint16)
        self.v_cache = np.full((NB, Hkv, BS, Dh), NAN_F16, np.uint16)
        pos = 0
        for s, ((ctx, _), n) in enumerate(zip(seqs, need)):
            self.block_tables[s, :n] = order[pos: pos + n]
            pos += n
            k = r.standard_normal((ctx, Hkv * Dh)).astype(np.float32)
            v = r.standard_normal((ctx, Hkv * Dh)).astype(np.float32)
            R.reshape_and_cache(k, v, self.k_cache, self.v_cache, self.slots(s, np.arange(ctx)))
        q_lens = [q for _, q in seqs]
        self.query_start_loc = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        self.context_lens = np.array([ctx for ctx, _ in seqs], np.int32)
        self.T = int(self.query_start_loc[-1])
        self.q = r.standard_normal((self.T, Hq * Dh)).astype(np.float32)
        self.scale = 1.0 / np.sqrt(Dh)

    def slots(self, s, positions):
        positions = np.asarray(positions)
        return (self.block_tables[s, positions // self.BS] * self.BS + positions % self.BS).astype(np.int32)

    def args(self):
        return (self.q, self.k_cache, self.v_cache, self.block_tables, self.query_start_loc,
                self.context_lens, self.scale)
