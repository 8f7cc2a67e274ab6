// Row updates for the online learners: a dot product, a dot product with a
// difference, and one Adagrad step on a table row with an L2 pull and an
// anchor pull.
//
// Each has a plain C loop (the reference, and the fallback on CPUs without
// AVX2/FMA) and an AVX2+FMA version chosen at run time, like pk_dot_rows.
// The fast versions sum in a different order, so results agree with the
// plain ones to float rounding, not bit for bit; tests hold them together.
#ifndef PERENNIAL_ROW_UPDATE_H
#define PERENNIAL_ROW_UPDATE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The sum over k of a[k] * b[k].
float pk_dot(const float *a, const float *b, size_t n);
float pk_dot_plain(const float *a, const float *b, size_t n);

/// start + the sum over k of z[k] * (a[k] - b[k]): a BPR margin.
float pk_dot_diff(float start, const float *z, const float *a, const float *b, size_t n);
float pk_dot_diff_plain(float start, const float *z, const float *a, const float *b, size_t n);

/// One Adagrad step (Duchi et al. 2011, one accumulator per row) on `row`:
///   g[k] = alpha * v[k] - reg * row[k] - lambda * (row[k] - anchor[k])
///   *accumulator += mean(g[k]^2)
///   row[k] += lr / sqrt(*accumulator + 1e-8) * scale[k] * g[k]
/// `anchor` may be `row` itself (no pull); `scale` may be NULL (all 1).
/// `row` must not overlap `v`; `anchor` is either `row` or disjoint from it.
void pk_adagrad_row(float *row, const float *anchor, const float *v, float alpha, float reg, float lambda,
                    float *accumulator, float lr, const float *scale, size_t n);
void pk_adagrad_row_plain(float *row, const float *anchor, const float *v, float alpha, float reg, float lambda,
                          float *accumulator, float lr, const float *scale, size_t n);

/// pk_adagrad_row, then the row's anchor follows it (an exponential moving
/// average, RowAnchors): anchor[k] += follow * (row[k] - anchor[k]), in the
/// same pass over the row. `anchor` must be disjoint from `row`.
void pk_adagrad_row_follow(float *row, float *anchor, const float *v, float alpha, float reg, float lambda,
                           float *accumulator, float lr, const float *scale, float follow, size_t n);
void pk_adagrad_row_follow_plain(float *row, float *anchor, const float *v, float alpha, float reg, float lambda,
                                 float *accumulator, float lr, const float *scale, float follow, size_t n);

/// Adagrad with one accumulator per row, the neural scorers' form:
///   *accumulator += mean((scale * direction[k])^2)
///   row[k] += lr / (sqrt(*accumulator) + 1e-8) * scale * direction[k]
/// (A descent step passes the gradient with scale -1.)
void pk_adagrad_step(float *row, const float *direction, float scale, float *accumulator, float lr, size_t n);
void pk_adagrad_step_plain(float *row, const float *direction, float scale, float *accumulator, float lr, size_t n);

/// Adam's update with its step size `a` (bias corrections included) for n
/// weights: m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
/// w -= a m / (sqrt(v) + epsilon); g = 0. The fast path is bit-identical to
/// the plain loop.
void pk_adam(float *w, float *g, float *m, float *v, float a, float beta1, float beta2, float epsilon, size_t n);
void pk_adam_plain(float *w, float *g, float *m, float *v, float a, float beta1, float beta2, float epsilon, size_t n);

/// Per-weight Adagrad (Duchi et al. 2011) on dense weights, for every k
/// with g[k] != 0: acc[k] += g[k]^2; w[k] -= lr * g[k] / (sqrt(acc[k]) + 1e-8);
/// g[k] = 0. Weights with a zero gradient are left alone. The fast path is
/// bit-identical to the plain loop (no fused multiply-add).
void pk_adagrad_dense(float *w, float *g, float *acc, float lr, size_t n);
void pk_adagrad_dense_plain(float *w, float *g, float *acc, float lr, size_t n);

/// A BPR pair's gradient into the user vector and the positive item:
/// dz[k] += g * (a[k] - b[k]) and gi[k] += g * z[k].
void pk_bpr_accumulate(float g, const float *a, const float *b, const float *z, float *dz, float *gi, size_t n);
void pk_bpr_accumulate_plain(float g, const float *a, const float *b, const float *z, float *dz, float *gi, size_t n);

/// Asks the CPU to start bringing `bytes` at `p` into cache, for writing.
/// Only a hint: it changes no result, and a learner that knows which rows it
/// will touch next (sampled negatives, a user's context items) uses it so
/// their cache misses overlap instead of arriving one after another.
static inline void pk_prefetch(const void *p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)p + o, 1, 3);
}

#ifdef __cplusplus
}
#endif
#endif
