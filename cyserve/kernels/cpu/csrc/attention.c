/* Paged fp16 KV cache: writing new keys/values (reshape_and_cache) and causal grouped-query
 * attention over it (paged_attention) for a flattened batch of decodes and prefill chunks.
 *
 * Cache layout [num_blocks, Hkv, BS, Dh]: the keys of one (block, kv head) are contiguous, so
 * walking a sequence block by block reads BS * Dh * 2 contiguous bytes per block and needs no
 * division per key. Softmax is exact two-pass (scores, max, exp-sum, weighted V), per query row.
 * Work items are (query-row tile, q head) pairs, scheduled dynamically because a prefill tile of
 * a long sequence costs far more than one decode row.
 */
#include <math.h>
#include <stdlib.h>

#include "cys_kernels.h"
#include "ggml_blocks.h"
#include "simd_avx2.h"

#define CYS_ATTN_ROWS_PER_TILE 16 /* query rows per work item: parallelism for long prefills */
#define CYS_ATTN_PAR_MIN_MACS (1 << 16)
#define CYS_CACHE_PAR_MIN_ELEMS (1 << 16)

/* ---- reshape_and_cache ---- */

static void f32_to_f16_scalar(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = cys_fp32_to_fp16(src[i]);
}

CYS_AVX2 static void f32_to_f16_avx2(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    f32_to_f16_scalar(src + i, dst + i, n - i);
}

void cys_reshape_and_cache(const float *k, const float *v, int64_t T, uint16_t *k_cache,
                           uint16_t *v_cache, int64_t Hkv, int64_t BS, int64_t Dh,
                           const int32_t *slot_mapping, int nthreads, int simd) {
    simd = simd && cys_cpu_has_avx2();
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && T * Hkv * Dh >= CYS_CACHE_PAR_MIN_ELEMS)
    for (int64_t t = 0; t < T; t++) {
        const int64_t slot = slot_mapping[t];
        if (slot < 0) continue; /* padding token: nothing to store */
        const int64_t block = slot / BS, off = slot % BS;
        for (int64_t h = 0; h < Hkv; h++) {
            const int64_t src = (t * Hkv + h) * Dh, dst = ((block * Hkv + h) * BS + off) * Dh;
            if (simd) {
                f32_to_f16_avx2(k + src, k_cache + dst, Dh);
                f32_to_f16_avx2(v + src, v_cache + dst, Dh);
            } else {
                f32_to_f16_scalar(k + src, k_cache + dst, Dh);
                f32_to_f16_scalar(v + src, v_cache + dst, Dh);
            }
        }
    }
}

/* ---- paged_attention ---- */

typedef struct {
    const uint16_t *k_cache, *v_cache;
    int64_t Hkv, BS, Dh;
    float scale;
} attn_cache;

/* One query row of one head: q (f32[Dh]) attends to keys 0..nkeys-1 of the sequence whose block
 * table is bt, through KV head kvh, and writes out (f32[Dh]). */
typedef struct {
    const int32_t *bt;
    int64_t kvh, nkeys;
    const float *q;
    float *out;
} attn_row;

/* First fp16 element of (block b of the sequence, kv head) in a cache. */
static inline const uint16_t *block_base(const uint16_t *cache, const attn_cache *c,
                                         const attn_row *r, int64_t b) {
    return cache + ((int64_t)r->bt[b] * c->Hkv + r->kvh) * c->BS * c->Dh;
}

/* scores: scratch of >= nkeys floats; acc: scratch of >= Dh floats. */
static void attend_row_scalar(const attn_cache *c, const attn_row *r, float *scores, float *acc) {
    const int64_t Dh = c->Dh, BS = c->BS, nkeys = r->nkeys;
    float mx = -INFINITY;
    for (int64_t j0 = 0; j0 < nkeys; j0 += BS) {
        const uint16_t *kb = block_base(c->k_cache, c, r, j0 / BS);
        for (int64_t j = j0; j < nkeys && j < j0 + BS; j++) {
            const uint16_t *kr = kb + (j - j0) * Dh;
            float d = 0.0f;
            for (int64_t e = 0; e < Dh; e++) d += r->q[e] * cys_fp16_to_fp32(kr[e]);
            scores[j] = d * c->scale;
            if (scores[j] > mx) mx = scores[j];
        }
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < nkeys; j++) {
        scores[j] = expf(scores[j] - mx);
        sum += scores[j];
    }
    for (int64_t e = 0; e < Dh; e++) acc[e] = 0.0f;
    for (int64_t j0 = 0; j0 < nkeys; j0 += BS) {
        const uint16_t *vb = block_base(c->v_cache, c, r, j0 / BS);
        for (int64_t j = j0; j < nkeys && j < j0 + BS; j++) {
            const uint16_t *vr = vb + (j - j0) * Dh;
            for (int64_t e = 0; e < Dh; e++) acc[e] += scores[j] * cys_fp16_to_fp32(vr[e]);
        }
    }
    const float inv = 1.0f / sum;
    for (int64_t e = 0; e < Dh; e++) r->out[e] = acc[e] * inv;
}

/* Dh % 8 == 0; scores: scratch of >= nkeys floats. */
CYS_AVX2 static void attend_row_avx2(const attn_cache *c, const attn_row *r, float *scores) {
    const int64_t Dh = c->Dh, BS = c->BS, nkeys = r->nkeys;
    /* scores = scale * q.k, two FMA chains per key */
    for (int64_t j0 = 0; j0 < nkeys; j0 += BS) {
        const uint16_t *kb = block_base(c->k_cache, c, r, j0 / BS);
        for (int64_t j = j0; j < nkeys && j < j0 + BS; j++) {
            const uint16_t *kr = kb + (j - j0) * Dh;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            int64_t e = 0;
            for (; e + 16 <= Dh; e += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r->q + e),
                                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kr + e))), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r->q + e + 8),
                                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kr + e + 8))), a1);
            }
            if (e < Dh)
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r->q + e),
                                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kr + e))), a0);
            scores[j] = cys_hsum256(_mm256_add_ps(a0, a1)) * c->scale;
        }
    }
    /* max, then exp and sum in place */
    __m256 vmx = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= nkeys; j += 8) vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(scores + j));
    float mx = -INFINITY;
    {
        float lanes[8];
        _mm256_storeu_ps(lanes, vmx);
        for (int i = 0; i < 8; i++) mx = lanes[i] > mx ? lanes[i] : mx;
    }
    for (; j < nkeys; j++) mx = scores[j] > mx ? scores[j] : mx;
    const __m256 vmax = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    for (j = 0; j + 8 <= nkeys; j += 8) {
        const __m256 p = cys_exp256(_mm256_sub_ps(_mm256_loadu_ps(scores + j), vmax));
        _mm256_storeu_ps(scores + j, p);
        vsum = _mm256_add_ps(vsum, p);
    }
    float sum = cys_hsum256(vsum);
    for (; j < nkeys; j++) {
        scores[j] = expf(scores[j] - mx);
        sum += scores[j];
    }
    /* out = sum_j p_j v_j / sum: 32 output dims (one cache line of fp16 V) in registers at a time */
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (int64_t d0 = 0; d0 < Dh;) {
        const int nv = Dh - d0 >= 32 ? 4 : 1; /* 4 vectors, or one for an 8-wide remainder */
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (int64_t j0 = 0; j0 < nkeys; j0 += BS) {
            const uint16_t *vb = block_base(c->v_cache, c, r, j0 / BS) + d0;
            for (int64_t jj = j0; jj < nkeys && jj < j0 + BS; jj++) {
                const __m256 p = _mm256_broadcast_ss(scores + jj);
                const uint16_t *vr = vb + (jj - j0) * Dh;
                for (int v = 0; v < nv; v++)
                    acc[v] = _mm256_fmadd_ps(
                        p, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vr + 8 * v))), acc[v]);
            }
        }
        for (int v = 0; v < nv; v++) _mm256_storeu_ps(r->out + d0 + 8 * v, _mm256_mul_ps(acc[v], inv));
        d0 += 8 * nv;
    }
}

typedef struct {
    int32_t seq, row0, row1; /* query rows [row0, row1) of sequence seq, counted from its first */
} attn_tile;

int cys_paged_attention(const float *q, int64_t T, int64_t Hq, const uint16_t *k_cache,
                        const uint16_t *v_cache, int64_t Hkv, int64_t BS, int64_t Dh,
                        const int32_t *block_tables, int64_t max_blocks,
                        const int32_t *query_start_loc, const int32_t *context_lens, int64_t S,
                        float scale, float *out, int nthreads, int simd) {
    (void)T;
    int64_t ntiles = 0, max_ctx = 1, work = 0;
    for (int64_t s = 0; s < S; s++) {
        const int64_t q_len = query_start_loc[s + 1] - query_start_loc[s];
        ntiles += (q_len + CYS_ATTN_ROWS_PER_TILE - 1) / CYS_ATTN_ROWS_PER_TILE;
        if (context_lens[s] > max_ctx) max_ctx = context_lens[s];
        work += q_len * context_lens[s];
    }
    if (ntiles == 0) return CYS_OK;
    attn_tile *tiles = malloc((size_t)ntiles * sizeof(attn_tile));
    if (!tiles) return CYS_ERR_NOMEM;
    int64_t n = 0;
    for (int64_t s = 0; s < S; s++) {
        const int32_t q_len = query_start_loc[s + 1] - query_start_loc[s];
        for (int32_t r0 = 0; r0 < q_len; r0 += CYS_ATTN_ROWS_PER_TILE) {
            const int32_t r1 = r0 + CYS_ATTN_ROWS_PER_TILE < q_len ? r0 + CYS_ATTN_ROWS_PER_TILE : q_len;
            tiles[n++] = (attn_tile){(int32_t)s, r0, r1};
        }
    }
    const attn_cache cache = {k_cache, v_cache, Hkv, BS, Dh, scale};
    const int64_t group = Hq / Hkv, nitems = ntiles * Hq;
    simd = simd && cys_cpu_has_avx2() && Dh % 8 == 0;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && nitems > 1 && work * Hq * Dh >= CYS_ATTN_PAR_MIN_MACS)
    {
        float *scratch = malloc((size_t)(max_ctx + Dh) * sizeof(float));
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < nitems; it++) {
            if (!scratch) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            const attn_tile tile = tiles[it / Hq];
            const int64_t h = it % Hq, s = tile.seq;
            const int64_t q_len = query_start_loc[s + 1] - query_start_loc[s];
            for (int64_t i = tile.row0; i < tile.row1; i++) {
                const int64_t row = query_start_loc[s] + i;
                const attn_row r = {
                    .bt = block_tables + s * max_blocks,
                    .kvh = h / group,
                    .nkeys = context_lens[s] - q_len + i + 1, /* causal: up to its own position */
                    .q = q + (row * Hq + h) * Dh,
                    .out = out + (row * Hq + h) * Dh,
                };
                if (simd) attend_row_avx2(&cache, &r, scratch);
                else attend_row_scalar(&cache, &r, scratch, scratch + max_ctx);
            }
        }
        free(scratch);
    }
    free(tiles);
    return failed ? CYS_ERR_NOMEM : CYS_OK;
}
