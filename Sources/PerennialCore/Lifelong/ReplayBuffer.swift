// Experience replay's memory: a uniform sample of every event seen so far,
// kept in a fixed number of slots by reservoir sampling (Vitter 1985,
// "Algorithm R": the n-th event replaces a random slot with probability
// capacity / n), so each past event is equally likely to be in the buffer
// however long the stream has run, and memory never grows past `capacity`.
//
// Learner thread only. Its RNG is seeded and saved, so replay is
// reproducible from the log.

public struct ReplayBuffer {
    public let capacity: Int
    public private(set) var events: [LearnEvent] = []
    /// Events offered so far (the n of Algorithm R).
    public private(set) var seen: UInt64 = 0
    /// Events drawn for replay so far.
    public private(set) var drawn: UInt64 = 0
    private var rng: SplitMix64

    public init(capacity: Int, seed: UInt64) {
        precondition(capacity > 0)
        self.capacity = capacity
        rng = SplitMix64(seed: seed)
    }

    /// Offers one event to the sample.
    public mutating func offer(_ e: LearnEvent) {
        seen += 1
        if events.count < capacity {
            events.append(e)
        } else {
            let slot = rng.next() % seen
            if slot < UInt64(capacity) { events[Int(slot)] = e }
        }
    }

    /// A past event drawn uniformly from the buffer (nil while empty).
    public mutating func draw() -> LearnEvent? {
        guard !events.isEmpty else { return nil }
        drawn += 1
        return events[rng.below(events.count)]
    }

    /// Drops the held events of expired items (their indices will name
    /// other items). What stays is a uniform sample of the surviving
    /// events; until the buffer is full again, new events enter it for
    /// sure, which tilts it a little toward recent ones.
    public mutating func remove(_ retired: RetiredItems) {
        events.removeAll { retired.contains($0.item) }
    }

    /// Drops the held events of deleted users (their indices will name
    /// other users).
    public mutating func remove(users: Set<Int32>) {
        events.removeAll { users.contains($0.user) }
    }

    public var bytes: Int { events.capacity * MemoryLayout<LearnEvent>.stride }

    public func save(to w: inout SnapshotWriter) {
        w.int(capacity)
        w.u64(seen); w.u64(drawn); w.u64(rng.state)
        w.int(events.count)
        for e in events { LearnEventCoding.write(e, to: &w) }
    }

    /// Restores `save`'s output; every held event names one of the `users`
    /// and `items` restored beside it. An implicit event's value is its
    /// learning weight: one saved under a higher `[feedback] max_weight` (or
    /// before weights were capped, when a client's weight was kept as sent)
    /// is brought down to `maxWeight`.
    public mutating func load(from r: inout SnapshotReader, users: Int, items: Int, maxWeight: Float = .infinity) throws {
        let savedCapacity = try r.int()
        seen = try r.u64(); drawn = try r.u64(); rng = SplitMix64(seed: try r.u64())
        events = []
        for _ in 0..<(try r.count(bytesEach: 8)) {
            var e = try LearnEventCoding.read(from: &r)
            guard e.user >= 0, Int(e.user) < users, e.item >= 0, Int(e.item) < items else {
                throw LogError("snapshot: a replay event names user index \(e.user) or item index \(e.item), outside the \(users) users and \(items) items")
            }
            guard e.value.isFinite && e.value >= 0 else { throw LogError("snapshot: a replay event has the value \(e.value)") }
            if e.kind != .rating { e.value = min(e.value, maxWeight) }
            events.append(e)
        }
        // (`offer` draws a slot below `seen`.)
        guard seen >= UInt64(events.count) else { throw LogError("snapshot: the replay buffer holds \(events.count) events of \(seen) seen") }
        // A smaller configured buffer keeps a uniform subset of the saved
        // one: reservoir sampling over the saved events (Algorithm R, as in
        // `offer`), the n-th kept with probability capacity / n. (It drew
        // below capacity + 1 for every event, so nearly every later event
        // replaced one: a subset biased to the last saved; helper-79.)
        if savedCapacity > capacity || events.count > capacity {
            var keep: [LearnEvent] = []
            keep.reserveCapacity(capacity)
            for (n, e) in events.enumerated() {
                if keep.count < capacity { keep.append(e) } else {
                    let slot = rng.below(n + 1)
                    if slot < capacity { keep[slot] = e }
                }
            }
            events = keep
        }
    }
}

/// A learn event in a snapshot.
enum LearnEventCoding {
    static func write(_ e: LearnEvent, to w: inout SnapshotWriter) {
        w.u64(e.seq); w.u32(UInt32(bitPattern: e.user)); w.u32(UInt32(bitPattern: e.item))
        w.u32(UInt32(e.kind.rawValue)); w.f32(e.value); w.u64(UInt64(bitPattern: e.timestamp))
        w.u32(e.userGeneration); w.bool(e.sharedUser)
    }

    static func read(from r: inout SnapshotReader) throws -> LearnEvent {
        let seq = try r.u64(), user = Int32(bitPattern: try r.u32()), item = Int32(bitPattern: try r.u32())
        guard let kind = FeedbackKind(rawValue: UInt8(truncatingIfNeeded: try r.u32())) else {
            throw LogError("snapshot: a replay event has an unknown kind")
        }
        var e = LearnEvent(seq: seq, user: user, item: item, kind: kind, value: try r.f32(),
                           timestamp: Int64(bitPattern: try r.u64()))
        e.userGeneration = try r.u32()
        e.sharedUser = try r.bool()
        return e
    }
}
