// See perennial_quantised.h. The plain loop is the reference; the AVX-512
// VNNI path (chosen at run time) does the same arithmetic in the same order:
// integer dot products are exact, and every float and double step below is
// a separate multiply or add in both (no fused multiply-add, which would
// round differently), so the two agree bit for bit.
#include "perennial_quantised.h"

#include <math.h>
#include <string.h>

#pragma clang fp contract(off)

// The bound's factor t/2, raised by 1/2000 for the float rounding of the
// quantisation itself (x / s is rounded before it is rounded to an
// integer), and by dim · 1e-5 for the rounding of the exact float dot
// product it is compared with (at most about dim · 2^-24 · Σ|q_k x_k|,
// Higham's bound, and Σ|q_k x_k| <= 63 t ‖x‖₁, at most 126 times the
// bound's ‖x‖₁ term).
static inline float bound_half(float t, size_t dim) { return t * (0.5005f + (float)dim * 1e-5f); }

// Magnitudes this small (zero is fine): such a row or query is not
// quantised, and its items are always scored exactly. Below it a row's
// and a query's scales can multiply to a subnormal or to 0 while the exact
// dot product does not, and the bound would fail; far smaller, 127 / max
// would overflow. And magnitudes this large: ‖x‖₁ of 64 of them is still
// finite (an infinite norm would make the bound NaN).
#define SMALLEST_QUANTISED 1e-15f
#define LARGEST_QUANTISED 1e30f

size_t pk_quantised_groups(size_t dim) { return (dim + 3) / 4; }

// Eight independent lanes, so the compiler can vectorise the loop (one
// running max would be a chain of dependent compares).
static float max_abs(const float *x, size_t n, int *finite) {
    float m[8] = {0};
    size_t k = 0;
    for (; k + 8 <= n; k += 8)
        for (int l = 0; l < 8; l++) { const float a = fabsf(x[k + l]); m[l] = a > m[l] ? a : m[l]; }
    for (; k < n; k++) { const float a = fabsf(x[k]); m[0] = a > m[0] ? a : m[0]; }
    float best = 0;
    int nan = 0;
    for (int l = 0; l < 8; l++) best = m[l] > best ? m[l] : best;
    // A NaN never wins a compare: look for one separately.
    for (k = 0; k < n; k++) nan |= x[k] != x[k];
    *finite = !nan && best <= 3.0e38f;
    return best;
}

// Round to nearest by adding and taking away 1.5 · 2^23 (exact for
// |y| < 2^22, and |y| <= 127 here): branch-free, so the loop vectorises.
static inline int quantise_one(float x, float inv, float limit) {
    const float magic = 12582912.0f;
    const float y = x * inv;
    const float c = y > limit ? limit : (y < -limit ? -limit : y);
    return (int)((c + magic) - magic);
}

float pk_quantise_item(const float *row, size_t dim, uint8_t *blocks, size_t index, float *l1) {
    const size_t groups = pk_quantised_groups(dim);
    uint8_t *base = blocks + (index / 16) * groups * 64 + (index % 16) * 4;
    int finite;
    const float m = max_abs(row, dim, &finite);
    if (!finite || (m > 0 && m < SMALLEST_QUANTISED) || m > LARGEST_QUANTISED) {
        // Not quantised (bytes of 0): scale +inf, so the bound is +inf.
        for (size_t g = 0; g < groups; g++)
            for (size_t t = 0; t < 4; t++) base[g * 64 + t] = 128;
        *l1 = INFINITY;
        return INFINITY;
    }
    const float s = m / 127.0f;
    const float inv = m > 0 ? 127.0f / m : 0;
    float norm[4] = {0};
    const size_t whole = dim / 4;
    for (size_t g = 0; g < whole; g++)
        for (size_t t = 0; t < 4; t++) {
            const float x = row[4 * g + t];
            base[g * 64 + t] = (uint8_t)(quantise_one(x, inv, 127.0f) + 128);
            norm[t] += fabsf(x);
        }
    for (size_t g = whole; g < groups; g++)
        for (size_t t = 0; t < 4; t++) {
            const size_t k = 4 * g + t;
            const float x = k < dim ? row[k] : 0;
            base[g * 64 + t] = (uint8_t)(quantise_one(x, inv, 127.0f) + 128);
            norm[t] += fabsf(x);
        }
    *l1 = (norm[0] + norm[1]) + (norm[2] + norm[3]);
    return s;
}

pk_quantised_query pk_quantise_query(const float *query, size_t dim, int8_t *out) {
    const size_t groups = pk_quantised_groups(dim);
    int finite;
    const float m = max_abs(query, dim, &finite);
    // Not quantisable (see SMALLEST_QUANTISED): scale +inf, every bound +inf.
    const int usable = finite && !(m > 0 && m < SMALLEST_QUANTISED) && m <= LARGEST_QUANTISED;
    // Seven bits: two products of a u8 and a |q| <= 63 sum to at most
    // 32,130, so AVX2's saturating 16-bit pair sums never saturate.
    const float inv = (usable && m > 0) ? 63.0f / m : 0;
    pk_quantised_query p = {usable ? m / 63.0f : INFINITY, 0, 0};
    for (size_t k = 0; k < groups * 4; k++) {
        const int v = (usable && k < dim) ? quantise_one(query[k], inv, 63.0f) : 0;
        out[k] = (int8_t)v;
        p.l1 += v < 0 ? -v : v;
        p.sum += v;
    }
    return p;
}

// Blocks per tile: every query of the batch scores a tile (16 KB at dim 64,
// inside L1) before the next is read. The moments are summed in float
// within a tile (16 values per lane) and in double across tiles: converting
// every score to double cost a third of the pass.
#define TILE_BLOCKS 16

// A block's outputs from its integer dot products (offset already
// removed), branch-free so that it vectorises: a lane whose scale (the
// row's times the query's) is not finite gets bound +inf and adds 0 to the
// moments; lanes at or past `live` are left alone.
static inline __attribute__((always_inline)) void finish_lanes(const int32_t *dot, size_t live, pk_quantised_query p,
                                                               float half, const float *s, const float *l1,
                                                               const float *bias, size_t bias_stride, float *upper,
                                                               float *ls, float *lq) {
    const float ql1 = (float)p.l1;
    for (size_t lane = 0; lane < live; lane++) {
        const float scale = p.scale * s[lane];
        float a = (float)dot[lane] * scale;
        a = a + bias[lane * bias_stride];
        float e = s[lane] * ql1;
        e = e + l1[lane];
        e = e * half;
        const int finite = scale <= 3.0e38f;
        upper[lane] = finite ? a + e : INFINITY;
        const float d = finite ? a : 0.0f;
        ls[lane] = ls[lane] + d;
        lq[lane] = lq[lane] + d * d;
    }
}

// A tile's float moments into the double ones (and cleared).
static inline __attribute__((always_inline)) void flush_tile(float *fs, float *fq, double *ls, double *lq) {
    for (int lane = 0; lane < 16; lane++) {
        ls[lane] = ls[lane] + (double)fs[lane];
        lq[lane] = lq[lane] + (double)fq[lane];
        fs[lane] = 0;
        fq[lane] = 0;
    }
}

// The moments: 16 double lanes per query (lane = row % 16 within a block,
// each fed a tile's float sum at a time), reduced in a fixed order at the
// end of the call.
static void add_moments(double *lanes_s, double *lanes_q, double *sum, double *sq) {
    double ts = 0, tq = 0;
    for (int k = 0; k < 8; k++) {
        ts = ts + (lanes_s[k] + lanes_s[k + 8]);
        tq = tq + (lanes_q[k] + lanes_q[k + 8]);
    }
    *sum = *sum + ts;
    *sq = *sq + tq;
}

// One block's 16 dot products with one query, the plain way (any ISA).
static inline __attribute__((always_inline)) void block_dots_plain(const uint8_t *block, size_t groups,
                                                                   const int8_t *q, int32_t *dot) {
    for (int lane = 0; lane < 16; lane++) dot[lane] = 0;
    for (size_t g = 0; g < groups; g++)
        for (int lane = 0; lane < 16; lane++)
            for (int t = 0; t < 4; t++) dot[lane] += (int32_t)block[g * 64 + lane * 4 + t] * (int32_t)q[4 * g + t];
}

// The reference pass: one query at a time, a block at a time.
static void score_quantised_plain(const uint8_t *blocks, size_t count, size_t dim, const int8_t *const *queries,
                                  const pk_quantised_query *params, size_t nq, const float *item_scale,
                                  const float *item_l1, const float *bias, size_t bias_stride, float *const *upper,
                                  double *sum, double *sq) {
    const size_t groups = pk_quantised_groups(dim);
    for (size_t j = 0; j < nq; j++) {
        double ls[16] = {0}, lq[16] = {0};
        float fs[16] = {0}, fq[16] = {0};
        const int32_t offset = 128 * params[j].sum;
        for (size_t r0 = 0; r0 < count; r0 += 16) {
            int32_t dot[16];
            block_dots_plain(blocks + (r0 / 16) * groups * 64, groups, queries[j], dot);
            for (int lane = 0; lane < 16; lane++) dot[lane] -= offset;
            finish_lanes(dot, count - r0 < 16 ? count - r0 : 16, params[j], bound_half(params[j].scale, dim),
                         item_scale + r0, item_l1 + r0, bias + r0 * bias_stride, bias_stride, upper[j] + r0, fs, fq);
            if ((r0 / 16 + 1) % TILE_BLOCKS == 0 || r0 + 16 >= count) flush_tile(fs, fq, ls, lq);
        }
        add_moments(ls, lq, sum + j, sq + j);
    }
}

void pk_score_quantised_batch_plain(const uint8_t *blocks, size_t count, size_t dim,
                                    const int8_t *const *queries, const pk_quantised_query *params, size_t nq,
                                    const float *item_scale, const float *item_l1,
                                    const float *bias, size_t bias_stride,
                                    float *const *upper, double *sum, double *sq) {
    score_quantised_plain(blocks, count, dim, queries, params, nq, item_scale, item_l1, bias, bias_stride, upper, sum, sq);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")))

#define MAX_QUERIES 64

// The block's 16 outputs for one query from its 16 integer dot products.
VNNI_TARGET static inline void finish_block(__m512i acc, pk_quantised_query p, float half, __m512 s, __m512 l1, __m512 b,
                                            __mmask16 live, float *upper, __m512 *fs, __m512 *fq) {
    const __m512i dot = _mm512_sub_epi32(acc, _mm512_set1_epi32(128 * p.sum));
    const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(p.scale), s);
    __m512 a = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), scale);
    a = _mm512_add_ps(a, b);
    __m512 e = _mm512_mul_ps(s, _mm512_set1_ps((float)p.l1));
    e = _mm512_add_ps(e, l1);
    e = _mm512_mul_ps(e, _mm512_set1_ps(half));
    // Lanes whose scale (the row's or the query's) is not finite: +inf, no moments.
    const __mmask16 finite = _mm512_cmp_ps_mask(scale, _mm512_set1_ps(3.0e38f), _CMP_LE_OQ) & live;
    const __m512 u = _mm512_mask_blend_ps(finite, _mm512_set1_ps(INFINITY), _mm512_add_ps(a, e));
    _mm512_mask_storeu_ps(upper, live, u);
    a = _mm512_maskz_mov_ps(finite, a);
    *fs = _mm512_add_ps(*fs, a);
    *fq = _mm512_add_ps(*fq, _mm512_mul_ps(a, a));
}

// A tile's float moments into one query's double ones (16 lanes each).
VNNI_TARGET static inline void flush_tile_vnni(__m512 fs, __m512 fq, __m512d *ms, __m512d *mq) {
    ms[0] = _mm512_add_pd(ms[0], _mm512_cvtps_pd(_mm512_castps512_ps256(fs)));
    ms[1] = _mm512_add_pd(ms[1], _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(fs), 1))));
    mq[0] = _mm512_add_pd(mq[0], _mm512_cvtps_pd(_mm512_castps512_ps256(fq)));
    mq[1] = _mm512_add_pd(mq[1], _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(fq), 1))));
}

// Dot products of one block with up to four queries: each group's 64 bytes
// are loaded once and feed one VPDPBUSD per query (the query's four bytes
// broadcast to every lane), so a lane ends with its row's whole dot product.
// VPDPBUSD adds into its own accumulator, so one accumulator per query is a
// chain of dependent instructions, each waiting out the last one's latency
// (about five cycles) although the core can start about one per cycle. So
// the groups are split between independent accumulators, four for one
// query and two each for two to four, added at the end: integer sums are
// exact in any order, so the dot products are the same.
VNNI_TARGET static inline __m512i group_query(const int8_t *q, size_t g) {
    return _mm512_set1_epi32(*(const int32_t *)(const void *)(q + 4 * g));
}

VNNI_TARGET static inline void block_dots(const uint8_t *block, size_t groups, const int8_t *const *q, int n,
                                          __m512i *acc) {
    const __m512i zero = _mm512_setzero_si512();
    size_t g = 0;
    if (n == 1) {
        __m512i c0 = zero, c1 = zero, c2 = zero, c3 = zero;
        for (; g + 4 <= groups; g += 4) {
            c0 = _mm512_dpbusd_epi32(c0, _mm512_loadu_si512((const void *)(block + g * 64)), group_query(q[0], g));
            c1 = _mm512_dpbusd_epi32(c1, _mm512_loadu_si512((const void *)(block + g * 64 + 64)), group_query(q[0], g + 1));
            c2 = _mm512_dpbusd_epi32(c2, _mm512_loadu_si512((const void *)(block + g * 64 + 128)), group_query(q[0], g + 2));
            c3 = _mm512_dpbusd_epi32(c3, _mm512_loadu_si512((const void *)(block + g * 64 + 192)), group_query(q[0], g + 3));
        }
        for (; g < groups; g++)
            c0 = _mm512_dpbusd_epi32(c0, _mm512_loadu_si512((const void *)(block + g * 64)), group_query(q[0], g));
        acc[0] = _mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3));
        acc[1] = acc[2] = acc[3] = zero;
        return;
    }
    // Accumulators e* take the even groups, o* the odd ones.
    __m512i e0 = zero, e1 = zero, e2 = zero, e3 = zero, o0 = zero, o1 = zero, o2 = zero, o3 = zero;
    for (; g + 2 <= groups; g += 2) {
        const __m512i we = _mm512_loadu_si512((const void *)(block + g * 64));
        const __m512i wo = _mm512_loadu_si512((const void *)(block + g * 64 + 64));
        e0 = _mm512_dpbusd_epi32(e0, we, group_query(q[0], g));
        o0 = _mm512_dpbusd_epi32(o0, wo, group_query(q[0], g + 1));
        e1 = _mm512_dpbusd_epi32(e1, we, group_query(q[1], g));
        o1 = _mm512_dpbusd_epi32(o1, wo, group_query(q[1], g + 1));
        if (n > 2) {
            e2 = _mm512_dpbusd_epi32(e2, we, group_query(q[2], g));
            o2 = _mm512_dpbusd_epi32(o2, wo, group_query(q[2], g + 1));
        }
        if (n > 3) {
            e3 = _mm512_dpbusd_epi32(e3, we, group_query(q[3], g));
            o3 = _mm512_dpbusd_epi32(o3, wo, group_query(q[3], g + 1));
        }
    }
    if (g < groups) {
        const __m512i we = _mm512_loadu_si512((const void *)(block + g * 64));
        e0 = _mm512_dpbusd_epi32(e0, we, group_query(q[0], g));
        e1 = _mm512_dpbusd_epi32(e1, we, group_query(q[1], g));
        if (n > 2) e2 = _mm512_dpbusd_epi32(e2, we, group_query(q[2], g));
        if (n > 3) e3 = _mm512_dpbusd_epi32(e3, we, group_query(q[3], g));
    }
    acc[0] = _mm512_add_epi32(e0, o0);
    acc[1] = _mm512_add_epi32(e1, o1);
    acc[2] = _mm512_add_epi32(e2, o2);
    acc[3] = _mm512_add_epi32(e3, o3);
}

// A block's 16 biases, bias[l · stride] for its live lanes l. A gather
// is microcoded on some cores (a third of a one-query pass on AMD Zen 4),
// so at the stride the server uses, 3 (an item's count, bias and step
// state side by side), the block's 48 floats are read with three loads and
// its biases picked out with two permutes; the masks stop the loads at the
// last live lane's bias, so nothing past the rows is read.
VNNI_TARGET static inline __m512 block_biases(const float *bias, size_t bias_stride, __m512i stride, __mmask16 live,
                                              size_t lanes) {
    if (bias_stride != 3) return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, stride, bias, 4);
    const size_t n = lanes >= 16 ? 46 : 3 * lanes - 2;  // floats up to the last live lane's bias
    const __mmask16 ma = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
    const __mmask16 mb = n >= 32 ? 0xFFFF : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
    const __mmask16 mc = n <= 32 ? 0 : (__mmask16)((1u << (n - 32)) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(ma, bias);
    const __m512 b = _mm512_maskz_loadu_ps(mb, bias + 16);
    const __m512 c = _mm512_maskz_loadu_ps(mc, bias + 32);
    // Lanes 0-10: floats 0, 3, ..., 30 of a:b; lanes 11-15: floats 33, ..., 45 (c's 1, 4, ..., 13).
    const __m512 ab = _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0, 0, 0, 0, 0), b);
    const __m512 all = _mm512_permutex2var_ps(ab, _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17, 20, 23, 26, 29), c);
    return _mm512_maskz_mov_ps(live, all);
}

VNNI_TARGET static void score_quantised_vnni(const uint8_t *blocks, size_t count, size_t dim,
                                             const int8_t *const *queries, const pk_quantised_query *params, size_t nq,
                                             const float *item_scale, const float *item_l1,
                                             const float *bias, size_t bias_stride,
                                             float *const *upper, double *sum, double *sq) {
    const size_t groups = pk_quantised_groups(dim);
    const size_t nblocks = (count + 15) / 16;
    // Each query's double moments: lanes 0-7 then 8-15.
    __m512d ms[MAX_QUERIES][2], mq[MAX_QUERIES][2];
    for (size_t j = 0; j < nq; j++) ms[j][0] = ms[j][1] = mq[j][0] = mq[j][1] = _mm512_setzero_pd();
    const __m512i stride = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                              _mm512_set1_epi32((int)bias_stride));
    __m512 tile_bias[TILE_BLOCKS];
    for (size_t t0 = 0; t0 < nblocks; t0 += TILE_BLOCKS) {
        const size_t t1 = t0 + TILE_BLOCKS < nblocks ? t0 + TILE_BLOCKS : nblocks;
        // The tile's biases, gathered once for every query.
        for (size_t b = t0; b < t1; b++) {
            const size_t r0 = b * 16;
            const __mmask16 live = count - r0 >= 16 ? 0xFFFF : (__mmask16)((1u << (count - r0)) - 1);
            tile_bias[b - t0] = block_biases(bias + r0 * bias_stride, bias_stride, stride, live, count - r0);
        }
        for (size_t j = 0; j < nq; j += 4) {
            const int n = nq - j >= 4 ? 4 : (int)(nq - j);
            __m512 fs[4], fq[4];
            for (int k = 0; k < 4; k++) fs[k] = fq[k] = _mm512_setzero_ps();
            for (size_t b = t0; b < t1; b++) {
                const size_t r0 = b * 16;
                const __mmask16 live = count - r0 >= 16 ? 0xFFFF : (__mmask16)((1u << (count - r0)) - 1);
                const __m512 s = _mm512_maskz_loadu_ps(live, item_scale + r0);
                const __m512 l1 = _mm512_maskz_loadu_ps(live, item_l1 + r0);
                __m512i acc[4];
                block_dots(blocks + b * groups * 64, groups, queries + j, n, acc);
                for (int k = 0; k < n; k++)
                    finish_block(acc[k], params[j + k], bound_half(params[j + k].scale, dim), s, l1, tile_bias[b - t0], live,
                                 upper[j + k] + r0, &fs[k], &fq[k]);
            }
            for (int k = 0; k < n; k++) flush_tile_vnni(fs[k], fq[k], ms[j + k], mq[j + k]);
        }
    }
    for (size_t j = 0; j < nq; j++) {
        double ls[16], lq[16];
        _mm512_storeu_pd(ls, ms[j][0]);
        _mm512_storeu_pd(ls + 8, ms[j][1]);
        _mm512_storeu_pd(lq, mq[j][0]);
        _mm512_storeu_pd(lq + 8, mq[j][1]);
        add_moments(ls, lq, sum + j, sq + j);
    }
}

// The same with AVX2: VPMADDUBSW multiplies a row's four unsigned bytes by
// the query's four signed ones and adds them in pairs (which cannot
// saturate with seven-bit queries), VPMADDWD adds the pairs: each row's
// piece of its dot product in one 32-bit lane, eight rows per register.
// Like the VNNI path, a block's bytes are loaded once for up to four
// queries (the same integers as one query at a time: integer sums are
// exact in any order).
__attribute__((target("avx2"), always_inline)) static inline void block_dots4_avx2(const uint8_t *block, size_t groups,
                                                                                   const int8_t *const *q, int n,
                                                                                   int32_t dot[4][16]) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    for (size_t g = 0; g < groups; g++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)(block + g * 64));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(const void *)(block + g * 64 + 32));
#define PK_DOTS_AVX2(K, A0, A1) \
        if (n > K) { \
            const __m256i qb = _mm256_set1_epi32(*(const int32_t *)(const void *)(q[K] + 4 * g)); \
            A0 = _mm256_add_epi32(A0, _mm256_madd_epi16(_mm256_maddubs_epi16(w0, qb), ones)); \
            A1 = _mm256_add_epi32(A1, _mm256_madd_epi16(_mm256_maddubs_epi16(w1, qb), ones)); \
        }
        PK_DOTS_AVX2(0, a00, a01)
        PK_DOTS_AVX2(1, a10, a11)
        PK_DOTS_AVX2(2, a20, a21)
        PK_DOTS_AVX2(3, a30, a31)
#undef PK_DOTS_AVX2
    }
    _mm256_storeu_si256((__m256i *)(void *)dot[0], a00);
    _mm256_storeu_si256((__m256i *)(void *)(dot[0] + 8), a01);
    _mm256_storeu_si256((__m256i *)(void *)dot[1], a10);
    _mm256_storeu_si256((__m256i *)(void *)(dot[1] + 8), a11);
    _mm256_storeu_si256((__m256i *)(void *)dot[2], a20);
    _mm256_storeu_si256((__m256i *)(void *)(dot[2] + 8), a21);
    _mm256_storeu_si256((__m256i *)(void *)dot[3], a30);
    _mm256_storeu_si256((__m256i *)(void *)(dot[3] + 8), a31);
}

// finish_lanes for a whole block, eight lanes at a time, the same steps in
// the same order (no FMA in the target: the float steps stay separate).
// The biases are the tile's contiguous copy (AVX2 gathers are slow on
// some CPUs, and a tile's biases serve every query).
__attribute__((target("avx2"), always_inline)) static inline void finish_lanes_avx2(
    const int32_t *dot, size_t live, pk_quantised_query p, float half_, const float *s, const float *l1,
    const float *bias, float *upper, float *fs, float *fq) {
    if (live < 16) {
        finish_lanes(dot, live, p, half_, s, l1, bias, 1, upper, fs, fq);
        return;
    }
    const __m256 t = _mm256_set1_ps(p.scale), ql1 = _mm256_set1_ps((float)p.l1);
    const __m256 half = _mm256_set1_ps(half_), big = _mm256_set1_ps(3.0e38f);
    for (int h = 0; h < 16; h += 8) {
        const __m256 sh = _mm256_loadu_ps(s + h);
        const __m256 scale = _mm256_mul_ps(t, sh);
        __m256 a = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(const void *)(dot + h))), scale);
        a = _mm256_add_ps(a, _mm256_loadu_ps(bias + h));
        __m256 e = _mm256_mul_ps(sh, ql1);
        e = _mm256_add_ps(e, _mm256_loadu_ps(l1 + h));
        e = _mm256_mul_ps(e, half);
        const __m256 finite = _mm256_cmp_ps(scale, big, _CMP_LE_OQ);
        _mm256_storeu_ps(upper + h, _mm256_blendv_ps(_mm256_set1_ps(INFINITY), _mm256_add_ps(a, e), finite));
        const __m256 d = _mm256_and_ps(a, finite);
        _mm256_storeu_ps(fs + h, _mm256_add_ps(_mm256_loadu_ps(fs + h), d));
        _mm256_storeu_ps(fq + h, _mm256_add_ps(_mm256_loadu_ps(fq + h), _mm256_mul_ps(d, d)));
    }
}

// The AVX2 pass, tiled like the VNNI one: a tile (16 KB at dim 64, inside
// L1) is scored for every query, four at a time, before the next is read.
// Each query still sees its blocks in order and flushes its float moments
// at the same tile ends as the plain loop, so the bits are the same.
__attribute__((target("avx2"))) static void score_quantised_avx2_slice(
    const uint8_t *blocks, size_t count, size_t dim, const int8_t *const *queries, const pk_quantised_query *params,
    size_t nq, const float *item_scale, const float *item_l1, const float *bias, size_t bias_stride,
    float *const *upper, double *sum, double *sq) {
    const size_t groups = pk_quantised_groups(dim);
    const size_t nblocks = (count + 15) / 16;
    double ls[MAX_QUERIES][16], lq[MAX_QUERIES][16];
    memset(ls, 0, sizeof(double) * 16 * nq);
    memset(lq, 0, sizeof(double) * 16 * nq);
    float tile_bias[TILE_BLOCKS * 16];
    for (size_t t0 = 0; t0 < nblocks; t0 += TILE_BLOCKS) {
        const size_t t1 = t0 + TILE_BLOCKS < nblocks ? t0 + TILE_BLOCKS : nblocks;
        const size_t rows = (t1 * 16 < count ? t1 * 16 : count) - t0 * 16;
        for (size_t r = 0; r < rows; r++) tile_bias[r] = bias[(t0 * 16 + r) * bias_stride];
        for (size_t j = 0; j < nq; j += 4) {
            const int n = nq - j >= 4 ? 4 : (int)(nq - j);
            float fs[4][16] = {{0}}, fq[4][16] = {{0}};
            for (size_t b = t0; b < t1; b++) {
                const size_t r0 = b * 16;
                const size_t live = count - r0 < 16 ? count - r0 : 16;
                int32_t dot[4][16];
                block_dots4_avx2(blocks + b * groups * 64, groups, queries + j, n, dot);
                for (int k = 0; k < n; k++) {
                    const int32_t offset = 128 * params[j + k].sum;
                    for (int lane = 0; lane < 16; lane++) dot[k][lane] -= offset;
                    finish_lanes_avx2(dot[k], live, params[j + k], bound_half(params[j + k].scale, dim), item_scale + r0,
                                      item_l1 + r0, tile_bias + (r0 - t0 * 16), upper[j + k] + r0, fs[k], fq[k]);
                }
            }
            for (int k = 0; k < n; k++) flush_tile(fs[k], fq[k], ls[j + k], lq[j + k]);
        }
    }
    for (size_t j = 0; j < nq; j++) add_moments(ls[j], lq[j], sum + j, sq + j);
}

typedef void (*scan_slice_fn)(const uint8_t *, size_t, size_t, const int8_t *const *, const pk_quantised_query *,
                              size_t, const float *, const float *, const float *, size_t, float *const *, double *,
                              double *);

// A tiled pass in slices of at most MAX_QUERIES queries (its moments live
// on its stack).
static void score_in_slices(scan_slice_fn slice, const uint8_t *blocks, size_t count, size_t dim,
                            const int8_t *const *queries, const pk_quantised_query *params, size_t nq,
                            const float *item_scale, const float *item_l1, const float *bias, size_t bias_stride,
                            float *const *upper, double *sum, double *sq) {
    while (nq > 0) {
        const size_t n = nq < MAX_QUERIES ? nq : MAX_QUERIES;
        slice(blocks, count, dim, queries, params, n, item_scale, item_l1, bias, bias_stride, upper, sum, sq);
        queries += n; params += n; upper += n; sum += n; sq += n;
        nq -= n;
    }
}

static void score_quantised_avx2(const uint8_t *blocks, size_t count, size_t dim, const int8_t *const *queries,
                                 const pk_quantised_query *params, size_t nq, const float *item_scale,
                                 const float *item_l1, const float *bias, size_t bias_stride, float *const *upper,
                                 double *sum, double *sq) {
    score_in_slices(score_quantised_avx2_slice, blocks, count, dim, queries, params, nq, item_scale, item_l1, bias,
                    bias_stride, upper, sum, sq);
}

static int vnni_state = 0, avx2_state = 0;

__attribute__((constructor)) static void detect_vnni(void) {
    __builtin_cpu_init();
    vnni_state = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vnni");
    avx2_state = __builtin_cpu_supports("avx2");
}

// The AVX-512 path; returns 0 when the CPU has no VNNI.
static int score_quantised_vnni_sliced(const uint8_t *blocks, size_t count, size_t dim,
                                       const int8_t *const *queries, const pk_quantised_query *params, size_t nq,
                                       const float *item_scale, const float *item_l1,
                                       const float *bias, size_t bias_stride,
                                       float *const *upper, double *sum, double *sq) {
    if (!vnni_state) return 0;
    score_in_slices(score_quantised_vnni, blocks, count, dim, queries, params, nq, item_scale, item_l1, bias,
                    bias_stride, upper, sum, sq);
    return 1;
}
#else
#define avx2_state 0
#define score_quantised_avx2 score_quantised_plain
#define score_quantised_vnni_sliced(...) 0
#endif

void pk_score_quantised_batch_avx2(const uint8_t *blocks, size_t count, size_t dim,
                                   const int8_t *const *queries, const pk_quantised_query *params, size_t nq,
                                   const float *item_scale, const float *item_l1,
                                   const float *bias, size_t bias_stride,
                                   float *const *upper, double *sum, double *sq) {
    if (avx2_state)
        score_quantised_avx2(blocks, count, dim, queries, params, nq, item_scale, item_l1, bias, bias_stride, upper, sum, sq);
    else
        score_quantised_plain(blocks, count, dim, queries, params, nq, item_scale, item_l1, bias, bias_stride, upper, sum, sq);
}

void pk_score_quantised_batch(const uint8_t *blocks, size_t count, size_t dim,
                              const int8_t *const *queries, const pk_quantised_query *params, size_t nq,
                              const float *item_scale, const float *item_l1,
                              const float *bias, size_t bias_stride,
                              float *const *upper, double *sum, double *sq) {
    if (!score_quantised_vnni_sliced(blocks, count, dim, queries, params, nq, item_scale, item_l1, bias, bias_stride,
                                     upper, sum, sq))
        pk_score_quantised_batch_avx2(blocks, count, dim, queries, params, nq, item_scale, item_l1, bias, bias_stride,
                                      upper, sum, sq);
}
