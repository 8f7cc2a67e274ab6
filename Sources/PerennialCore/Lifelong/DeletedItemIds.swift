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
    /// Ids in deletion order; an entry whose serial is not the id's current
    /// one is stale (deleted again later, or brought back).
    private var order: [(id: UInt64, serial: UInt64)] = []
    private var orderStart = 0
    private var nextSerial: UInt64 = 0

    public init(capacity: Int) { self.capacity = capacity }

    public var count: Int { serials.count }
    public var isEmpty: Bool { serials.isEmpty }

    public func contains(_ id: UInt64) -> Bool { serials[id] != nil }

    /// Remembers `id` as the latest deleted.
    public func insert(_ id: UInt64) {
        guard capacity > 0 else { return }
        if serials[id] == nil {
            while serials.count >= capacity, orderStart < order.count {
                let (old, serial) = order[orderStart]
                if serials[old] == serial { serials[old] = nil }
                orderStart += 1
            }
        }
        nextSerial += 1
        serials[id] = nextSerial
        order.append((id, nextSerial))
        compactIfStale()
    }

    /// Forgets `id` (brought back by an upsert).
    public func remove(_ id: UInt64) {
        guard serials.removeValue(forKey: id) != nil else { return }
        compactIfStale()
    }

    /// Drops the spent front and the stale entries once they are most of
    /// the queue (amortised O(1) a call).
    private func compactIfStale() {
        guard order.count > 1024 && order.count > 2 * serials.count else { return }
        order = order[orderStart...].filter { serials[$0.id] == $0.serial }
        orderStart = 0
    }

    public var bytes: Int { serials.count * 32 + order.capacity * 16 }

    // MARK: snapshots

    /// The remembered ids, oldest deletion first.
    public func save(to w: inout SnapshotWriter) {
        let live = order[orderStart...].filter { serials[$0.id] == $0.serial }
        w.int(live.count)
        for (id, _) in live { w.u64(id) }
    }

    public func load(from r: inout SnapshotReader) throws {
        serials = [:]; order = []; orderStart = 0; nextSerial = 0
        for _ in 0..<(try r.count(bytesEach: 8)) {
            let id = try r.u64()
            guard !contains(id) else { throw LogError("snapshot: deleted item \(id) is listed twice") }
            // (Saved under another capacity: the configured one applies,
            // keeping the latest.)
            insert(id)
        }
    }
}
