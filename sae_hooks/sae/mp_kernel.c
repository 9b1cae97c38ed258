/* Matching-pursuit selection, one token (row) at a time, with Gram-row correlation updates.
 *
 * The PyTorch path updates a [rows, d_sae] correlation matrix with one op per step, so every
 * step streams the whole matrix through memory two or three times. Here a few tokens (GR) run
 * all their steps together while their correlations (d_sae floats each, 18 KB at 4,608
 * latents) stay in the L1/L2 cache: per step one fused pass "c -= v * G[j]; track the first
 * maximum and the runner-up" (GR Gram rows streamed at once: the Gram matrix lives in memory,
 * and several streams keep more requests in flight than one), a counting pass only when the
 * runner-up is within the near-tie band, and O(d_in) work on the explicit residual.
 * Measured here (1,024 tokens, 576 -> 4,608, k 32, one thread): 134 ms one token at a time,
 * 78-85 ms four at a time with the runner-up tracked. Rows are independent; the caller runs
 * shards of rows in parallel threads (this file uses no threads of its own).
 *
 * Semantics are those of sae_hooks/sae/pursuit.py `_pursue_rows` (the PyTorch path):
 *   j = first index of max c (c = D r kept up to date with Gram rows; ReLU never changes the
 *       argmax unless every c <= 0, where v = 0 anyway);
 *   if another entry is within `tol` of the maximum (Gram drift could have swapped them), the
 *       choice is redone from the exact dots <r, D_i> of the entries in that band (first best
 *       wins); past `band_max` entries the row's correlations are recomputed exactly as D r and
 *       its tol restarts at tie_tol * ||r||;
 *   v = max(0, <r, D_j>); r -= v D_j; stopping rules as in pursuit.py.
 * Built three times by the macro below: float (f32), double (f64), and float with a bf16 Gram
 * matrix (f32_bf16gram, training under bf16 autocast).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define GR 4 /* tokens pursued together */
/* Gram rows are read once per step from the last-level cache (42 MB in bf16 at 4,608 latents):
 * asking for the data MP_PF bytes ahead of the loop measured ~5 % off the pursuit here, interleaved
 * A/B (a row is only 144 cache lines, short for the hardware prefetcher to ramp up on). */
#ifndef MP_PF
#define MP_PF 512
#endif
#define PREFETCH_AHEAD(p) __builtin_prefetch((const char *)(p) + MP_PF);

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16; /* bf16 is the top half of an IEEE float */
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
#define SAME(x) (x)

#if defined(__AVX512F__)
/* The fused pass with AVX-512 intrinsics: the four tokens' running maxima, runner-ups and
 * indices stay in registers (the portable loop below keeps them in memory, as compiled by gcc
 * 12: measured ~3x slower in cache). Same arithmetic order as the portable loop. */
#include <immintrin.h>
#define LOAD_F32(p) _mm512_loadu_ps(p)
#define LOAD_BF16(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define UPD4_BODY(q, LOADG)                                                                       \
    {                                                                                             \
        PREFETCH_AHEAD(g##q + i)                                                                  \
        __m512 x = _mm512_sub_ps(_mm512_loadu_ps(c##q + i), _mm512_mul_ps(v##q, LOADG(g##q + i))); \
        _mm512_storeu_ps(c##q + i, x);                                                            \
        s##q = _mm512_max_ps(s##q, _mm512_min_ps(x, b##q));                                       \
        __mmask16 m = _mm512_cmp_ps_mask(x, b##q, _CMP_GT_OQ);                                    \
        b##q = _mm512_mask_mov_ps(b##q, m, x);                                                    \
        i##q = _mm512_mask_mov_epi32(i##q, m, lane);                                              \
    }
#define UPD4_REDUCE(q, GT, GSCALAR)                                                               \
    {                                                                                             \
        float bv[16], sv[16];                                                                     \
        int32_t bi[16];                                                                           \
        _mm512_storeu_ps(bv, b##q);                                                               \
        _mm512_storeu_ps(sv, s##q);                                                               \
        _mm512_storeu_si512((void *)bi, i##q);                                                    \
        float m = -INFINITY;                                                                      \
        int64_t jj = INT64_MAX;                                                                   \
        int wl = 0;                                                                               \
        for (int l = 0; l < 16; l++)                                                              \
            if (bv[l] > m || (bv[l] == m && bi[l] < jj)) { m = bv[l]; jj = bi[l]; wl = l; }       \
        float sec = sv[wl];                                                                       \
        for (int l = 0; l < 16; l++)                                                              \
            if (l != wl && bv[l] > sec) sec = bv[l];                                              \
        for (int64_t ii = i; ii < n; ii++) {                                                      \
            float x = c##q[ii] - v[q] * GSCALAR(g##q[ii]);                                        \
            c##q[ii] = x;                                                                         \
            if (x > m) { sec = m; m = x; jj = ii; }                                               \
            else if (x > sec) sec = x;                                                            \
        }                                                                                         \
        if (jj == INT64_MAX || jj == INT32_MAX) jj = 0;                                           \
        j[q] = jj;                                                                                \
        best[q] = m;                                                                              \
        second[q] = sec;                                                                          \
    }
#define DEFINE_UPD4_AVX512(NAME, GT, LOADG, GSCALAR)                                              \
static void NAME(float *const *c, const GT *const *g, const float *v, int64_t n, int64_t *j,     \
                 float *best, float *second) {                                                    \
    float *c0 = c[0], *c1 = c[1], *c2 = c[2], *c3 = c[3];                                         \
    const GT *g0 = g[0], *g1 = g[1], *g2 = g[2], *g3 = g[3];                                      \
    const __m512 v0 = _mm512_set1_ps(v[0]), v1 = _mm512_set1_ps(v[1]);                            \
    const __m512 v2 = _mm512_set1_ps(v[2]), v3 = _mm512_set1_ps(v[3]);                            \
    __m512 b0, b1, b2, b3, s0, s1, s2, s3;                                                        \
    b0 = b1 = b2 = b3 = s0 = s1 = s2 = s3 = _mm512_set1_ps(-INFINITY);                            \
    __m512i i0, i1, i2, i3;                                                                       \
    i0 = i1 = i2 = i3 = _mm512_set1_epi32(INT32_MAX);                                             \
    __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);       \
    const __m512i sixteen = _mm512_set1_epi32(16);                                                \
    int64_t i = 0;                                                                                \
    for (; i + 16 <= n; i += 16) {                                                                \
        UPD4_BODY(0, LOADG) UPD4_BODY(1, LOADG) UPD4_BODY(2, LOADG) UPD4_BODY(3, LOADG)           \
        lane = _mm512_add_epi32(lane, sixteen);                                                   \
    }                                                                                             \
    UPD4_REDUCE(0, GT, GSCALAR) UPD4_REDUCE(1, GT, GSCALAR)                                       \
    UPD4_REDUCE(2, GT, GSCALAR) UPD4_REDUCE(3, GT, GSCALAR)                                       \
}
#endif

#define DEFINE_MP(T, SUF, SQRT, GT, GLOAD, MULTI, CT, CLOAD, CONV)                                                                   \
                                                                                                  \
static T dot_##SUF(const T *a, const T *b, int64_t n) {                                           \
    /* Four independent accumulators: one chain of n/LANES dependent adds was ~a fifth of the */ \
    /* pursuit's time (one value per step at d_in 576). */                                       \
    T acc[4][LANES] = {{0}};                                                                      \
    int64_t i = 0;                                                                                \
    for (; i + 4 * LANES <= n; i += 4 * LANES) {                                                  \
        for (int u = 0; u < 4; u++) {                                                             \
            _Pragma("omp simd")                                                                   \
            for (int l = 0; l < LANES; l++) acc[u][l] += a[i + u * LANES + l] * b[i + u * LANES + l]; \
        }                                                                                         \
    }                                                                                             \
    for (; i + LANES <= n; i += LANES) {                                                          \
        _Pragma("omp simd")                                                                       \
        for (int l = 0; l < LANES; l++) acc[0][l] += a[i + l] * b[i + l];                         \
    }                                                                                             \
    T s = 0;                                                                                      \
    for (; i < n; i++) s += a[i] * b[i];                                                          \
    for (int l = 0; l < LANES; l++) s += (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);       \
    return s;                                                                                     \
}                                                                                                 \
                                                                                                  \
/* First index of the maximum of c[0..n); writes the maximum to *best. */                        \
static int64_t argmax_##SUF(const T *c, int64_t n, T *best) {                                     \
    T bv[LANES];                                                                                  \
    int64_t bi[LANES];                                                                            \
    for (int l = 0; l < LANES; l++) { bv[l] = -INFINITY; bi[l] = INT64_MAX; }                     \
    int64_t i = 0;                                                                                \
    for (; i + LANES <= n; i += LANES) {                                                          \
        _Pragma("omp simd")                                                                       \
        for (int l = 0; l < LANES; l++) {                                                         \
            T x = c[i + l];                                                                       \
            int better = x > bv[l];                                                               \
            bv[l] = better ? x : bv[l];                                                           \
            bi[l] = better ? i + l : bi[l];                                                       \
        }                                                                                         \
    }                                                                                             \
    T m = -INFINITY;                                                                              \
    int64_t j = INT64_MAX;                                                                        \
    for (int l = 0; l < LANES; l++)                                                               \
        if (bv[l] > m || (bv[l] == m && bi[l] < j)) { m = bv[l]; j = bi[l]; }                     \
    for (; i < n; i++)                                                                            \
        if (c[i] > m) { m = c[i]; j = i; }                                                        \
    if (j == INT64_MAX) j = 0; /* n == 0 or every entry -inf */                                   \
    *best = m;                                                                                    \
    return j;                                                                                     \
}                                                                                                 \
                                                                                                  \
/* c -= v * g for GR tokens at once, fused with the search for each one's first maximum and   \
 * runner-up. GR independent streams keep more memory requests in flight (one Gram row each),   \
 * which is what bounds a one-token loop. */                                                    \
static __attribute__((unused)) void update_argmax_multi_##SUF(T *const *c, const GT *const *g,  \
                                      const T *v, int64_t n,                                    \
                                      int64_t *j, T *best, T *second) {                          \
    T bv[GR][LANES], sv[GR][LANES];                                                               \
    int64_t bi[GR][LANES];                                                                        \
    for (int q = 0; q < GR; q++)                                                                  \
        for (int l = 0; l < LANES; l++) { bv[q][l] = sv[q][l] = -INFINITY; bi[q][l] = INT64_MAX; } \
    int64_t i = 0;                                                                                \
    for (; i + LANES <= n; i += LANES) {                                                          \
        for (int q = 0; q < GR; q++) {                                                            \
            T *cq = c[q];                                                                         \
            const GT *gq = g[q];                                                                  \
            T vq = v[q];                                                                          \
            PREFETCH_AHEAD(gq + i)                                                                \
            _Pragma("omp simd")                                                                   \
            for (int l = 0; l < LANES; l++) {                                                     \
                T x = cq[i + l] - vq * GLOAD(gq[i + l]);                                          \
                cq[i + l] = x;                                                                    \
                T lo = x < bv[q][l] ? x : bv[q][l];                                               \
                sv[q][l] = lo > sv[q][l] ? lo : sv[q][l];                                         \
                int better = x > bv[q][l];                                                        \
                bv[q][l] = better ? x : bv[q][l];                                                 \
                bi[q][l] = better ? i + l : bi[q][l];                                             \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    for (int q = 0; q < GR; q++) {                                                                \
        T m = -INFINITY;                                                                          \
        int64_t jj = INT64_MAX;                                                                   \
        int wl = 0;                                                                               \
        for (int l = 0; l < LANES; l++)                                                           \
            if (bv[q][l] > m || (bv[q][l] == m && bi[q][l] < jj)) { m = bv[q][l]; jj = bi[q][l]; wl = l; } \
        T sec = sv[q][wl];  /* runner-up: the winning lane's second or another lane's best */     \
        for (int l = 0; l < LANES; l++)                                                           \
            if (l != wl && bv[q][l] > sec) sec = bv[q][l];                                        \
        for (int64_t ii = i; ii < n; ii++) {                                                      \
            T x = c[q][ii] - v[q] * GLOAD(g[q][ii]);                                              \
            c[q][ii] = x;                                                                         \
            if (x > m) { sec = m; m = x; jj = ii; }                                               \
            else if (x > sec) sec = x;                                                            \
        }                                                                                         \
        if (jj == INT64_MAX) jj = 0;                                                              \
        j[q] = jj;                                                                                \
        best[q] = m;                                                                              \
        second[q] = sec;                                                                          \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static int64_t count_ge_##SUF(const T *c, int64_t n, T floor_) {                                  \
    int64_t cnt = 0;                                                                              \
    _Pragma("omp simd reduction(+:cnt)")                                                          \
    for (int64_t i = 0; i < n; i++) cnt += c[i] >= floor_;                                        \
    return cnt;                                                                                   \
}                                                                                                 \
                                                                                                  \
/* Pursue rows [0, n_rows). c: [n_rows, c_stride] holding D r on entry (scratch afterwards);     \
 * r: [n_rows, d_in] residual, in/out; D: [d_sae, d_in]; G: [d_sae, g_stride];                   \
 * tol: [n_rows] near-tie band per row (in/out); idx/vals: [n_rows, k]; norms: [n_rows, k+1]     \
 * with norms[:, 0] filled by the caller (written only when stopping rules are on).              \
 * Returns the number of rows whose correlations had to be recomputed in full. */                \
int64_t mp_pursue_##SUF(int64_t n_rows, int64_t d_in, int64_t d_sae, CT *c, int64_t c_stride,    \
                        T *r, const T *D, const GT *G, int64_t g_stride, int64_t k,              \
                        double residual_threshold, int32_t stop_dup, double tie_tol,             \
                        int64_t band_max, T *tol, int64_t *idx, T *vals, T *norms) {             \
    int64_t recomputed = 0;                                                                       \
    int stopping = residual_threshold > 0 || stop_dup;                                            \
    T *spare = (T *)calloc((size_t)d_sae, sizeof(T)); /* stands in for missing group members */   \
    /* c stored in another type (bf16 correlations): each group's rows are widened into cs. */   \
    T *cs = CONV ? (T *)malloc((size_t)GR * (size_t)d_sae * sizeof(T)) : NULL;                   \
    if (!spare || (CONV && !cs)) { free(spare); free(cs); return -1; }                            \
    for (int64_t n0 = 0; n0 < n_rows; n0 += GR) {                                                 \
        int ng = n_rows - n0 < GR ? (int)(n_rows - n0) : GR;                                      \
        T m[GR], v[GR], sec[GR];                                                                  \
        int64_t j[GR];                                                                            \
        int done[GR];                                                                             \
        T *cp[GR], *row[GR];                                                                      \
        const GT *gp[GR];                                                                         \
        for (int q = 0; q < ng; q++) {                                                            \
            if (CONV) {                                                                           \
                const CT *src = c + (n0 + q) * c_stride;                                          \
                T *dst = row[q] = cs + (int64_t)q * d_sae;                                        \
                _Pragma("omp simd")                                                               \
                for (int64_t i = 0; i < d_sae; i++) dst[i] = CLOAD(src[i]);                       \
            } else {                                                                              \
                row[q] = (T *)(c + (n0 + q) * c_stride);                                          \
            }                                                                                     \
            j[q] = argmax_##SUF(row[q], d_sae, &m[q]);                                            \
            sec[q] = m[q]; /* unknown at the first step: let the counting pass decide */          \
            done[q] = 0;                                                                          \
        }                                                                                         \
        for (int64_t t = 0; t < k; t++) {                                                         \
            for (int q = 0; q < ng; q++) {                                                        \
                int64_t n = n0 + q;                                                               \
                T *cr = row[q], *rr = r + n * d_in, *vr = vals + n * k, *nr = norms + n * (k + 1); \
                int64_t *ir = idx + n * k;                                                        \
                v[q] = 0;                                                                         \
                if (done[q]) { ir[t] = 0; vr[t] = 0; nr[t + 1] = nr[t]; continue; }               \
                T floor_ = m[q] - tol[n];                                                         \
                if (sec[q] >= floor_ && count_ge_##SUF(cr, d_sae, floor_) > 1) {                  \
                    /* Near-tie: decide from the exact dots of the in-band atoms. */              \
                    if (count_ge_##SUF(cr, d_sae, floor_) > band_max) {                           \
                        for (int64_t i = 0; i < d_sae; i++) cr[i] = dot_##SUF(rr, D + i * d_in, d_in); \
                        j[q] = argmax_##SUF(cr, d_sae, &m[q]);                                    \
                        tol[n] = (T)(tie_tol * SQRT(dot_##SUF(rr, rr, d_in)));                    \
                        recomputed++;                                                             \
                    } else {                                                                      \
                        T bestx = -INFINITY;                                                      \
                        for (int64_t i = 0; i < d_sae; i++) {                                     \
                            if (cr[i] >= floor_) {                                                \
                                T e = dot_##SUF(rr, D + i * d_in, d_in);                          \
                                if (e > bestx) { bestx = e; j[q] = i; }                           \
                            }                                                                     \
                        }                                                                         \
                    }                                                                             \
                }                                                                                 \
                const T *a = D + j[q] * d_in;                                                     \
                T vq = dot_##SUF(rr, a, d_in);                                                    \
                if (!(vq > 0)) vq = 0;                                                            \
                ir[t] = j[q];                                                                     \
                vr[t] = vq;                                                                       \
                v[q] = vq;                                                                        \
                _Pragma("omp simd")                                                               \
                for (int64_t i = 0; i < d_in; i++) rr[i] -= vq * a[i];                            \
                if (stopping) {                                                                   \
                    nr[t + 1] = SQRT(dot_##SUF(rr, rr, d_in));                                    \
                    if (stop_dup) {                                                               \
                        int seen = vq == 0;                                                       \
                        for (int64_t s = 0; s < t && !seen; s++) seen = ir[s] == j[q] && vr[s] > 0; \
                        done[q] |= seen;                                                          \
                    }                                                                             \
                    if (residual_threshold > 0 && nr[t + 1] < residual_threshold) done[q] = 1;    \
                }                                                                                 \
            }                                                                                     \
            if (t + 1 == k) break;                                                                \
            T vv[GR], mn[GR], sn[GR];                                                             \
            int64_t jn[GR];                                                                       \
            for (int q = 0; q < GR; q++) {                                                        \
                int live = q < ng && !done[q];                                                    \
                cp[q] = live ? row[q] : spare;                                                    \
                gp[q] = live ? G + j[q] * g_stride : G;                                           \
                vv[q] = live ? v[q] : 0;                                                          \
            }                                                                                     \
            MULTI(cp, gp, vv, d_sae, jn, mn, sn);                                                 \
            for (int q = 0; q < ng; q++)                                                          \
                if (!done[q]) { j[q] = jn[q]; m[q] = mn[q]; sec[q] = sn[q]; }                     \
        }                                                                                         \
    }                                                                                             \
    free(spare);                                                                                  \
    free(cs);                                                                                     \
    return recomputed;                                                                            \
}

/* Ask for a whole row (bytes long) ahead of its use; rw = 1 for a row about to be written. */
static inline void prefetch_row(const void *p, size_t bytes, int rw) {
    for (size_t o = 0; o < bytes; o += 64) {
        if (rw) __builtin_prefetch((const char *)p + o, 1);
        else __builtin_prefetch((const char *)p + o, 0);
    }
}

/* Gradient of the pursuit with its choices held fixed (see _PursuitValues in pursuit.py), per token:
 *   R_t = r_{t-1}, the residual before step t (R_0 = r0, R_{t+1} = R_t - v_t a_t);
 *   rho = dL/dr_t, from g_r backwards: w_t = [v_t > 0] (g_v[t] - <rho, a_t>),
 *   dL/da_t = -v_t rho + w_t R_t, then rho += w_t a_t; finally dL/dr0 = rho.
 * O(k d_in) per token: no Gram entries and no k x k coefficient matrix.
 * g_v, g_r, grad_in, grad_D may be NULL (zero / not wanted); grad_D [d_sae, d_in] accumulates
 * (the caller gives each thread its own). With touched (d_sae bytes, zeroed by the caller) the rows
 * of grad_D need no zeroing: a row's first write assigns and marks it, later ones add; the caller
 * zeroes the rows left unmarked (a memset of the whole matrix cost ~4 ms a step on one thread).
 * scratch: (k + 1) * d_in elements. */
#define DEFINE_MP_BACKWARD(T, SUF)                                                                \
void mp_backward_##SUF(int64_t n_rows, int64_t d_in, int64_t k, const T *r0, const T *D,          \
                       const int64_t *idx, const T *vals, const T *g_v, const T *g_r,            \
                       T *grad_in, T *grad_D, uint8_t *touched, T *scratch) {                     \
    T *R = scratch, *rho = scratch + k * d_in;                                                    \
    const size_t row_bytes = (size_t)d_in * sizeof(T);                                            \
    for (int64_t n = 0; n < n_rows; n++) {                                                        \
        const int64_t *ir = idx + n * k;                                                          \
        const T *vr = vals + n * k;                                                               \
        memcpy(R, r0 + n * d_in, (size_t)d_in * sizeof(T));                                       \
        for (int64_t t = 0; t + 1 < k; t++) {                                                     \
            const T *a = D + ir[t] * d_in;                                                        \
            T v = vr[t];                                                                          \
            T *cur = R + t * d_in, *nxt = cur + d_in;                                             \
            if (t + 2 < k) prefetch_row(D + ir[t + 1] * d_in, row_bytes, 0);                       \
            _Pragma("omp simd")                                                                   \
            for (int64_t i = 0; i < d_in; i++) nxt[i] = cur[i] - v * a[i];                        \
        }                                                                                         \
        if (g_r) memcpy(rho, g_r + n * d_in, (size_t)d_in * sizeof(T));                           \
        else memset(rho, 0, (size_t)d_in * sizeof(T));                                            \
        for (int64_t t = k - 1; t >= 0; t--) {                                                    \
            const T *a = D + ir[t] * d_in;                                                        \
            T v = vr[t];                                                                          \
            if (t > 0) { /* the previous step's atom and gradient row come from the last-level cache */ \
                prefetch_row(D + ir[t - 1] * d_in, row_bytes, 0);                                 \
                if (grad_D) prefetch_row(grad_D + ir[t - 1] * d_in, row_bytes, 1);                \
            }                                                                                     \
            if (!(v > 0)) continue; /* ReLU off or token stopped: no gradient through this step */ \
            T u = 0;                                                                              \
            _Pragma("omp simd reduction(+:u)")                                                    \
            for (int64_t i = 0; i < d_in; i++) u += rho[i] * a[i];                                \
            T w = (g_v ? g_v[n * k + t] : 0) - u;                                                 \
            if (grad_D) {                                                                         \
                T *dr = grad_D + ir[t] * d_in;                                                    \
                const T *Rt = R + t * d_in;                                                       \
                if (touched && !touched[ir[t]]) {                                                 \
                    touched[ir[t]] = 1;                                                           \
                    _Pragma("omp simd")                                                           \
                    for (int64_t i = 0; i < d_in; i++) dr[i] = w * Rt[i] - v * rho[i];            \
                } else {                                                                          \
                    _Pragma("omp simd")                                                           \
                    for (int64_t i = 0; i < d_in; i++) dr[i] += w * Rt[i] - v * rho[i];           \
                }                                                                                 \
            }                                                                                     \
            _Pragma("omp simd")                                                                   \
            for (int64_t i = 0; i < d_in; i++) rho[i] += w * a[i];                                \
        }                                                                                         \
        if (grad_in) memcpy(grad_in + n * d_in, rho, (size_t)d_in * sizeof(T));                   \
    }                                                                                             \
}

DEFINE_MP_BACKWARD(float, f32)
DEFINE_MP_BACKWARD(double, f64)


#if defined(__AVX512F__) && GR == 4
DEFINE_UPD4_AVX512(upd4_avx512_f32, float, LOAD_F32, SAME)
DEFINE_UPD4_AVX512(upd4_avx512_bf16, uint16_t, LOAD_BF16, bf16_to_f32)
#define MULTI_F32 upd4_avx512_f32
#define MULTI_BF16 upd4_avx512_bf16
#else
#define MULTI_F32 update_argmax_multi_f32
#define MULTI_BF16 update_argmax_multi_f32_bf16gram
#endif

DEFINE_MP(float, f32, sqrtf, float, SAME, MULTI_F32, float, SAME, 0)
DEFINE_MP(double, f64, sqrt, double, SAME, update_argmax_multi_f64, double, SAME, 0)
/* Training under bf16 autocast: a bf16 Gram matrix (half the memory traffic) and bf16 starting
 * correlations (c is [n_rows, c_stride] bf16, widened a group at a time: no fp32 copy of the
 * whole [rows, d_sae] block), fp32 elsewhere. */
DEFINE_MP(float, f32_bf16gram, sqrtf, uint16_t, bf16_to_f32, MULTI_BF16, uint16_t, bf16_to_f32, 1)

/* Lets the loader check that it opened a library built from this very source. */
int64_t mp_kernel_abi(void) { return 3; }
