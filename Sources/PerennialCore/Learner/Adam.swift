// Adam (Kingma & Ba 2015): per-weight steps scaled by running estimates of
// the gradient's first and second moments, with their start-up bias
// corrected. Used by text-cnn for its dense weights, which are updated once
// per minibatch of accumulated gradients.

import CKernels

public struct Adam {
    public var learningRate: Float
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var epsilon: Float = 1e-8
    public private(set) var steps = 0

    public init(learningRate: Float) { self.learningRate = learningRate }

    /// One step for `count` weights in `w` from gradient `g` (which is then
    /// zeroed), with moment buffers `m` and `v` of the same size.
    public mutating func step(_ w: UnsafeMutablePointer<Float>, grad g: UnsafeMutablePointer<Float>,
                              m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int) {
        steps += 1
        rowStep(w, grad: g, m: m, v: v, count: count)
    }

    /// The same update for one row of a sparse table (rows touched in a
    /// minibatch), at the current step count (call after `step`).
    public func rowStep(_ w: UnsafeMutablePointer<Float>, grad g: UnsafeMutablePointer<Float>,
                        m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int) {
        let t = Float(max(steps, 1))
        let c1 = 1 - powf(beta1, t), c2 = 1 - powf(beta2, t)
        let a = learningRate * c2.squareRoot() / c1
        // (In C, eight weights at a time, bit-identical to the scalar loop.)
        pk_adam(w, g, m, v, a, beta1, beta2, epsilon, count)
    }

    public mutating func restore(steps: Int) { self.steps = steps }
}

#if canImport(Glibc)
import Glibc
#endif
