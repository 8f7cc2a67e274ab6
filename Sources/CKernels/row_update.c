// See perennial_row_update.h. The plain loops keep the order of the Swift
// code they replaced (sequential sums), so without AVX2 the learners'
// figures are unchanged; the fast versions keep several 8-wide partial sums,
// which removes the one-add-at-a-time dependency chain that dominated the
// learner's profile.
#include "perennial_row_update.h"
#include "perennial_kernels.h"
#include <math.h>

float pk_dot_plain(const float *a, const float *b, size_t n) {
    float s = 0;
    for (size_t k = 0; k < n; k++) s += a[k] * b[k];
    return s;
}

float pk_dot_diff_plain(float start, const float *z, const float *a, const float *b, size_t n) {
    float s = start;
    for (size_t k = 0; k < n; k++) s += z[k] * (a[k] - b[k]);
    return s;
}

static inline float adagrad_gradient(const float *row, const float *anchor, const float *v, float alpha, float reg,
                                     float lambda, size_t k) {
    return alpha * v[k] - reg * row[k] - lambda * (row[k] - anchor[k]);
}

void pk_adagrad_row_plain(float *row, const float *anchor, const float *v, float alpha, float reg, float lambda,
                          float *accumulator, float lr, const float *scale, size_t n) {
    float sq = 0;
    for (size_t k = 0; k < n; k++) {
        float g = adagrad_gradient(row, anchor, v, alpha, reg, lambda, k);
        sq += g * g;
    }
    *accumulator += sq / (float)n;
    const float step = lr / sqrtf(*accumulator + 1e-8f);
    // The gradient is computed again rather than kept: `row` changes only in
    // this loop, element by element, after its own gradient is read.
    for (size_t k = 0; k < n; k++) {
        float g = adagrad_gradient(row, anchor, v, alpha, reg, lambda, k);
        row[k] += scale ? step * scale[k] * g : step * g;
    }
}

void pk_adagrad_row_follow_plain(float *row, float *anchor, const float *v, float alpha, float reg, float lambda,
                                 float *accumulator, float lr, const float *scale, float follow, size_t n) {
    pk_adagrad_row_plain(row, anchor, v, alpha, reg, lambda, accumulator, lr, scale, n);
    for (size_t k = 0; k < n; k++) anchor[k] += follow * (row[k] - anchor[k]);
}

void pk_bpr_accumulate_plain(float g, const float *a, const float *b, const float *z, float *dz, float *gi, size_t n) {
    for (size_t k = 0; k < n; k++) {
        dz[k] += g * (a[k] - b[k]);
        gi[k] += g * z[k];
    }
}

__attribute__((noinline))
void pk_adagrad_dense_plain(float *w, float *g, float *acc, float lr, size_t n) {
    for (size_t k = 0; k < n; k++) {
        const float gk = g[k];
        if (gk == 0) continue;
        acc[k] += gk * gk;
        w[k] -= lr * gk / (sqrtf(acc[k]) + 1e-8f);
        g[k] = 0;
    }
}

void pk_adagrad_step_plain(float *row, const float *direction, float scale, float *accumulator, float lr, size_t n) {
    float ss = 0;
    for (size_t k = 0; k < n; k++) {
        const float g = scale * direction[k];
        ss += g * g;
    }
    *accumulator += ss / (float)n;
    const float step = lr / (sqrtf(*accumulator) + 1e-8f);
    for (size_t k = 0; k < n; k++) row[k] += step * scale * direction[k];
}

// The bit-identical pairs' plain loops are never inlined: inlined into an
// AVX2+FMA function, the compiler may fuse their multiply-adds (C allows
// it within an expression), and the tail would no longer round as the
// plain loop does.
__attribute__((noinline))
void pk_adam_plain(float *w, float *g, float *m, float *v, float a, float beta1, float beta2, float epsilon, size_t n) {
    for (size_t k = 0; k < n; k++) {
        const float gk = g[k];
        m[k] = beta1 * m[k] + (1 - beta1) * gk;
        v[k] = beta2 * v[k] + (1 - beta2) * gk * gk;
        w[k] -= a * m[k] / (sqrtf(v[k]) + epsilon);
        g[k] = 0;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

// The same operations eight weights at a time (IEEE add, multiply, divide
// and square root round the same in a vector lane as in a scalar), with
// lanes whose gradient is 0 left as they were: bit-identical to the plain loop.
__attribute__((target("avx2,fma")))
static void adagrad_dense_avx2(float *w, float *g, float *acc, float lr, size_t n) {
    const __m256 vlr = _mm256_set1_ps(lr), eps = _mm256_set1_ps(1e-8f), zero = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m256 gk = _mm256_loadu_ps(g + k);
        const __m256 live = _mm256_cmp_ps(gk, zero, _CMP_NEQ_UQ);  // g != 0 (NaN counts, as in the plain loop)
        if (_mm256_testz_ps(live, live)) continue;
        const __m256 a0 = _mm256_loadu_ps(acc + k), w0 = _mm256_loadu_ps(w + k);
        const __m256 a = _mm256_add_ps(a0, _mm256_mul_ps(gk, gk));
        const __m256 step = _mm256_div_ps(_mm256_mul_ps(vlr, gk), _mm256_add_ps(_mm256_sqrt_ps(a), eps));
        _mm256_storeu_ps(acc + k, _mm256_blendv_ps(a0, a, live));
        _mm256_storeu_ps(w + k, _mm256_blendv_ps(w0, _mm256_sub_ps(w0, step), live));
        _mm256_storeu_ps(g + k, zero);
    }
    pk_adagrad_dense_plain(w + k, g + k, acc + k, lr, n - k);
}

__attribute__((target("avx2,fma")))
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma")))
static float dot_avx2(const float *a, const float *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + 16 <= n; k += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), s1);
    }
    for (; k + 8 <= n; k += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
    float s = hsum8(_mm256_add_ps(s0, s1));
    for (; k < n; k++) s += a[k] * b[k];
    return s;
}

__attribute__((target("avx2,fma")))
static float dot_diff_avx2(float start, const float *z, const float *a, const float *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + 16 <= n; k += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(z + k), _mm256_sub_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k)), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(z + k + 8),
                             _mm256_sub_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8)), s1);
    }
    for (; k + 8 <= n; k += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(z + k), _mm256_sub_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k)), s0);
    float s = start + hsum8(_mm256_add_ps(s0, s1));
    for (; k < n; k++) s += z[k] * (a[k] - b[k]);
    return s;
}

__attribute__((target("avx2,fma")))
static inline __m256 adagrad_gradient8(const float *row, const float *anchor, const float *v, __m256 alpha, __m256 reg,
                                       __m256 lambda, size_t k) {
    __m256 r = _mm256_loadu_ps(row + k);
    __m256 g = _mm256_mul_ps(alpha, _mm256_loadu_ps(v + k));
    g = _mm256_fnmadd_ps(reg, r, g);
    return _mm256_fnmadd_ps(lambda, _mm256_sub_ps(r, _mm256_loadu_ps(anchor + k)), g);
}

// An Adagrad step's first pass: the squared gradient's sum goes into the
// row's accumulator; returns the step size. With `keep`, the gradients of
// the whole 8-lane groups are stored there for the second pass.
__attribute__((target("avx2,fma"), always_inline))
static inline float adagrad_step_size(const float *row, const float *anchor, const float *v, float alpha, float reg,
                                      float lambda, float *accumulator, float lr, size_t n, __m256 *keep) {
    const __m256 va = _mm256_set1_ps(alpha), vr = _mm256_set1_ps(reg), vl = _mm256_set1_ps(lambda);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t main = n & ~(size_t)7, k = 0;
    for (; k + 16 <= main; k += 16) {
        __m256 g0 = adagrad_gradient8(row, anchor, v, va, vr, vl, k);
        __m256 g1 = adagrad_gradient8(row, anchor, v, va, vr, vl, k + 8);
        if (keep) { keep[k / 8] = g0; keep[k / 8 + 1] = g1; }
        s0 = _mm256_fmadd_ps(g0, g0, s0);
        s1 = _mm256_fmadd_ps(g1, g1, s1);
    }
    for (; k < main; k += 8) {
        __m256 g0 = adagrad_gradient8(row, anchor, v, va, vr, vl, k);
        if (keep) keep[k / 8] = g0;
        s0 = _mm256_fmadd_ps(g0, g0, s0);
    }
    float sq = hsum8(_mm256_add_ps(s0, s1));
    for (; k < n; k++) {
        float g = adagrad_gradient(row, anchor, v, alpha, reg, lambda, k);
        sq += g * g;
    }
    *accumulator += sq / (float)n;
    return lr / sqrtf(*accumulator + 1e-8f);
}

__attribute__((target("avx2,fma")))
static void adagrad_row_avx2(float *row, const float *anchor, const float *v, float alpha, float reg, float lambda,
                             float *accumulator, float lr, const float *scale, size_t n) {
    const __m256 va = _mm256_set1_ps(alpha), vr = _mm256_set1_ps(reg), vl = _mm256_set1_ps(lambda);
    size_t main = n & ~(size_t)7, k;
    const float step = adagrad_step_size(row, anchor, v, alpha, reg, lambda, accumulator, lr, n, NULL);
    const __m256 vs = _mm256_set1_ps(step);
    for (k = 0; k < main; k += 8) {
        __m256 g = adagrad_gradient8(row, anchor, v, va, vr, vl, k);
        __m256 s = scale ? _mm256_mul_ps(vs, _mm256_loadu_ps(scale + k)) : vs;
        _mm256_storeu_ps(row + k, _mm256_fmadd_ps(s, g, _mm256_loadu_ps(row + k)));
    }
    for (; k < n; k++) {
        float g = adagrad_gradient(row, anchor, v, alpha, reg, lambda, k);
        row[k] += scale ? step * scale[k] * g : step * g;
    }
}

// The step's second pass also moves the anchor, so the row is read once more
// instead of twice.
__attribute__((target("avx2,fma")))
static void adagrad_row_follow_avx2(float *row, float *anchor, const float *v, float alpha, float reg, float lambda,
                                    float *accumulator, float lr, const float *scale, float follow, size_t n) {
    const __m256 va = _mm256_set1_ps(alpha), vr = _mm256_set1_ps(reg), vl = _mm256_set1_ps(lambda);
    size_t main = n & ~(size_t)7, k;
    // Rows of whole 8-lane groups up to 128 wide (the usual): the first
    // pass keeps its gradients in registers or L1 for the second, which
    // then reads only the row and anchor (the same values, so the same bits).
    __m256 gb[16];
    __m256 *keep = n == main && n <= 128 ? gb : NULL;
    const float step = adagrad_step_size(row, anchor, v, alpha, reg, lambda, accumulator, lr, n, keep);
    const __m256 vs = _mm256_set1_ps(step), vf = _mm256_set1_ps(follow);
    for (k = 0; k < main; k += 8) {
        __m256 g = keep ? keep[k / 8] : adagrad_gradient8(row, anchor, v, va, vr, vl, k);
        __m256 s = scale ? _mm256_mul_ps(vs, _mm256_loadu_ps(scale + k)) : vs;
        const __m256 r = _mm256_fmadd_ps(s, g, _mm256_loadu_ps(row + k));
        _mm256_storeu_ps(row + k, r);
        const __m256 a = _mm256_loadu_ps(anchor + k);
        _mm256_storeu_ps(anchor + k, _mm256_fmadd_ps(vf, _mm256_sub_ps(r, a), a));
    }
    for (; k < n; k++) {
        float g = adagrad_gradient(row, anchor, v, alpha, reg, lambda, k);
        row[k] += scale ? step * scale[k] * g : step * g;
        anchor[k] += follow * (row[k] - anchor[k]);
    }
}

__attribute__((target("avx2,fma")))
static void bpr_accumulate_avx2(float g, const float *a, const float *b, const float *z, float *dz, float *gi, size_t n) {
    const __m256 vg = _mm256_set1_ps(g);
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k));
        _mm256_storeu_ps(dz + k, _mm256_fmadd_ps(vg, d, _mm256_loadu_ps(dz + k)));
        _mm256_storeu_ps(gi + k, _mm256_fmadd_ps(vg, _mm256_loadu_ps(z + k), _mm256_loadu_ps(gi + k)));
    }
    for (; k < n; k++) {
        dz[k] += g * (a[k] - b[k]);
        gi[k] += g * z[k];
    }
}

void pk_adagrad_row_follow(float *row, float *anchor, const float *v, float alpha, float reg, float lambda,
                           float *accumulator, float lr, const float *scale, float follow, size_t n) {
    if (pk_has_fast_path()) adagrad_row_follow_avx2(row, anchor, v, alpha, reg, lambda, accumulator, lr, scale, follow, n);
    else pk_adagrad_row_follow_plain(row, anchor, v, alpha, reg, lambda, accumulator, lr, scale, follow, n);
}

void pk_bpr_accumulate(float g, const float *a, const float *b, const float *z, float *dz, float *gi, size_t n) {
    if (pk_has_fast_path()) bpr_accumulate_avx2(g, a, b, z, dz, gi, n);
    else pk_bpr_accumulate_plain(g, a, b, z, dz, gi, n);
}

float pk_dot(const float *a, const float *b, size_t n) {
    return pk_has_fast_path() ? dot_avx2(a, b, n) : pk_dot_plain(a, b, n);
}

float pk_dot_diff(float start, const float *z, const float *a, const float *b, size_t n) {
    return pk_has_fast_path() ? dot_diff_avx2(start, z, a, b, n) : pk_dot_diff_plain(start, z, a, b, n);
}

__attribute__((target("avx2,fma")))
static void adagrad_step_avx2(float *row, const float *direction, float scale, float *accumulator, float lr, size_t n) {
    const __m256 s = _mm256_set1_ps(scale);
    __m256 ss8 = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m256 g = _mm256_mul_ps(s, _mm256_loadu_ps(direction + k));
        ss8 = _mm256_fmadd_ps(g, g, ss8);
    }
    float ss = hsum8(ss8);
    for (; k < n; k++) { const float g = scale * direction[k]; ss += g * g; }
    *accumulator += ss / (float)n;
    const float step = lr / (sqrtf(*accumulator) + 1e-8f);
    const __m256 st = _mm256_set1_ps(step * scale);
    for (k = 0; k + 8 <= n; k += 8)
        _mm256_storeu_ps(row + k, _mm256_fmadd_ps(st, _mm256_loadu_ps(direction + k), _mm256_loadu_ps(row + k)));
    for (; k < n; k++) row[k] += step * scale * direction[k];
}

void pk_adagrad_step(float *row, const float *direction, float scale, float *accumulator, float lr, size_t n) {
    if (pk_has_fast_path()) adagrad_step_avx2(row, direction, scale, accumulator, lr, n);
    else pk_adagrad_step_plain(row, direction, scale, accumulator, lr, n);
}

// Adam's update eight weights at a time, with the plain loop's operations
// in its order and no fused multiply-add: bit-identical to it.
__attribute__((target("avx2,fma")))
static void adam_avx2(float *w, float *g, float *m, float *v, float a, float beta1, float beta2, float epsilon, size_t n) {
    const __m256 b1 = _mm256_set1_ps(beta1), b2 = _mm256_set1_ps(beta2);
    const __m256 c1 = _mm256_set1_ps(1 - beta1), c2 = _mm256_set1_ps(1 - beta2);
    const __m256 va = _mm256_set1_ps(a), eps = _mm256_set1_ps(epsilon), zero = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m256 gk = _mm256_loadu_ps(g + k);
        const __m256 mk = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + k)), _mm256_mul_ps(c1, gk));
        const __m256 vk = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + k)), _mm256_mul_ps(_mm256_mul_ps(c2, gk), gk));
        const __m256 step = _mm256_div_ps(_mm256_mul_ps(va, mk), _mm256_add_ps(_mm256_sqrt_ps(vk), eps));
        _mm256_storeu_ps(m + k, mk);
        _mm256_storeu_ps(v + k, vk);
        _mm256_storeu_ps(w + k, _mm256_sub_ps(_mm256_loadu_ps(w + k), step));
        _mm256_storeu_ps(g + k, zero);
    }
    pk_adam_plain(w + k, g + k, m + k, v + k, a, beta1, beta2, epsilon, n - k);
}

void pk_adam(float *w, float *g, float *m, float *v, float a, float beta1, float beta2, float epsilon, size_t n) {
    if (pk_has_fast_path()) adam_avx2(w, g, m, v, a, beta1, beta2, epsilon, n);
    else pk_adam_plain(w, g, m, v, a, beta1, beta2, epsilon, n);
}

void pk_adagrad_dense(float *w, float *g, float *acc, float lr, size_t n) {
    if (pk_has_fast_path()) adagrad_dense_avx2(w, g, acc, lr, n);
    else pk_adagrad_dense_plain(w, g, acc, lr, n);
}

void pk_adagrad_row(float *row, const float *anchor, const float *v, float alpha, float reg, float lambda,
                    float *accumulator, float lr, const float *scale, size_t n) {
    if (pk_has_fast_path()) adagrad_row_avx2(row, anchor, v, alpha, reg, lambda, accumulator, lr, scale, n);
    else pk_adagrad_row_plain(row, anchor, v, alpha, reg, lambda, accumulator, lr, scale, n);
}
#else
void pk_adam(float *w, float *g, float *m, float *v, float a, float beta1, float beta2, float epsilon, size_t n) {
    pk_adam_plain(w, g, m, v, a, beta1, beta2, epsilon, n);
}
void pk_adagrad_step(float *row, const float *direction, float scale, float *accumulator, float lr, size_t n) {
    pk_adagrad_step_plain(row, direction, scale, accumulator, lr, n);
}
void pk_adagrad_dense(float *w, float *g, float *acc, float lr, size_t n) { pk_adagrad_dense_plain(w, g, acc, lr, n); }
void pk_adagrad_row_follow(float *row, float *anchor, const float *v, float alpha, float reg, float lambda,
                           float *accumulator, float lr, const float *scale, float follow, size_t n) {
    pk_adagrad_row_follow_plain(row, anchor, v, alpha, reg, lambda, accumulator, lr, scale, follow, n);
}
void pk_bpr_accumulate(float g, const float *a, const float *b, const float *z, float *dz, float *gi, size_t n) {
    pk_bpr_accumulate_plain(g, a, b, z, dz, gi, n);
}
float pk_dot(const float *a, const float *b, size_t n) { return pk_dot_plain(a, b, n); }
float pk_dot_diff(float start, const float *z, const float *a, const float *b, size_t n) {
    return pk_dot_diff_plain(start, z, a, b, n);
}
void pk_adagrad_row(float *row, const float *anchor, const float *v, float alpha, float reg, float lambda,
                    float *accumulator, float lr, const float *scale, size_t n) {
    pk_adagrad_row_plain(row, anchor, v, alpha, reg, lambda, accumulator, lr, scale, n);
}
#endif
