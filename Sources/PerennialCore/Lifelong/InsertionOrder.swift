// The order in which ids entered a bounded map or set that forgets its
// oldest entry to make room (PendingUserItems, DeletedItemIds). Each entry
// carries a serial; the owner keeps each live id's current serial, so an
// entry whose id was removed, or inserted again later, is stale and is
// skipped. Stale entries and the spent front are dropped once they are
// most of the queue, so the queue stays within twice the live entries
// (amortised O(1) a call).

struct InsertionOrder {
    private var order: [(id: UInt64, serial: UInt64)] = []
    private var start = 0
    private var nextSerial: UInt64 = 0

    /// Appends `id` as the newest entry; returns its serial, for the owner
    /// to keep.
    mutating func append(_ id: UInt64) -> UInt64 {
        nextSerial += 1
        order.append((id, nextSerial))
        return nextSerial
    }

    /// Takes the oldest live entry off the queue and returns its id (nil
    /// when none is left). `serial(of:)` is the owner's current serial of
    /// an id, nil when it holds none.
    mutating func popOldest(serial: (UInt64) -> UInt64?) -> UInt64? {
        while start < order.count {
            let (id, s) = order[start]
            start += 1
            if serial(id) == s { return id }
        }
        return nil
    }

    /// The live ids, oldest first.
    func live(serial: (UInt64) -> UInt64?) -> [UInt64] {
        order[start...].filter { serial($0.id) == $0.serial }.map(\.id)
    }

    /// Drops the stale entries once they are most of the queue.
    mutating func compactIfStale(liveCount: Int, serial: (UInt64) -> UInt64?) {
        guard order.count > 1024 && order.count > 2 * liveCount else { return }
        order = order[start...].filter { serial($0.id) == $0.serial }
        start = 0
    }

    mutating func removeAll() {
        order = []; start = 0; nextSerial = 0
    }

    var bytes: Int { order.capacity * 16 }
}
