"""Numpy reference quantizers and dequantizers for every GGML block format the kernels read.

The oracle for the compiled quantized kernels, and the way tests build GGUF models in any format:
``quantize(W, wtype)`` turns f32[N, K] into the raw rows uint8[N, row_bytes] that a GGUF tensor of
that type holds, and ``dequantize`` turns them back.

Quantizers are plain round-to-nearest, no importance weights and no scale search: each
(sub-)block takes its scale (and min) from its range, the scales are themselves rounded to their
4/6/8-bit codes against one f16 super-scale, and each weight is rounded against the scale it will
be decoded with. Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 follow ggml's quantize_row_*_ref bit for bit (the gguf
package's quantizers give the same bytes); the K-quants produce valid blocks of the same layout
ggml's decoders read, a little less accurate than ggml's searched scales.

Layouts (little-endian, f16 scales), 32-element blocks:
  Q4_0 {d; qs[16]}            w = (q - 8) d      q: low nibbles elements 0..15, high 16..31
  Q4_1 {d; m; qs[16]}         w = q d + m
  Q5_0 {d; qh[4]; qs[16]}     w = (q - 16) d     bit 4 of element j is bit j of qh (u32)
  Q5_1 {d; m; qh[4]; qs[16]}  w = q d + m
  Q8_0 {d; i8 qs[32]}         w = q d
256-element super-blocks (K-quants):
  Q2_K {scales[16]; qs[64]; d; dmin}               16 x 16: sc = scales & 15, m = scales >> 4, q 0..3
  Q3_K {hmask[32]; qs[64]; scales[12]; d}          16 x 16: sc 6-bit - 32, q = 2 bits + hmask bit, -4..3
  Q4_K {d; dmin; scales[12]; qs[128]}              8 x 32: 6-bit sc and m, q 0..15
  Q5_K {d; dmin; scales[12]; qh[32]; qs[128]}      8 x 32: as Q4_K, bit 4 from qh, q 0..31
  Q6_K {ql[128]; qh[64]; i8 scales[16]; d}         16 x 16: q = 4 + 2 bits - 32, -32..31
Every K-quant element decodes as w = d * sc * u - dm * mn with u >= 0 (``kquant_parts``): Q2/Q4/Q5_K
have dm = dmin, mn = m; Q3_K has u = q + 4, dm = d, mn = 4 sc; Q6_K has u = q + 32, dm = d, mn = 32 sc.
"""
from __future__ import annotations

import numpy as np

# GGML type ids, as in gguf.GGMLQuantizationType.
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 10, 11, 12, 13, 14, 30

QK_K = 256
K_QUANTS = (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
BLOCK32_QUANTS = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)

# wtype -> (elements per block, bytes per block)
BLOCK_LAYOUT: dict[int, tuple[int, int]] = {
    F32: (1, 4), F16: (1, 2), BF16: (1, 2),
    Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24), Q8_0: (32, 34),
    Q2_K: (256, 84), Q3_K: (256, 110), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210),
}
NAMES = {F32: "F32", F16: "F16", BF16: "BF16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0",
         Q5_1: "Q5_1", Q8_0: "Q8_0", Q2_K: "Q2_K", Q3_K: "Q3_K", Q4_K: "Q4_K", Q5_K: "Q5_K",
         Q6_K: "Q6_K"}


def row_bytes(wtype: int, K: int) -> int:
    """Bytes of one weight row of K elements in format ``wtype``."""
    if wtype not in BLOCK_LAYOUT:
        raise ValueError(f"unsupported wtype {wtype}; use one of {sorted(BLOCK_LAYOUT)}")
    block, size = BLOCK_LAYOUT[wtype]
    if K <= 0 or K % block:
        raise ValueError(f"K={K} must be a positive multiple of {block} for wtype {wtype}")
    return K // block * size


def _f16(u8: np.ndarray) -> np.ndarray:
    """The trailing 2 bytes of a uint8 array as one float16, widened to f32 (keeps leading dims)."""
    return np.ascontiguousarray(u8).view(np.float16)[..., 0].astype(np.float32)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """f32[...] -> uint8[..., 2], the f16 bits."""
    return np.ascontiguousarray(np.asarray(v, np.float32).astype(np.float16)).view(np.uint8).reshape(*v.shape, 2)


def _inv(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _blocks(W: np.ndarray, wtype: int) -> tuple[np.ndarray, int, int]:
    W = np.ascontiguousarray(W, dtype=np.float32)
    if W.ndim != 2:
        raise ValueError(f"W must be f32[N, K], got shape {W.shape}")
    N, K = W.shape
    block, _ = BLOCK_LAYOUT[wtype]
    row_bytes(wtype, K)  # raises on a bad K
    if not np.isfinite(W).all():
        raise ValueError("W must be finite to be quantized")
    return W.reshape(N * K // block, block), N, K


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """The element of largest magnitude (with its sign) along the last axis, keepdims."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)


def _trunc_u8(v: np.ndarray, hi: int) -> np.ndarray:
    return np.trunc(v).astype(np.float32).clip(0, hi).astype(np.uint8)


def _pack_nibbles32(q: np.ndarray) -> np.ndarray:
    """u8[nb, 32] -> u8[nb, 16]: element j low nibble, element j + 16 high nibble."""
    return (q[:, :16] & 0x0F) | (q[:, 16:] << 4)


def _pack_qh32(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of 32 elements -> 4 bytes (bit j = element j)."""
    return np.packbits((q >> 4) & 1, axis=-1, bitorder="little")


# ---- 32-element formats: ggml's quantize_row_*_ref ----

def _quantize_block32(x: np.ndarray, wtype: int) -> np.ndarray:
    if wtype == Q8_0:
        d = (np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)
        v = x * _inv(d)
        q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)  # roundf: ties away
        return np.concatenate([_f16_bytes(d[:, 0]), q.view(np.uint8)], axis=-1)
    if wtype in (Q4_0, Q5_0):
        half = 8 if wtype == Q4_0 else 16
        d = (_signed_absmax(x) / np.float32(-half)).astype(np.float32)
        q = _trunc_u8(x * _inv(d) + np.float32(half + 0.5), 2 * half - 1)
        parts = [_f16_bytes(d[:, 0])]
    else:
        hi = 15 if wtype == Q4_1 else 31
        mn, mx = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
        d = ((mx - mn) / np.float32(hi)).astype(np.float32)
        q = _trunc_u8((x - mn) * _inv(d) + np.float32(0.5), hi)
        parts = [_f16_bytes(d[:, 0]), _f16_bytes(mn[:, 0])]
    if wtype in (Q5_0, Q5_1):
        parts.append(_pack_qh32(q))
    parts.append(_pack_nibbles32(q))
    return np.concatenate(parts, axis=-1)


def _dequantize_block32(b: np.ndarray, wtype: int) -> np.ndarray:
    """b u8[nb, size] -> f32[nb, 32] (gguf's and ggml's formulas, f32 arithmetic)."""
    d = _f16(b[:, 0:2])[:, None]
    if wtype == Q8_0:
        return b[:, 2:34].view(np.int8).astype(np.float32) * d
    q = unsigned_block32(b, wtype).astype(np.float32)
    if wtype == Q4_0:
        return (q - 8) * d
    if wtype == Q5_0:
        return (q - 16) * d
    return q * d + _f16(b[:, 2:4])[:, None]


def unsigned_block32(b: np.ndarray, wtype: int) -> np.ndarray:
    """Q4_0/Q4_1/Q5_0/Q5_1 blocks u8[nb, size] -> their unsigned codes u8[nb, 32] (0..15 / 0..31)."""
    qs = b[:, -16:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    if wtype in (Q5_0, Q5_1):
        off = 2 if wtype == Q5_0 else 4
        qh = np.unpackbits(b[:, off:off + 4], axis=-1, bitorder="little")
        q = q | (qh << 4)
    return q


# ---- K-quants: quantizers ----

def _pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins per block -> Q4_K/Q5_K's 12 bytes."""
    s = np.zeros((ls.shape[0], 12), np.uint8)
    s[:, 0:4] = (ls[:, 0:4] & 63) | ((ls[:, 4:8] >> 4) << 6)
    s[:, 4:8] = (lm[:, 0:4] & 63) | ((lm[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (ls[:, 4:8] & 0x0F) | ((lm[:, 4:8] & 0x0F) << 4)
    return s


def _rint_codes(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.rint(v).clip(lo, hi).astype(np.int32)


def _minmax_subblocks(x: np.ndarray, nmax: int, nbits: int):
    """Asymmetric sub-blocks x[nb, S, L] -> (d, dmin f32[nb], ls, lm int[nb, S], q int[nb, S, L])."""
    mn = np.minimum(x.min(axis=-1), 0).astype(np.float32)
    mx = x.max(axis=-1).astype(np.float32)
    scale = ((mx - mn) / np.float32(nmax)).astype(np.float32)        # [nb, S]
    mins = (-mn).astype(np.float32)
    top = (1 << nbits) - 1
    d = (scale.max(axis=-1) / np.float32(top)).astype(np.float32)
    dmin = (mins.max(axis=-1) / np.float32(top)).astype(np.float32)
    d16 = d.astype(np.float16).astype(np.float32)
    dmin16 = dmin.astype(np.float16).astype(np.float32)
    ls = _rint_codes(scale * _inv(d)[:, None], 0, top)
    lm = _rint_codes(mins * _inv(dmin)[:, None], 0, top)
    eff_d = (d16[:, None] * ls).astype(np.float32)[..., None]
    eff_m = (dmin16[:, None] * lm).astype(np.float32)[..., None]
    q = _rint_codes((x + eff_m) * _inv(eff_d), 0, nmax)
    return d, dmin, ls, lm, q


def _symmetric_subblocks(x: np.ndarray, nmax: int, scale_bits: int):
    """Symmetric sub-blocks x[nb, S, L], codes -nmax..nmax-1 -> (d f32[nb], ls int[nb, S], q)."""
    scale = (_signed_absmax(x)[..., 0] / np.float32(-nmax)).astype(np.float32)   # [nb, S]
    smax = 1 << (scale_bits - 1)
    big = _signed_absmax(scale)[..., 0]                                          # [nb]
    iscale = (np.float32(-smax) * _inv(big)).astype(np.float32)
    d = _inv(iscale)
    ls = _rint_codes(scale * iscale[:, None], -smax, smax - 1)
    eff = (d.astype(np.float16).astype(np.float32)[:, None] * ls).astype(np.float32)[..., None]
    q = _rint_codes(x * _inv(eff), -nmax, nmax - 1)
    return d, ls, q


def _pack_2bit_planes(L: np.ndarray) -> np.ndarray:
    """u[nb, 256] with values 0..3 -> qs[nb, 64]: byte 32h + l holds elements 128h + 32j + l at bits 2j."""
    L = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _quantize_q2_k(x: np.ndarray) -> np.ndarray:
    d, dmin, ls, lm, q = _minmax_subblocks(x.reshape(-1, 16, 16), 3, 4)
    scales = (ls | (lm << 4)).astype(np.uint8)
    return np.concatenate([scales, _pack_2bit_planes(q.reshape(-1, 256)), _f16_bytes(d), _f16_bytes(dmin)], axis=-1)


def _quantize_q3_k(x: np.ndarray) -> np.ndarray:
    d, ls, q = _symmetric_subblocks(x.reshape(-1, 16, 16), 4, 6)
    L = (q + 4).reshape(-1, 256)                                  # 0..7
    hmask = np.packbits((L.reshape(-1, 8, 32) >> 2) & 1, axis=1, bitorder="little")[:, 0, :]  # bit j: element 32j + l
    lsu = (ls + 32).astype(np.uint8)                              # 0..63
    scales = np.zeros((x.shape[0], 12), np.uint8)
    scales[:, 0:8] = (lsu[:, 0:8] & 0x0F) | ((lsu[:, 8:16] & 0x0F) << 4)
    hi = lsu >> 4                                                 # 2 bits each, scale j -> byte 8 + j % 4 at 2 (j / 4)
    scales[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return np.concatenate([hmask, _pack_2bit_planes(L & 3), scales, _f16_bytes(d)], axis=-1)


def _quantize_q45_k(x: np.ndarray, wtype: int) -> np.ndarray:
    nmax = 15 if wtype == Q4_K else 31
    d, dmin, ls, lm, q = _minmax_subblocks(x.reshape(-1, 8, 32), nmax, 6)
    L = q.reshape(-1, 4, 2, 32).astype(np.uint8)                  # [nb, chunk, lo/hi, 32]
    qs = ((L[:, :, 0] & 0x0F) | ((L[:, :, 1] & 0x0F) << 4)).reshape(-1, 128)
    parts = [_f16_bytes(d), _f16_bytes(dmin), _pack_scale_min_k4(ls, lm)]
    if wtype == Q5_K:
        parts.append(np.packbits((q.reshape(-1, 8, 32) >> 4).astype(np.uint8), axis=1, bitorder="little")[:, 0, :])
    parts.append(qs)
    return np.concatenate(parts, axis=-1)


def _quantize_q6_k(x: np.ndarray) -> np.ndarray:
    d, ls, q = _symmetric_subblocks(x.reshape(-1, 16, 16), 32, 8)
    L = (q + 32).reshape(-1, 2, 4, 32).astype(np.uint8)           # [nb, half, quarter, 32]
    ql = np.concatenate([(L[:, :, 0] & 0x0F) | ((L[:, :, 2] & 0x0F) << 4),
                         (L[:, :, 1] & 0x0F) | ((L[:, :, 3] & 0x0F) << 4)], axis=-1).reshape(-1, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(-1, 64)
    return np.concatenate([ql, qh, ls.astype(np.int8).view(np.uint8), _f16_bytes(d)], axis=-1)


def quantize(W: np.ndarray, wtype: int) -> np.ndarray:
    """f32[N, K] -> the raw rows uint8[N, row_bytes(wtype, K)] of a GGUF tensor of type wtype."""
    x, N, K = _blocks(W, wtype)
    if wtype == F32:
        return x.view(np.uint8).reshape(N, -1).copy()
    if wtype == F16:
        return x.astype(np.float16).view(np.uint8).reshape(N, -1)
    if wtype == BF16:
        bits = x.view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16          # round to nearest even
        return bits.astype(np.uint16).view(np.uint8).reshape(N, -1)
    if wtype in BLOCK32_QUANTS:
        out = _quantize_block32(x, wtype)
    elif wtype == Q2_K:
        out = _quantize_q2_k(x)
    elif wtype == Q3_K:
        out = _quantize_q3_k(x)
    elif wtype in (Q4_K, Q5_K):
        out = _quantize_q45_k(x, wtype)
    else:
        out = _quantize_q6_k(x)
    return np.ascontiguousarray(out.reshape(N, -1))


# ---- K-quants: decoding ----

def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 scale bytes [nb, 12] -> (sc, m) int32[nb, 8]."""
    s = s.astype(np.int32)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)], axis=-1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=-1)
    return sc, m


def _unpack_2bit_planes(qs: np.ndarray) -> np.ndarray:
    """qs[nb, 64] -> u8[nb, 256] (inverse of _pack_2bit_planes)."""
    q = qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (q & 3).reshape(-1, 256)


def kquant_parts(b: np.ndarray, wtype: int):
    """K-quant super-blocks u8[nb, size] -> (u i32[nb, 256], sc i32[nb, 16], mn i32[nb, 16],
    d f32[nb], dm f32[nb], has_min) with w_k = d * sc[k // 16] * u_k - dm * mn[k // 16]."""
    b = np.ascontiguousarray(b)
    if wtype == Q2_K:
        s = b[:, 0:16].astype(np.int32)
        u = _unpack_2bit_planes(b[:, 16:80]).astype(np.int32)
        return u, s & 15, s >> 4, _f16(b[:, 80:82]), _f16(b[:, 82:84]), True
    if wtype == Q3_K:
        hm = np.unpackbits(b[:, 0:32][:, None, :], axis=1, count=8, bitorder="little")   # [nb, 8, 32]
        u = (_unpack_2bit_planes(b[:, 32:96]) | (hm.reshape(-1, 256) << 2)).astype(np.int32)
        s = b[:, 96:108].astype(np.int32)
        lo = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=-1)              # [nb, 16]
        hi = (s[:, 8:12][:, None, :] >> np.array([0, 2, 4, 6]).reshape(1, 4, 1)) & 3   # [nb, 4, 4]
        sc = (lo | (hi.reshape(-1, 16) << 4)) - 32
        d = _f16(b[:, 108:110])
        return u, sc, 4 * sc, d, d, False
    if wtype in (Q4_K, Q5_K):
        sc8, m8 = _scale_min_k4(b[:, 4:16])
        qs = b[:, -128:].reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        u = (qs & 0x0F).reshape(-1, 256).astype(np.int32)
        if wtype == Q5_K:
            qh = np.unpackbits(b[:, 16:48][:, None, :], axis=1, count=8, bitorder="little")
            u |= qh.reshape(-1, 256).astype(np.int32) << 4
        return (u, np.repeat(sc8, 2, axis=-1), np.repeat(m8, 2, axis=-1), _f16(b[:, 0:2]),
                _f16(b[:, 2:4]), True)
    if wtype == Q6_K:
        ql = b[:, 0:128].reshape(-1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        ql = (ql & 0x0F).reshape(-1, 2, 4, 32)
        qh = b[:, 128:192].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        u = (ql | ((qh & 3) << 4)).reshape(-1, 256).astype(np.int32)
        sc = b[:, 192:208].view(np.int8).astype(np.int32)
        d = _f16(b[:, 208:210])
        return u, sc, 32 * sc, d, d, False
    raise ValueError(f"wtype {wtype} is not a K-quant; use one of {K_QUANTS}")


def _dequantize_kquant(b: np.ndarray, wtype: int) -> np.ndarray:
    """ggml's decode, f32 arithmetic in its order: (d * sc) * q - (dmin * m)."""
    u, sc, mn, d, dm, has_min = kquant_parts(b, wtype)
    if has_min:
        dl = (d[:, None] * sc.astype(np.float32))[..., None]
        ml = (dm[:, None] * mn.astype(np.float32))[..., None]
        return (dl * u.reshape(-1, 16, 16).astype(np.float32) - ml).reshape(-1, 256)
    offset = 4 if wtype == Q3_K else 32
    dl = (d[:, None] * sc.astype(np.float32))[..., None]
    return (dl * (u - offset).reshape(-1, 16, 16).astype(np.float32)).reshape(-1, 256)


def dequantize(w: np.ndarray, wtype: int, K: int) -> np.ndarray:
    """f32[N, K] from the raw rows u8[N, row_bytes(wtype, K)]."""
    w = np.asarray(w, dtype=np.uint8)
    rb = row_bytes(wtype, K)
    if w.ndim != 2 or w.shape[1] != rb:
        raise ValueError(f"w must be uint8[N, {rb}] for wtype {wtype}, K={K}; got {w.shape}")
    N = w.shape[0]
    w = np.ascontiguousarray(w)
    if wtype == F32:
        return w.view(np.float32).reshape(N, K).copy()
    if wtype == F16:
        return w.view(np.float16).reshape(N, K).astype(np.float32)
    if wtype == BF16:
        return (w.view(np.uint16).reshape(N, K).astype(np.uint32) << 16).view(np.float32)
    block, size = BLOCK_LAYOUT[wtype]
    b = w.reshape(-1, size)
    y = _dequantize_block32(b, wtype) if block == 32 else _dequantize_kquant(b, wtype)
    return y.reshape(N, K).astype(np.float32)
