// Popularity: how often each item has been interacted with, counted online,
// optionally with exponential decay so recent interest weighs more. It
// recommends the most popular items the user has not interacted with. The
// baseline every other scorer must beat, and the fallback for users nobody
// knows yet.

import PerennialCore
import Synchronization

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
    /// counts are rescaled once. Written by the learner, read by the serving
    /// thread: a Double's bits in an atomic.
    private let logWeightBits = Atomic<UInt64>(0)
    var logWeight: Double {
        get { Double(bitPattern: logWeightBits.load(ordering: .relaxed)) }
        set { logWeightBits.store(newValue.bitPattern, ordering: .relaxed) }
    }
    /// Odd while the learner rescales every count (a sequence lock): a
    /// reader that saw it odd, or changed across its read, reads again, so
    /// no answer mixes rescaled and unscaled counts (helper-55 measured a
    /// ratio of 2^62 between two equally popular items during a rescale).
    private let rescaling = Atomic<UInt64>(0)
    /// Items the learner has counted (its own bound for the rescale: the
    /// serving thread grows `itemCount` ahead of it).
    private var learnedItems = 0
    /// (Written by the learner, read by STATS on the serving thread.)
    let learned = Atomic<UInt64>(0)
    /// The most-counted items, so an answer need not read every count.
    let leaderboard = CountLeaderboard()
    /// The leaderboard's copy for a request (serving thread).
    private var leaderScratch: [Int32] = []

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

    /// Forgotten items (deleted or expired): their counts go, now, and they
    /// leave the leaderboard with the learner idle (not on the learner
    /// while requests rank from it: a leaderboard changed under a request
    /// would answer wrongly, review finding, helper-97).
    public func forget(items: RetiredItems) {
        for i in items.indices { counts[Int(i)] = 0 }
        leaderboard.forget(items)
    }

    public func learn(_ event: LearnEvent) {
        learned.add(1, ordering: .relaxed)
        learnedItems = max(learnedItems, Int(event.item) + 1)
        let weight = Double(event.occurrenceWeight)
        if settings.halfLifeEvents > 0 {
            var lw = logWeight + 1 / Double(settings.halfLifeEvents)
            if lw > 60 {
                // 2^60: rescale every count by 2^-60 and restart the weight,
                // inside the sequence lock.
                let factor = 1 / pow2(lw)
                let s = rescaling.load(ordering: .relaxed)
                rescaling.store(s + 1, ordering: .relaxed)
                atomicMemoryFence(ordering: .releasing)
                counts.forEachChunk(rows: learnedItems) { _, p, n in
                    for j in 0..<n { p[j] *= factor }
                }
                leaderboard.scaled(by: factor)
                lw = 0
                logWeight = 0
                rescaling.store(s + 2, ordering: .releasing)
            }
            counts[Int(event.item)] += weight * pow2(lw)
            logWeight = lw
        } else {
            counts[Int(event.item)] += weight
        }
        leaderboard.raised(event.item, to: counts[Int(event.item)])
    }

    /// Runs `read` until it has seen no rescale begin or end meanwhile.
    @inline(__always)
    private func consistently<T>(_ read: (_ scale: Double) -> T) -> T {
        while true {
            let s = rescaling.load(ordering: .acquiring)
            if s & 1 == 1 { continue }  // a rescale takes microseconds
            let result = read(1 / pow2(logWeight))
            atomicMemoryFence(ordering: .acquiring)
            if rescaling.load(ordering: .relaxed) == s { return result }
        }
    }

    public func recommend(_ query: ScoringQuery, into top: inout TopK) {
        let k = top.k
        consistently { scale in
            let score = { (item: Int32) in Float(self.counts[Int(item)] * scale) }
            if leaderboard.rank(query, into: &top, scratch: &leaderScratch, countScore: { Float($0 * scale) },
                                score: score) { return }
            top.reset(k: k)
            query.forEachEligibleItem { item in top.push(item, score(item)) }
        }
    }

    public func score(_ query: ScoringQuery, items: [Int32?]) -> [Float] {
        consistently { scale in items.map { i in i.map { Float(counts[Int($0)] * scale) } ?? 0 } }
    }

    public var counters: [(String, UInt64)] { [("events", learned.load(ordering: .relaxed))] }

    public func save(to w: inout SnapshotWriter) {
        w.rows(counts, count: itemCount)
        w.f64(logWeight)
        w.u64(learned.load(ordering: .relaxed))
    }

    public func load(from r: inout SnapshotReader) throws {
        try r.rows(into: counts, expected: itemCount)
        logWeight = try r.f64()
        learned.store(try r.u64(), ordering: .relaxed)
        learnedItems = itemCount
        leaderboard.rebuild(items: learnedItems) { counts[Int($0)] }
    }
}

@inline(__always)
func pow2(_ x: Double) -> Double { x == 0 ? 1 : exp2(x) }

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
