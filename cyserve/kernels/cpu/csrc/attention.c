/* Paged fp16 KV cache: writing new keys/values (reshape_and_cache) and causal grouped-query
 * attention over it (paged_attention) for a flattened batch of decodes and prefill chunks.
 *
 * Cache layout [num_blocks, Hkv, BS, Dh]: the keys of one (block, kv head) are contiguous, so
 * walking a sequence block by block reads BS * Dh * 2 contiguous bytes per block and needs no
 * division per key. Work items are (sequence, kv head, query-row tile), scheduled dynamically
 * because a prefill tile of a long sequence costs far more than one decode row.
 */
#include <math.h>
#include <stdlib.h>

#include "cys_kernels.h"
#include "ggml_blocks.h"
#include "simd_avx2.h"

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

/* ---- paged_attention ----
 *
 * A work item is (sequence, kv head, tile of query rows): its M = rows * G queries (G = Hq / Hkv,
 * every q head that reads this kv head) walk the sequence's keys together in chunks of
 * CYS_ATTN_KEYS_PER_CHUNK. Each chunk of fp16 keys is converted to f32 once into per-thread
 * scratch and used by all M queries, then the same for the values, so the cache is read and
 * converted once per group instead of once per q head. Softmax is online (flash-style): a running
 * max and sum per query, with the partial output rescaled when the max grows, so scratch does not
 * depend on the context length. Causality: query row i of a sequence with q_len rows and ctx keys
 * sits at position ctx - q_len + i and sees keys 0..that position; rows only score the keys they see.
 * A sliding window (window > 0, the local layers of Gemma 3) narrows that to the last `window`
 * positions, [p - window + 1, p]: a tile starts at the first key its first row sees, so a decode
 * over a long context reads `window` keys, not the context.
 */

#define CYS_ATTN_KEYS_PER_CHUNK 64   /* f32 chunk of 64 x Dh=64 keys: 16 KiB, stays in L1 */
#define CYS_ATTN_QUERIES_PER_ITEM 48 /* rows * G per work item; at least one row */
#define CYS_ATTN_PAR_MIN_MACS (1 << 16)
#define CYS_ATTN_KC CYS_ATTN_KEYS_PER_CHUNK

typedef struct {
    const uint16_t *k_cache, *v_cache;
    int64_t Hkv, BS, Dh, G;
    float scale;
    int64_t window; /* 0: every earlier key; else the last `window` positions, the row's own included */
} attn_cache;

/* Query rows [row0, row0 + nrows) of one sequence, all G q heads of kv head kvh. */
typedef struct {
    const int32_t *bt;  /* the sequence's block table */
    int64_t kvh;
    int64_t pos0;       /* position of the first row: it sees keys 0..pos0 */
    int64_t nrows;
    const float *q;     /* q of (first row, q head kvh * G); rows are row_stride apart */
    float *out;         /* same layout as q */
    int64_t row_stride; /* Hq * Dh */
} attn_tile;

/* Per-thread scratch, sized for the largest tile (m_max queries). */
typedef struct {
    float *kv;    /* [KC, Dh]: the chunk's keys, then its values, as f32 */
    float *s;     /* [m_max, KC]: scores, then probabilities */
    float *acc;   /* [m_max, Dh]: unnormalised output */
    float *mx;    /* [m_max]: running max of the scores */
    float *sum;   /* [m_max]: running sum of exp(score - mx) */
    float *alpha; /* [m_max]: this chunk's rescale of acc */
} attn_scratch;

/* First key the tile's row r sees: 0, or the start of its window. */
static inline int64_t first_key(const attn_cache *c, const attn_tile *t, int64_t r) {
    const int64_t lo = t->pos0 + r - c->window + 1;
    return c->window > 0 && lo > 0 ? lo : 0;
}

/* Keys row r of the tile sees inside chunk [j0, j0 + n): [j0 + *first, j0 + *first + count). */
static inline int64_t visible(const attn_cache *c, const attn_tile *t, int64_t r, int64_t j0,
                              int64_t n, int64_t *first) {
    const int64_t lo = first_key(c, t, r) - j0, hi = t->pos0 + r + 1 - j0;
    *first = lo > 0 ? lo : 0;
    const int64_t end = hi < n ? hi : n;
    return end > *first ? end - *first : 0;
}

static void f16_to_f32_scalar(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = cys_fp16_to_fp32(src[i]);
}

CYS_AVX2 static void f16_to_f32_avx2(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    f16_to_f32_scalar(src + i, dst + i, n - i);
}

/* dst[n, Dh] = f32 rows j0..j0+n of the sequence's cache for kv head kvh, one run per block. */
static void load_chunk(const attn_cache *c, const attn_tile *t, const uint16_t *cache, int64_t j0,
                       int64_t n, float *dst, int simd) {
    const int64_t BS = c->BS, Dh = c->Dh;
    for (int64_t j = j0; j < j0 + n;) {
        const int64_t off = j % BS;
        const int64_t run = BS - off < j0 + n - j ? BS - off : j0 + n - j;
        const uint16_t *src = cache + (((int64_t)t->bt[j / BS] * c->Hkv + t->kvh) * BS + off) * Dh;
        if (simd) f16_to_f32_avx2(src, dst + (j - j0) * Dh, run * Dh);
        else f16_to_f32_scalar(src, dst + (j - j0) * Dh, run * Dh);
        j += run;
    }
}

/* ---- scalar twin ---- */

static void scores_scalar(const attn_cache *c, const attn_tile *t, int64_t r, int64_t n,
                          attn_scratch *w) {
    const int64_t Dh = c->Dh, G = c->G;
    for (int64_t g = 0; g < G; g++) {
        const float *q = t->q + r * t->row_stride + g * Dh;
        float *s = w->s + (r * G + g) * CYS_ATTN_KC;
        for (int64_t j = 0; j < n; j++) {
            const float *k = w->kv + j * Dh;
            float d = 0.0f;
            for (int64_t e = 0; e < Dh; e++) d += q[e] * k[e];
            s[j] = d * c->scale;
        }
    }
}

static void pv_scalar(const attn_cache *c, int64_t m, int64_t n, attn_scratch *w) {
    const int64_t Dh = c->Dh;
    float *acc = w->acc + m * Dh;
    const float *p = w->s + m * CYS_ATTN_KC, a = w->alpha[m];
    for (int64_t e = 0; e < Dh; e++) acc[e] *= a;
    for (int64_t j = 0; j < n; j++) {
        const float *v = w->kv + j * Dh;
        for (int64_t e = 0; e < Dh; e++) acc[e] += p[j] * v[e];
    }
}

/* ---- AVX2 (Dh % 8 == 0) ---- */

/* Four dot products a[0..3] (8 partial sums each) -> their 4 totals in one vector: three hadds
 * and one add instead of four horizontal sums. */
CYS_AVX2_INLINE __m128 hsum4_256(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* Scores of nq (1..3, a constant after inlining) consecutive q heads of one row against n keys,
 * four keys per step: 4 * nq independent FMA chains, each key vector loaded once for all nq. */
CYS_AVX2_INLINE void scores_nq_avx2(const int nq, const float *q, int64_t Dh, const float *kf,
                                    int64_t n, float scale, float *s) {
    const __m128 vscale = _mm_set1_ps(scale);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *k0 = kf + j * Dh;
        __m256 a[3][4];
        for (int i = 0; i < nq; i++)
            for (int u = 0; u < 4; u++) a[i][u] = _mm256_setzero_ps();
        for (int64_t e = 0; e < Dh; e += 8) {
            __m256 x[4];
            for (int u = 0; u < 4; u++) x[u] = _mm256_loadu_ps(k0 + u * Dh + e);
            for (int i = 0; i < nq; i++) {
                const __m256 qv = _mm256_loadu_ps(q + i * Dh + e);
                for (int u = 0; u < 4; u++) a[i][u] = _mm256_fmadd_ps(qv, x[u], a[i][u]);
            }
        }
        for (int i = 0; i < nq; i++)
            _mm_storeu_ps(s + i * CYS_ATTN_KC + j,
                          _mm_mul_ps(hsum4_256(a[i][0], a[i][1], a[i][2], a[i][3]), vscale));
    }
    for (; j < n; j++) {
        const float *k0 = kf + j * Dh;
        __m256 a[3];
        for (int i = 0; i < nq; i++) a[i] = _mm256_setzero_ps();
        for (int64_t e = 0; e < Dh; e += 8) {
            const __m256 x0 = _mm256_loadu_ps(k0 + e);
            for (int i = 0; i < nq; i++) a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i * Dh + e), x0, a[i]);
        }
        for (int i = 0; i < nq; i++) s[i * CYS_ATTN_KC + j] = cys_hsum256(a[i]) * scale;
    }
}

CYS_AVX2 static void scores_avx2(const attn_cache *c, const attn_tile *t, int64_t r, int64_t n,
                                 attn_scratch *w) {
    const int64_t Dh = c->Dh, G = c->G;
    for (int64_t g = 0; g < G; g += 3) {
        const float *q = t->q + r * t->row_stride + g * Dh;
        float *s = w->s + (r * G + g) * CYS_ATTN_KC;
        switch (G - g >= 3 ? 3 : G - g) {
        case 3: scores_nq_avx2(3, q, Dh, w->kv, n, c->scale, s); break;
        case 2: scores_nq_avx2(2, q, Dh, w->kv, n, c->scale, s); break;
        default: scores_nq_avx2(1, q, Dh, w->kv, n, c->scale, s); break;
        }
    }
}

/* acc[m] = alpha[m] * acc[m] + sum_j p_mj v_j for nq (1..3) queries m0.. of one row, 16 output
 * dims at a time: each value vector is loaded once for all nq queries. */
CYS_AVX2_INLINE void pv_nq_avx2(const int nq, int64_t Dh, int64_t m0, int64_t n, attn_scratch *w) {
    for (int64_t d0 = 0; d0 < Dh;) {
        const int nv = Dh - d0 >= 16 ? 2 : 1;
        __m256 a[3][2];
        for (int i = 0; i < nq; i++) {
            const __m256 alpha = _mm256_set1_ps(w->alpha[m0 + i]);
            for (int v = 0; v < nv; v++)
                a[i][v] = _mm256_mul_ps(_mm256_loadu_ps(w->acc + (m0 + i) * Dh + d0 + 8 * v), alpha);
        }
        const float *vr = w->kv + d0, *p = w->s + m0 * CYS_ATTN_KC;
        for (int64_t j = 0; j < n; j++, vr += Dh) {
            const __m256 v0 = _mm256_loadu_ps(vr), v1 = nv == 2 ? _mm256_loadu_ps(vr + 8) : v0;
            for (int i = 0; i < nq; i++) {
                const __m256 pj = _mm256_broadcast_ss(p + i * CYS_ATTN_KC + j);
                a[i][0] = _mm256_fmadd_ps(pj, v0, a[i][0]);
                if (nv == 2) a[i][1] = _mm256_fmadd_ps(pj, v1, a[i][1]);
            }
        }
        for (int i = 0; i < nq; i++)
            for (int v = 0; v < nv; v++) _mm256_storeu_ps(w->acc + (m0 + i) * Dh + d0 + 8 * v, a[i][v]);
        d0 += 8 * nv;
    }
}

/* PV update of the G queries of tile row r over its n visible keys. */
CYS_AVX2 static void pv_avx2(const attn_cache *c, int64_t r, int64_t n, attn_scratch *w) {
    const int64_t Dh = c->Dh, G = c->G;
    for (int64_t g = 0; g < G; g += 3) {
        const int64_t m0 = r * G + g;
        switch (G - g >= 3 ? 3 : G - g) {
        case 3: pv_nq_avx2(3, Dh, m0, n, w); break;
        case 2: pv_nq_avx2(2, Dh, m0, n, w); break;
        default: pv_nq_avx2(1, Dh, m0, n, w); break;
        }
    }
}

CYS_AVX2 static float max_avx2(const float *x, int64_t n) {
    __m256 vm = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
    float lanes[8], mx = -INFINITY;
    _mm256_storeu_ps(lanes, vm);
    for (int i = 0; i < 8; i++) mx = lanes[i] > mx ? lanes[i] : mx;
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

/* p[j] = exp(p[j] - mx) in place; returns their sum. */
CYS_AVX2 static float exp_sum_avx2(float *p, int64_t n, float mx) {
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 vs = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = cys_exp256(_mm256_sub_ps(_mm256_loadu_ps(p + j), vmx));
        _mm256_storeu_ps(p + j, e);
        vs = _mm256_add_ps(vs, e);
    }
    float sum = cys_hsum256(vs);
    for (; j < n; j++) {
        p[j] = expf(p[j] - mx);
        sum += p[j];
    }
    return sum;
}

/* ---- shared driver ---- */

/* Online-softmax step of query m over its n visible scores p[0..n): p becomes exp(p - new max),
 * the running sum absorbs them, and alpha[m] says how much acc[m] shrinks. */
static void softmax_update(attn_scratch *w, int64_t m, float *p, int64_t n, float chunk_max,
                           int simd) {
    const float old = w->mx[m], mx = chunk_max > old ? chunk_max : old;
    /* a row whose scores are all -inf so far keeps acc = 0: subtract 0, not -inf (no NaN) */
    const float ref = mx == -INFINITY ? 0.0f : mx;
    float sum;
    if (simd) {
        sum = exp_sum_avx2(p, n, ref);
    } else {
        sum = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            p[j] = expf(p[j] - ref);
            sum += p[j];
        }
    }
    const float alpha = expf(old - ref); /* old = -inf on the first chunk: alpha = 0 */
    w->alpha[m] = alpha;
    w->sum[m] = w->sum[m] * alpha + sum;
    w->mx[m] = mx;
}

static void attend_tile(const attn_cache *c, const attn_tile *t, attn_scratch *w, int simd) {
    const int64_t Dh = c->Dh, G = c->G, M = t->nrows * G;
    const int64_t nkeys = t->pos0 + t->nrows; /* keys the last row sees */
    for (int64_t m = 0; m < M; m++) {
        w->mx[m] = -INFINITY;
        w->sum[m] = 0.0f;
    }
    for (int64_t i = 0; i < M * Dh; i++) w->acc[i] = 0.0f;
    /* A row's visible keys start `first` keys into the chunk: the same scratch with kv moved there,
     * so the score and PV loops see a dense run of nv keys either way. */
    attn_scratch at = *w;
    for (int64_t j0 = first_key(c, t, 0); j0 < nkeys; j0 += CYS_ATTN_KC) {
        const int64_t n = nkeys - j0 < CYS_ATTN_KC ? nkeys - j0 : CYS_ATTN_KC;
        int64_t first;
        load_chunk(c, t, c->k_cache, j0, n, w->kv, simd);
        for (int64_t r = 0; r < t->nrows; r++) {
            const int64_t nv = visible(c, t, r, j0, n, &first);
            if (nv == 0) continue;
            at.kv = w->kv + first * Dh;
            if (simd) scores_avx2(c, t, r, nv, &at);
            else scores_scalar(c, t, r, nv, &at);
            for (int64_t m = r * G; m < (r + 1) * G; m++) {
                float *p = w->s + m * CYS_ATTN_KC, cmax = -INFINITY;
                if (simd) cmax = max_avx2(p, nv);
                else
                    for (int64_t j = 0; j < nv; j++) cmax = p[j] > cmax ? p[j] : cmax;
                softmax_update(w, m, p, nv, cmax, simd);
            }
        }
        load_chunk(c, t, c->v_cache, j0, n, w->kv, simd);
        for (int64_t r = 0; r < t->nrows; r++) {
            const int64_t nv = visible(c, t, r, j0, n, &first);
            if (nv == 0) continue;
            at.kv = w->kv + first * Dh;
            if (simd) pv_avx2(c, r, nv, &at);
            else
                for (int64_t m = r * G; m < (r + 1) * G; m++) pv_scalar(c, m, nv, &at);
        }
    }
    for (int64_t r = 0; r < t->nrows; r++)
        for (int64_t g = 0; g < G; g++) {
            const int64_t m = r * G + g;
            const float inv = 1.0f / w->sum[m];
            float *o = t->out + r * t->row_stride + g * Dh;
            for (int64_t e = 0; e < Dh; e++) o[e] = w->acc[m * Dh + e] * inv;
        }
}

typedef struct {
    int32_t seq, kvh, row0, row1; /* query rows [row0, row1) of seq, counted from its first */
} attn_item;

/* Rows per work item: enough queries to reuse each converted chunk, few enough for parallelism. */
static int64_t rows_per_item(int64_t G) {
    const int64_t r = CYS_ATTN_QUERIES_PER_ITEM / G;
    return r > 0 ? r : 1;
}

static int alloc_scratch(attn_scratch *w, int64_t m_max, int64_t Dh) {
    const int64_t floats = CYS_ATTN_KC * Dh + m_max * CYS_ATTN_KC + m_max * Dh + 3 * m_max;
    float *buf = malloc((size_t)floats * sizeof(float));
    if (!buf) return 0;
    w->kv = buf;
    w->s = w->kv + CYS_ATTN_KC * Dh;
    w->acc = w->s + m_max * CYS_ATTN_KC;
    w->mx = w->acc + m_max * Dh;
    w->sum = w->mx + m_max;
    w->alpha = w->sum + m_max;
    return 1;
}

int cys_paged_attention(const float *q, int64_t T, int64_t Hq, const uint16_t *k_cache,
                        const uint16_t *v_cache, int64_t Hkv, int64_t BS, int64_t Dh,
                        const int32_t *block_tables, int64_t max_blocks,
                        const int32_t *query_start_loc, const int32_t *context_lens, int64_t S,
                        float scale, int64_t window, float *out, int nthreads, int simd) {
    (void)T;
    const int64_t G = Hq / Hkv, tile_rows = rows_per_item(G);
    int64_t nitems = 0, work = 0;
    for (int64_t s = 0; s < S; s++) {
        const int64_t q_len = query_start_loc[s + 1] - query_start_loc[s];
        nitems += (q_len + tile_rows - 1) / tile_rows * Hkv;
        work += q_len * (window > 0 && window < context_lens[s] ? window : context_lens[s]);
    }
    if (nitems == 0) return CYS_OK;
    attn_item *items = malloc((size_t)nitems * sizeof(attn_item));
    if (!items) return CYS_ERR_NOMEM;
    int64_t n = 0;
    for (int64_t s = 0; s < S; s++) {
        const int32_t q_len = query_start_loc[s + 1] - query_start_loc[s];
        /* last tiles first: they see the most keys, so the dynamic schedule ends balanced */
        const int32_t ntiles = (int32_t)((q_len + tile_rows - 1) / tile_rows);
        for (int32_t i = ntiles - 1; i >= 0; i--) {
            const int32_t r0 = (int32_t)(i * tile_rows);
            const int32_t r1 = r0 + tile_rows < q_len ? r0 + (int32_t)tile_rows : q_len;
            for (int32_t h = 0; h < Hkv; h++) items[n++] = (attn_item){(int32_t)s, h, r0, r1};
        }
    }
    const attn_cache cache = {k_cache, v_cache, Hkv, BS, Dh, G, scale, window};
    simd = simd && cys_cpu_has_avx2() && Dh % 8 == 0;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && nitems > 1 && work * Hq * Dh >= CYS_ATTN_PAR_MIN_MACS)
    {
        attn_scratch w;
        const int ok = alloc_scratch(&w, tile_rows * G, Dh);
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < nitems; it++) {
            if (!ok) continue;
            const attn_item item = items[it];
            const int64_t s = item.seq, q_len = query_start_loc[s + 1] - query_start_loc[s];
            const int64_t row = query_start_loc[s] + item.row0;
            const attn_tile t = {
                .bt = block_tables + s * max_blocks,
                .kvh = item.kvh,
                .pos0 = context_lens[s] - q_len + item.row0,
                .nrows = item.row1 - item.row0,
                .q = q + (row * Hq + item.kvh * G) * Dh,
                .out = out + (row * Hq + item.kvh * G) * Dh,
                .row_stride = Hq * Dh,
            };
            attend_tile(&cache, &t, &w, simd);
        }
        if (ok) free(w.kv);
    }
    free(items);
    return failed ? CYS_ERR_NOMEM : CYS_OK;
}
