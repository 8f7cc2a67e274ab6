// The ids of the latest deleted items (DELETE_ITEMS), so a deletion holds:
// a late event naming one (a click still in a page cache, a queue that
// delivers twice) trains the shared fallback item instead of bringing the
// item back as a new one that could be recommended again. An UPSERT_ITEM of
// the id brings it back on purpose.
//
// Bounded: the latest `capacity` ids deleted (a deletion of a remembered id
// makes it the latest again); the oldest are forgotten first, after which
// its id is an ordinary unknown id. Changed only by logged deletions and
// upserts, so a replay of the log rebuilds the same set; saved in
// snapshots. Owned by the admitting thread.

public final class DeletedItemIds {
    public let capacity: Int
    /// Each remembered id and the serial of its entry in `order`.
    private var serials: [UInt64: UInt64] = [:]
    /// Ids in deletion order (a repeated deletion makes a new entry).
    private var order = InsertionOrder()

    public init(capacity: Int) { self.capacity = capacity }

    public var count: Int { serials.count }
    public var isEmpty: Bool { serials.isEmpty }

    public func contains(_ id: UInt64) -> Bool { serials[id] != nil }

    /// Remembers `id` as the latest deleted.
    public func insert(_ id: UInt64) {
        guard capacity > 0 else { return }
        if serials[id] == nil {
            while serials.count >= capacity, let oldest = order.popOldest(serial: serial) { serials[oldest] = nil }
        }
        serials[id] = order.append(id)
        compactIfStale()
    }

    /// Forgets `id` (brought back by an upsert).
    public func remove(_ id: UInt64) {
        guard serials.removeValue(forKey: id) != nil else { return }
        compactIfStale()
    }

    private func serial(_ id: UInt64) -> UInt64? { serials[id] }

    private func compactIfStale() { order.compactIfStale(liveCount: serials.count, serial: serial) }

    public var bytes: Int { serials.count * 32 + order.bytes }

    // MARK: snapshots

    /// The remembered ids, oldest deletion first.
    public func save(to w: inout SnapshotWriter) {
        let live = order.live(serial: serial)
        w.int(live.count)
        for id in live { w.u64(id) }
    }

    public func load(from r: inout SnapshotReader) throws {
        serials = [:]
        order.removeAll()
        for _ in 0..<(try r.count(bytesEach: 8)) {
            let id = try r.u64()
            guard !contains(id) else { throw LogError("snapshot: deleted item \(id) is listed twice") }
            // (Saved under another capacity: the configured one applies,
            // keeping the latest.)
            insert(id)
        }
    }
}
