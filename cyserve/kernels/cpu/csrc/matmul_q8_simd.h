/* The SIMD kernels of matmul_q8.c, instantiated once per instruction-set level (included with
 * Q8V(name), Q8V_INLINE, Q8V_FN, Q8V_ISA and Q8V_TILE_C defined; see matmul_q8.c). The levels
 * differ in the block dot (AVX2 maddubs + madd, VNNI vpdpbusd: the same exact integers) and in
 * the GEMM tile width (AVX-512 has 32 vector registers); every output element sees the same
 * float operations in the same order on every level, so a row's bits do not depend on it.
 * No include guard: meant to be included more than once. */

/* ---- AVX2 building blocks ---- */

/* 8 int32 lanes of sum(a * b) over byte quadruples (a unsigned, b signed), as floats: the same
 * exact integers on every level. AVX2 has no i16 saturation to fear: |a| <= 128 and |b| <= 127,
 * so a pair sums to at most 32512. */
Q8V_INLINE __m256 Q8V(dot_u8s8)(__m256i a, __m256i b) {
#if Q8V_ISA == 3 /* CYS_ISA_AVX512_VNNI (an enum: #if needs the number) */
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b));
#elif Q8V_ISA == 2 /* CYS_ISA_AVX_VNNI */
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, b));
#else
    const __m256i p16 = _mm256_maddubs_epi16(a, b);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
#endif
}

/* 16 packed nibbles -> 32 bytes 0..15 (low nibbles are elements 0..15, high 16..31). */
Q8V_INLINE __m256i Q8V(unpack_q4)(const uint8_t *qs) {
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    const __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

/* One weight block as the dot products want it: Q4 / Q5 -> (unsigned codes, unused);
 * Q8_0 -> (|q|, q). */
Q8V_INLINE void Q8V(load_wblock)(const int wtype, const uint8_t *p, __m256i *u, __m256i *sgn,
                                 float *d, float *m) {
    if (wtype == CYS_TYPE_Q4_1 || wtype == CYS_TYPE_Q5_1) {
        int32_t dm;
        memcpy(&dm, p, 4);
        const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(dm));
        *d = _mm_cvtss_f32(f);
        *m = _mm_cvtss_f32(_mm_movehdup_ps(f));
    } else {
        *d = _cvtsh_ss(cys_read_half(p));
        *m = wtype == CYS_TYPE_Q4_0 ? -8.0f * *d : wtype == CYS_TYPE_Q5_0 ? -16.0f * *d : 0.0f;
    }
    if (wtype == CYS_TYPE_Q8_0) {
        *sgn = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q8_0, qs)));
        *u = _mm256_sign_epi8(*sgn, *sgn);
    } else if (is_q5(wtype)) {
        *u = cys_unpack_q5(p + qh_offset(wtype), p + qs_offset(wtype));
    } else {
        *u = Q8V(unpack_q4)(p + qs_offset(wtype));
    }
}

/* The x operand of one block dot: Q8_0 moves the weight's sign onto x (the maddubs sign trick). */
Q8V_INLINE __m256 Q8V(block_dot)(const int wtype, __m256i u, __m256i sgn, __m256i x) {
    return Q8V(dot_u8s8)(u, wtype == CYS_TYPE_Q8_0 ? _mm256_sign_epi8(x, sgn) : x);
}

/* ---- AVX2 GEMV: nr rows x nt tokens, blocks straight from the weights into registers ---- */

/* The offset terms sum_b m_w * s_x of a row, folded into its lanes 8 blocks a step: exactly the
 * operations, in the order, of the GEMM tile, so a token's output has the same bits whatever T
 * its batch has (see tests/kernels/test_batch_invariance.py). m holds the row's ds block factors. */
Q8V_INLINE __m256 Q8V(fold_offsets)(__m256 acc, const float *m, const float *s, int64_t ds) {
    for (int64_t b = 0; b < ds; b += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(m + b), _mm256_loadu_ps(s + b), acc);
    return acc;
}

Q8V_INLINE void Q8V(gemv_tile)(const int wtype, const int nr, const int nt, const uint8_t *w,
                               int64_t rb, const act_t *a, float *out, int64_t N, float *mrow) {
    const int64_t gb = cys_group_bytes(wtype), K = a->K, nb = a->nb, ds = a->ds;
    __m256 acc[4][4];
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i xv[4];
        for (int t = 0; t < nt; t++) xv[t] = _mm256_loadu_si256((const __m256i *)(a->q + t * K + b * QK));
        for (int r = 0; r < nr; r++) {
            __m256i u, sgn = _mm256_setzero_si256();
            float dw, mw;
            /* measured ~15% on DRAM-bound weights, neutral on cached ones; a prefetch past the
             * end of w never faults */
            if (Q8_GEMV_PF_ROWS)
                _mm_prefetch((const char *)(w + (r + Q8_GEMV_PF_ROWS) * rb + b * gb), _MM_HINT_T0);
            Q8V(load_wblock)(wtype, w + r * rb + b * gb, &u, &sgn, &dw, &mw);
            if (wtype != CYS_TYPE_Q8_0) mrow[r * ds + b] = mw;
            for (int t = 0; t < nt; t++) {
                const __m256 dd = _mm256_set1_ps(dw * a->d[t * ds + b]);
                acc[r][t] = _mm256_fmadd_ps(Q8V(block_dot)(wtype, u, sgn, xv[t]), dd, acc[r][t]);
            }
        }
    }
    if (wtype != CYS_TYPE_Q8_0)
        for (int r = 0; r < nr; r++) {
            for (int64_t b = nb; b < ds; b++) mrow[r * ds + b] = 0.0f;
            for (int t = 0; t < nt; t++) acc[r][t] = Q8V(fold_offsets)(acc[r][t], mrow + r * ds, a->s + t * ds, ds);
        }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) out[t * N + r] = cys_hsum256(acc[r][t]);
}


Q8V_INLINE void Q8V(gemv_rows)(const int wtype, const int nt, const int R, const uint8_t *w,
                               int64_t rb, const act_t *a, int64_t n0, int64_t n1, float *out,
                               int64_t N) {
    int64_t n = n0;
    float mrow[4 * a->ds]; /* the tile's block offset factors: 4 rows of ds (K / 32 rounded up to 8) */
    for (; n + R <= n1; n += R) Q8V(gemv_tile)(wtype, R, nt, w + n * rb, rb, a, out + n, N, mrow);
    for (; n < n1; n++) Q8V(gemv_tile)(wtype, 1, nt, w + n * rb, rb, a, out + n, N, mrow);
}

Q8V_INLINE void Q8V(gemv_wtype)(const int wtype, const act_t *a, int64_t T, const uint8_t *w,
                                int64_t rb, int64_t N, float *out) {
    const int64_t nchunks = (N + Q8_GEMV_ROW_CHUNK - 1) / Q8_GEMV_ROW_CHUNK;
    const int stream = N * rb > Q8_GEMV_STREAM_BYTES;
#pragma omp for schedule(static) nowait /* the region's end is the barrier */
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t n0 = c * Q8_GEMV_ROW_CHUNK;
        const int64_t n1 = n0 + Q8_GEMV_ROW_CHUNK < N ? n0 + Q8_GEMV_ROW_CHUNK : N;
        switch (T) {
        case 4: Q8V(gemv_rows)(wtype, 4, GEMV_ROWS(4), w, rb, a, n0, n1, out, N); break;
        case 3: Q8V(gemv_rows)(wtype, 3, GEMV_ROWS(3), w, rb, a, n0, n1, out, N); break;
        case 2: Q8V(gemv_rows)(wtype, 2, GEMV_ROWS(2), w, rb, a, n0, n1, out, N); break;
        default:
            if (stream) Q8V(gemv_rows)(wtype, 1, 1, w, rb, a, n0, n1, out, N);
            else Q8V(gemv_rows)(wtype, 1, GEMV_ROWS(1), w, rb, a, n0, n1, out, N);
            break;
        }
    }
}

/* ---- AVX2 GEMM: 4 unpacked rows x 3-token register tiles ---- */


Q8V_INLINE void Q8V(wgroup_unpack)(const int wtype, const uint8_t *w, int64_t rb, int nr,
                                   const act_t *a, const wgroup_t *g) {
    const int64_t gb = cys_group_bytes(wtype), K = a->K, nb = a->nb, ds = a->ds;
    for (int r = 0; r < nr; r++) {
        for (int64_t b = 0; b < nb; b++) {
            __m256i u, sgn = _mm256_setzero_si256();
            /* the rows two groups on (still this thread's, under the static schedule) arrive
             * while the tiles run: an uncached output layer otherwise stalls every unpack
             * (measured 5-12% on the Q8_0 output layer at T = 8..16, neutral on cached ones) */
            if (Q8_GEMM_PF_ROWS)
                _mm_prefetch((const char *)(w + (r + Q8_GEMM_PF_ROWS) * rb + b * gb), _MM_HINT_T0);
            Q8V(load_wblock)(wtype, w + r * rb + b * gb, &u, &sgn, &g->d[r * ds + b], &g->m[r * ds + b]);
            _mm256_storeu_si256((__m256i *)(g->u + r * K + b * QK), u);
            if (wtype == CYS_TYPE_Q8_0) _mm256_storeu_si256((__m256i *)(g->sg + r * K + b * QK), sgn);
        }
        for (int64_t b = nb; b < ds; b++) g->d[r * ds + b] = g->m[r * ds + b] = 0.0f;
    }
}

Q8V_INLINE void Q8V(gemm_tile)(const int wtype, const int nr, const int nc, const wgroup_t *g,
                               const act_t *a, int64_t t0, float *out, int64_t N) {
    const int64_t K = a->K, nb = a->nb, ds = a->ds;
    const int8_t *xq = a->q + t0 * K;
    const float *xd = a->d + t0 * ds;
    __m256 acc[4][Q8V_TILE_C];
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nc; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        for (int r = 0; r < nr; r++) {
            const __m256i u = _mm256_loadu_si256((const __m256i *)(g->u + r * K + b * QK));
            const __m256i sgn = wtype == CYS_TYPE_Q8_0
                ? _mm256_loadu_si256((const __m256i *)(g->sg + r * K + b * QK)) : u;
            const __m256 dw = _mm256_broadcast_ss(g->d + r * ds + b);
            for (int c = 0; c < nc; c++) {
                const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + c * K + b * QK));
                const __m256 dd = _mm256_mul_ps(dw, _mm256_broadcast_ss(xd + c * ds + b));
                acc[r][c] = _mm256_fmadd_ps(Q8V(block_dot)(wtype, u, sgn, x), dd, acc[r][c]);
            }
        }
    }
    /* the offset terms sum_b m_w * s_x join the same lanes, 8 blocks a step */
    if (wtype != CYS_TYPE_Q8_0)
        for (int64_t b = 0; b < ds; b += 8)
            for (int r = 0; r < nr; r++)
                for (int c = 0; c < nc; c++)
                    acc[r][c] = _mm256_fmadd_ps(_mm256_loadu_ps(g->m + r * ds + b),
                                                _mm256_loadu_ps(a->s + (t0 + c) * ds + b), acc[r][c]);
    for (int c = 0; c < nc; c++)
        for (int r = 0; r < nr; r++) out[(t0 + c) * N + r] = cys_hsum256(acc[r][c]);
}

Q8V_INLINE void Q8V(gemm_group)(const int wtype, const int nr, const wgroup_t *g, const act_t *a,
                                int64_t tc, int64_t tend, int64_t n, float *out, int64_t N) {
    int64_t t0 = tc;
    for (; t0 + Q8V_TILE_C <= tend; t0 += Q8V_TILE_C) Q8V(gemm_tile)(wtype, nr, Q8V_TILE_C, g, a, t0, out + n, N);
    switch (tend - t0) { /* fewer than Q8V_TILE_C tokens left (cases past it fold away) */
    case 5: if (Q8V_TILE_C > 5) Q8V(gemm_tile)(wtype, nr, 5 % Q8V_TILE_C, g, a, t0, out + n, N); break;
    case 4: if (Q8V_TILE_C > 4) Q8V(gemm_tile)(wtype, nr, 4 % Q8V_TILE_C, g, a, t0, out + n, N); break;
    case 3: Q8V(gemm_tile)(wtype, nr, 3, g, a, t0, out + n, N); break;
    case 2: Q8V(gemm_tile)(wtype, nr, 2, g, a, t0, out + n, N); break;
    case 1: Q8V(gemm_tile)(wtype, nr, 1, g, a, t0, out + n, N); break;
    default: break;
    }
}

Q8V_INLINE void Q8V(gemm_wtype)(const int wtype, const act_t *a, int64_t T, const uint8_t *w,
                                int64_t rb, int64_t N, float *out, void *buf, int *failed) {
    const int64_t K = a->K, ngroups = (N + Q8_TILE_R - 1) / Q8_TILE_R;
    int64_t tchunk = Q8_X_CHUNK_BYTES / (K + 2 * a->ds * (int64_t)sizeof(float));
    tchunk = tchunk < Q8V_TILE_C ? Q8V_TILE_C : tchunk - tchunk % Q8V_TILE_C;
    const wgroup_t g = wgroup_carve(buf, K, a->ds); /* never dereferenced when buf is NULL */
    for (int64_t tc = 0; tc < T; tc += tchunk) {
        const int64_t tend = tc + tchunk < T ? tc + tchunk : T;
        /* static and nowait: each thread keeps the same row groups for every chunk */
#pragma omp for schedule(static) nowait
        for (int64_t gi = 0; gi < ngroups; gi++) {
            if (!buf) {
#pragma omp atomic write
                *failed = 1;
                continue;
            }
            const int64_t n = gi * Q8_TILE_R;
            const int nr = N - n >= Q8_TILE_R ? Q8_TILE_R : (int)(N - n);
            Q8V(wgroup_unpack)(wtype, w + n * rb, rb, nr, a, &g);
            switch (nr) {
            case 4: Q8V(gemm_group)(wtype, 4, &g, a, tc, tend, n, out, N); break;
            case 3: Q8V(gemm_group)(wtype, 3, &g, a, tc, tend, n, out, N); break;
            case 2: Q8V(gemm_group)(wtype, 2, &g, a, tc, tend, n, out, N); break;
            default: Q8V(gemm_group)(wtype, 1, &g, a, tc, tend, n, out, N); break;
            }
        }
    }
}


/* Runs inside the caller's parallel region (orphaned worksharing), after x is quantized. */
Q8V_FN static void Q8V(matmul_rows)(const act_t *a, int64_t T, const uint8_t *w, int64_t rb,
                                      int wtype, int64_t N, float *out, int *failed) {
    if (T <= Q8_GEMV_MAX_T) {
        switch (wtype) {
#define CASE(TY) case TY: Q8V(gemv_wtype)(TY, a, T, w, rb, N, out); break;
            Q8_FOR_EACH_WTYPE(CASE)
#undef CASE
        }
        return;
    }
    /* every thread reaches the worksharing loops even if its malloc failed */
    void *buf = malloc(wgroup_bytes(a->K, a->ds));
    switch (wtype) {
#define CASE(TY) case TY: Q8V(gemm_wtype)(TY, a, T, w, rb, N, out, buf, failed); break;
        Q8_FOR_EACH_WTYPE(CASE)
#undef CASE
    }
    free(buf);
}
