"""Numpy reference of the K-quant matmul: activations quantized to Q8_K and exact integer
super-block dot products, combined in f32 exactly as the compiled kernel does (bit for bit).

Q8_K activations, per row of x[T, K] (K % 256 == 0), per 256-element block b:
  q[t, 256b + j]   int8 round-half-even(x * (1 / d))   d[t, b] = amax / 127 (0 below 2^-96)
  bsums[t, 16b + s] int16, the sum of q over its 16-element sub-block s
A weight super-block (``reference_quants.kquant_parts``: w_k = d * sc * u_k - dm * mn) meets it in
  isum = sum_s sc_s * sum_{k in s} u_k q_k      msum = sum_s mn_s * bsums_s     (exact integers)
and the row's f32 accumulator (starting at 0) takes, super-block after super-block,
  with a separate min scale (Q2_K, Q4_K, Q5_K):  acc = fma(dx * d, f32(isum), acc)
                                                 acc = fma(-(dx * dm), f32(msum), acc)
  with the offset on the scale (Q3_K, Q6_K):    acc = fma(dx * d, f32(isum - msum), acc)
where fma rounds once, as the hardware instruction (and C's fmaf) does.
"""
from __future__ import annotations

import numpy as np

from cyserve.kernels.reference_quants import BLOCK_LAYOUT, K_QUANTS, QK_K, kquant_parts, row_bytes

ACT_MIN_AMAX = np.float32(2.0 ** -96)


def quantize_activations_q8k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x f32[T, K] -> (q i8[T, K], d f32[T, K/256], bsums i16[T, K/16]); x ~= q * d."""
    x = np.asarray(x, dtype=np.float32)
    T, K = x.shape
    if K <= 0 or K % QK_K:
        raise ValueError(f"x must have K a positive multiple of 256 columns, got K={K}")
    xb = x.reshape(T, K // QK_K, QK_K)
    amax = np.abs(xb).max(axis=-1)
    d = np.where(amax >= ACT_MIN_AMAX, amax / np.float32(127.0), np.float32(0.0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    q = np.rint(xb * inv[..., None]).astype(np.int8)
    bsums = q.reshape(T, K // 16, 16).astype(np.int32).sum(axis=-1).astype(np.int16)
    return q.reshape(T, K), d, bsums


def fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Correctly rounded f32 a * b + c, elementwise (a, b, c f32).

    The product is exact in f64; the sum is taken in f64 with its rounding error (TwoSum), made
    round-to-odd, then rounded to f32: round-to-odd at 53 bits followed by rounding to 24 bits
    is the single correct rounding."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c = c.astype(np.float64)
    s = p + c
    bb = s - p
    e = (p - (s - bb)) + (c - bb)
    even = (s.view(np.int64) & 1) == 0
    toward = np.where(e > 0, np.inf, -np.inf)
    s = np.where((e != 0) & even, np.nextafter(s, toward), s)
    return s.astype(np.float32)


def matmul_terms_q8k(x: np.ndarray, w: np.ndarray, wtype: int):
    """(isum, msum int64[T, N, nb], dx f32[T, nb], d f32[N, nb], dm f32[N, nb], has_min)."""
    if wtype not in K_QUANTS:
        raise ValueError(f"wtype {wtype} is not a K-quant; use one of {K_QUANTS}")
    T, K = x.shape
    w = np.ascontiguousarray(w, dtype=np.uint8)
    rb = row_bytes(wtype, K)
    if w.ndim != 2 or w.shape[1] != rb:
        raise ValueError(f"w must be uint8[N, {rb}] for wtype {wtype}, K={K}; got {w.shape}")
    N, nb = w.shape[0], K // QK_K
    qx, dx, bs = quantize_activations_q8k(x)
    u, sc, mn, d, dm, has_min = kquant_parts(w.reshape(N * nb, BLOCK_LAYOUT[wtype][1]), wtype)
    u = u.reshape(N, nb, 16, 16).astype(np.int64)
    sub = np.einsum("tbsk,nbsk->tnbs", qx.reshape(T, nb, 16, 16).astype(np.int64), u)
    isum = (sub * sc.reshape(1, N, nb, 16)).sum(-1)
    msum = np.einsum("tbs,nbs->tnb", bs.reshape(T, nb, 16).astype(np.int64),
                     mn.reshape(N, nb, 16).astype(np.int64))
    return isum, msum, dx, d.reshape(N, nb), dm.reshape(N, nb), has_min


def matmul_q8k(x: np.ndarray, w: np.ndarray, wtype: int) -> np.ndarray:
    """out f32[T, N] = x[T, K] @ W[N, K].T for K-quant W, the kernel's arithmetic bit for bit."""
    x = np.asarray(x, dtype=np.float32)
    isum, msum, dx, d, dm, has_min = matmul_terms_q8k(x, w, wtype)
    T, N, nb = isum.shape
    acc = np.zeros((T, N), np.float32)
    for b in range(nb):
        dd = (dx[:, b, None] * d[None, :, b]).astype(np.float32)
        if has_min:
            acc = fma_f32(dd, isum[..., b].astype(np.float32), acc)
            dmm = (dx[:, b, None] * dm[None, :, b]).astype(np.float32)
            acc = fma_f32(-dmm, msum[..., b].astype(np.float32), acc)
        else:
            acc = fma_f32(dd, (isum[..., b] - msum[..., b]).astype(np.float32), acc)
    return acc
