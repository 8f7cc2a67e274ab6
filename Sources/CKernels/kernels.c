// See perennial_kernels.h. The fast path keeps four 8-wide accumulators per
// row (32 floats per step, the common dim 64 in two steps) and sums them with
// a tree, which is what lets one core approach its FMA throughput.
#include "perennial_kernels.h"

#include <math.h>

void pk_dot_rows_plain(const float *rows, size_t count, size_t dim, const float *query, float *out) {
    for (size_t r = 0; r < count; r++) {
        const float *row = rows + r * dim;
        float s = 0;
        for (size_t k = 0; k < dim; k++) s += row[k] * query[k];
        out[r] = s;
    }
}

void pk_score_rows_plain(const float *rows, size_t count, size_t dim, const float *query,
                         const float *bias, size_t bias_stride, float *out, double *sum, double *sq) {
    double s = *sum, q = *sq;
    for (size_t r = 0; r < count; r++) {
        const float *row = rows + r * dim;
        float dot = 0;
        for (size_t k = 0; k < dim; k++) dot += row[k] * query[k];
        const float v = bias[r * bias_stride] + dot;
        out[r] = v;
        s += (double)v;
        q += (double)v * (double)v;
    }
    *sum = s;
    *sq = q;
}

size_t pk_next_at_least_plain(const float *x, size_t from, size_t count, float threshold) {
    for (size_t i = from; i < count; i++)
        if (x[i] >= threshold) return i;
    return count;
}

// Plain loops over contiguous rows: the inner loop is an axpy, which the
// compiler vectorises at -O3 for whatever the baseline ISA offers.
void pk_matvec_t_acc(const float *m, size_t rows, size_t cols, const float *v, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const float *row = m + r * cols;
        const float a = v[r];
        if (a == 0) continue;
        for (size_t c = 0; c < cols; c++) out[c] += a * row[c];
    }
}

void pk_outer_acc(float *m, size_t rows, size_t cols, const float *a, const float *b) {
    for (size_t r = 0; r < rows; r++) {
        float *row = m + r * cols;
        const float x = a[r];
        if (x == 0) continue;
        for (size_t c = 0; c < cols; c++) row[c] += x * b[c];
    }
}

// Without branches: which slots are empty, and which neighbours are new, is
// a coin toss per slot, and mispredicted branches made this loop cost about
// 6 ns a slot. A skipped slot adds to a local dummy instead. Whether a
// neighbour is new decides where the next one is written, so each slot
// waits for that test: with `seen` (one byte per item, a few kilobytes that
// stay in L1) the wait is an L1 hit, not a load of the scattered scores.
size_t pk_accumulate_neighbours(const float *slots, size_t capacity, float weight, size_t items, float *out,
                                unsigned char *seen, int *touched, size_t touched_count) {
    const unsigned *keys = (const unsigned *)slots;
    float dummy = 1;
    unsigned char dummy_seen = 1;
    for (size_t s = 0; s < capacity; s++) {
        const unsigned key = keys[2 * s];
        const float count = slots[2 * s + 1];
        // Empty (0xFFFFFFFF) and negative keys are >= 2^31 as unsigned;
        // count - count is 0 only for a finite count.
        const int valid = (key < items) & (count - count == 0);
        const size_t at = valid ? key : 0;
        float *p = valid ? out + at : &dummy;
        touched[touched_count] = (int)key;
        if (seen) {
            unsigned char *m = valid ? seen + at : &dummy_seen;
            touched_count += (size_t)(valid & (*m == 0));
            *m = 1;
        } else {
            touched_count += (size_t)(valid & (*p == 0));
        }
        *p += valid ? weight * count : 0;
        dummy = 1;
        dummy_seen = 1;
    }
    return touched_count;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("avx2,fma")))
static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma")))
static void dot_rows_avx2(const float *rows, size_t count, size_t dim, const float *query, float *out) {
    size_t main = dim & ~(size_t)31;
    size_t tail8 = dim & ~(size_t)7;
    for (size_t r = 0; r < count; r++) {
        const float *row = rows + r * dim;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        size_t k = 0;
        for (; k < main; k += 32) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + k), _mm256_loadu_ps(query + k), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + k + 8), _mm256_loadu_ps(query + k + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(row + k + 16), _mm256_loadu_ps(query + k + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(row + k + 24), _mm256_loadu_ps(query + k + 24), a3);
        }
        for (; k < tail8; k += 8) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + k), _mm256_loadu_ps(query + k), a0);
        }
        float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (; k < dim; k++) s += row[k] * query[k];
        out[r] = s;
    }
}

// The catalogue pass, for one query or a batch of them.
//
// Every (row, query) pair gets the same arithmetic whatever else is in the
// batch: an 8-lane accumulator (row[0:8] * q[0:8], then one FMA per further
// 8 dimensions), reduced with the horizontal-add tree of a group of four
// rows; rows past the last whole group of four are reduced with hsum256.
// The moments are four double lanes per query (one per row of a group),
// combined at the end of the call. So a query's scores and moments are bit
// for bit the same alone or in a batch, and a request's answer does not
// depend on which other requests arrived with it.
//
// One query: it lives in NV registers (NV = dim / 8, a compile-time constant
// in each instance below), so each step loads only the rows; reloading the
// query for every row doubled the loads, and loads bound this loop. A batch:
// the rows are taken a tile at a time (TILE_ROWS rows, small enough to stay
// in L1) and every query of the batch scores the tile before the next one is
// read, two queries at a time (four rows x two queries = eight accumulators,
// each row load feeding two FMAs). A catalogue larger than L2 is then read
// from memory once per batch instead of once per query.
#define TILE_ROWS 64

// Sums of a group's four accumulators, one per lane of the result.
__attribute__((target("avx2,fma"), always_inline))
static inline __m128 group_sums(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    // hadd twice gives each row's sum per 128-bit half; adding the halves finishes it.
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// Adds the group's biases, stores the four scores and adds them to the moments.
__attribute__((target("avx2,fma"), always_inline))
static inline void group_finish(__m128 x, const float *b, size_t st, float *out, __m256d *s, __m256d *s2) {
    x = _mm_add_ps(_mm_set_ps(b[3 * st], b[2 * st], b[st], b[0]), x);
    _mm_storeu_ps(out, x);
    const __m256d d = _mm256_cvtps_pd(x);
    *s = _mm256_add_pd(*s, d);
    *s2 = _mm256_fmadd_pd(d, d, *s2);
}

// Groups of four rows [r0, r1) against one query held in registers.
__attribute__((target("avx2,fma"), always_inline))
static inline void groups_1(const float *rows, size_t r0, size_t r1, const __m256 *q, const int NV,
                            const float *bias, size_t st, float *out, __m256d *s, __m256d *s2) {
    const size_t dim = (size_t)NV * 8;
    for (size_t r = r0; r < r1; r += 4) {
        const float *p = rows + r * dim;
        __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(p), q[0]);
        __m256 a1 = _mm256_mul_ps(_mm256_loadu_ps(p + dim), q[0]);
        __m256 a2 = _mm256_mul_ps(_mm256_loadu_ps(p + 2 * dim), q[0]);
        __m256 a3 = _mm256_mul_ps(_mm256_loadu_ps(p + 3 * dim), q[0]);
        for (int v = 1; v < NV; v++) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8 * v), q[v], a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + dim + 8 * v), q[v], a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 2 * dim + 8 * v), q[v], a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 3 * dim + 8 * v), q[v], a3);
        }
        group_finish(group_sums(a0, a1, a2, a3), bias + r * st, st, out + r, s, s2);
    }
}

// Groups of four rows [r0, r1) against two queries (read from L1 each step).
__attribute__((target("avx2,fma"), always_inline))
static inline void groups_2(const float *rows, size_t r0, size_t r1, const float *qa, const float *qb, const int NV,
                            const float *bias, size_t st, float *outa, float *outb,
                            __m256d *sa, __m256d *s2a, __m256d *sb, __m256d *s2b) {
    const size_t dim = (size_t)NV * 8;
    for (size_t r = r0; r < r1; r += 4) {
        const float *p = rows + r * dim;
        __m256 x = _mm256_loadu_ps(qa), y = _mm256_loadu_ps(qb);
        __m256 w0 = _mm256_loadu_ps(p), w1 = _mm256_loadu_ps(p + dim);
        __m256 w2 = _mm256_loadu_ps(p + 2 * dim), w3 = _mm256_loadu_ps(p + 3 * dim);
        __m256 a0 = _mm256_mul_ps(w0, x), a1 = _mm256_mul_ps(w1, x), a2 = _mm256_mul_ps(w2, x), a3 = _mm256_mul_ps(w3, x);
        __m256 b0 = _mm256_mul_ps(w0, y), b1 = _mm256_mul_ps(w1, y), b2 = _mm256_mul_ps(w2, y), b3 = _mm256_mul_ps(w3, y);
        for (int v = 1; v < NV; v++) {
            x = _mm256_loadu_ps(qa + 8 * v);
            y = _mm256_loadu_ps(qb + 8 * v);
            w0 = _mm256_loadu_ps(p + 8 * v);
            w1 = _mm256_loadu_ps(p + dim + 8 * v);
            w2 = _mm256_loadu_ps(p + 2 * dim + 8 * v);
            w3 = _mm256_loadu_ps(p + 3 * dim + 8 * v);
            a0 = _mm256_fmadd_ps(w0, x, a0); b0 = _mm256_fmadd_ps(w0, y, b0);
            a1 = _mm256_fmadd_ps(w1, x, a1); b1 = _mm256_fmadd_ps(w1, y, b1);
            a2 = _mm256_fmadd_ps(w2, x, a2); b2 = _mm256_fmadd_ps(w2, y, b2);
            a3 = _mm256_fmadd_ps(w3, x, a3); b3 = _mm256_fmadd_ps(w3, y, b3);
        }
        const float *b = bias + r * st;
        group_finish(group_sums(a0, a1, a2, a3), b, st, outa + r, sa, s2a);
        group_finish(group_sums(b0, b1, b2, b3), b, st, outb + r, sb, s2b);
    }
}

// Rows [from, count) one by one (the last group's remainder), then the
// query's moments: its four lanes, then the remainder, added to *sum, *sq.
__attribute__((target("avx2,fma"), always_inline))
static inline void finish_query(const float *rows, size_t from, size_t count, const float *query, const int NV,
                                const float *bias, size_t st, float *out, __m256d s, __m256d s2,
                                double *sum, double *sq) {
    const size_t dim = (size_t)NV * 8;
    double ls[4], lq[4];
    _mm256_storeu_pd(ls, s);
    _mm256_storeu_pd(lq, s2);
    double ts = *sum + ((ls[0] + ls[1]) + (ls[2] + ls[3])), tq = *sq + ((lq[0] + lq[1]) + (lq[2] + lq[3]));
    for (size_t r = from; r < count; r++) {
        const float *p = rows + r * dim;
        __m256 a = _mm256_mul_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(query));
        for (int v = 1; v < NV; v++) a = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8 * v), _mm256_loadu_ps(query + 8 * v), a);
        const float x = bias[r * st] + hsum256(a);
        out[r] = x;
        ts += (double)x;
        tq += (double)x * (double)x;
    }
    *sum = ts;
    *sq = tq;
}

// At most this many queries per call (the moments live on the stack).
#define MAX_BATCH 64

__attribute__((target("avx2,fma"), always_inline))
static inline void score_rows_batch_q(const float *rows, size_t count, const float *const *queries, size_t nq,
                                      const int NV, const float *bias, size_t st, float *const *out,
                                      double *sum, double *sq) {
    const size_t groups_end = count & ~(size_t)3;
    if (nq == 1) {
        __m256 q[8];
        for (int v = 0; v < NV; v++) q[v] = _mm256_loadu_ps(queries[0] + 8 * v);
        __m256d s = _mm256_setzero_pd(), s2 = _mm256_setzero_pd();
        groups_1(rows, 0, groups_end, q, NV, bias, st, out[0], &s, &s2);
        finish_query(rows, groups_end, count, queries[0], NV, bias, st, out[0], s, s2, sum, sq);
        return;
    }
    __m256d s[MAX_BATCH], s2[MAX_BATCH];
    for (size_t j = 0; j < nq; j++) { s[j] = _mm256_setzero_pd(); s2[j] = _mm256_setzero_pd(); }
    for (size_t t = 0; t < groups_end; t += TILE_ROWS) {
        const size_t end = t + TILE_ROWS < groups_end ? t + TILE_ROWS : groups_end;
        size_t j = 0;
        for (; j + 2 <= nq; j += 2)
            groups_2(rows, t, end, queries[j], queries[j + 1], NV, bias, st, out[j], out[j + 1],
                     &s[j], &s2[j], &s[j + 1], &s2[j + 1]);
        if (j < nq) {
            __m256 q[8];
            for (int v = 0; v < NV; v++) q[v] = _mm256_loadu_ps(queries[j] + 8 * v);
            groups_1(rows, t, end, q, NV, bias, st, out[j], &s[j], &s2[j]);
        }
    }
    for (size_t j = 0; j < nq; j++)
        finish_query(rows, groups_end, count, queries[j], NV, bias, st, out[j], s[j], s2[j], sum + j, sq + j);
}

// Other dimensions: the general dot kernel, then biases and moments.
__attribute__((target("avx2,fma")))
static void score_rows_general(const float *rows, size_t count, size_t dim, const float *query,
                               const float *bias, size_t st, float *out, double *sum, double *sq) {
    dot_rows_avx2(rows, count, dim, query, out);
    double ts = *sum, tq = *sq;
    for (size_t r = 0; r < count; r++) {
        const float v = out[r] + bias[r * st];
        out[r] = v;
        ts += (double)v;
        tq += (double)v * (double)v;
    }
    *sum = ts;
    *sq = tq;
}

#define SCORE_ROWS_NV(N) \
    __attribute__((target("avx2,fma"))) static void score_rows_##N(const float *rows, size_t count, \
        const float *const *queries, size_t nq, const float *bias, size_t st, float *const *out, double *sum, double *sq) { \
        score_rows_batch_q(rows, count, queries, nq, N, bias, st, out, sum, sq); \
    }
SCORE_ROWS_NV(1) SCORE_ROWS_NV(2) SCORE_ROWS_NV(3) SCORE_ROWS_NV(4)
SCORE_ROWS_NV(5) SCORE_ROWS_NV(6) SCORE_ROWS_NV(7) SCORE_ROWS_NV(8)

static void score_rows_batch_avx2(const float *rows, size_t count, size_t dim, const float *const *queries, size_t nq,
                                  const float *bias, size_t st, float *const *out, double *sum, double *sq) {
    // Larger batches in slices (each query's arithmetic is the same either way).
    while (nq > MAX_BATCH) {
        score_rows_batch_avx2(rows, count, dim, queries, MAX_BATCH, bias, st, out, sum, sq);
        queries += MAX_BATCH; out += MAX_BATCH; sum += MAX_BATCH; sq += MAX_BATCH; nq -= MAX_BATCH;
    }
    switch (dim % 8 == 0 ? dim / 8 : 0) {
    case 1: score_rows_1(rows, count, queries, nq, bias, st, out, sum, sq); break;
    case 2: score_rows_2(rows, count, queries, nq, bias, st, out, sum, sq); break;
    case 3: score_rows_3(rows, count, queries, nq, bias, st, out, sum, sq); break;
    case 4: score_rows_4(rows, count, queries, nq, bias, st, out, sum, sq); break;
    case 5: score_rows_5(rows, count, queries, nq, bias, st, out, sum, sq); break;
    case 6: score_rows_6(rows, count, queries, nq, bias, st, out, sum, sq); break;
    case 7: score_rows_7(rows, count, queries, nq, bias, st, out, sum, sq); break;
    case 8: score_rows_8(rows, count, queries, nq, bias, st, out, sum, sq); break;
    default:
        for (size_t j = 0; j < nq; j++) score_rows_general(rows, count, dim, queries[j], bias, st, out[j], sum + j, sq + j);
        break;
    }
}

// Eight comparisons per step; an ordered compare, so NaN never qualifies.
__attribute__((target("avx2,fma")))
static size_t next_at_least_avx2(const float *x, size_t from, size_t count, float threshold) {
    const __m256 t = _mm256_set1_ps(threshold);
    size_t i = from;
    for (; i + 8 <= count; i += 8) {
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), t, _CMP_GE_OQ));
        if (mask) return i + (size_t)__builtin_ctz((unsigned)mask);
    }
    return pk_next_at_least_plain(x, i, count, threshold);
}

// Decided once, before main, so the learner and serving threads only ever
// read it.
static int fast_path_state = 0;

__attribute__((constructor)) static void detect_fast_path(void) {
    __builtin_cpu_init();
    fast_path_state = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

int pk_has_fast_path(void) { return fast_path_state; }

void pk_dot_rows(const float *rows, size_t count, size_t dim, const float *query, float *out) {
    if (pk_has_fast_path()) dot_rows_avx2(rows, count, dim, query, out);
    else pk_dot_rows_plain(rows, count, dim, query, out);
}
void pk_score_rows(const float *rows, size_t count, size_t dim, const float *query,
                   const float *bias, size_t bias_stride, float *out, double *sum, double *sq) {
    pk_score_rows_batch(rows, count, dim, &query, 1, bias, bias_stride, &out, sum, sq);
}
void pk_score_rows_batch(const float *rows, size_t count, size_t dim, const float *const *queries, size_t nq,
                         const float *bias, size_t bias_stride, float *const *out, double *sum, double *sq) {
    if (pk_has_fast_path()) {
        score_rows_batch_avx2(rows, count, dim, queries, nq, bias, bias_stride, out, sum, sq);
    } else {
        for (size_t j = 0; j < nq; j++)
            pk_score_rows_plain(rows, count, dim, queries[j], bias, bias_stride, out[j], sum + j, sq + j);
    }
}

size_t pk_next_at_least(const float *x, size_t from, size_t count, float threshold) {
    return pk_has_fast_path() ? next_at_least_avx2(x, from, count, threshold) : pk_next_at_least_plain(x, from, count, threshold);
}
#else
int pk_has_fast_path(void) { return 0; }
void pk_score_rows(const float *rows, size_t count, size_t dim, const float *query,
                   const float *bias, size_t bias_stride, float *out, double *sum, double *sq) {
    pk_score_rows_plain(rows, count, dim, query, bias, bias_stride, out, sum, sq);
}
void pk_score_rows_batch(const float *rows, size_t count, size_t dim, const float *const *queries, size_t nq,
                         const float *bias, size_t bias_stride, float *const *out, double *sum, double *sq) {
    for (size_t j = 0; j < nq; j++)
        pk_score_rows_plain(rows, count, dim, queries[j], bias, bias_stride, out[j], sum + j, sq + j);
}
size_t pk_next_at_least(const float *x, size_t from, size_t count, float threshold) {
    return pk_next_at_least_plain(x, from, count, threshold);
}
void pk_dot_rows(const float *rows, size_t count, size_t dim, const float *query, float *out) {
    pk_dot_rows_plain(rows, count, dim, query, out);
}
#endif

// The index of the last `value` in x[0..<n], or -1 (a user's history is
// searched for a repeated item on every event: eight at a time from the end).
ptrdiff_t pk_last_index_i32_plain(const int32_t *x, size_t n, int32_t value) {
    for (size_t i = n; i > 0; i--) if (x[i - 1] == value) return (ptrdiff_t)(i - 1);
    return -1;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2")))
static ptrdiff_t last_index_i32_avx2(const int32_t *x, size_t n, int32_t value) {
    const __m256i v = _mm256_set1_epi32(value);
    size_t i = n;
    while (i >= 8) {
        i -= 8;
        const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_loadu_si256((const __m256i *)(x + i)), v)));
        if (mask) return (ptrdiff_t)(i + 31 - (size_t)__builtin_clz((unsigned)mask));
    }
    return pk_last_index_i32_plain(x, i, value);
}

ptrdiff_t pk_last_index_i32(const int32_t *x, size_t n, int32_t value) {
    return pk_has_fast_path() ? last_index_i32_avx2(x, n, value) : pk_last_index_i32_plain(x, n, value);
}
#else
ptrdiff_t pk_last_index_i32(const int32_t *x, size_t n, int32_t value) { return pk_last_index_i32_plain(x, n, value); }
#endif
