// The text encoder's backward pass against finite differences, the
// tokenizer's edge cases, and the scorer learning that text predicts taste.

import Testing
@testable import PerennialCore
@testable import TextCNN

@Suite struct TextCNNTests {
    /// L = c · y for a fixed random c, so dL/dy = c; every analytic gradient
    /// (kernels, biases, projection, embedding rows) must match the central
    /// difference (L(w + h) − L(w − h)) / 2h.
    @Test func encoderGradientMatchesFiniteDifferences() {
        let shape = TextEncoderShape(buckets: 64, tokenDim: 4, widths: [1, 2, 3], filters: 3, output: 5)
        let enc = TextEncoder(shape: shape)
        let tok = Tokenizer(buckets: 64, maxWords: 10)
        let text = tok.tokenize("Toy Story adventure animation pixar")
        var g = SplitMix64(seed: 11)
        let p = UnsafeMutablePointer<Float>.allocate(capacity: shape.count)
        let grad = UnsafeMutablePointer<Float>.allocate(capacity: shape.count)
        defer { p.deallocate(); grad.deallocate() }
        for k in 0..<shape.count { p[k] = g.nextSignedUnitFloat() * 0.5 }
        grad.initialize(repeating: 0, count: shape.count)
        let c = (0..<shape.output).map { _ in g.nextSignedUnitFloat() }
        var trace = EncoderTrace(shape: shape)
        func loss() -> Double {
            enc.forward(p, text, trace: &trace)
            return zip(c, trace.y).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        }
        _ = loss()
        var embeddingGrad = [Int: Float]()
        var scratch = EncoderScratch(shape: shape)
        enc.backward(p, text, trace: trace, dy: c, grad: grad, scratch: &scratch) { id, de in
            for k in 0..<shape.tokenDim { embeddingGrad[Int(id) * shape.tokenDim + k, default: 0] += de[k] }
        }
        var checked = 0, worst = 0.0
        let indices = Array(stride(from: shape.kernelOffset(0), to: shape.count, by: 3)) + Array(embeddingGrad.keys)
        for idx in indices {
            let analytic = Double(idx < shape.embeddingCount ? embeddingGrad[idx]! : grad[idx])
            let saved = p[idx]
            let h: Float = 1e-2
            p[idx] = saved + h; let up = loss()
            p[idx] = saved - h; let down = loss()
            p[idx] = saved
            let numeric = (up - down) / (2 * Double(h))
            // Max-pooling and ReLU have kinks; skip the rare case where the
            // step crosses one (the two one-sided slopes then disagree).
            p[idx] = saved + h; let up2 = loss(); p[idx] = saved
            let oneSided = (up2 - loss()) / Double(h)
            if abs(oneSided - numeric) > 1e-2 * max(1, abs(numeric)) { continue }
            worst = max(worst, abs(analytic - numeric) / max(1e-3, abs(analytic) + abs(numeric)))
            checked += 1
        }
        #expect(checked > 100)
        #expect(worst < 0.02, "worst relative error \(worst)")
    }

    @Test func tokenizerHandlesEdgeCases() {
        let tok = Tokenizer(buckets: 1000, maxWords: 4)
        #expect(tok.tokenize("").positions == 0)
        #expect(tok.tokenize("!!! ... ---").positions == 0)
        let t = tok.tokenize("Amélie (2001) Comedy|Romance a b c d e")
        #expect(t.positions == 4)      // only maxWords are read…
        #expect(t.wordCount == 9)      // …but all are counted
        // "<a>" is one trigram; a word has its own bucket plus its trigrams.
        #expect(tok.tokenize("a").ids.count == 2)
        // Case does not matter.
        #expect(tok.tokenize("PIXAR") == tok.tokenize("pixar"))
        let big = String(repeating: "word ", count: 200_000)
        #expect(tok.tokenize(big).positions == 4)
        #expect(tok.tokenize(big).wordCount == 200_000)
    }

    /// Two groups of users like two kinds of items, told apart only by their
    /// text. After learning, a new item whose text is of kind A ranks above
    /// one of kind B for a user of group A, though nobody touched either.
    @Test func textPredictsTasteForUntouchedItems() {
        var s = TextCNNSettings()
        s.batch = 16
        s.buckets = 4096
        s.refreshSteps = 1
        let scorer = TextCNNScorer(settings: s)
        let words = [["space", "robot", "laser", "galaxy"], ["romance", "wedding", "kiss", "paris"]]
        scorer.grow(users: 40, items: 202)
        for i in 0..<200 {
            scorer.itemTextChanged(Int32(i), text: "\(words[i % 2][i % 4]) \(words[i % 2][(i / 2) % 4]) film \(i)", after: 0)
        }
        scorer.itemTextChanged(200, text: "galaxy robot story", after: 0)
        scorer.itemTextChanged(201, text: "paris kiss story", after: 0)
        var rng = SplitMix64(seed: 1)
        var seq: UInt64 = 0
        for _ in 0..<6000 {
            let u = Int32(rng.below(40)), kind = Int(u) % 2
            let item = Int32(rng.below(100) * 2 + kind)
            seq += 1
            scorer.learn(LearnEvent(seq: seq, user: u, item: item, kind: .click, value: 1, timestamp: 0))
        }
        let ex = ExclusionSet()
        ex.reset(itemCount: 202)
        let history: [Int32] = [0, 2, 4, 6]   // a kind-A user
        let q = ScoringQuery(user: 0, exclusions: ex, itemCount: 202, history: history[...])
        let scores = scorer.score(q, items: [200, 201])
        #expect(scores[0] > scores[1], "\(scores)")
    }

    /// A warm-up at start-up encodes every text before the first request
    /// (which otherwise encoded the whole catalogue while every connection
    /// waited: helper-77), and answers as the first request would have.
    @Test func aWarmUpAnswersAsTheFirstRequestWould() {
        func trained() -> TextCNNScorer {
            var s = TextCNNSettings()
            s.batch = 16
            s.buckets = 4096
            let scorer = TextCNNScorer(settings: s)
            scorer.grow(users: 20, items: 300)
            for i in 0..<300 { scorer.itemTextChanged(Int32(i), text: "word\(i % 17) word\(i % 5) item \(i)", after: 0) }
            var rng = SplitMix64(seed: 4)
            for k in 0..<2000 {
                scorer.learn(LearnEvent(seq: UInt64(k + 1), user: Int32(rng.below(20)), item: Int32(rng.below(300)), kind: .click, value: 1, timestamp: 0))
            }
            return scorer
        }
        let warmed = trained(), cold = trained()
        warmed.warmUp()
        let ex = ExclusionSet()
        ex.reset(itemCount: 300)
        let history: [Int32] = [3, 20, 37]
        let q = ScoringQuery(user: 0, exclusions: ex, itemCount: 300, history: history[...])
        var a = TopK(k: 10), b = TopK(k: 10)
        warmed.recommend(q, into: &a)
        cold.recommend(q, into: &b)
        #expect(a.sorted().map(\.item) == b.sorted().map(\.item) && !a.sorted().isEmpty)
        #expect(warmed.score(q, items: (0..<300).map { Int32($0) }) == cold.score(q, items: (0..<300).map { Int32($0) }))
    }
}
