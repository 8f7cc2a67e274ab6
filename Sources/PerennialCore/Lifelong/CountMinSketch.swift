// A count-min sketch (Cormode & Muthukrishnan 2005) with conservative
// update: approximate counts of how often each id was seen, in fixed
// memory however many distinct ids pass through. A count is never below the
// true one and rarely above it; id admission only asks "seen at least m
// times?", with m small, so one-byte saturating counters suffice.
//
// Aging (TinyLFU's reset, Einziger, Friedman & Manes 2017): after every
// `window` sightings all counters are halved. Without it a sketch fed a
// stream without end fills up: once the distinct ids seen approach its
// width, every counter is non-zero and each new id already looks seen
// (at 4 × the width, about nine in ten would). With it, the ids counted
// since the last halvings are at most about 2 × window, so a width of
// 4 × window keeps most counters empty for good, and a count means "seen
// that often lately" (an id seen once is forgotten at the next halving; a
// count of 2 becomes 1).

public struct CountMinSketch: Sendable {
    public static let depth = 4
    public let widthLog2: Int
    /// Sightings between two halvings.
    public let window: Int
    private var counters: [UInt8]
    /// Sightings since the last halving (in log order: a replay halves at
    /// the same sightings).
    private(set) var sinceHalving = 0

    /// A sketch four times as wide as the window (rounded up to a power of two).
    public init(window: Int = 65_536) {
        self.window = max(1, window)
        var log2 = 10
        while (1 << log2) < 4 * self.window { log2 += 1 }
        widthLog2 = log2
        counters = [UInt8](repeating: 0, count: Self.depth << log2)
    }

    @inline(__always)
    private func slot(_ id: UInt64, row: Int) -> Int {
        // A different multiply-xorshift mix per row (SplitMix64's finaliser).
        var z = id &+ UInt64(row + 1) &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return (row << widthLog2) | Int(z & ((1 << UInt64(widthLog2)) - 1))
    }

    /// Counts one sighting of `id`; returns its estimated count so far
    /// (before the halving this sighting may end the window with).
    @discardableResult
    public mutating func add(_ id: UInt64) -> Int {
        var least = Int(UInt8.max)
        for r in 0..<Self.depth { least = min(least, Int(counters[slot(id, row: r)])) }
        let next = min(least + 1, Int(UInt8.max))
        // Conservative update: raise only the counters below the new estimate.
        for r in 0..<Self.depth {
            let s = slot(id, row: r)
            if Int(counters[s]) < next { counters[s] = UInt8(next) }
        }
        sinceHalving += 1
        if sinceHalving >= window { halve() }
        return next
    }

    /// Halves every counter (rounding down) and starts the next window.
    private mutating func halve() {
        counters.withUnsafeMutableBufferPointer { c in
            for k in c.indices { c[k] >>= 1 }
        }
        sinceHalving = 0
    }

    /// Sightings from now until the next halving.
    public var untilHalving: Int { window - sinceHalving }

    public func estimate(_ id: UInt64) -> Int {
        var least = Int(UInt8.max)
        for r in 0..<Self.depth { least = min(least, Int(counters[slot(id, row: r)])) }
        return least
    }

    /// Takes `id`'s sightings back (a deleted user or item): its counters fall by
    /// its estimate, saturating at 0. Ids sharing a counter may then need
    /// a sighting or two more before admission; none is admitted sooner.
    public mutating func remove(_ id: UInt64) {
        let n = estimate(id)
        guard n > 0 else { return }
        for r in 0..<Self.depth {
            let s = slot(id, row: r)
            counters[s] = UInt8(max(0, Int(counters[s]) - n))
        }
    }

    /// The fraction of counters that are not zero (tests, and how full the
    /// sketch is).
    public var occupancy: Double {
        Double(counters.reduce(0) { $0 + ($1 == 0 ? 0 : 1) }) / Double(counters.count)
    }

    public var bytes: Int { counters.count }

    public func save(to w: inout SnapshotWriter) {
        w.int(widthLog2)
        w.block(counters)
        w.int(sinceHalving)
    }

    /// Restores `save`'s output. Returns false, leaving the sketch empty,
    /// when the saved one has another width (the window was changed in the
    /// config): its counts cannot be mapped, so counting starts afresh.
    /// Format 4 snapshots have no window position: it starts at 0.
    public mutating func load(from r: inout SnapshotReader) throws -> Bool {
        let savedWidth = try r.int(), saved = try r.block()
        let position = r.format >= 5 ? try r.int() : 0
        guard savedWidth == widthLog2, saved.count == counters.count else { return false }
        guard position >= 0 else { throw LogError("snapshot: the id-count sketch's window position \(position) is negative") }
        counters = saved
        // (A window changed within the same width: the next halving comes
        // at once if the saved position is past the new window.)
        sinceHalving = min(position, window - 1)
        return true
    }
}
