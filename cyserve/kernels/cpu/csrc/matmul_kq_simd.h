/* The SIMD kernels of matmul_kq.c, instantiated once per instruction-set level (included with
 * KQV(name), KQV_INLINE, KQV_FN, KQV_ISA and KQV_TILE_C defined; see matmul_kq.c). The levels
 * differ in the integer multiply-accumulate of codes, x and scales (AVX2 maddubs + madd + add,
 * VNNI maddubs + vpdpwssd: the same exact integers) and in the tile width (AVX-512 has 32 vector
 * registers); the float steps are kq_accumulate's on every level, so a row's bits do not depend
 * on it. No include guard: meant to be included more than once. */

/* is + sum over i16 pairs of maddubs(u, x) * se (u unsigned codes <= 63, x int8: the pairs fit in
 * i16 without saturation), exact on every level. */
KQV_INLINE __m256i KQV(dot_acc)(__m256i is, __m256i u, __m256i x, __m256i se) {
    const __m256i p16 = _mm256_maddubs_epi16(u, x);
#if KQV_ISA == 3 /* CYS_ISA_AVX512_VNNI (an enum: #if needs the number) */
    return _mm256_dpwssd_epi32(is, p16, se);
#elif KQV_ISA == 2 /* CYS_ISA_AVX_VNNI */
    return _mm256_dpwssd_avx_epi32(is, p16, se);
#else
    return _mm256_add_epi32(is, _mm256_madd_epi16(p16, se));
#endif
}

/* nr rows (unpacked, g[r * nb + b]) x nc tokens from t0: out[(t0 + c) * N + r]. */
KQV_INLINE void KQV(kq_tile)(const int has_min, const int nr, const int nc, const kq_block_t *g,
                             const actk_t *a, int64_t t0, float *out, int64_t N) {
    const int64_t K = a->K, nb = a->nb;
    float acc[KQ_TILE_R][KQV_TILE_C];
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nc; c++) acc[r][c] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        __m256i is[KQ_TILE_R][KQV_TILE_C];
        for (int r = 0; r < nr; r++)
            for (int c = 0; c < nc; c++) is[r][c] = _mm256_setzero_si256();
        const int8_t *xb = a->q + t0 * K + b * QK_K;
        for (int v = 0; v < 8; v++) {
            __m256i xv[KQV_TILE_C];
            for (int c = 0; c < nc; c++) xv[c] = _mm256_loadu_si256((const __m256i *)(xb + c * K + 32 * v));
            for (int r = 0; r < nr; r++) {
                const kq_block_t *w = g + r * nb + b;
                const __m256i u = _mm256_loadu_si256((const __m256i *)(w->u + 32 * v));
                const __m256i se = _mm256_loadu_si256((const __m256i *)(w->se + 16 * v));
                for (int c = 0; c < nc; c++)
                    is[r][c] = KQV(dot_acc)(is[r][c], u, xv[c], se);
            }
        }
        for (int c = 0; c < nc; c++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(a->bs + (t0 + c) * (K / 16) + b * 16));
            const float dx = a->d[(t0 + c) * nb + b];
            for (int r = 0; r < nr; r++) {
                const kq_block_t *w = g + r * nb + b;
                const __m256i ms = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)w->mn), bs);
                if (has_min)
                    acc[r][c] = kq_accumulate(1, acc[r][c], dx, w->d, w->dm, hsum_epi32(is[r][c]), hsum_epi32(ms));
                else /* isum - msum in one reduction: the same integer */
                    acc[r][c] = kq_accumulate(0, acc[r][c], dx, w->d, w->dm,
                                              hsum_epi32(_mm256_sub_epi32(is[r][c], ms)), 0);
            }
        }
    }
    for (int c = 0; c < nc; c++)
        for (int r = 0; r < nr; r++) out[(t0 + c) * N + r] = acc[r][c];
}

KQV_INLINE void KQV(kq_group)(const int has_min, const int nr, const kq_block_t *g, const actk_t *a,
                              int64_t tc, int64_t tend, float *out, int64_t N) {
    int64_t t0 = tc;
    for (; t0 + KQV_TILE_C <= tend; t0 += KQV_TILE_C) KQV(kq_tile)(has_min, nr, KQV_TILE_C, g, a, t0, out, N);
    switch (tend - t0) { /* fewer than KQV_TILE_C tokens left (cases past it fold away) */
    case 3: if (KQV_TILE_C > 3) KQV(kq_tile)(has_min, nr, 3 % KQV_TILE_C, g, a, t0, out, N); break;
    case 2: if (KQV_TILE_C > 2) KQV(kq_tile)(has_min, nr, 2 % KQV_TILE_C, g, a, t0, out, N); break;
    case 1: KQV(kq_tile)(has_min, nr, 1, g, a, t0, out, N); break;
    default: break;
    }
}

KQV_INLINE void KQV(kq_group_dispatch)(const int has_min, int nr, const kq_block_t *g,
                                       const actk_t *a, int64_t tc, int64_t tend, float *out,
                                       int64_t N) {
    switch (nr) {
    case 4: KQV(kq_group)(has_min, 4, g, a, tc, tend, out, N); break;
    case 3: KQV(kq_group)(has_min, 3, g, a, tc, tend, out, N); break;
    case 2: KQV(kq_group)(has_min, 2, g, a, tc, tend, out, N); break;
    default: KQV(kq_group)(has_min, 1, g, a, tc, tend, out, N); break;
    }
}

/* One weight row x nc tokens from t0: the same integers and f32 steps as kq_tile. */
KQV_INLINE void KQV(row_few)(const int wtype, const int nc, const uint8_t *row, int64_t bb,
                             const actk_t *a, int64_t t0, float *out, int64_t N) {
    const int64_t K = a->K, nb = a->nb;
    const int has_min = kq_has_min(wtype);
    float acc[KQ_FEW_T];
    for (int c = 0; c < nc; c++) acc[c] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = row + b * bb;
        kq_scales_t s;
        scales_avx2(wtype, p, &s);
        __m256i is[KQ_FEW_T];
        for (int c = 0; c < nc; c++) is[c] = _mm256_setzero_si256();
        const int8_t *xb = a->q + t0 * K + b * QK_K;
        for (int v = 0; v < 8; v++) {
            const __m256i u = codes32(wtype, p, v);
            const __m256i se = _mm256_set_m128i(_mm_set1_epi16(s.sc[2 * v + 1]), _mm_set1_epi16(s.sc[2 * v]));
            for (int c = 0; c < nc; c++) {
                const __m256i x = _mm256_loadu_si256((const __m256i *)(xb + c * K + 32 * v));
                is[c] = KQV(dot_acc)(is[c], u, x, se);
            }
        }
        for (int c = 0; c < nc; c++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(a->bs + (t0 + c) * (K / 16) + b * 16));
            const __m256i ms = _mm256_madd_epi16(s.mn, bs);
            const float dx = a->d[(t0 + c) * nb + b];
            if (has_min)
                acc[c] = kq_accumulate(1, acc[c], dx, s.d, s.dm, hsum_epi32(is[c]), hsum_epi32(ms));
            else
                acc[c] = kq_accumulate(0, acc[c], dx, s.d, s.dm, hsum_epi32(_mm256_sub_epi32(is[c], ms)), 0);
        }
    }
    for (int c = 0; c < nc; c++) out[(t0 + c) * N] = acc[c];
}

/* T <= KQ_FEW_MAX_T: each thread takes whole rows and every token of them, KQ_FEW_T at a time. */
KQV_INLINE void KQV(rows_few)(const int wtype, const actk_t *a, int64_t T, const uint8_t *w,
                              int64_t rb, int64_t N, float *out) {
    const int64_t bb = kq_block_bytes(wtype);
#pragma omp for schedule(static) nowait
    for (int64_t n = 0; n < N; n++) {
        for (int64_t t0 = 0; t0 < T; t0 += KQ_FEW_T) {
            switch (T - t0) {
            case 1: KQV(row_few)(wtype, 1, w + n * rb, bb, a, t0, out + n, N); break;
            case 2: KQV(row_few)(wtype, 2, w + n * rb, bb, a, t0, out + n, N); break;
            case 3: KQV(row_few)(wtype, 3, w + n * rb, bb, a, t0, out + n, N); break;
            default: KQV(row_few)(wtype, 4, w + n * rb, bb, a, t0, out + n, N); break;
            }
        }
    }
}

KQV_FN static void KQV(matmul_rows_few)(const actk_t *a, int64_t T, const uint8_t *w, int64_t rb,
                                          int wtype, int64_t N, float *out) {
    switch (wtype) {
    case CYS_TYPE_Q2_K: KQV(rows_few)(CYS_TYPE_Q2_K, a, T, w, rb, N, out); break;
    case CYS_TYPE_Q3_K: KQV(rows_few)(CYS_TYPE_Q3_K, a, T, w, rb, N, out); break;
    case CYS_TYPE_Q4_K: KQV(rows_few)(CYS_TYPE_Q4_K, a, T, w, rb, N, out); break;
    case CYS_TYPE_Q5_K: KQV(rows_few)(CYS_TYPE_Q5_K, a, T, w, rb, N, out); break;
    default: KQV(rows_few)(CYS_TYPE_Q6_K, a, T, w, rb, N, out); break;
    }
}

/* Runs inside the caller's parallel region (orphaned worksharing), after x is quantized. */
KQV_FN static void KQV(matmul_rows)(const actk_t *a, int64_t T, const uint8_t *w, int64_t rb,
                                      int wtype, int64_t N, float *out, int *failed) {
    const int64_t bb = kq_block_bytes(wtype), nb = a->nb, K = a->K;
    const int64_t ngroups = (N + KQ_TILE_R - 1) / KQ_TILE_R;
    const int has_min = kq_has_min(wtype);
    int64_t tchunk = KQ_X_CHUNK_BYTES / (K + K / 8 + nb * (int64_t)sizeof(float));
    tchunk = tchunk < KQV_TILE_C ? KQV_TILE_C : tchunk - tchunk % KQV_TILE_C;
    /* every thread reaches the worksharing loops even if its malloc failed */
    kq_block_t *g = malloc((size_t)KQ_TILE_R * nb * sizeof(kq_block_t));
    for (int64_t tc = 0; tc < T; tc += tchunk) {
        const int64_t tend = tc + tchunk < T ? tc + tchunk : T;
        /* static and nowait: each thread keeps the same row groups for every chunk */
#pragma omp for schedule(static) nowait
        for (int64_t gi = 0; gi < ngroups; gi++) {
            if (!g) {
#pragma omp atomic write
                *failed = 1;
                continue;
            }
            const int64_t n = gi * KQ_TILE_R;
            const int nr = N - n >= KQ_TILE_R ? KQ_TILE_R : (int)(N - n);
            for (int r = 0; r < nr; r++)
                for (int64_t b = 0; b < nb; b++) kq_unpack_avx2(wtype, w + (n + r) * rb + b * bb, &g[r * nb + b]);
            if (has_min) KQV(kq_group_dispatch)(1, nr, g, a, tc, tend, out + n, N);
            else KQV(kq_group_dispatch)(0, nr, g, a, tc, tend, out + n, N);
        }
    }
    free(g);
}
