// The churn scenario: a synthetic news feed whose catalogue turns over for
// good, to show what item expiry is for. Without it every article ever
// published keeps a row and is scanned by every RECOMMEND; with it the
// model holds about the articles of the last few days.
//
// The stream (seeded, so every run sees the same events):
//   - 2,000 users in 10 topic groups; 60 days of event time.
//   - Every topic publishes an article every 30 minutes (480 a day, 28,800
//     in all), each with an appeal drawn once (log-normal).
//   - An event at time t: a uniformly drawn user picks, with probability
//     0.85, an article of their group's topic, else of any topic, among
//     those published in the last 5 days, with weight appeal × e^(−age /
//     1 day): news is read while it is fresh. Never one they already read.
//     250,000 events, evenly spread over the 60 days (one every ~21 s).
//
// Scoring: E1's rule on every event whose user and article were both seen
// in the stream before (every run scores the same events): the
// user's top 10 among what the model holds, minus their earlier items.
// A model that forgot the article (expired) scores a miss. The first
// tenth of the stream warms up and is not scored.

import Foundation
import PerennialCore

public struct ChurnScenario: Sendable {
    public var users = 2000, topics = 10
    public var days = 60
    public var events = 250_000
    public var publishEverySeconds = 1800
    public var freshSeconds = 86_400.0
    public var visibleDays = 5
    public var onTopic = 0.85
    public var seed: UInt64 = 2027

    public init() {}

    public var seconds: Int { days * 86_400 }
    public var articles: Int { topics * (seconds / publishEverySeconds) }
    public var start: Int64 { 1_700_000_000 }

    /// Article a (0-based) is topic a % topics, published at start + (a / topics) × publishEverySeconds.
    func published(_ a: Int) -> Int64 { start + Int64(a / topics * publishEverySeconds) }

    /// The stream, as MovieLens-shaped ratings (a read is a rating of 5, as in the drift scenario: a positive).
    public func stream() -> MovieLensData {
        var rng = SplitMix64(seed: seed)
        // Appeal: e^(N(0, 1)), by Box-Muller.
        let appeal = (0..<articles).map { _ -> Double in
            let u1 = max(rng.unitDouble(), 1e-12), u2 = rng.unitDouble()
            return exp((-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2))
        }
        var read = [Set<Int>](repeating: [], count: users)
        var ratings: [Rating] = []
        ratings.reserveCapacity(events)
        var weights: [Double] = []
        let perTopicVisible = visibleDays * 86_400 / publishEverySeconds
        for index in 0..<events {
            let t = start + Int64(Double(index) / Double(events) * Double(seconds))
            let u = rng.below(users)
            let topic = rng.unitDouble() < onTopic ? u % topics : rng.below(topics)
            // The topic's articles published by t, newest last.
            let slots = Int(t - start) / publishEverySeconds + 1
            let newest = (slots - 1) * topics + topic
            let count = min(slots, perTopicVisible)
            weights.removeAll(keepingCapacity: true)
            var total = 0.0
            for k in 0..<count {
                let a = newest - k * topics
                let age = Double(t - published(a))
                total += appeal[a] * exp(-age / freshSeconds)
                weights.append(total)
            }
            var chosen = newest
            for _ in 0..<20 {
                let x = rng.unitDouble() * total
                var lo = 0, hi = count - 1
                while lo < hi { let mid = (lo + hi) / 2; if weights[mid] < x { lo = mid + 1 } else { hi = mid } }
                chosen = newest - lo * topics
                if !read[u].contains(chosen) { break }
            }
            read[u].insert(chosen)
            ratings.append(Rating(user: UInt64(u + 1), item: UInt64(chosen + 1), rating: 5, timestamp: t))
        }
        return MovieLensData(ratings: ratings, name: "churn-scenario")
    }
}

public struct ChurnResult: Sendable {
    /// Item expiry (seconds; 0 = off).
    public var expireAfter: Int
    public var total = TopKTally()
    /// Scored events whose article the model had forgotten (misses).
    public var forgotten = 0
    public var itemRows = 0
    public var liveItems = 0
    public var tableBytes = 0
    /// Mean server-side time of one RECOMMEND (top 10), in µs.
    public var recommendMicros = 0.0
    public var seconds = 0.0

    public var json: [String: Any] {
        ["item_expire_after_seconds": expireAfter, "hr10": rounded(total.hr), "ndcg10": rounded(total.ndcg),
         "count": total.count, "forgotten_item_events": forgotten, "item_rows": itemRows, "live_items": liveItems,
         "table_bytes": tableBytes, "recommend_us": rounded(recommendMicros), "seconds": rounded(seconds)]
    }
}

public struct Churn: Sendable {
    public let scenario: ChurnScenario
    public let data: MovieLensData
    public let setup: EvalSetup

    public init(scenario: ChurnScenario, setup: EvalSetup) {
        self.scenario = scenario
        self.data = scenario.stream()
        self.setup = setup
    }

    public func run(scorer: String, expireAfter: Int) throws -> ChurnResult {
        let t0 = Date()
        var setup = self.setup
        setup.config.lifelong.itemExpireAfterSeconds = expireAfter
        let model = try setup.makeModel(scorer: scorer)
        var result = ChurnResult(expireAfter: expireAfter)
        var scratch: [LearnEvent] = []
        var published = Set<UInt64>()
        var seenUsers = Set<UInt64>()
        var recommendNanos: UInt64 = 0
        let warmup = data.ratings.count / 10
        for (index, r) in data.ratings.enumerated() {
            if index >= warmup && seenUsers.contains(r.user) && published.contains(r.item) {
                if model.items.index(of: r.item) == nil {
                    result.forgotten += 1
                    result.total.record(rank: nil)
                } else {
                    let started = MonotonicClock.nowNanos()
                    let rank = model.rankOf(r.item, user: r.user, scorer: scorer)
                    recommendNanos += MonotonicClock.nowNanos() - started
                    result.total.record(rank: rank)
                }
            }
            model.feed(r, learn: true, scratch: &scratch)
            seenUsers.insert(r.user)
            published.insert(r.item)
        }
        result.itemRows = model.items.count
        result.liveItems = model.items.liveCount
        result.tableBytes = model.table.bytes
        let measured = result.total.count - result.forgotten
        result.recommendMicros = measured > 0 ? Double(recommendNanos) / Double(measured) / 1000 : 0
        result.seconds = Date().timeIntervalSince(t0)
        return result
    }
}
