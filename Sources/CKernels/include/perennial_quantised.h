// The catalogue pass on 8-bit copies of the item rows: a first pass that
// gives every item an approximate factor score and a guaranteed upper bound
// on its exact one, so top-k selection computes exact scores only for the
// few items whose bound can reach the current k-th (see
// Sources/PerennialCore/Table/QuantisedItems.swift and the cf scorer).
//
// Quantisation (symmetric, one scale per row, as in Jacob et al. 2018,
// "Quantization and Training of Neural Networks for Efficient
// Integer-Arithmetic-Only Inference"): x ≈ s·x̃ with s = max|x| / 127 and
// x̃ = round(x / s) in [-127, 127], so each component's error is at most s/2.
// For a query q ≈ t·q̃ the same way but with seven bits (t = max|q| / 63,
// so AVX2's 16-bit pair sums cannot saturate), the exact dot product satisfies
//   |q·x − s·t·(q̃·x̃)| ≤ (t/2)·(s·‖q̃‖₁ + ‖x‖₁),
// (q·x = s·t·q̃·x̃ + t·q̃·(x − s·x̃) + (q − t·q̃)·x, bounded term by term),
// which is the bound the kernel adds, widened for the rounding of the
// quantisation and of the exact float dot product it is compared with (see
// bound_half). What it does not widen for is the final float additions of
// the bias (a few ulps of |bias| + |score|): callers compare with a relative
// margin far larger than that. q̃·x̃ is an exact integer, so the plain loop
// and the SIMD ones give the same approximate scores bit for bit.
//
// Item layout: blocks of 16 rows; block b holds, for each group g of four
// dimensions (G = ceil(dim / 4) groups, missing dimensions are 0), the 16
// rows' four bytes side by side: byte (b·G + g)·64 + lane·4 + t is
// x̃[16b + lane][4g + t] + 128 (unsigned, for VNNI's u8 × s8 product).
#ifndef PERENNIAL_QUANTISED_H
#define PERENNIAL_QUANTISED_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Groups of four dimensions per row (G above).
size_t pk_quantised_groups(size_t dim);

/// Writes row `index`'s bytes into `blocks` (block index / 16, lane index %
/// 16) and returns its scale s; *l1 receives ‖x‖₁. A row with a non-finite
/// value or a maximum below 1e-15 (but not 0) or above 1e30 is not quantised: it gets
/// scale +inf (its bound is then +inf: always rescored exactly).
float pk_quantise_item(const float *row, size_t dim, uint8_t *blocks, size_t index, float *l1);

/// A query for the pass (one with a non-finite value or a maximum below
/// 1e-15 (but not 0) or above 1e30 gets scale +inf: every bound +inf): 4·G signed bytes q̃ (zero-padded), its scale t,
/// ‖q̃‖₁ and Σq̃ (the offset of the unsigned item bytes is taken off with it).
typedef struct {
    float scale;
    int32_t l1;
    int32_t sum;
} pk_quantised_query;

pk_quantised_query pk_quantise_query(const float *query, size_t dim, int8_t *out);

/// For rows [0, count) of `blocks` (which starts at a block boundary) and
/// nq queries: approx = s·t·(q̃·x̃) + bias[r·bias_stride] and
/// upper[j][r] = approx + (t/2)·(s·‖q̃‖₁ + ‖x‖₁); the approximate scores and
/// their squares are added to sum[j] and sq[j] (in double). Each query's
/// outputs are bit for bit the same alone, in any batch, and in the plain
/// loop. Rows with a non-finite scale give upper = +inf and add nothing.
void pk_score_quantised_batch(const uint8_t *blocks, size_t count, size_t dim,
                              const int8_t *const *queries, const pk_quantised_query *params, size_t nq,
                              const float *item_scale, const float *item_l1,
                              const float *bias, size_t bias_stride,
                              float *const *upper, double *sum, double *sq);
void pk_score_quantised_batch_plain(const uint8_t *blocks, size_t count, size_t dim,
                                    const int8_t *const *queries, const pk_quantised_query *params, size_t nq,
                                    const float *item_scale, const float *item_l1,
                                    const float *bias, size_t bias_stride,
                                    float *const *upper, double *sum, double *sq);

/// The path CPUs without AVX-512 VNNI take (AVX2, or the plain loop without
/// AVX2), callable on any CPU so that tests hold it to the plain loop too.
void pk_score_quantised_batch_avx2(const uint8_t *blocks, size_t count, size_t dim,
                                   const int8_t *const *queries, const pk_quantised_query *params, size_t nq,
                                   const float *item_scale, const float *item_l1,
                                   const float *bias, size_t bias_stride,
                                   float *const *upper, double *sum, double *sq);

#ifdef __cplusplus
}
#endif

#endif
