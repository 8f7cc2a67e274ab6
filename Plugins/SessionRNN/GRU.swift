// A gated recurrent unit (Cho et al. 2014), written out with its own forward
// and backward pass. One step reads input x (n floats) and the previous state
// h' (m floats):
//
//     z = σ(W_z x + U_z h' + b_z)          update gate: how much of h' to keep
//     r = σ(W_r x + U_r h' + b_r)          reset gate: how much of h' the
//                                          candidate may see
//     c = tanh(W_c x + U_c (r ⊙ h') + b_c) candidate state
//     h = (1 − z) ⊙ c + z ⊙ h'
//
// The backward pass is the chain rule through those lines, step by step from
// the last (backpropagation through time, truncated at the sequence's start,
// where h' = 0). Given dL/dh:
//
//     dc = dh ⊙ (1 − z)           dz = dh ⊙ (h' − c)        dh' = dh ⊙ z
//     da_c = dc ⊙ (1 − c²)        (tanh' = 1 − tanh²)
//     d(r ⊙ h') = U_cᵀ da_c  →  dr = d(r⊙h') ⊙ h',   dh' += d(r⊙h') ⊙ r
//     da_z = dz ⊙ z(1 − z),  da_r = dr ⊙ r(1 − r)   (σ' = σ(1 − σ))
//     dW_g += da_g xᵀ,  dU_z += da_z h'ᵀ,  dU_r += da_r h'ᵀ,  dU_c += da_c (r⊙h')ᵀ,  db_g += da_g
//     dx  = W_zᵀ da_z + W_rᵀ da_r + W_cᵀ da_c
//     dh' += U_zᵀ da_z + U_rᵀ da_r
//
// Parameters live in one flat buffer: W = [W_z; W_r; W_c] (3m × n,
// row-major), then U = [U_z; U_r; U_c] (3m × m), then b (3m). A gradient
// buffer has the same layout.

import CKernels
import PerennialCore

struct GRULayout {
    let inputs: Int   // n
    let hidden: Int   // m
    var wOffset: Int { 0 }
    var uOffset: Int { 3 * hidden * inputs }
    var bOffset: Int { uOffset + 3 * hidden * hidden }
    var count: Int { bOffset + 3 * hidden }
}

/// What one forward pass over a sequence keeps for its backward pass.
struct GRUTrace {
    let layout: GRULayout
    private(set) var steps = 0
    /// Per step: x (n), h' (m), z, r, c (m each), r⊙h' (m), h (m).
    var x: [Float] = [], hPrev: [Float] = [], z: [Float] = [], r: [Float] = []
    var c: [Float] = [], rh: [Float] = [], h: [Float] = []
    private var pre: [Float]   // scratch: W x for one step (3m)
    private var preU: [Float]  // scratch: U_{z,r} h' (2m) and U_c (r⊙h') (m)

    let maxSteps: Int

    init(layout: GRULayout, maxSteps: Int) {
        self.layout = layout
        self.maxSteps = maxSteps
        let n = layout.inputs, m = layout.hidden
        x = .init(repeating: 0, count: maxSteps * n)
        let zeros = [Float](repeating: 0, count: maxSteps * m)
        hPrev = zeros; z = zeros; r = zeros; c = zeros; rh = zeros; h = zeros
        pre = [Float](repeating: 0, count: 3 * layout.hidden)
        preU = [Float](repeating: 0, count: 3 * layout.hidden)
    }

    /// The last state (zeros before any step).
    var last: ArraySlice<Float> {
        let m = layout.hidden
        return steps == 0 ? ArraySlice(repeating: 0, count: m) : h[(steps - 1) * m ..< steps * m]
    }

    mutating func reset() { steps = 0 }

    /// Runs one step from the current last state on input `input` (n floats).
    mutating func step(_ p: UnsafePointer<Float>, input: UnsafePointer<Float>) {
        let n = layout.inputs, m = layout.hidden, t = steps
        precondition(t < maxSteps, "GRU trace holds \(maxSteps) steps")
        let W = p + layout.wOffset, U = p + layout.uOffset, b = p + layout.bOffset
        x.withUnsafeMutableBufferPointer { xs in
            for k in 0..<n { xs[t * n + k] = input[k] }
        }
        // h' is the previous step's h (zeros at the start).
        for k in 0..<m { hPrev[t * m + k] = t == 0 ? 0 : h[(t - 1) * m + k] }
        pre.withUnsafeMutableBufferPointer { pw in
            preU.withUnsafeMutableBufferPointer { pu in
                hPrev.withUnsafeBufferPointer { hp in
                    pk_dot_rows(W, 3 * m, n, input, pw.baseAddress!)
                    pk_dot_rows(U, 2 * m, m, hp.baseAddress! + t * m, pu.baseAddress!)
                }
            }
        }
        for k in 0..<m {
            let hp = hPrev[t * m + k]
            let zk = sigmoid(pre[k] + preU[k] + b[k])
            let rk = sigmoid(pre[m + k] + preU[m + k] + b[m + k])
            z[t * m + k] = zk
            r[t * m + k] = rk
            rh[t * m + k] = rk * hp
        }
        preU.withUnsafeMutableBufferPointer { pu in
            rh.withUnsafeBufferPointer { rhp in
                pk_dot_rows(U + 2 * m * m, m, m, rhp.baseAddress! + t * m, pu.baseAddress! + 2 * m)
            }
        }
        for k in 0..<m {
            let ck = tanhf(pre[2 * m + k] + preU[2 * m + k] + b[2 * m + k])
            c[t * m + k] = ck
            let zk = z[t * m + k]
            h[t * m + k] = (1 - zk) * ck + zk * hPrev[t * m + k]
        }
        steps = t + 1
    }

    /// Backpropagates `dLast` (dL/dh of the last step) through every step,
    /// adding parameter gradients into `grad` (same layout as the
    /// parameters) and calling `input(t, dx)` with each step's input gradient.
    func backward(_ p: UnsafePointer<Float>, dLast: [Float], grad: UnsafeMutablePointer<Float>,
                  scratch s: inout GRUBackwardScratch, input: (Int, UnsafePointer<Float>) -> Void) {
        let n = layout.inputs, m = layout.hidden
        let W = p + layout.wOffset, U = p + layout.uOffset
        let gW = grad + layout.wOffset, gU = grad + layout.uOffset, gb = grad + layout.bOffset
        for k in 0..<m { s.dh[k] = dLast[k] }
        if s.daSteps.count < steps * 3 * m { s.daSteps = .init(repeating: 0, count: steps * 3 * m) }
        var t = steps - 1
        while t >= 0 {
            let o = t * m
            for k in 0..<m {
                let dh = s.dh[k], zk = z[o + k], ck = c[o + k], hp = hPrev[o + k]
                let dc = dh * (1 - zk)
                let dz = dh * (hp - ck)
                s.da[2 * m + k] = dc * (1 - ck * ck)
                s.da[k] = dz * zk * (1 - zk)
                s.dhPrev[k] = dh * zk
            }
            // d(r ⊙ h') = U_cᵀ da_c
            for k in 0..<m { s.drh[k] = 0 }
            s.da.withUnsafeBufferPointer { da in
                s.drh.withUnsafeMutableBufferPointer { drh in
                    pk_matvec_t_acc(U + 2 * m * m, m, m, da.baseAddress! + 2 * m, drh.baseAddress!)
                }
            }
            for k in 0..<m {
                let rk = r[o + k]
                let dr = s.drh[k] * hPrev[o + k]
                s.dhPrev[k] += s.drh[k] * rk
                s.da[m + k] = dr * rk * (1 - rk)
            }
            s.da.withUnsafeBufferPointer { da in
                let d = da.baseAddress!
                // Kept for the weight gradients, taken over all steps at the end.
                s.daSteps.withUnsafeMutableBufferPointer { all in (all.baseAddress! + t * 3 * m).update(from: d, count: 3 * m) }
                for k in 0..<(3 * m) { gb[k] += d[k] }
                s.dx.withUnsafeMutableBufferPointer { dx in
                    for k in 0..<n { dx[k] = 0 }
                    pk_matvec_t_acc(W, 3 * m, n, d, dx.baseAddress!)
                }
                s.dhPrev.withUnsafeMutableBufferPointer { dhp in
                    pk_matvec_t_acc(U, 2 * m, m, d, dhp.baseAddress!)
                }
            }
            s.dx.withUnsafeBufferPointer { input(t, $0.baseAddress!) }
            swap(&s.dh, &s.dhPrev)
            t -= 1
        }
        // Weight gradients: Σ_t da_t x_tᵀ, Σ_t da_t[z,r] h'_tᵀ, Σ_t da_t[c] (r ⊙ h')_tᵀ,
        // each matrix read and written once (pk_outer_acc_steps).
        x.withUnsafeBufferPointer { xs in
            hPrev.withUnsafeBufferPointer { hps in
                rh.withUnsafeBufferPointer { rhs in
                    s.daSteps.withUnsafeBufferPointer { all in
                        let d = all.baseAddress!
                        pk_outer_acc_steps(gW, 3 * m, n, d, 3 * m, xs.baseAddress!, n, steps)
                        pk_outer_acc_steps(gU, 2 * m, m, d, 3 * m, hps.baseAddress!, m, steps)
                        pk_outer_acc_steps(gU + 2 * m * m, m, m, d + 2 * m, 3 * m, rhs.baseAddress!, m, steps)
                    }
                }
            }
        }
    }
}

/// Scratch for `GRUTrace.backward`, reused across calls.
struct GRUBackwardScratch {
    var dh: [Float], dhPrev: [Float], da: [Float], drh: [Float], dx: [Float]
    /// Every step's da (steps × 3·hidden), for the weight gradients.
    var daSteps: [Float] = []
    init(layout: GRULayout) {
        let m = layout.hidden
        dh = .init(repeating: 0, count: m)
        dhPrev = .init(repeating: 0, count: m)
        da = .init(repeating: 0, count: 3 * m)
        drh = .init(repeating: 0, count: m)
        dx = .init(repeating: 0, count: layout.inputs)
    }
}


#if canImport(Glibc)
import Glibc
#endif
