// See pk_exp_cumulative in perennial_kernels.h: the cumulative softmax
// weights the gan scorer samples from on every event (a full pass over the
// catalogue, where a libm expf call per item was a fifth of its learner).
#include "perennial_kernels.h"

#include <math.h>

float pk_exp_cumulative_plain(const float *x, size_t n, float shift, float *out) {
    float total = 0;
    for (size_t i = 0; i < n; i++) {
        total += expf(x[i] - shift);
        out[i] = total;
    }
    return total;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

// exp on eight floats (Cephes' expf, vectorised).
__attribute__((target("avx2,fma")))
static inline __m256 exp8(__m256 x) {
    // Clamped to where 2^n stays a normal float. (min/max return their
    // second operand when either is NaN, so x goes second and a NaN
    // argument stays NaN, as with expf.)
    x = _mm256_max_ps(_mm256_set1_ps(-87.33f), _mm256_min_ps(_mm256_set1_ps(88.37f), x));
    // x = n ln2 + r, |r| <= ln2/2, with ln2 split in two so n ln2 is exact enough.
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // 2^n from its exponent bits (n + 127 stays in 1..254 after the clamp).
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma")))
static float exp_cumulative_avx2(const float *x, size_t n, float shift, float *out) {
    const __m256 s = _mm256_set1_ps(shift);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
    for (; i < n; i++) out[i] = expf(x[i] - shift);
    // The running sum in index order, as the plain loop adds.
    float total = 0;
    for (i = 0; i < n; i++) {
        total += out[i];
        out[i] = total;
    }
    return total;
}

float pk_exp_cumulative(const float *x, size_t n, float shift, float *out) {
    return pk_has_fast_path() ? exp_cumulative_avx2(x, n, shift, out) : pk_exp_cumulative_plain(x, n, shift, out);
}
#else
float pk_exp_cumulative(const float *x, size_t n, float shift, float *out) {
    return pk_exp_cumulative_plain(x, n, shift, out);
}
#endif
