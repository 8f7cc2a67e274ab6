// The adversarial generator's policy-gradient step on a tiny fixed problem,
// and its candidates' edge cases.

import Foundation
import Testing
@testable import GANCandidates
@testable import PerennialCore

@Suite struct GANTests {
    private func probabilities(_ g: GANScorer, items: Int) -> [Float] {
        let ex = ExclusionSet()
        ex.reset(itemCount: items)
        let logits = g.score(ScoringQuery(user: 0, exclusions: ex, itemCount: items), items: (0..<Int32(items)).map { $0 })
        let m = logits.max()!
        let e = logits.map { expf($0 - m) }
        let z = e.reduce(0, +)
        return e.map { $0 / z }
    }

    /// Five items; a fixed discriminator that finds item 3 real and the
    /// others fake; no likelihood term. REINFORCE alone must move the
    /// generator's probability toward item 3.
    @Test func policyGradientRaisesTheRewardedItem() {
        var s = GANSettings()
        s.likelihoodWeight = 0
        s.discriminatorLearningRate = 0
        // Pure REINFORCE needs small steps: at the default 0.2 (tuned with
        // the likelihood term on) this tiny problem can collapse onto a
        // wrong item, where every sample has the same reward and the
        // gradient vanishes — the known weakness the likelihood term guards.
        s.generatorLearningRate = 0.05
        s.contextItems = 0
        let g = GANScorer(settings: s)
        g.grow(users: 1, items: 5)
        for j in 0..<5 { g.biases.row(j)[2] = j == 3 ? 4 : -4 }
        let before = probabilities(g, items: 5)
        for n in 0..<300 {
            g.learn(LearnEvent(seq: UInt64(n + 1), user: 0, item: Int32(n % 5), kind: .click, value: 1, timestamp: 0))
        }
        let after = probabilities(g, items: 5)
        #expect(after[3] > before[3] + 0.3, "p(3): \(before[3]) -> \(after[3])")
        #expect(after[3] == after.max())
    }

    /// Items 0..<n whose generator logits are exactly `logit(j)` (zero
    /// vectors, so the user's vector, zero before any step, adds nothing).
    private func fixedLogits(_ n: Int, proposals: Int, _ logit: (Int) -> Float) -> GANScorer {
        var s = GANSettings()
        s.contextItems = 0
        s.exactSoftmaxItems = 0
        s.softmaxProposals = proposals
        let g = GANScorer(settings: s)
        g.grow(users: 1, items: n)
        for j in 0..<n {
            g.genItems.row(j).update(repeating: 0, count: s.dimension + 1)
            g.biases.row(j)[0] = logit(j)
        }
        return g
    }

    /// Total variation distance between the draws' frequencies and the
    /// softmax of the logits.
    private func distanceFromSoftmax(_ g: GANScorer, n: Int, logit: (Int) -> Float, calls: Int,
                                     draw: (GANScorer) -> Void) -> Double {
        var counts = [Int](repeating: 0, count: n)
        var total = 0
        for _ in 0..<calls {
            draw(g)
            for j in g.drawn { counts[Int(j)] += 1; total += 1 }
        }
        let e = (0..<n).map { exp(Double(logit($0))) }
        let z = e.reduce(0, +)
        return 0.5 * (0..<n).map { abs(Double(counts[$0]) / Double(total) - e[$0] / z) }.reduce(0, +)
    }

    /// Above `exact_softmax_items` the samples come from uniform proposals
    /// resampled by exp(logit) (sampling-importance-resampling): with
    /// proposals plentiful they follow the softmax as the exact draw does;
    /// with a single proposal they are uniform, far from it (the check has
    /// teeth).
    @Test func sampledSoftmaxDrawsFollowTheSoftmax() {
        let n = 40
        let logit: (Int) -> Float = { Float($0 % 8) * 0.5 }
        let many = fixedLogits(n, proposals: 1024, logit)
        let sampled = distanceFromSoftmax(many, n: n, logit: logit, calls: 4_000) { #expect($0.drawFromProposals(n: n, count: 8)) }
        let exact = distanceFromSoftmax(many, n: n, logit: logit, calls: 4_000) { $0.drawFromSoftmax(n: n, count: 8) }
        let one = fixedLogits(n, proposals: 1, logit)
        let uniform = distanceFromSoftmax(one, n: n, logit: logit, calls: 4_000) { #expect($0.drawFromProposals(n: n, count: 8)) }
        #expect(sampled < 0.03, "sampled: \(sampled)")
        #expect(exact < 0.03, "exact: \(exact)")
        #expect(uniform > 0.15, "one proposal: \(uniform)")
    }

    /// Vacant indices (expired items') are never drawn; with every index
    /// vacant nothing is, and learning falls back to the full softmax.
    @Test func sampledSoftmaxSkipsVacantItems() {
        let n = 30
        let g = fixedLogits(n, proposals: 256) { Float($0) * 0.1 }
        g.vacancy.grow(items: n)
        for j in stride(from: 0, to: n, by: 3) { g.vacancy.markVacant(Int32(j)) }
        g.vacancy.position = 1
        for _ in 0..<500 {
            #expect(g.drawFromProposals(n: n, count: 8))
            #expect(g.drawn.allSatisfy { $0 % 3 != 0 }, "\(g.drawn)")
        }
        for j in 0..<n { g.vacancy.markVacant(Int32(j)) }
        #expect(!g.drawFromProposals(n: n, count: 8))
    }

    /// Learning in a catalogue above the threshold takes the sampled path
    /// (STATS counts its steps); below it, the exact one.
    @Test func theThresholdChoosesThePath() {
        for (threshold, expected) in [(0, true), (20_000, false)] {
            var s = GANSettings()
            s.exactSoftmaxItems = threshold
            s.softmaxProposals = 64
            let g = GANScorer(settings: s)
            g.grow(users: 3, items: 50)
            for k in 0..<200 {
                g.learn(LearnEvent(seq: UInt64(k + 1), user: Int32(k % 3), item: Int32(k * 7 % 50), kind: .click, value: 1, timestamp: 0))
            }
            let steps = g.counters.first { $0.0 == "sampled_softmax_steps" }?.1 ?? 0
            #expect((steps > 0) == expected, "threshold \(threshold): \(steps) sampled steps")
        }
    }

    @Test func candidateCountsHaveDefinedAnswers() {
        let g = GANScorer(settings: GANSettings())
        let ex = ExclusionSet()
        // Empty catalogue: nothing.
        ex.reset(itemCount: 0)
        var top = TopK(k: 10)
        g.recommend(ScoringQuery(user: nil, exclusions: ex, itemCount: 0), into: &top)
        #expect(top.sorted().isEmpty)
        // More asked for than exist: every eligible item once.
        g.grow(users: 1, items: 7)
        ex.reset(itemCount: 7)
        ex.insert(2)
        top.reset(k: 50)
        g.recommend(ScoringQuery(user: 0, exclusions: ex, itemCount: 7), into: &top)
        #expect(Set(top.sorted().map(\.item)) == [0, 1, 3, 4, 5, 6])
        // The same state gives the same candidates (seeded sampling).
        var again = TopK(k: 50)
        g.recommend(ScoringQuery(user: 0, exclusions: ex, itemCount: 7), into: &again)
        #expect(again.sorted().map(\.item) == top.sorted().map(\.item))
    }

    /// The Gumbel-top-k skip only drops items the full key would reject:
    /// the sample with the skip equals the sample with every key computed,
    /// over many draws at several temperatures and logit spreads.
    @Test func gumbelSkipKeepsTheSampleExact() {
        var rng = SplitMix64(seed: 7)
        var skipped = 0, total = 0
        for trial in 0..<60 {
            let n = 2000, k = [1, 5, 10, 50][trial % 4]
            let spread: Float = [0.1, 1, 5, 40][trial % 4]
            let invT: Float = [1, 0.5, 2][trial % 3]
            let logits = (0..<n).map { _ in rng.nextSignedUnitFloat() * spread }
            var g = SplitMix64(seed: UInt64(trial))
            var plain = TopK(k: k), fast = TopK(k: k)
            for i in 0..<n {
                let u = GumbelTopK.uniform(&g)
                let x = logits[i] * invT
                let key = x - logf(-logf(u))
                plain.push(Int32(i), key)
                total += 1
                if GumbelTopK.cannotEnter(x, uniform: u, threshold: fast.threshold) {
                    skipped += 1
                    #expect(key < fast.threshold)
                    continue
                }
                fast.push(Int32(i), key)
            }
            #expect(plain.sorted().map(\.item) == fast.sorted().map(\.item))
        }
        // It must also be worth having: most keys are skipped.
        #expect(skipped * 2 > total, "skipped \(skipped) of \(total)")
    }
}
