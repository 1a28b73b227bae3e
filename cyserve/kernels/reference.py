"""Plain numpy twins of every CPU kernel: slow, obviously correct, the oracle for parity tests.

Same names and arguments as the compiled modules in ``cyserve.kernels.cpu`` (see
docs/interfaces.md), so a caller can swap one for the other:

* kernels that write ``out`` take ``out=None``: the result is written into ``out`` when given and
  is always returned;
* kernels that work in place (``rope``, ``add``, ``reshape_and_cache``) do the same here and also
  return the array(s) they changed.

Arithmetic is done in float64 and rounded to float32 once at the end, so the compiled kernels are
compared against the exact answer, not against another rounding order. The fp16 KV cache is
passed as ``uint16`` views, exactly as the compiled kernels take it.

The GGML block formats, their quantizers and decoders are in ``reference_quants`` (re-exported
here). For the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) ``matmul`` follows the compiled kernel's integer algorithm: x is quantized
to int8 blocks of 32 (``quantize_activations``) and each weight block meets each x block in an
exact integer dot product. ``matmul_dequantized`` is the plain dequantize-then-multiply product,
the number both approximate.
"""
from __future__ import annotations

import numpy as np

from cyserve.kernels.reference_kquants import matmul_q8k, quantize_activations_q8k  # noqa: F401
from cyserve.kernels.reference_quants import (  # noqa: F401  (re-exported: one import for tests)
    BF16, BLOCK32_QUANTS, BLOCK_LAYOUT, F16, F32, K_QUANTS, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0,
    Q5_1, Q5_K, Q6_K, Q8_0, QK_K, _f16, dequantize, quantize, row_bytes, unsigned_block32,
)


def _write(result: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    result = result.astype(np.float32)
    if out is None:
        return result
    out[...] = result
    return out


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x f32[T, K] -> (q i8[T, K], d f32[T, K/32], s f32[T, K/32]), x ~= q * d per block of 32.

    d = amax / 127, q = round-half-even(x * (1 / d)), s = d * sum(q): every step in float32, in
    the kernel's order, so the compiled quantization must match this bit for bit. A block with
    amax < 2^-96 is all zeros with d = 0.
    """
    x = np.asarray(x, dtype=np.float32)
    T, K = x.shape
    if K <= 0 or K % 32:
        raise ValueError(f"x must have K a positive multiple of 32 columns, got K={K}")
    xb = x.reshape(T, K // 32, 32)                               # [T, nb, 32]
    amax = np.abs(xb).max(axis=-1)
    # below 2^-96 a block is zero: 1 / d would overflow
    d = np.where(amax >= np.float32(2.0 ** -96), amax / np.float32(127.0), np.float32(0.0))
    d = d.astype(np.float32)                                      # [T, nb]
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    q = np.rint(xb * inv[..., None]).astype(np.int8)             # f32 product, ties to even
    s = d * q.astype(np.int32).sum(axis=-1).astype(np.float32)
    return q.reshape(T, K), d, s


def weight_blocks(w: np.ndarray, wtype: int, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """32-element block rows as (q i32[N, nb, 32], d f32[N, nb], m f32[N, nb]) with w = q * d + m.

    Q4/Q5 q are the raw unsigned codes (0..15 / 0..31; Q4_0's -8 and Q5_0's -16 offsets become
    m = -8 d and m = -16 d); Q8_0 q are signed, m = 0.
    """
    if wtype not in BLOCK32_QUANTS:
        raise ValueError(f"wtype {wtype} has no 32-element integer blocks; use Q4_0, Q4_1, Q5_0, "
                         f"Q5_1 or Q8_0")
    w = np.asarray(w, dtype=np.uint8)
    rb = row_bytes(wtype, K)
    if w.ndim != 2 or w.shape[1] != rb:
        raise ValueError(f"w must be uint8[N, {rb}] for wtype {wtype}, K={K}; got {w.shape}")
    N, nb = w.shape[0], K // 32
    _, size = BLOCK_LAYOUT[wtype]
    blocks = np.ascontiguousarray(w).reshape(N * nb, size)
    d = _f16(blocks[:, 0:2]).reshape(N, nb)
    if wtype == Q8_0:
        q = blocks[:, 2:34].view(np.int8).astype(np.int32).reshape(N, nb, 32)
        return q, d, np.zeros_like(d)
    q = unsigned_block32(blocks, wtype).astype(np.int32).reshape(N, nb, 32)
    if wtype in (Q4_0, Q5_0):
        m = (-8.0 if wtype == Q4_0 else -16.0) * d
    else:
        m = _f16(blocks[:, 2:4]).reshape(N, nb)
    return q, d, m.astype(np.float32)


def matmul_int8_terms(x: np.ndarray, w: np.ndarray, wtype: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-block terms of the integer matmul, float64 [T, N, nb] each:
    scale terms d_w * d_x * sum(q_w * q_x) (exact integer sums) and offset terms m_w * s_x."""
    K = x.shape[1]
    qx, dx, sx = quantize_activations(x)
    qw, dw, mw = weight_blocks(w, wtype, K)
    T, nb = dx.shape
    isum = np.einsum("tbk,nbk->tnb", qx.reshape(T, nb, 32).astype(np.int64), qw.astype(np.int64))
    scale = isum * (dw.astype(np.float64)[None] * dx.astype(np.float64)[:, None])
    offset = mw.astype(np.float64)[None] * sx.astype(np.float64)[:, None]
    return scale, offset


def matmul_dequantized(x: np.ndarray, w: np.ndarray, wtype: int,
                       out: np.ndarray | None = None) -> np.ndarray:
    """out[T, N] = x[T, K] @ dequantize(W).T in float64: no activation quantization at all."""
    K = x.shape[1]
    W = dequantize(w, wtype, K).astype(np.float64)
    return _write(x.astype(np.float64) @ W.T, out)


def matmul(x: np.ndarray, w: np.ndarray, wtype: int, out: np.ndarray | None = None) -> np.ndarray:
    """out[T, N] = x[T, K] @ W[N, K].T, W given as raw rows of format ``wtype``.

    Quantized formats use the kernel's int8-activation semantics (exact integer block dots,
    float64 sums); plain float formats multiply f32 x exactly.
    """
    if wtype in K_QUANTS:
        return _write(matmul_q8k(x, w, wtype), out)
    if wtype not in BLOCK32_QUANTS:
        return matmul_dequantized(x, w, wtype, out)
    scale, offset = matmul_int8_terms(x, w, wtype)
    return _write((scale + offset).sum(axis=-1), out)


def get_rows(w: np.ndarray, wtype: int, K: int, ids: np.ndarray,
             out: np.ndarray | None = None) -> np.ndarray:
    """out[T, K] = rows ``ids`` of W (an embedding lookup)."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= w.shape[0]):
        raise ValueError(f"ids must be in [0, {w.shape[0]})")
    return _write(dequantize(w[ids], wtype, K), out)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float,
             out: np.ndarray | None = None) -> np.ndarray:
    """out = x / sqrt(mean(x^2) + eps) * weight, per row."""
    x64 = x.astype(np.float64)
    inv = 1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
    return _write(x64 * inv * weight.astype(np.float64), out)


def rope_cos_sin(positions: np.ndarray, head_dim: int, theta: float,
                 freq_factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of angle pos * theta^(-2i/head_dim) / freq_factors[i] for i in 0..head_dim/2,
    shape [T, head_dim/2] (freq_factors None: all 1)."""
    inv_freq = float(theta) ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if freq_factors is not None:
        inv_freq = inv_freq / np.asarray(freq_factors, dtype=np.float64)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(ang), np.sin(ang)


def rope(x: np.ndarray, positions: np.ndarray, num_heads: int, head_dim: int, theta: float,
         neox: bool, freq_factors: np.ndarray | None = None) -> np.ndarray:
    """Rotary embedding of x[T, H*Dh], in place; returns x.

    neox=False: GGUF/llama.cpp layout, pair i is (2i, 2i+1). neox=True: pair i is (i, i+Dh/2).
    freq_factors (f32[Dh/2]) divide pair i's frequency (Llama 3.1's rope_freqs); None: none.
    """
    T = x.shape[0]
    if head_dim % 2 or x.shape[1] != num_heads * head_dim:
        raise ValueError(f"x must be f32[T, {num_heads}*{head_dim}] with even head_dim")
    cos, sin = rope_cos_sin(positions, head_dim, theta, freq_factors)
    cos, sin = cos[:, None, :], sin[:, None, :]                # [T, 1, Dh/2]
    xh = x.astype(np.float64).reshape(T, num_heads, head_dim)   # [T, H, Dh]
    if neox:
        x0, x1 = xh[..., : head_dim // 2], xh[..., head_dim // 2:]
    else:
        x0, x1 = xh[..., 0::2], xh[..., 1::2]
    r0, r1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    res = np.empty_like(xh)
    if neox:
        res[..., : head_dim // 2], res[..., head_dim // 2:] = r0, r1
    else:
        res[..., 0::2], res[..., 1::2] = r0, r1
    x[...] = res.reshape(T, num_heads * head_dim)
    return x


def silu_mul(gate: np.ndarray, up: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """out = silu(gate) * up, silu(g) = g / (1 + exp(-g))."""
    g = gate.astype(np.float64)
    with np.errstate(over="ignore"):
        silu = g / (1.0 + np.exp(-g))
    return _write(silu * up.astype(np.float64), out)


def gelu_tanh_mul(gate: np.ndarray, up: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """out = gelu_tanh(gate) * up, gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))."""
    g = gate.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        gelu = 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3)))
    gelu = np.where(np.isinf(g) & (g < 0), -0.0, gelu)  # -inf * (1 + tanh(-inf)) is -inf * 0
    return _write(gelu * up.astype(np.float64), out)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a += b in place; returns a."""
    a[...] = (a.astype(np.float64) + b.astype(np.float64)).astype(np.float32)
    return a


def reshape_and_cache(k: np.ndarray, v: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
                      slot_mapping: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write token t's k/v (f32[T, Hkv*Dh]) as fp16 into cache slot slot_mapping[t] (-1 = skip).

    Caches are u16[NB, Hkv, BS, Dh] (fp16 bits); slot s is block s // BS, offset s % BS.
    """
    NB, Hkv, BS, Dh = k_cache.shape
    for t, slot in enumerate(np.asarray(slot_mapping)):
        if slot < 0:
            continue
        if slot >= NB * BS:
            raise ValueError(f"slot_mapping[{t}]={slot} outside the cache ({NB * BS} slots)")
        b, off = divmod(int(slot), BS)
        with np.errstate(over="ignore"):  # beyond fp16 range is inf, as in the kernel
            k_cache[b, :, off, :] = k[t].reshape(Hkv, Dh).astype(np.float16).view(np.uint16)
            v_cache[b, :, off, :] = v[t].reshape(Hkv, Dh).astype(np.float16).view(np.uint16)
    return k_cache, v_cache


def _gather(cache: np.ndarray, blocks: np.ndarray, ctx: int) -> np.ndarray:
    """[Hkv, ctx, Dh] float64 for one sequence from its block list."""
    c = cache[blocks].view(np.float16).astype(np.float64)      # [nblk, Hkv, BS, Dh]
    Hkv, Dh = c.shape[1], c.shape[3]
    return c.transpose(1, 0, 2, 3).reshape(Hkv, -1, Dh)[:, :ctx]


def paged_attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
                    block_tables: np.ndarray, query_start_loc: np.ndarray,
                    context_lens: np.ndarray, scale: float,
                    out: np.ndarray | None = None, window: int = 0) -> np.ndarray:
    """Causal grouped-query attention over a paged fp16 KV cache; returns f32[T, Hq*Dh].

    Sequence s owns query rows query_start_loc[s]:query_start_loc[s+1] (its last q_len tokens);
    query row i sits at position p = context_lens[s] - q_len + i and sees keys 0..p, or with a
    sliding window (window > 0) keys p - window + 1..p. Query head h reads KV head h // (Hq // Hkv).
    """
    if window < 0:
        raise ValueError(f"window must be 0 (no sliding window) or positive, got {window}")
    T = q.shape[0]
    _, Hkv, BS, Dh = k_cache.shape
    Hq = q.shape[1] // Dh
    group = Hq // Hkv
    res = np.zeros((T, Hq, Dh), dtype=np.float64)
    qsl = np.asarray(query_start_loc)
    for s in range(len(context_lens)):
        start, end, ctx = int(qsl[s]), int(qsl[s + 1]), int(context_lens[s])
        q_len = end - start
        if q_len == 0:
            continue
        blocks = np.asarray(block_tables[s, : (ctx + BS - 1) // BS])
        K, V = _gather(k_cache, blocks, ctx), _gather(v_cache, blocks, ctx)
        qs = q[start:end].astype(np.float64).reshape(q_len, Hq, Dh)
        pos = ctx - q_len + np.arange(q_len)                       # [q_len]
        lo = max(int(pos[0]) - window + 1, 0) if window else 0   # no row sees a key before lo
        K, V = K[:, lo:], V[:, lo:]
        keys = np.arange(lo, ctx)[None, :]
        masked = keys > pos[:, None]                                # [q_len, ctx - lo]
        if window:
            masked |= keys <= pos[:, None] - window
        for h in range(Hq):
            scores = qs[:, h, :] @ K[h // group].T * scale          # [q_len, ctx - lo]
            scores[masked] = -np.inf
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            res[start:end, h, :] = p @ V[h // group]
    return _write(res.reshape(T, Hq * Dh), out)
