// See perennial_kernels.h. The fast dot path keeps four 8-wide accumulators
// per row (32 floats per step, the common dim 64 in two steps) and sums them
// with a tree. (The catalogue pass itself is in quantised_scan.c.)
#include "perennial_kernels.h"

#include <math.h>
#include <string.h>

void pk_dot_rows_strided_plain(const float *rows, size_t count, size_t stride, size_t dim, const float *query, float *out) {
    for (size_t r = 0; r < count; r++) {
        const float *row = rows + r * stride;
        float s = 0;
        for (size_t k = 0; k < dim; k++) s += row[k] * query[k];
        out[r] = s;
    }
}

void pk_dot_rows_plain(const float *rows, size_t count, size_t dim, const float *query, float *out) {
    pk_dot_rows_strided_plain(rows, count, dim, dim, query, out);
}

size_t pk_next_at_least_plain(const float *x, size_t from, size_t count, float threshold) {
    for (size_t i = from; i < count; i++)
        if (x[i] >= threshold) return i;
    return count;
}

// Plain loops over contiguous rows: the inner loop is an axpy, which the
// compiler vectorises at -O3 for whatever the baseline ISA offers (SSE2 on
// x86-64; the AVX2+FMA versions below take eight floats per instruction).
void pk_axpy_plain(float a, const float *x, float *y, size_t n) {
    for (size_t k = 0; k < n; k++) y[k] += a * x[k];
}

void pk_matvec_t_acc_plain(const float *m, size_t rows, size_t cols, const float *v, float *out) {
    for (size_t r = 0; r < rows; r++)
        if (v[r] != 0) pk_axpy_plain(v[r], m + r * cols, out, cols);
}

void pk_outer_acc_plain(float *m, size_t rows, size_t cols, const float *a, const float *b) {
    for (size_t r = 0; r < rows; r++)
        if (a[r] != 0) pk_axpy_plain(a[r], b, m + r * cols, cols);
}

void pk_outer_acc_steps_plain(float *m, size_t rows, size_t cols, const float *a, size_t a_stride, const float *b,
                              size_t b_stride, size_t steps) {
    for (size_t s = 0; s < steps; s++) pk_outer_acc_plain(m, rows, cols, a + s * a_stride, b + s * b_stride);
}

// Without branches: which slots are empty, and which neighbours are new, is
// a coin toss per slot, and mispredicted branches made this loop cost about
// 6 ns a slot. A skipped slot adds to a local dummy instead. Whether a
// neighbour is new decides where the next one is written, so each slot
// waits for that test: with `seen` (one byte per item, a few kilobytes that
// stay in L1) the wait is an L1 hit, not a load of the scattered scores.
size_t pk_accumulate_neighbours(const float *slots, size_t capacity, float weight, size_t items, float *out,
                                unsigned char *seen, int *touched, size_t touched_count) {
    float dummy = 1;
    unsigned char dummy_seen = 1;
    for (size_t s = 0; s < capacity; s++) {
        // (The key's bits read with memcpy, not through an unsigned
        // pointer into float memory: C's aliasing rules allow only this.)
        unsigned key;
        memcpy(&key, &slots[2 * s], sizeof key);
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
static void dot_rows_avx2(const float *rows, size_t count, size_t stride, size_t dim, const float *query, float *out) {
    size_t main = dim & ~(size_t)31;
    size_t tail8 = dim & ~(size_t)7;
    for (size_t r = 0; r < count; r++) {
        const float *row = rows + r * stride;
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

// out += a * row, eight floats per step with FMA; the tail as the plain loop.
__attribute__((target("avx2,fma")))
static inline void axpy_avx2(float a, const float *row, float *out, size_t n) {
    const __m256 va = _mm256_set1_ps(a);
    size_t c = 0;
    for (; c + 8 <= n; c += 8)
        _mm256_storeu_ps(out + c, _mm256_fmadd_ps(va, _mm256_loadu_ps(row + c), _mm256_loadu_ps(out + c)));
    for (; c < n; c++) out[c] += a * row[c];
}

// out[0..<len] += the sum over s < count of coef[s * coef_stride] *
// vecs[s * vec_stride ..< + len]: each 32-float piece of `out` stays in four
// registers while every scaled vector is added, instead of being loaded
// and stored once per vector. (A transposed matrix-vector product is this
// with the matrix's rows as the vectors; a weight gradient over time steps
// is this for each of its rows.)
__attribute__((target("avx2,fma")))
static void accumulate_scaled_avx2(float *out, size_t len, const float *coef, size_t coef_stride, const float *vecs,
                                   size_t vec_stride, size_t count) {
    size_t c0 = 0;
    for (; c0 + 32 <= len; c0 += 32) {
        __m256 o0 = _mm256_loadu_ps(out + c0), o1 = _mm256_loadu_ps(out + c0 + 8);
        __m256 o2 = _mm256_loadu_ps(out + c0 + 16), o3 = _mm256_loadu_ps(out + c0 + 24);
        for (size_t s = 0; s < count; s++) {
            const float x = coef[s * coef_stride];
            if (x == 0) continue;
            const __m256 vx = _mm256_set1_ps(x);
            const float *vs = vecs + s * vec_stride + c0;
            o0 = _mm256_fmadd_ps(vx, _mm256_loadu_ps(vs), o0);
            o1 = _mm256_fmadd_ps(vx, _mm256_loadu_ps(vs + 8), o1);
            o2 = _mm256_fmadd_ps(vx, _mm256_loadu_ps(vs + 16), o2);
            o3 = _mm256_fmadd_ps(vx, _mm256_loadu_ps(vs + 24), o3);
        }
        _mm256_storeu_ps(out + c0, o0); _mm256_storeu_ps(out + c0 + 8, o1);
        _mm256_storeu_ps(out + c0 + 16, o2); _mm256_storeu_ps(out + c0 + 24, o3);
    }
    if (c0 < len) {
        for (size_t s = 0; s < count; s++) {
            const float x = coef[s * coef_stride];
            if (x != 0) axpy_avx2(x, vecs + s * vec_stride + c0, out + c0, len - c0);
        }
    }
}

__attribute__((target("avx2,fma")))
static void matvec_t_acc_avx2(const float *m, size_t rows, size_t cols, const float *v, float *out) {
    accumulate_scaled_avx2(out, cols, v, 1, m, cols, rows);
}

__attribute__((target("avx2,fma")))
static void outer_acc_avx2(float *m, size_t rows, size_t cols, const float *a, const float *b) {
    for (size_t r = 0; r < rows; r++)
        if (a[r] != 0) axpy_avx2(a[r], b, m + r * cols, cols);
}

// Each row of m is read and written once for all the steps (the per-step
// form read and wrote the whole matrix once per step).
__attribute__((target("avx2,fma")))
static void outer_acc_steps_avx2(float *m, size_t rows, size_t cols, const float *a, size_t a_stride, const float *b,
                                 size_t b_stride, size_t steps) {
    for (size_t r = 0; r < rows; r++) accumulate_scaled_avx2(m + r * cols, cols, a + r, a_stride, b, b_stride, steps);
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

void pk_dot_rows_strided(const float *rows, size_t count, size_t stride, size_t dim, const float *query, float *out) {
    if (pk_has_fast_path()) dot_rows_avx2(rows, count, stride, dim, query, out);
    else pk_dot_rows_strided_plain(rows, count, stride, dim, query, out);
}
size_t pk_next_at_least(const float *x, size_t from, size_t count, float threshold) {
    return pk_has_fast_path() ? next_at_least_avx2(x, from, count, threshold) : pk_next_at_least_plain(x, from, count, threshold);
}
void pk_matvec_t_acc(const float *m, size_t rows, size_t cols, const float *v, float *out) {
    if (pk_has_fast_path()) matvec_t_acc_avx2(m, rows, cols, v, out);
    else pk_matvec_t_acc_plain(m, rows, cols, v, out);
}
void pk_outer_acc(float *m, size_t rows, size_t cols, const float *a, const float *b) {
    if (pk_has_fast_path()) outer_acc_avx2(m, rows, cols, a, b);
    else pk_outer_acc_plain(m, rows, cols, a, b);
}
void pk_axpy(float a, const float *x, float *y, size_t n) {
    if (pk_has_fast_path()) axpy_avx2(a, x, y, n);
    else pk_axpy_plain(a, x, y, n);
}
void pk_outer_acc_steps(float *m, size_t rows, size_t cols, const float *a, size_t a_stride, const float *b,
                        size_t b_stride, size_t steps) {
    if (pk_has_fast_path()) outer_acc_steps_avx2(m, rows, cols, a, a_stride, b, b_stride, steps);
    else pk_outer_acc_steps_plain(m, rows, cols, a, a_stride, b, b_stride, steps);
}
#else
int pk_has_fast_path(void) { return 0; }
size_t pk_next_at_least(const float *x, size_t from, size_t count, float threshold) {
    return pk_next_at_least_plain(x, from, count, threshold);
}
void pk_matvec_t_acc(const float *m, size_t rows, size_t cols, const float *v, float *out) {
    pk_matvec_t_acc_plain(m, rows, cols, v, out);
}
void pk_outer_acc(float *m, size_t rows, size_t cols, const float *a, const float *b) {
    pk_outer_acc_plain(m, rows, cols, a, b);
}
void pk_axpy(float a, const float *x, float *y, size_t n) { pk_axpy_plain(a, x, y, n); }
void pk_outer_acc_steps(float *m, size_t rows, size_t cols, const float *a, size_t a_stride, const float *b,
                        size_t b_stride, size_t steps) {
    pk_outer_acc_steps_plain(m, rows, cols, a, a_stride, b, b_stride, steps);
}
void pk_dot_rows_strided(const float *rows, size_t count, size_t stride, size_t dim, const float *query, float *out) {
    pk_dot_rows_strided_plain(rows, count, stride, dim, query, out);
}
#endif

void pk_dot_rows(const float *rows, size_t count, size_t dim, const float *query, float *out) {
    pk_dot_rows_strided(rows, count, dim, dim, query, out);
}

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
