// The life of a user id, as production embedding tables manage it
// (Monolith, Liu et al. 2022: admission by frequency, eviction by age):
//
//   - Admission: with `min_occurrences` m > 1, a user id gets its own row
//     only at its m-th event, counted in a fixed-size count-min sketch.
//     Until then its events are learned as one shared fallback user (what
//     rare users like, in aggregate), and its requests are answered from
//     that shared row.
//   - Expiry: a user unseen for `expire_after_seconds` of event time, or the
//     least recently seen one when `max_users` ids hold rows and a new one
//     arrives, is forgotten: its id, history and every scorer's state for it
//     go, and its row index is handed to the next new user. So memory stays
//     within what `max_users` rows take, however many distinct ids the
//     stream brings.
//
// Expiry only takes a user whose last event came before the batch being
// admitted (so the choice depends on the log alone, and a replay makes the
// same one), after the learner has applied it (the index must not be
// reused under queued events; the loop waits for it if needed). The bound
// is exceeded only when one batch brings more new users than it. A reused
// index carries a new generation number in its
// learn events; the learner resets the index's state (table row, scorer
// state) on the first event of a new generation, on its own thread, and
// replay skips buffered events of an older generation.
//
// Threading: everything here belongs to the admitting thread, except
// `learnedGeneration`, which only the learner touches.

public final class IdLifecycle {
    public let minOccurrences: Int
    public let maxUsers: Int
    public let expireAfterSeconds: Int64
    /// The external id of the shared fallback user (above every client id,
    /// which the protocol keeps below 2^63).
    public static let fallbackUserID: UInt64 = 1 << 63

    private var sketch: CountMinSketch?
    let lastSeen = ChunkedBuffer<Int64>(width: 1, fill: 0, rowsPerChunkLog2: 12)
    let lastSeq = ChunkedBuffer<UInt64>(width: 1, fill: 0, rowsPerChunkLog2: 12)
    /// Per user index: its generation (admitting thread) and the generation
    /// the learner last reset it to (learner thread).
    let generation = ChunkedBuffer<UInt32>(width: 1, fill: 0, rowsPerChunkLog2: 12)
    let learnedGeneration = ChunkedBuffer<UInt32>(width: 1, fill: 0, rowsPerChunkLog2: 12)
    /// Users in order of their events (user, that event's seq); an entry is
    /// stale once the user has a later event.
    private var order: [(user: Int32, seq: UInt64)] = []
    private var orderHead = 0
    private var compactedSize = 0
    public private(set) var expired: UInt64 = 0
    public private(set) var sharedEvents: UInt64 = 0

    public var enabled: Bool { minOccurrences > 1 || maxUsers > 0 || expireAfterSeconds > 0 }
    var tracksUsers: Bool { maxUsers > 0 || expireAfterSeconds > 0 }

    init(_ config: LifelongConfig) {
        minOccurrences = config.minOccurrences
        maxUsers = config.maxUsers
        expireAfterSeconds = Int64(config.expireAfterSeconds)
        if minOccurrences > 1 { sketch = CountMinSketch() }
    }

    func grow(users: Int) {
        lastSeen.ensure(rows: users)
        lastSeq.ensure(rows: users)
        generation.ensure(rows: users)
        learnedGeneration.ensure(rows: users)
    }

    /// Counts a sighting of an id not yet admitted; whether it is admitted now.
    func admits(_ id: UInt64) -> Bool {
        guard sketch != nil else { return true }
        let n = sketch!.add(id)  // (in place: no copy of the counters)
        if n < minOccurrences { sharedEvents += 1 }
        return n >= minOccurrences
    }

    /// Records an event of user `u`.
    func touch(_ u: Int32, timestamp: Int64, seq: UInt64) {
        guard tracksUsers else { return }
        lastSeen[Int(u)] = timestamp
        lastSeq[Int(u)] = seq
        order.append((u, seq))
        // Drop stale entries now and then (when the list has doubled since
        // the last time), so `order` holds about one entry per live user
        // at an amortised constant cost per event.
        if order.count - orderHead > max(1024, 2 * compactedSize) {
            order = order[orderHead...].filter { lastSeq[Int($0.user)] == $0.seq }
            orderHead = 0
            compactedSize = order.count
        }
    }

    /// Expires users unseen since `now - expireAfterSeconds`, and, when
    /// `makeRoom` and `live` users hold `maxUsers` rows, the least recently
    /// seen; only users the learner is done with (`applied`). Calls `forget`
    /// for each.
    func expire(now: Int64, before limit: UInt64, waitApplied: (UInt64) -> Void, live: () -> Int, makeRoom: Bool,
                forget: (Int32) -> Void) {
        guard tracksUsers else { return }
        while orderHead < order.count {
            let (u, seq) = order[orderHead]
            if lastSeq[Int(u)] != seq { orderHead += 1; continue }  // stale
            let old = expireAfterSeconds > 0 && lastSeen[Int(u)] < now - expireAfterSeconds
            let full = makeRoom && maxUsers > 0 && live() >= maxUsers
            guard (old || full) && seq <= limit else { break }
            waitApplied(seq)
            orderHead += 1
            lastSeq[Int(u)] = 0
            generation[Int(u)] &+= 1
            expired += 1
            forget(u)
        }
        if orderHead > 4096 && orderHead * 2 > order.count {
            order.removeFirst(orderHead)
            orderHead = 0
        }
    }

    public var bytes: Int {
        (sketch?.bytes ?? 0) + order.capacity * 16 + lastSeen.bytes + lastSeq.bytes + generation.bytes + learnedGeneration.bytes
    }

    func save(to w: inout SnapshotWriter, users: Int) {
        w.bool(sketch != nil)
        sketch?.save(to: &w)
        w.rows(lastSeen, count: users); w.rows(lastSeq, count: users)
        w.rows(generation, count: users); w.rows(learnedGeneration, count: users)
        let live = order[orderHead...].filter { lastSeq[Int($0.user)] == $0.seq }
        w.int(live.count)
        for (u, s) in live { w.u32(UInt32(bitPattern: u)); w.u64(s) }
        w.u64(expired); w.u64(sharedEvents)
    }

    /// After `load`: with a `max_users` bound now but no tracking when the
    /// snapshot was saved, the users there are unknown to the order. They
    /// are enrolled as the least recently seen, at time 0 (so the bound, and
    /// age expiry if it is on, take them first). With age expiry alone, a
    /// user is tracked from their next event.
    func enrollUntracked(users: Int, isLive: (Int32) -> Bool) {
        guard maxUsers > 0 else { return }
        var enrolled: [(user: Int32, seq: UInt64)] = []
        for u in 0..<Int32(users) where isLive(u) && lastSeq[Int(u)] == 0 {
            lastSeq[Int(u)] = 1
            lastSeen[Int(u)] = 0
            enrolled.append((u, 1))
        }
        guard !enrolled.isEmpty else { return }
        order = enrolled + order[orderHead...]
        orderHead = 0
    }

    func load(from r: inout SnapshotReader, users: Int) throws {
        if try r.bool() {
            var s = sketch ?? CountMinSketch()
            try s.load(from: &r)
            if sketch != nil { sketch = s }
        }
        try r.rows(into: lastSeen, expected: users); try r.rows(into: lastSeq, expected: users)
        try r.rows(into: generation, expected: users); try r.rows(into: learnedGeneration, expected: users)
        order = []
        orderHead = 0
        for _ in 0..<(try r.int()) { order.append((Int32(bitPattern: try r.u32()), try r.u64())) }
        if !tracksUsers { order = [] }
        expired = try r.u64(); sharedEvents = try r.u64()
    }
}
