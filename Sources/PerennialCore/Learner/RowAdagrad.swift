// Adagrad with one accumulator per row (Duchi et al. 2011, in the per-row
// form the shared table uses): the accumulator gathers the mean squared
// gradient of the row, and the whole row moves by lr / (√acc + 1e-8) times
// the gradient. Shared by the neural scorers for their embedding rows.

import CKernels

/// row += lr / (√acc + ε) · scale · direction, after acc += mean((scale · direction)²).
/// A descent step passes the gradient as `direction` with scale −1.
@inline(__always)
public func adagradRowStep(_ row: UnsafeMutablePointer<Float>, direction: UnsafePointer<Float>, scale: Float,
                           width: Int, accumulator: UnsafeMutablePointer<Float>, learningRate: Float) {
    // (In C, AVX2 where the CPU has it: the Swift loop's sum of squares ran
    // one add after another, and this step is a tenth of session-rnn's learner.)
    pk_adagrad_step(row, direction, scale, accumulator, learningRate, width)
}

#if canImport(Glibc)
import Glibc
#endif
