// The drift scenario: a synthetic stream whose tastes change abruptly and
// later return, scored prequentially like E1, to show how fast a model
// recovers after a change and how much of the old taste it kept.
//
// The stream (seeded, so every run sees the same events):
//   - 600 users in 6 groups of 100; 1,200 items in 6 clusters of 200, with
//     Zipf(1) popularity inside a cluster.
//   - Phase A, the first 40% of events: group g likes cluster g.
//   - Phase B, the next 30%: every group's taste moves, group g likes
//     cluster (g + 1) mod 6 — an abrupt change for everyone at once.
//   - Phase A again, the last 30%: the old tastes return.
//   - Each event: a uniformly drawn user picks, with probability 0.9, an
//     item of the cluster their group likes now (by popularity), otherwise
//     any item; never an item they already had (rating 5, timestamp = index).
//
// Scoring: every event whose user and item were seen before asks for the
// user's top 10 among the items seen so far minus the user's earlier items
// (E1's rule), then the model learns it. Reported per window of 1,000
// events; "recovery" is the number of events after the change until a
// window's HR@10 is back to 90% of the level just before it; "return" is
// HR@10 over the first 3,000 events after the old tastes come back.

import Foundation
import PerennialCore

public struct DriftScenario: Sendable {
    public var users = 600, groups = 6, itemsPerCluster = 200
    public var events = 90_000
    public var noise = 0.1
    public var seed: UInt64 = 2026
    public var window = 1000

    public init() {}

    public var changeAt: Int { events * 4 / 10 }
    public var returnAt: Int { events * 7 / 10 }

    /// The cluster group `g` likes at event `index`.
    func cluster(group g: Int, at index: Int) -> Int {
        (index >= changeAt && index < returnAt) ? (g + 1) % groups : g
    }

    /// The stream, as MovieLens-shaped ratings.
    public func stream() -> MovieLensData {
        var rng = SplitMix64(seed: seed)
        // Zipf(1) over a cluster's items, as a cumulative table.
        var cumulative: [Double] = []
        var total = 0.0
        for r in 1...itemsPerCluster { total += 1 / Double(r); cumulative.append(total) }
        var had = [Set<Int>](repeating: [], count: users)
        var ratings: [Rating] = []
        ratings.reserveCapacity(events)
        let itemCount = groups * itemsPerCluster
        for index in 0..<events {
            let u = rng.below(users)
            var item = 0
            for _ in 0..<50 {
                if rng.unitDouble() < noise {
                    item = rng.below(itemCount)
                } else {
                    let x = rng.unitDouble() * total
                    var lo = 0, hi = itemsPerCluster - 1
                    while lo < hi { let mid = (lo + hi) / 2; if cumulative[mid] < x { lo = mid + 1 } else { hi = mid } }
                    item = cluster(group: u % groups, at: index) * itemsPerCluster + lo
                }
                if !had[u].contains(item) { break }
            }
            had[u].insert(item)
            ratings.append(Rating(user: UInt64(u + 1), item: UInt64(item + 1), rating: 5, timestamp: Int64(index + 1)))
        }
        return MovieLensData(ratings: ratings, name: "drift-scenario")
    }
}

public struct DriftResult: Sendable {
    public var variant: E1Variant
    public var windows: [TopKTally]
    public var window: Int
    public var changeAt: Int
    public var returnAt: Int

    /// HR@10 over the three windows before the change.
    public var beforeChange: Double { merged(changeAt - 3 * window, changeAt).hr }
    /// Events after the change until a window's HR@10 is back to 90% of
    /// `beforeChange` (nil if it never is before the return).
    public var recoveryEvents: Int? {
        let target = 0.9 * beforeChange
        var start = changeAt
        while start + window <= returnAt {
            if merged(start, start + window).hr >= target { return start + window - changeAt }
            start += window
        }
        return nil
    }
    /// HR@10 over the first 3,000 events after the old tastes return, in
    /// all and per user.
    public var onReturn: TopKTally { merged(returnAt, returnAt + 3 * window) }
    public var onReturnByUser: [UInt64: TopKTally] = [:]

    func merged(_ from: Int, _ to: Int) -> TopKTally {
        var t = TopKTally()
        for w in (from / window)..<min(windows.count, to / window) {
            t.hits += windows[w].hits
            t.ndcgSum += windows[w].ndcgSum
            t.count += windows[w].count
        }
        return t
    }

    public var json: [String: Any] {
        ["windows": windows.map(\.json), "window_events": window, "hr10_before_change": rounded(beforeChange),
         "recovery_events": recoveryEvents.map { $0 as Any } ?? NSNull(), "return": onReturn.json]
    }
}

public struct Drift: Sendable {
    public let scenario: DriftScenario
    public let data: MovieLensData
    public let setup: EvalSetup

    public init(scenario: DriftScenario, setup: EvalSetup) {
        self.scenario = scenario
        self.data = scenario.stream()
        self.setup = setup
    }

    public func run(scorer: String, variant: E1Variant) throws -> DriftResult {
        var setup = self.setup
        setup.config.lifelong = variant.lifelong(setup.config.lifelong)
        let model = try setup.makeModel(scorer: scorer)
        var windows = [TopKTally](repeating: TopKTally(), count: (data.ratings.count + scenario.window - 1) / scenario.window)
        var scratch: [LearnEvent] = []
        var onReturnByUser: [UInt64: TopKTally] = [:]
        let returnEnd = scenario.returnAt + 3 * scenario.window
        for (index, r) in data.ratings.enumerated() {
            if model.users.index(of: r.user) != nil && model.items.index(of: r.item) != nil {
                let rank = model.rankOf(r.item, user: r.user, scorer: scorer)
                windows[index / scenario.window].record(rank: rank)
                if index >= scenario.returnAt && index < returnEnd { onReturnByUser[r.user, default: TopKTally()].record(rank: rank) }
            }
            model.feed(r, learn: variant.learnsOnline, scratch: &scratch)
        }
        var result = DriftResult(variant: variant, windows: windows, window: scenario.window,
                                 changeAt: scenario.changeAt, returnAt: scenario.returnAt)
        result.onReturnByUser = onReturnByUser
        return result
    }
}
