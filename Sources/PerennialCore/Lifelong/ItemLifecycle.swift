// Expiry of item ids (a news feed's or a shop's catalogue churns: an article
// nobody has touched for a week will not be touched again). An item unseen
// for `item_expire_after_seconds` of event time — no event on it, no upsert
// of it — is forgotten: its id, text, every user's history entry of it,
// every scorer's state for it and every reference to it (co-occurrences,
// recent items, negative samplers, the replay buffer), and its index is
// handed to the next new item. So the item rows in use stay within what the
// catalogue's live items need, however many distinct items the stream
// brings (Monolith, Liu et al. 2022, expires idle ids the same way).
//
// Items are forgotten in sweeps, not one by one (DELETE_ITEMS forgets the
// items it names at once, by the same path in Model): removing an item's
// references means visiting every user's history and every item's
// co-occurrences, so that work is done for a whole batch of idle items at
// once, with the learner idle (the admitting thread waits for it, as a
// RELOAD does). A sweep runs at the first batch whose time (its first
// event's timestamp) is at least a sweep interval — an eighth of the expiry
// time — after the previous one, so an item is forgotten after between 1
// and 1.125 times the expiry time idle. The batches' times come from the
// log, so a replay of the log sweeps at the same batches and forgets the
// same items.
//
// An upsert counts as a sighting at the next sweep (upserts carry no
// timestamp of their own, and the latest event time may be long past after
// a quiet spell: a new article must not be forgotten by the next batch).
//
// Admission (`item_min_occurrences`, as production embedding tables filter
// rare ids, e.g. Monolith): an item id seen in events fewer times than that
// has no row of its own; its events train one shared fallback item (a
// reserved id no client can send), which is never recommended, and the id
// is unknown to SCORE and RECOMMEND until its row comes. Sightings are
// counted in a count-min sketch (fixed memory however many rare ids pass),
// in log order, so a replay admits the same ids at the same events. An
// UPSERT_ITEM gives an item its row at once: a catalogue entry is real.
//
// Admitting thread only.

public final class ItemLifecycle {
    /// The shared fallback item's id (2^63: outside the ids clients send).
    public static let fallbackItemID: UInt64 = 1 << 63
    /// Admission of item ids (`item_min_occurrences`).
    var admission: AdmissionFilter
    public var minOccurrences: Int { admission.minOccurrences }
    /// Events learned as the shared fallback item.
    public var sharedEvents: UInt64 { admission.sharedEvents }
    public let expireAfterSeconds: Int64
    /// Per item index: the latest event time it was seen at (0 = not yet stamped).
    let lastSeen = ChunkedBuffer<Int64>(width: 1, fill: 0, rowsPerChunkLog2: 12)
    /// The earliest batch time at which the next sweep runs.
    private var nextSweep = Int64.min
    public private(set) var expired: UInt64 = 0
    public private(set) var sweeps: UInt64 = 0

    public var enabled: Bool { expireAfterSeconds > 0 }

    init(expireAfterSeconds: Int, minOccurrences: Int, admissionWindow: Int) {
        self.expireAfterSeconds = Int64(expireAfterSeconds)
        admission = AdmissionFilter(minOccurrences: minOccurrences, window: admissionWindow)
    }

    /// The admission state (snapshot format 4 on).
    func saveAdmission(to w: inout SnapshotWriter) {
        admission.saveSketch(to: &w)
        w.u64(admission.sharedEvents)
    }

    /// Restores `saveAdmission`'s output.
    func loadAdmission(from r: inout SnapshotReader) throws {
        try admission.loadSketch(from: &r)
        admission.sharedEvents = try r.u64()
    }

    private var interval: Int64 { max(1, expireAfterSeconds / 8) }

    func grow(items: Int) {
        guard enabled else { return }
        lastSeen.ensure(rows: items)
    }

    /// An event on item i at `timestamp`.
    @inline(__always)
    func touch(_ i: Int32, timestamp: Int64) {
        guard enabled else { return }
        lastSeen[Int(i)] = max(lastSeen[Int(i)], timestamp)
    }

    /// An upsert of item i: seen at the next sweep's time (0 = stamp me then).
    func touchUpsert(_ i: Int32) {
        guard enabled else { return }
        lastSeen[Int(i)] = 0
    }

    /// A new item took index i (its earlier item's time must not count).
    func reset(_ i: Int32) {
        guard enabled else { return }
        lastSeen[Int(i)] = 0
    }

    /// Whether a sweep runs at a batch of time `now`.
    func sweepDue(now: Int64) -> Bool { enabled && now >= nextSweep }

    /// The earliest batch time of the next sweep (nil with expiry off).
    var nextSweepTime: Int64? { enabled ? nextSweep : nil }

    /// Users last seen before this time are idle too long at `now`.
    /// (Timestamps come from clients: saturate rather than trap.)
    private func idleCutoff(_ now: Int64) -> Int64 {
        let (cutoff, overflow) = now.subtractingReportingOverflow(expireAfterSeconds)
        return overflow ? Int64.min : cutoff
    }

    /// Whether live item i would be forgotten by a sweep at `now` (asks; changes nothing).
    @inline(__always)
    func isIdle(_ i: Int32, now: Int64) -> Bool {
        let seen = lastSeen[Int(i)]
        return seen != 0 && seen < idleCutoff(now)
    }

    /// The sweep at `now`: the live items (`isLive`) idle too long, in index
    /// order; items never stamped are stamped now. Schedules the next sweep.
    func sweep(now: Int64, items: Int, isLive: (Int32) -> Bool) -> [Int32] {
        sweeps += 1
        let (next, overflow) = now.addingReportingOverflow(interval)
        nextSweep = overflow ? Int64.max : next
        let cutoff = idleCutoff(now)
        var idle: [Int32] = []
        for i in 0..<Int32(items) where isLive(i) {
            let seen = lastSeen[Int(i)]
            if seen == 0 {
                lastSeen[Int(i)] = now
            } else if seen < cutoff {
                idle.append(i)
                lastSeen[Int(i)] = 0
            }
        }
        expired += UInt64(idle.count)
        return idle
    }

    public var bytes: Int { lastSeen.bytes + admission.bytes }

    func save(to w: inout SnapshotWriter, items: Int) {
        w.bool(enabled)
        guard enabled else { return }
        w.rows(lastSeen, count: items)
        w.u64(UInt64(bitPattern: nextSweep))
        w.u64(expired); w.u64(sweeps)
    }

    /// Restores `save`'s output. Saved with expiry off (or read with it
    /// off): what is missing starts fresh (items are stamped at the first sweep).
    func load(from r: inout SnapshotReader, items: Int) throws {
        guard try r.bool() else { return }
        let scratch = enabled ? lastSeen : ChunkedBuffer<Int64>(width: 1, fill: 0, rowsPerChunkLog2: 12)
        scratch.ensure(rows: items)
        try r.rows(into: scratch, expected: items)
        let n = Int64(bitPattern: try r.u64())
        let e = try r.u64(), s = try r.u64()
        guard enabled else { return }
        nextSweep = n; expired = e; sweeps = s
    }
}
