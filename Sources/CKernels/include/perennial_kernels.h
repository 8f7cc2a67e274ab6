// Kernels for scoring a query vector against many rows: dot products and
// the top-k scan (the catalogue pass is in perennial_quantised.h).
//
// The plain C loop is the reference; an AVX2+FMA version is compiled with a
// target attribute (no global -mavx2, so the binary runs on any x86-64) and
// chosen at run time when the CPU has it. Tests hold the two together.
#ifndef PERENNIAL_KERNELS_H
#define PERENNIAL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// out[r] = dot(rows[r*dim ..< (r+1)*dim], query) for r in 0..<count.
/// Rows are contiguous, dim floats each.
void pk_dot_rows(const float *rows, size_t count, size_t dim, const float *query, float *out);

/// The plain reference loop (also the fallback on CPUs without AVX2/FMA).
void pk_dot_rows_plain(const float *rows, size_t count, size_t dim, const float *query, float *out);

/// The same over rows `stride` floats apart, of which the first `dim` are
/// dotted (rows that carry extra fields, such as an accumulator, after
/// their vector).
void pk_dot_rows_strided(const float *rows, size_t count, size_t stride, size_t dim, const float *query, float *out);
void pk_dot_rows_strided_plain(const float *rows, size_t count, size_t stride, size_t dim, const float *query, float *out);

/// out[j] = the sum over i <= j of exp(x[i] - shift), for j in 0..<n; returns
/// the total. The cumulative weights of a softmax (shift = the largest x),
/// from which a sample is drawn by inverting it. The fast path computes exp
/// with a polynomial (Cephes' expf: Cody-Waite reduction by ln 2, a degree-5
/// polynomial on [-ln2/2, ln2/2], scaled by 2^n through the exponent bits),
/// within a few float ulps of expf; arguments below -87.3 count as
/// exp(-87.3), about 1e-38, instead of 0, and above 88.3 as exp(88.3)
/// instead of infinity; a NaN argument makes the total NaN, as with expf.
float pk_exp_cumulative(const float *x, size_t n, float shift, float *out);
float pk_exp_cumulative_plain(const float *x, size_t n, float shift, float *out);

/// out[c] += sum over r of m[r*cols + c] * v[r]: the transposed
/// matrix-vector product a backward pass needs (gradient into a layer's input).
void pk_matvec_t_acc(const float *m, size_t rows, size_t cols, const float *v, float *out);
void pk_matvec_t_acc_plain(const float *m, size_t rows, size_t cols, const float *v, float *out);

/// m[r*cols + c] += a[r] * b[c]: accumulates an outer product (a weight
/// matrix's gradient from one step).
void pk_outer_acc(float *m, size_t rows, size_t cols, const float *a, const float *b);
void pk_outer_acc_plain(float *m, size_t rows, size_t cols, const float *a, const float *b);

/// y[k] += a * x[k] for k in 0..<n (x and y must not overlap).
void pk_axpy(float a, const float *x, float *y, size_t n);
void pk_axpy_plain(float a, const float *x, float *y, size_t n);

/// The outer products of `steps` pairs at once: m[r*cols + c] += the sum over
/// s of a[s*a_stride + r] * b[s*b_stride + c] (a backward pass's weight
/// gradient over all its time steps, with m read and written once).
void pk_outer_acc_steps(float *m, size_t rows, size_t cols, const float *a, size_t a_stride, const float *b,
                        size_t b_stride, size_t steps);
void pk_outer_acc_steps_plain(float *m, size_t rows, size_t cols, const float *a, size_t a_stride, const float *b,
                              size_t b_stride, size_t steps);

/// The first index i in from..<count with x[i] >= threshold (NaN never
/// qualifies), or count: the scan behind top-k selection, which visits only
/// the items that can beat the current k-th.
size_t pk_next_at_least(const float *x, size_t from, size_t count, float threshold);
size_t pk_next_at_least_plain(const float *x, size_t from, size_t count, float threshold);

/// The neighbourhood part of a request (ItemNeighbourhood.accumulate): for
/// every used slot of one item's co-occurrence table (`capacity` slots of
/// two floats: the neighbour's index as a bit pattern, 0xFFFFFFFF when
/// empty, and its count), out[neighbour] += weight * count. Neighbours at or
/// past `items`, negative ones and non-finite counts (a slot read while the
/// learner rebuilds the table) are skipped. A neighbour not seen before is
/// appended to `touched` (room for `capacity` more is needed): with `seen`
/// (one byte per item, 0 = not yet; set to 1 here, cleared by the caller for
/// the touched items), one whose byte was 0; with NULL, one whose entry in
/// `out` was 0. Returns the new length of `touched`.
size_t pk_accumulate_neighbours(const float *slots, size_t capacity, float weight, size_t items, float *out,
                                unsigned char *seen, int *touched, size_t touched_count);

/// The index of the last element equal to `value` in x[0..<n], or -1.
ptrdiff_t pk_last_index_i32(const int32_t *x, size_t n, int32_t value);
ptrdiff_t pk_last_index_i32_plain(const int32_t *x, size_t n, int32_t value);

/// CRC-32C (Castagnoli) of n bytes, continuing from `seed` (0 to start):
/// SSE4.2's crc32 instruction where the CPU has it, else a table; the same
/// result either way.
uint32_t pk_crc32c(uint32_t seed, const void *data, size_t n);
uint32_t pk_crc32c_plain(uint32_t seed, const void *data, size_t n);

/// 1 when pk_dot_rows uses the AVX2+FMA path on this CPU.
int pk_has_fast_path(void);

#ifdef __cplusplus
}
#endif
#endif
