"""Paged KV cache (fp16, passed as uint16 views) and causal grouped-query attention over it.

Caches are [num_blocks, Hkv, block_size, head_dim]. Every index the kernels follow (slots, block
table entries, query ranges) is checked here first, so a bad batch raises instead of reading or
writing outside the cache.
"""
import numpy as np

from libc.math cimport isfinite
from libc.stdint cimport int32_t, int64_t, uint16_t

from cyserve.kernels.cpu._checks cimport check_disjoint, check_rc
from cyserve.kernels.cpu.ckernels cimport cys_paged_attention, cys_reshape_and_cache
from cyserve.kernels.cpu.threads cimport current_num_threads, current_simd


cdef void reshape_and_cache_nogil(const float *k, const float *v, int64_t T, uint16_t *k_cache,
                                  uint16_t *v_cache, int64_t Hkv, int64_t BS, int64_t Dh,
                                  const int32_t *slot_mapping) noexcept nogil:
    cys_reshape_and_cache(k, v, T, k_cache, v_cache, Hkv, BS, Dh, slot_mapping,
                          current_num_threads(), current_simd())


cdef int paged_attention_nogil(const float *q, int64_t T, int64_t Hq, const uint16_t *k_cache,
                               const uint16_t *v_cache, int64_t Hkv, int64_t BS, int64_t Dh,
                               const int32_t *block_tables, int64_t max_blocks,
                               const int32_t *query_start_loc, const int32_t *context_lens,
                               int64_t S, float scale, int64_t window, float *out) noexcept nogil:
    return cys_paged_attention(q, T, Hq, k_cache, v_cache, Hkv, BS, Dh, block_tables, max_blocks,
                               query_start_loc, context_lens, S, scale, window, out,
                               current_num_threads(), current_simd())


cdef tuple _shape4(const uint16_t[:, :, :, ::1] c):
    return (c.shape[0], c.shape[1], c.shape[2], c.shape[3])


cdef int _check_caches(const uint16_t[:, :, :, ::1] k_cache,
                       const uint16_t[:, :, :, ::1] v_cache) except -1:
    cdef int d
    for d in range(4):
        if k_cache.shape[d] != v_cache.shape[d]:
            raise ValueError(f"k_cache and v_cache must have the same shape [NB, Hkv, BS, Dh], got "
                             f"{_shape4(k_cache)} and {_shape4(v_cache)}")
        if k_cache.shape[d] == 0:
            raise ValueError(f"caches must be non-empty [NB, Hkv, BS, Dh], got {_shape4(k_cache)}")
    cdef size_t nbytes = k_cache.shape[0] * k_cache.shape[1] * k_cache.shape[2] * k_cache.shape[3] * 2
    check_disjoint(&k_cache[0, 0, 0, 0], nbytes, &v_cache[0, 0, 0, 0], nbytes,
                   "k_cache and v_cache must be separate arrays")
    return 0


def _require_u16(cache, str name):
    """Cython's own message for a float16 buffer ("format string 'e'") does not say the fix."""
    if getattr(cache, "dtype", None) == np.float16:
        raise ValueError(f"{name} must be the fp16 cache viewed as uint16: pass {name}.view(np.uint16)")


def reshape_and_cache(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Store token t's k/v (float32[T, Hkv*Dh]) as fp16 at slot_mapping[t] (-1 = skip).

    k_cache, v_cache: uint16[NB, Hkv, BS, Dh] (fp16 bits); slot s is block s // BS, offset s % BS.
    """
    _require_u16(k_cache, "k_cache")
    _require_u16(v_cache, "v_cache")
    _reshape_and_cache(k, v, k_cache, v_cache, slot_mapping)


def _reshape_and_cache(const float[:, ::1] k not None, const float[:, ::1] v not None,
                       uint16_t[:, :, :, ::1] k_cache not None, uint16_t[:, :, :, ::1] v_cache not None,
                       const int32_t[::1] slot_mapping not None):
    _check_caches(k_cache, v_cache)
    cdef int64_t NB = k_cache.shape[0], Hkv = k_cache.shape[1], BS = k_cache.shape[2]
    cdef int64_t Dh = k_cache.shape[3], T = k.shape[0], t
    if k.shape[1] != Hkv * Dh or v.shape[0] != T or v.shape[1] != Hkv * Dh:
        raise ValueError(f"k and v must both be float32[T, {Hkv * Dh}] (Hkv * Dh of the cache), got "
                         f"[{T}, {k.shape[1]}] and [{v.shape[0]}, {v.shape[1]}]")
    if slot_mapping.shape[0] != T:
        raise ValueError(f"slot_mapping must be int32[{T}] (one per row of k), got [{slot_mapping.shape[0]}]")
    for t in range(T):
        if slot_mapping[t] < -1 or slot_mapping[t] >= NB * BS:
            raise ValueError(f"slot_mapping[{t}]={slot_mapping[t]} must be -1 (skip) or a slot in "
                             f"[0, {NB * BS}) (num_blocks * block_size)")
    if T == 0:
        return
    with nogil:
        reshape_and_cache_nogil(&k[0, 0], &v[0, 0], T, &k_cache[0, 0, 0, 0], &v_cache[0, 0, 0, 0],
                                Hkv, BS, Dh, &slot_mapping[0])


cdef int check_paged_batch(const int32_t[:, ::1] block_tables, const int32_t[::1] query_start_loc,
                           const int32_t[::1] context_lens, int64_t T, int64_t NB,
                           int64_t BS) except -1:
    """Every query range, context length and block the kernel will follow is in bounds."""
    cdef int64_t S = context_lens.shape[0], s, b, q_len, ctx, nblocks
    if block_tables.shape[0] != S or query_start_loc.shape[0] != S + 1:
        raise ValueError(f"with {S} sequences (len(context_lens)) block_tables must be int32[{S}, "
                         f"max_blocks] and query_start_loc int32[{S + 1}], got "
                         f"[{block_tables.shape[0]}, {block_tables.shape[1]}] and [{query_start_loc.shape[0]}]")
    if query_start_loc[0] != 0 or query_start_loc[S] != T:
        raise ValueError(f"query_start_loc must start at 0 and end at T={T}, got "
                         f"{query_start_loc[0]} .. {query_start_loc[S]}")
    for s in range(S):
        q_len = query_start_loc[s + 1] - query_start_loc[s]
        ctx = context_lens[s]
        if q_len < 0:
            raise ValueError(f"query_start_loc must be non-decreasing, but [{s}] > [{s + 1}]")
        if ctx < q_len:
            raise ValueError(f"context_lens[{s}]={ctx} is shorter than its {q_len} query rows: it "
                             f"must count every cached token including this step's")
        if q_len == 0:
            continue  # the kernel reads nothing for this sequence
        nblocks = (ctx + BS - 1) // BS
        if nblocks > block_tables.shape[1]:
            raise ValueError(f"context_lens[{s}]={ctx} needs {nblocks} blocks of {BS}, but "
                             f"block_tables has only {block_tables.shape[1]} columns")
        for b in range(nblocks):
            if block_tables[s, b] < 0 or block_tables[s, b] >= NB:
                raise ValueError(f"block_tables[{s}, {b}]={block_tables[s, b]} is not a block id in "
                                 f"[0, {NB}) (num_blocks of the cache)")
    return 0


def paged_attention(q, k_cache, v_cache, block_tables, query_start_loc, context_lens, scale,
                    out, window=0) -> None:
    """out[T, Hq*Dh] = causal GQA attention of q over the paged caches (see docs/interfaces.md).

    Sequence s owns query rows query_start_loc[s]:query_start_loc[s+1] (its last q_len tokens);
    context_lens[s] counts its cached tokens including this step's. Row i of s sits at position
    p = context_lens[s] - q_len + i and attends to keys 0..p, or with a sliding window (window > 0)
    to keys p - window + 1..p only; q head h reads KV head h // (Hq // Hkv).
    """
    _require_u16(k_cache, "k_cache")
    _require_u16(v_cache, "v_cache")
    _paged_attention(q, k_cache, v_cache, block_tables, query_start_loc, context_lens, scale, out,
                     window)


def _paged_attention(const float[:, ::1] q not None, const uint16_t[:, :, :, ::1] k_cache not None,
                     const uint16_t[:, :, :, ::1] v_cache not None,
                     const int32_t[:, ::1] block_tables not None,
                     const int32_t[::1] query_start_loc not None,
                     const int32_t[::1] context_lens not None, double scale,
                     float[:, ::1] out not None, int64_t window):
    _check_caches(k_cache, v_cache)
    cdef int64_t NB = k_cache.shape[0], Hkv = k_cache.shape[1], BS = k_cache.shape[2]
    cdef int64_t Dh = k_cache.shape[3], T = q.shape[0], S = context_lens.shape[0]
    if q.shape[1] == 0 or q.shape[1] % Dh or (q.shape[1] // Dh) % Hkv:
        raise ValueError(f"q must be float32[T, Hq * {Dh}] with Hq a positive multiple of Hkv={Hkv}, "
                         f"got [{T}, {q.shape[1]}]")
    cdef int64_t Hq = q.shape[1] // Dh
    if out.shape[0] != T or out.shape[1] != q.shape[1]:
        raise ValueError(f"out must be float32[{T}, {q.shape[1]}] like q, got [{out.shape[0]}, {out.shape[1]}]")
    if not isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if window < 0:
        raise ValueError(f"window must be 0 (no sliding window) or the positive number of keys a "
                         f"query sees, got {window}")
    check_paged_batch(block_tables, query_start_loc, context_lens, T, NB, BS)
    if T == 0:
        return
    check_disjoint(&q[0, 0], T * Hq * Dh * 4, &out[0, 0], T * Hq * Dh * 4, "out must not overlap q")
    cdef int rc
    with nogil:
        rc = paged_attention_nogil(&q[0, 0], T, Hq, &k_cache[0, 0, 0, 0], &v_cache[0, 0, 0, 0],
                                   Hkv, BS, Dh, &block_tables[0, 0], block_tables.shape[1],
                                   &query_start_loc[0], &context_lens[0], S, <float>scale,
                                   window, &out[0, 0])
    check_rc(rc, "paged_attention")
