// The GRU's backward pass against finite differences, and the session
// scorer learning planted sequences.

import Testing
@testable import PerennialCore
@testable import SessionRNN

@Suite struct SessionRNNTests {
    /// L = c · h_T after a few steps; every analytic gradient (W, U, b and
    /// each step's input) must match the central difference.
    @Test func gruGradientMatchesFiniteDifferences() {
        let layout = GRULayout(inputs: 5, hidden: 4)
        let steps = 4
        var g = SplitMix64(seed: 3)
        let p = UnsafeMutablePointer<Float>.allocate(capacity: layout.count)
        let grad = UnsafeMutablePointer<Float>.allocate(capacity: layout.count)
        defer { p.deallocate(); grad.deallocate() }
        for k in 0..<layout.count { p[k] = g.nextSignedUnitFloat() * 0.8 }
        grad.initialize(repeating: 0, count: layout.count)
        var inputs = (0..<(steps * layout.inputs)).map { _ in g.nextSignedUnitFloat() }
        let c = (0..<layout.hidden).map { _ in g.nextSignedUnitFloat() }
        var trace = GRUTrace(layout: layout, maxSteps: steps)
        func loss() -> Double {
            trace.reset()
            inputs.withUnsafeBufferPointer { x in
                for t in 0..<steps { trace.step(p, input: x.baseAddress! + t * layout.inputs) }
            }
            let h = Array(trace.last)
            return zip(c, h).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        }
        _ = loss()
        var scratch = GRUBackwardScratch(layout: layout)
        var inputGrad = [Float](repeating: 0, count: inputs.count)
        trace.backward(p, dLast: c, grad: grad, scratch: &scratch) { t, dx in
            for k in 0..<layout.inputs { inputGrad[t * layout.inputs + k] = dx[k] }
        }
        var worst = 0.0
        let h: Float = 1e-2
        for k in 0..<layout.count {
            let saved = p[k]
            p[k] = saved + h; let up = loss()
            p[k] = saved - h; let down = loss()
            p[k] = saved
            let numeric = (up - down) / (2 * Double(h))
            worst = max(worst, abs(Double(grad[k]) - numeric) / max(1e-3, abs(Double(grad[k])) + abs(numeric)))
        }
        for k in inputs.indices {
            let saved = inputs[k]
            inputs[k] = saved + h; let up = loss()
            inputs[k] = saved - h; let down = loss()
            inputs[k] = saved
            let numeric = (up - down) / (2 * Double(h))
            worst = max(worst, abs(Double(inputGrad[k]) - numeric) / max(1e-3, abs(Double(inputGrad[k])) + abs(numeric)))
        }
        #expect(worst < 0.01, "worst relative error \(worst)")
    }

    /// Planted chains A → B → C over 30 disjoint triples, streamed many
    /// times: given the session [A, B], C is ranked first, for the GRU alone
    /// (no transition counts), far above the chance of 1 in 90.
    @Test func theGRULearnsPlantedSequences() {
        let table = EmbeddingTable(dimension: 16, seed: 9)
        var s = SessionRNNSettings()
        s.transitionWeight = 0
        s.negatives = 32
        s.steps = 4
        let scorer = SessionRNNScorer(settings: s, table: table)
        table.grow(users: 200, items: 90)
        scorer.grow(users: 200, items: 90)
        var rng = SplitMix64(seed: 4)
        var seq: UInt64 = 0
        for _ in 0..<4000 {
            let u = Int32(rng.below(200))
            let chain = Int32(rng.below(30)) * 3
            for step in 0..<Int32(3) {
                seq += 1
                scorer.learn(LearnEvent(seq: seq, user: u, item: chain + step, kind: .click, value: 1, timestamp: 0))
            }
        }
        let ex = ExclusionSet()
        var firsts = 0
        for chain in 0..<30 {
            let a = Int32(chain * 3)
            ex.reset(itemCount: 90)
            var top = TopK(k: 1)
            scorer.recommend(ScoringQuery(user: nil, sessionItems: [a, a + 1], exclusions: ex, itemCount: 90), into: &top)
            if top.sorted().first?.item == a + 2 { firsts += 1 }
        }
        #expect(firsts >= 20, "C first for \(firsts) of 30 chains")
    }
}
