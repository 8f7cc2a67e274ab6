// A count-min sketch (Cormode & Muthukrishnan 2005) with conservative
// update: approximate counts of how often each id was seen, in fixed
// memory however many distinct ids pass through. A count is never below the
// true one and rarely above it; id admission only asks "seen at least m
// times?", with m small, so one-byte saturating counters suffice.

public struct CountMinSketch: Sendable {
    public static let depth = 4
    public let widthLog2: Int
    private var counters: [UInt8]

    public init(widthLog2: Int = 18) {
        self.widthLog2 = widthLog2
        counters = [UInt8](repeating: 0, count: Self.depth << widthLog2)
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

    /// Counts one sighting of `id`; returns its estimated count so far.
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
        return next
    }

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

    public var bytes: Int { counters.count }

    public func save(to w: inout SnapshotWriter) {
        w.int(widthLog2)
        w.block(counters)
    }

    public mutating func load(from r: inout SnapshotReader) throws {
        let savedWidth = try r.int(), saved = try r.block()
        guard savedWidth == widthLog2, saved.count == counters.count else { throw LogError("snapshot: the id-count sketch has another size") }
        counters = saved
    }
}
