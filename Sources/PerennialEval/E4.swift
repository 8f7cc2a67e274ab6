// E4 — next item from the sequence (EVALUATION.md): for each user with at
// least 3 events, the target is their last event in stream order (positive
// or not) and the input is the items before it, most recent last. Train on
// every user's prefix; rank among all items in training, excluding the
// user's prefix items. Baselines computed here: popularity, and the
// first-order Markov chain (transition counts between consecutive items in
// all prefixes, scored from the last input item; ties, including "no
// transition seen", broken by popularity).

import Foundation
import PerennialCore

public struct E4: Sendable {
    public let data: MovieLensData
    public let setup: EvalSetup
    /// How many of the most recent prefix items a scorer is given as the
    /// session: all of them, as EVALUATION.md says ("the input is the items
    /// before it"; it was the last 50: review finding, helper-53). A scorer
    /// reads what it needs (session-rnn its last `steps`).
    public var sessionLength = Int.max

    public init(data: MovieLensData, setup: EvalSetup) {
        self.data = data
        self.setup = setup
    }

    /// Stream indices of the held-out targets (each user's last event, for
    /// users with at least 3 events), by user.
    public var targets: [(user: UInt64, index: Int)] {
        var last: [UInt64: Int] = [:]
        var count: [UInt64: Int] = [:]
        for (idx, r) in data.ratings.enumerated() { last[r.user] = idx; count[r.user, default: 0] += 1 }
        return last.filter { count[$0.key]! >= 3 }.map { ($0.key, $0.value) }.sorted { $0.user < $1.user }
    }

    /// Training events and, per evaluated user, their prefix in stream order.
    func split() -> (train: [Rating], prefixes: [UInt64: [UInt64]], targets: [(user: UInt64, item: UInt64)]) {
        let t = targets
        let held = Set(t.map(\.index))
        var train: [Rating] = []
        var prefixes: [UInt64: [UInt64]] = [:]
        for (idx, r) in data.ratings.enumerated() where !held.contains(idx) {
            train.append(r)
            prefixes[r.user, default: []].append(r.item)
        }
        return (train, prefixes, t.map { ($0.user, data.ratings[$0.index].item) })
    }

    public func run(scorer: String) throws -> TopKRunResult {
        let t0 = Date()
        let (train, prefixes, targets) = split()
        let model = try setup.makeModel(scorer: scorer)
        try model.fit(train, scorer: scorer)
        var result = TopKRunResult(scorer: scorer)
        for (user, item) in targets {
            guard model.items.index(of: item) != nil else { result.total.record(rank: nil); continue }
            let session = Array(prefixes[user, default: []].suffix(sessionLength))
            let recs = try model.recommend(user: user, k: 10, scorer: scorer, session: session)
            result.total.record(rank: recs.firstIndex { $0.item == item }.map { $0 + 1 })
        }
        result.seconds = Date().timeIntervalSince(t0)
        return result
    }

    /// The popularity and first-order Markov baselines.
    public func baselines() -> [TopKRunResult] {
        let t0 = Date()
        let (train, prefixes, targets) = split()
        var popularity: [UInt64: Int] = [:]
        for r in train { popularity[r.item, default: 0] += 1 }
        var transitions: [UInt64: [UInt64: Int]] = [:]
        for (_, items) in prefixes {
            for (a, b) in zip(items, items.dropFirst()) { transitions[a, default: [:]][b, default: 0] += 1 }
        }
        // Items in training, most popular first (ties by id, so the order is
        // reproducible in any language).
        let byPopularity = popularity.keys.sorted { (popularity[$0]!, $1) > (popularity[$1]!, $0) }
        var pop = TopKRunResult(scorer: "popularity"), markov = TopKRunResult(scorer: "markov")
        for (user, target) in targets {
            let excluded = Set(prefixes[user, default: []])
            pop.total.record(rank: rank(of: target, in: byPopularity.lazy.filter { !excluded.contains($0) }))
            // Items with a transition from the last input item, by count then
            // popularity; then everything else by popularity.
            let from = prefixes[user]?.last.flatMap { transitions[$0] } ?? [:]
            let followed = from.keys.filter { !excluded.contains($0) }.sorted {
                (from[$0]!, popularity[$0]!, $1) > (from[$1]!, popularity[$1]!, $0)
            }
            let rest = byPopularity.lazy.filter { !excluded.contains($0) && from[$0] == nil }
            markov.total.record(rank: rank(of: target, in: Array(followed.prefix(10)) + Array(rest.prefix(10))))
        }
        pop.seconds = Date().timeIntervalSince(t0)
        markov.seconds = pop.seconds
        return [markov, pop]
    }
}

/// 1-based rank of `target` among the first 10 of `ranking`, or nil.
func rank(of target: UInt64, in ranking: some Sequence<UInt64>) -> Int? {
    for (k, item) in ranking.prefix(10).enumerated() where item == target { return k + 1 }
    return nil
}
