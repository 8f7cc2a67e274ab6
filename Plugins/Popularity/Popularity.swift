// Popularity: how often each item has been interacted with, counted online,
// optionally with exponential decay so recent interest weighs more. It
// recommends the most popular items the user has not interacted with. The
// baseline every other scorer must beat, and the fallback for users nobody
// knows yet.

import PerennialCore

public struct PopularitySettings: ScorerSettings, Equatable {
    /// Events after which an interaction counts half; 0 = no decay.
    public var halfLifeEvents: Int = 0
    public init(halfLifeEvents: Int = 0) { self.halfLifeEvents = halfLifeEvents }
}

public final class PopularityScorer: Scorer {
    public let name = "popularity"
    let settings: PopularitySettings
    /// Per item: decayed count, scaled by `scale` (see `learn`).
    let counts = ChunkedBuffer<Double>(width: 1, fill: 0, rowsPerChunkLog2: 12)
    var itemCount = 0
    /// Decay without touching every item per event: each new event adds
    /// 2^(seq / halfLife) instead of 1, which equals decaying all earlier
    /// counts by 2^(-1/halfLife) per event. When the weight grows large, all
    /// counts are rescaled once.
    var logWeight = 0.0
    var learned: UInt64 = 0

    public init(settings: PopularitySettings) { self.settings = settings }

    public static let factory = ScorerFactory(
        name: "popularity",
        summary: "most interacted-with items, counted online (optionally decayed)",
        readSettings: { r throws(ConfigError) in
            PopularitySettings(halfLifeEvents: try r.int("half_life_events", default: 0, in: 0...Int(Int32.max)))
        },
        make: { s, _ in PopularityScorer(settings: s as! PopularitySettings) })

    public func grow(users: Int, items: Int) {
        counts.ensure(rows: items)
        itemCount = items
    }

    /// Expired items: their counts go.
    public func forget(items: RetiredItems) {
        for i in items.indices { counts[Int(i)] = 0 }
    }

    public func learn(_ event: LearnEvent) {
        learned += 1
        let weight = event.kind == .rating ? 1 : Double(event.value)
        if settings.halfLifeEvents > 0 {
            logWeight += 1 / Double(settings.halfLifeEvents)
            if logWeight > 60 {
                // 2^60: rescale every count by 2^-60 and restart the weight.
                let factor = 1 / pow2(logWeight)
                counts.forEachChunk(rows: itemCount) { _, p, n in
                    for j in 0..<n { p[j] *= factor }
                }
                logWeight = 0
            }
            counts[Int(event.item)] += weight * pow2(logWeight)
        } else {
            counts[Int(event.item)] += weight
        }
    }

    public func recommend(_ query: ScoringQuery, into top: inout TopK) {
        query.forEachEligibleItem { item in
            top.push(item, Float(counts[Int(item)] / pow2(logWeight)))
        }
    }

    public func score(_ query: ScoringQuery, items: [Int32?]) -> [Float] {
        let scale = 1 / pow2(logWeight)
        return items.map { i in i.map { Float(counts[Int($0)] * scale) } ?? 0 }
    }

    public var counters: [(String, UInt64)] { [("events", learned)] }

    public func save(to w: inout SnapshotWriter) {
        w.rows(counts, count: itemCount)
        w.f64(logWeight)
        w.u64(learned)
    }

    public func load(from r: inout SnapshotReader) throws {
        try r.rows(into: counts, expected: itemCount)
        logWeight = try r.f64()
        learned = try r.u64()
    }
}

@inline(__always)
func pow2(_ x: Double) -> Double { x == 0 ? 1 : exp2(x) }

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
