// See perennial_kernels.h. The fast path keeps four 8-wide accumulators per
// row (32 floats per step, the common dim 64 in two steps) and sums them with
// a tree, which is what lets one core approach its FMA throughput.
#include "perennial_kernels.h"

void pk_dot_rows_plain(const float *rows, size_t count, size_t dim, const float *query, float *out) {
    for (size_t r = 0; r < count; r++) {
        const float *row = rows + r * dim;
        float s = 0;
        for (size_t k = 0; k < dim; k++) s += row[k] * query[k];
        out[r] = s;
    }
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

static int fast_path_state = -1;

int pk_has_fast_path(void) {
    if (fast_path_state < 0) {
        __builtin_cpu_init();
        fast_path_state = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return fast_path_state;
}

void pk_dot_rows(const float *rows, size_t count, size_t dim, const float *query, float *out) {
    if (pk_has_fast_path()) dot_rows_avx2(rows, count, dim, query, out);
    else pk_dot_rows_plain(rows, count, dim, query, out);
}
#else
int pk_has_fast_path(void) { return 0; }
void pk_dot_rows(const float *rows, size_t count, size_t dim, const float *query, float *out) {
    pk_dot_rows_plain(rows, count, dim, query, out);
}
#endif
