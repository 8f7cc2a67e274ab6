// The items of user ids still waiting for a row of their own
// (`lifelong.min_occurrences` > 1): their events train the shared fallback
// user, so without this their items would be in no history, and a visitor
// would be recommended what they had just bought (review finding,
// helper-56). When the id is admitted its items join its history first;
// until then a RECOMMEND for it excludes them and reads them as its history.
//
// Bounded: at most `maxUsers` ids (the one pending longest is dropped to
// make room, as the admission sketch would soon forget it) with at most
// `maxItems` distinct items each (the oldest fall off), so a stream of one-off ids
// costs no more than that; the queue of ids in arrival order is compacted
// once it holds more stale entries than live ones. Saved in snapshots, so
// a restart or a crash's replay serves exactly what a server that never
// stopped would. Owned by the admitting thread.

public final class PendingUserItems {
    public let maxUsers: Int
    public let maxItems: Int
    /// Each pending id's items (external ids, oldest first) and the serial
    /// of its entry in `order`.
    private var pending: [UInt64: (items: [UInt64], serial: UInt64)] = [:]
    /// Ids in the order they became pending.
    private var order = InsertionOrder()

    public init(maxUsers: Int, maxItems: Int) {
        self.maxUsers = maxUsers
        self.maxItems = maxItems
    }

    public var count: Int { pending.count }

    /// Remembers that pending user `user` interacted with `item`.
    public func record(user: UInt64, item: UInt64) {
        guard maxUsers > 0 && maxItems > 0 else { return }
        if pending[user] == nil {
            while pending.count >= maxUsers, let oldest = order.popOldest(serial: serial) { pending[oldest] = nil }
            pending[user] = ([], order.append(user))
        }
        // (A repeat moves to the end rather than taking a second place.)
        if let at = pending[user]!.items.firstIndex(of: item) { pending[user]!.items.remove(at: at) }
        pending[user]!.items.append(item)
        if pending[user]!.items.count > maxItems { pending[user]!.items.removeFirst() }
        compactIfStale()
    }

    /// The user's pending items, oldest first (empty when none).
    public func items(of user: UInt64) -> [UInt64] { pending[user]?.items ?? [] }

    /// Forgets the user's items (admitted, or deleted), returning them.
    @discardableResult
    public func take(_ user: UInt64) -> [UInt64] {
        defer { compactIfStale() }
        return pending.removeValue(forKey: user)?.items ?? []
    }

    /// Whether the user has pending items.
    public func holds(_ user: UInt64) -> Bool { pending[user] != nil }

    /// Forgets deleted or expired items from every pending list (an id that
    /// comes back is a new item, tied to no one); a user left with none is
    /// no longer pending, as after a restart (a snapshot holds no empty list).
    public func remove(items gone: Set<UInt64>) {
        guard !gone.isEmpty else { return }
        for (id, entry) in pending where entry.items.contains(where: gone.contains) {
            pending[id]!.items.removeAll(where: gone.contains)
            if pending[id]!.items.isEmpty { pending[id] = nil }
        }
        compactIfStale()
    }

    /// Whether any pending list holds the item (O(pending ids): deletions only).
    public func mentions(item: UInt64) -> Bool { pending.values.contains { $0.items.contains(item) } }

    private func serial(_ id: UInt64) -> UInt64? { pending[id]?.serial }

    private func compactIfStale() { order.compactIfStale(liveCount: pending.count, serial: serial) }

    public var bytes: Int { pending.count * (64 + 8 * max(1, maxItems)) + order.bytes }

    // MARK: snapshots

    public func save(to w: inout SnapshotWriter) {
        let live = order.live(serial: serial)
        w.int(live.count)
        for id in live {
            w.u64(id)
            w.int(pending[id]!.items.count)
            for item in pending[id]!.items { w.u64(item) }
        }
    }

    public func load(from r: inout SnapshotReader) throws {
        pending = [:]
        order.removeAll()
        for _ in 0..<(try r.count(bytesEach: 16)) {
            let id = try r.u64()
            var items: [UInt64] = []
            for _ in 0..<(try r.count(bytesEach: 8)) { items.append(try r.u64()) }
            guard pending[id] == nil else { throw LogError("snapshot: pending user \(id) is listed twice") }
            // (Saved under other settings: the configured bounds apply.)
            guard maxUsers > 0 && maxItems > 0 else { continue }
            for item in items { record(user: id, item: item) }
        }
    }
}
