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
// is exceeded while one batch holds events of more distinct users than it
// (those with an event in the batch cannot make room). Age expiry takes a
// user's latest timestamp (a back-dated event does not age them) and walks
// users in order of their latest event's arrival, so a user is forgotten
// at the earliest when idle for the limit, and later when users ahead of
// them in arrival order are still active. A reused
// index carries a new generation number in its
// learn events; the learner resets the index's state (table row, scorer
// state) on the first event of a new generation, on its own thread, and
// replay skips buffered events of an older generation.
//
// Threading: everything here belongs to the admitting thread, except
// `learnedGeneration`, which the learner writes as it learns; the admitting
// thread reads it (Model.rowIsCurrent), and writes it only with the learner
// idle (a deletion, a snapshot's load).

public final class IdLifecycle {
    public let minOccurrences: Int
    public let maxUsers: Int
    public let expireAfterSeconds: Int64
    /// The external id of the shared fallback user (above every client id,
    /// which the protocol keeps below 2^63).
    public static let fallbackUserID: UInt64 = 1 << 63

    /// Admission of user ids (`min_occurrences`): counted by the admitting thread.
    var admission: AdmissionFilter
    let lastSeen = ChunkedBuffer<Int64>(width: 1, fill: 0, rowsPerChunkLog2: 12)
    let lastSeq = ChunkedBuffer<UInt64>(width: 1, fill: 0, rowsPerChunkLog2: 12)
    /// Per user index: its generation (admitting thread) and the generation
    /// the learner last reset it to (learner thread).
    let generation = ChunkedBuffer<UInt32>(width: 1, fill: 0, rowsPerChunkLog2: 12)
    let learnedGeneration = ChunkedBuffer<UInt32>(width: 1, fill: 0, rowsPerChunkLog2: 12)
    /// Users in order of their events, stamped with that event's seq; an
    /// entry is stale once the user has a later event.
    private var order = RecencyQueue<Int32>()
    public private(set) var expired: UInt64 = 0
    /// Events learned as the shared fallback user.
    public var sharedEvents: UInt64 { admission.sharedEvents }

    public var enabled: Bool { minOccurrences > 1 || maxUsers > 0 || expireAfterSeconds > 0 }

    /// The generation of user index u now (admitting thread): an event of
    /// an earlier one belongs to a user who expired.
    public func currentGeneration(of u: Int32) -> UInt32 { generation[Int(u)] }
    var tracksUsers: Bool { maxUsers > 0 || expireAfterSeconds > 0 }

    init(_ config: LifelongConfig) {
        minOccurrences = config.minOccurrences
        maxUsers = config.maxUsers
        expireAfterSeconds = Int64(config.expireAfterSeconds)
        admission = AdmissionFilter(minOccurrences: config.minOccurrences, window: config.admissionWindow)
    }

    func grow(users: Int) {
        lastSeen.ensure(rows: users)
        lastSeq.ensure(rows: users)
        generation.ensure(rows: users)
        learnedGeneration.ensure(rows: users)
    }

    /// Records an event of user `u`.
    func touch(_ u: Int32, timestamp: Int64, seq: UInt64) {
        guard tracksUsers else { return }
        if !awaitingFirstEvent.isEmpty { enrollAwaiting(seenAt: timestamp) }
        // The latest time the user was seen, not the latest event's: a
        // back-dated event (a late upload) must not make an active user
        // look idle. (lastSeq 0: a new user, or a forgotten one's index.)
        lastSeen[Int(u)] = lastSeq[Int(u)] == 0 ? timestamp : max(lastSeen[Int(u)], timestamp)
        lastSeq[Int(u)] = seq
        order.append(u, stamp: seq, isLive: isLatest)
    }

    /// Whether an `order` entry is its user's latest event.
    private func isLatest(_ u: Int32, _ seq: UInt64) -> Bool { lastSeq[Int(u)] == seq }

    /// Expires users unseen since `now - expireAfterSeconds`, and, when
    /// `makeRoom` and `live` users hold `maxUsers` rows, the least recently
    /// seen; only users the learner is done with (`applied`). Calls `forget`
    /// for each.
    func expire(now: Int64, before limit: UInt64, waitApplied: (UInt64) -> Void, live: () -> Int, makeRoom: Bool,
                forget: (Int32) -> Void) {
        guard tracksUsers else { return }
        let unseenBefore = idleCutoff(now)
        while let (u, seq) = order.oldest(isLive: isLatest) {
            let old = expireAfterSeconds > 0 && lastSeen[Int(u)] < unseenBefore
            let full = makeRoom && maxUsers > 0 && live() >= maxUsers
            guard (old || full) && seq <= limit else { break }
            waitApplied(seq)
            order.removeOldest()
            lastSeq[Int(u)] = 0
            generation[Int(u)] &+= 1
            expired += 1
            forget(u)
        }
    }


    /// User index u was deleted (DELETE_USERS) and reset, with the learner
    /// idle: its queue entries go stale, and the next user of the index
    /// is a new generation that needs no second reset.
    func forgetDeleted(_ u: Int32) {
        // (Not enrolled later either: the index is vacant or a new user's.)
        if !awaitingFirstEvent.isEmpty { awaitingFirstEvent.removeAll { $0 == u } }
        lastSeq[Int(u)] = 0
        generation[Int(u)] &+= 1
        learnedGeneration[Int(u)] = generation[Int(u)]
    }

    /// Users last seen before this time are idle too long at `now`.
    /// (Timestamps come from clients: saturate rather than trap near Int64.min.)
    private func idleCutoff(_ now: Int64) -> Int64 {
        let (cutoff, overflow) = now.subtractingReportingOverflow(expireAfterSeconds)
        return overflow ? Int64.min : cutoff
    }

    /// The users age expiry at `now` would forget, in the order `expire`
    /// takes them, treating those `skipping` names as already gone or
    /// seen again (forgets nobody: the id bound's look-ahead).
    func forEachExpirable(now: Int64, before limit: UInt64, skipping: (Int32) -> Bool, _ body: (Int32) -> Void) {
        guard tracksUsers && expireAfterSeconds > 0 else { return }
        let unseenBefore = idleCutoff(now)
        order.visitOldest(isLive: { u, seq in isLatest(u, seq) && !skipping(u) }) { entry in
            guard lastSeen[Int(entry.key)] < unseenBefore && entry.stamp <= limit else { return false }
            body(entry.key)
            return true
        }
    }

    public var bytes: Int {
        admission.bytes + order.bytes + lastSeen.bytes + lastSeq.bytes + generation.bytes + learnedGeneration.bytes
    }

    func save(to w: inout SnapshotWriter, users: Int) {
        admission.saveSketch(to: &w)
        w.rows(lastSeen, count: users); w.rows(lastSeq, count: users)
        w.rows(generation, count: users); w.rows(learnedGeneration, count: users)
        let live = order.live(isLive: isLatest)
        w.int(live.count)
        for (u, s) in live { w.u32(UInt32(bitPattern: u)); w.u64(s) }
        w.u64(expired); w.u64(admission.sharedEvents)
    }

    /// After `load`: with a `max_users` bound or age expiry now but no
    /// tracking when the snapshot was saved, the users there are unknown
    /// to the order. With a bound they are enrolled at once as the least
    /// recently seen, at time 0 (so the bound, and age expiry if it is on,
    /// take them first). With age expiry alone they are enrolled at the
    /// next event, as seen at its time: when expiry is switched on, a user
    /// who never comes back expires `expire_after_seconds` of event time
    /// later, not at once, and not never (review finding, helper-49: they
    /// were kept for good). The first event is the same live and in a
    /// recovery's replay, so both enroll them alike.
    func enrollUntracked(users: Int, isLive: (Int32) -> Bool) {
        guard tracksUsers else { return }
        var untracked: [Int32] = []
        for u in 0..<Int32(users) where isLive(u) && lastSeq[Int(u)] == 0 { untracked.append(u) }
        awaitingFirstEvent = untracked
        if maxUsers > 0 { enrollAwaiting(seenAt: 0) }
    }

    /// Users of a loaded snapshot waiting to be enrolled (`enrollUntracked`).
    private var awaitingFirstEvent: [Int32] = []

    private func enrollAwaiting(seenAt time: Int64) {
        var enrolled: [RecencyQueue<Int32>.Entry] = []
        for u in awaitingFirstEvent where lastSeq[Int(u)] == 0 {
            lastSeq[Int(u)] = 1
            lastSeen[Int(u)] = time
            enrolled.append((u, 1))
        }
        awaitingFirstEvent = []
        if !enrolled.isEmpty { order.prepend(enrolled) }
    }

    func load(from r: inout SnapshotReader, users: Int) throws {
        try admission.loadSketch(from: &r)
        try r.rows(into: lastSeen, expected: users); try r.rows(into: lastSeq, expected: users)
        try r.rows(into: generation, expected: users); try r.rows(into: learnedGeneration, expected: users)
        var saved: [RecencyQueue<Int32>.Entry] = []
        for _ in 0..<(try r.count(bytesEach: 12)) {
            let u = Int32(bitPattern: try r.u32())
            guard u >= 0, Int(u) < users else { throw LogError("snapshot: the users' expiry order names index \(u), outside the \(users) users") }
            saved.append((u, try r.u64()))
        }
        order.reset(tracksUsers ? saved : [])
        expired = try r.u64(); admission.sharedEvents = try r.u64()
    }
}
