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
