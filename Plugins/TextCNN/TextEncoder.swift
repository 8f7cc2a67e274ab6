// The text encoder: a one-layer convolutional network over word positions
// (Kim 2014, "Convolutional Neural Networks for Sentence Classification"),
// mapping an item's text into the item-embedding space. Written out with its
// own forward and backward pass.
//
// Forward, for a text of T word positions:
//   x_p   = mean of the embedding rows E[id] of position p's ids (the word
//           and its character trigrams), e floats.
//   a_f,t = b_w,f + K_w,f · [x_t; x_t+1; …; x_t+w−1]
//           for each width w, filter f and window start t (positions past the
//           end read zeros, so a text shorter than w still has one window).
//   m_f   = max(0, max_t a_f,t)     ReLU, then max-pooling over time
//   m_ℓ   = ln(1 + words in the whole text) − 2, one more input to the
//           projection: how much is written about an item (its tags) says
//           much about how popular it is, and max-pooling cannot count.
//   y     = P [m; m_ℓ] + b_P        projection to the item space (d floats)
//
// Backward, given dL/dy:
//   dP += dy mᵀ,  db_P += dy,  dm = Pᵀ dy
//   max-pooling routes each dm_f to its winning window t* only, and the ReLU
//   passes it only where m_f > 0:  db_w,f += dm_f,
//   dK_w,f += dm_f [x_t*; …],  dx_t*+j += dm_f K_w,f[j]
//   dE[id] += dx_p / (ids at p) for every id at position p.
//
// Parameters are one flat buffer (embedding rows first, then per width its
// kernels and biases, then P and b_P), allocated once and never moved, so
// the serving thread can run `forward` while the learner updates them
// (Hogwild-style reads, as with the shared table).

import CKernels
import PerennialCore
#if canImport(Glibc)
import Glibc
#endif

struct TextEncoderShape: Equatable {
    var buckets: Int
    var tokenDim: Int      // e
    var widths: [Int]
    var filters: Int       // F per width
    var output: Int        // d

    var pooled: Int { widths.count * filters }
    /// Inputs of the projection: the pooled filters and the length feature.
    var projectionInputs: Int { pooled + 1 }
    var embeddingCount: Int { buckets * tokenDim }
    func kernelOffset(_ w: Int) -> Int {
        var o = embeddingCount
        for k in 0..<w { o += filters * widths[k] * tokenDim + filters }
        return o
    }
    var projectionOffset: Int { kernelOffset(widths.count) }
    /// All parameters (embedding rows, then the dense part from kernelOffset(0)).
    var count: Int { projectionOffset + output * projectionInputs + output }
}

/// One forward pass's intermediate values, kept for the backward pass.
struct EncoderTrace {
    var x: [Float] = []          // (T + maxWidth − 1) × e, zero-padded
    var positions = 0
    var pooled: [Float]          // m
    var winner: [Int]            // t* per pooled unit
    var y: [Float]
    var window: [Float]          // scratch: activations of one width's filters at one t

    init(shape: TextEncoderShape) {
        pooled = .init(repeating: 0, count: shape.projectionInputs)
        winner = .init(repeating: 0, count: shape.pooled)
        y = .init(repeating: 0, count: shape.output)
        window = .init(repeating: 0, count: shape.filters)
    }
}

struct TextEncoder {
    let shape: TextEncoderShape

    /// y = encoder(text), left in `trace.y`.
    func forward(_ p: UnsafePointer<Float>, _ text: TokenizedText, trace t: inout EncoderTrace) {
        let e = shape.tokenDim, F = shape.filters
        let T = max(1, text.positions)
        let padded = (T + (shape.widths.max() ?? 1) - 1) * e
        if t.x.count < padded { t.x = .init(repeating: 0, count: padded) }
        t.positions = text.positions
        t.x.withUnsafeMutableBufferPointer { x in
            for k in 0..<padded { x[k] = 0 }
            for pos in 0..<text.positions {
                let ids = text.ids(at: pos)
                let inv = 1 / Float(ids.count)
                let dst = x.baseAddress! + pos * e
                for id in ids {
                    let row = p + Int(id) * e
                    for k in 0..<e { dst[k] += inv * row[k] }
                }
            }
        }
        for (wi, w) in shape.widths.enumerated() {
            let K = p + shape.kernelOffset(wi), b = K + F * w * e
            let windows = max(1, T - w + 1)
            for f in 0..<F { t.pooled[wi * F + f] = -.infinity }
            for start in 0..<windows {
                t.x.withUnsafeBufferPointer { x in
                    t.window.withUnsafeMutableBufferPointer { a in
                        pk_dot_rows(K, F, w * e, x.baseAddress! + start * e, a.baseAddress!)
                    }
                }
                for f in 0..<F {
                    let a = t.window[f] + b[f]
                    if a > t.pooled[wi * F + f] { t.pooled[wi * F + f] = a; t.winner[wi * F + f] = start }
                }
            }
            for f in 0..<F where t.pooled[wi * F + f] < 0 { t.pooled[wi * F + f] = 0 }
        }
        t.pooled[shape.pooled] = logf(1 + Float(text.wordCount)) - 2
        let P = p + shape.projectionOffset, bP = P + shape.output * shape.projectionInputs
        t.pooled.withUnsafeBufferPointer { m in
            t.y.withUnsafeMutableBufferPointer { y in
                pk_dot_rows(P, shape.output, shape.projectionInputs, m.baseAddress!, y.baseAddress!)
            }
        }
        for k in 0..<shape.output { t.y[k] += bP[k] }
    }

    /// Adds the gradient of the loss (given dL/dy) to `grad` (a buffer of
    /// `shape.count` floats laid out like the parameters; only the dense part
    /// is written) and calls
    /// `embedding(id, dE)` with each touched embedding row's gradient.
    func backward(_ p: UnsafePointer<Float>, _ text: TokenizedText, trace t: EncoderTrace, dy: [Float],
                  grad: UnsafeMutablePointer<Float>, scratch s: inout EncoderScratch,
                  embedding: (Int32, UnsafePointer<Float>) -> Void) {
        let e = shape.tokenDim, F = shape.filters, d = shape.output
        let P = p + shape.projectionOffset
        let gP = grad + shape.projectionOffset, gbP = gP + d * shape.projectionInputs
        // Projection.
        t.pooled.withUnsafeBufferPointer { m in
            dy.withUnsafeBufferPointer { g in pk_outer_acc(gP, d, shape.projectionInputs, g.baseAddress!, m.baseAddress!) }
        }
        for k in 0..<d { gbP[k] += dy[k] }
        for k in 0..<shape.projectionInputs { s.dm[k] = 0 }
        dy.withUnsafeBufferPointer { g in
            s.dm.withUnsafeMutableBufferPointer { dm in pk_matvec_t_acc(P, d, shape.projectionInputs, g.baseAddress!, dm.baseAddress!) }
        }
        // Max-pool and ReLU route the gradient to each filter's winning window.
        let padded = t.x.count
        if s.dx.count < padded { s.dx = .init(repeating: 0, count: padded) }
        for k in 0..<padded { s.dx[k] = 0 }
        // (Through the C axpy kernel: the Swift loop over the arrays was the
        // text scorer's largest cost after the dot products.)
        t.x.withUnsafeBufferPointer { xb in
            s.dx.withUnsafeMutableBufferPointer { dxb in
                let x = xb.baseAddress!, dx = dxb.baseAddress!
                for (wi, w) in shape.widths.enumerated() {
                    let K = p + shape.kernelOffset(wi)
                    let gK = grad + shape.kernelOffset(wi), gb = gK + F * w * e
                    for f in 0..<F {
                        let u = wi * F + f
                        guard t.pooled[u] > 0 else { continue }
                        let g = s.dm[u], start = t.winner[u] * e
                        gb[f] += g
                        let kf = K + f * w * e, gkf = gK + f * w * e
                        pk_axpy(g, x + start, gkf, w * e)
                        pk_axpy(g, kf, dx + start, w * e)
                    }
                }
            }
        }
        // Each position's mean spreads its gradient over its ids.
        for pos in 0..<t.positions {
            let ids = text.ids(at: pos)
            let inv = 1 / Float(ids.count)
            for k in 0..<e { s.de[k] = s.dx[pos * e + k] * inv }
            s.de.withUnsafeBufferPointer { de in
                for id in ids { embedding(id, de.baseAddress!) }
            }
        }
    }
}

struct EncoderScratch {
    var dm: [Float]
    var dx: [Float] = []
    var de: [Float]
    init(shape: TextEncoderShape) {
        dm = .init(repeating: 0, count: shape.projectionInputs)
        de = .init(repeating: 0, count: shape.tokenDim)
    }
}
