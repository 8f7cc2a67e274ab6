// Is one E1 variant really ahead of another in a tenth of the test phase?
// A tenth of ml-latest-small's test phase is about 2,000 evaluated events
// from only 36-66 users, and its heaviest three users make a quarter to a
// half of them, so a tenth's HR@10 says as much about those users as about
// the model. The difference between two variants (scored on the same events)
// is therefore given with a 95% interval from a paired bootstrap over users
// (Efron & Tibshirani 1993): users are drawn with replacement, each bringing
// all their events of the tenth under both variants, and the HR@10
// difference of the drawn set is recomputed, 2,000 times.

import PerennialCore

public struct PairedComparison: Sendable {
    /// The statistic over all users (a difference or a ratio), and its interval.
    public var difference: Double
    public var low: Double
    public var high: Double
    public var users: Int

    /// `a` minus `b` over one tenth (each user's events under both variants).
    public static func compare(_ a: [UInt64: TopKTally], _ b: [UInt64: TopKTally], resamples: Int = 2000, seed: UInt64 = 7) -> PairedComparison {
        bootstrap(a, b, resamples: resamples, seed: seed) { ha, hb, n in n == 0 ? 0 : Double(ha - hb) / Double(n) }
    }

    /// The ratio of `a`'s hits to `b`'s over the same events, with its
    /// interval from the same bootstrap (`difference` holds the ratio).
    public static func ratio(_ a: [UInt64: TopKTally], _ b: [UInt64: TopKTally], resamples: Int = 2000, seed: UInt64 = 7) -> PairedComparison {
        bootstrap(a, b, resamples: resamples, seed: seed) { ha, hb, _ in hb == 0 ? .infinity : Double(ha) / Double(hb) }
    }

    /// `statistic(hits under a, hits under b, events)` over all the users both
    /// scored, and its 2.5th and 97.5th percentiles over `resamples` draws of
    /// as many users with replacement.
    private static func bootstrap(_ a: [UInt64: TopKTally], _ b: [UInt64: TopKTally], resamples: Int, seed: UInt64,
                                  statistic: (Int, Int, Int) -> Double) -> PairedComparison {
        let users = a.keys.filter { b[$0] != nil }.sorted()
        guard !users.isEmpty else { return PairedComparison(difference: 0, low: 0, high: 0, users: 0) }
        let rows = users.map { (a[$0]!.hits, b[$0]!.hits, a[$0]!.count) }
        func over(_ picks: [Int]) -> Double {
            var ha = 0, hb = 0, n = 0
            for k in picks { ha += rows[k].0; hb += rows[k].1; n += rows[k].2 }
            return statistic(ha, hb, n)
        }
        var rng = SplitMix64(seed: seed)
        var draws: [Double] = []
        draws.reserveCapacity(resamples)
        var picks = [Int](repeating: 0, count: rows.count)
        for _ in 0..<resamples {
            for k in picks.indices { picks[k] = rng.below(rows.count) }
            draws.append(over(picks))
        }
        draws.sort()
        return PairedComparison(difference: over(Array(rows.indices)), low: draws[resamples * 25 / 1000],
                                high: draws[resamples * 975 / 1000 - 1], users: rows.count)
    }

    /// The figures as JSON, the statistic under `name`.
    public func json(name: String = "difference") -> [String: Any] {
        [name: rounded(difference), "ci95_low": rounded(low), "ci95_high": rounded(high), "users": users]
    }
}
