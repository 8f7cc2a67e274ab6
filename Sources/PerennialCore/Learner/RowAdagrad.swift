// Adagrad with one accumulator per row (Duchi et al. 2011, in the per-row
// form the shared table uses): the accumulator gathers the mean squared
// gradient of the row, and the whole row moves by lr / (√acc + 1e-8) times
// the gradient. Shared by the neural scorers for their embedding rows.

/// row += lr / (√acc + ε) · scale · direction, after acc += mean((scale · direction)²).
/// A descent step passes the gradient as `direction` with scale −1.
@inline(__always)
public func adagradRowStep(_ row: UnsafeMutablePointer<Float>, direction: UnsafePointer<Float>, scale: Float,
                           width: Int, accumulator: UnsafeMutablePointer<Float>, learningRate: Float) {
    var ss: Float = 0
    for k in 0..<width { let g = scale * direction[k]; ss += g * g }
    accumulator.pointee += ss / Float(width)
    let step = learningRate / (accumulator.pointee.squareRoot() + 1e-8)
    for k in 0..<width { row[k] += step * scale * direction[k] }
}

/// The logistic function 1 / (1 + e^−a).
@inline(__always)
public func sigmoid(_ a: Float) -> Float { 1 / (1 + expf(-a)) }

#if canImport(Glibc)
import Glibc
#endif
