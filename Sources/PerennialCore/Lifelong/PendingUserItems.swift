// The items of user ids still waiting for a row of their own
// (`lifelong.min_occurrences` > 1): their events train the shared fallback
// user, so without this their items would be in no history, and a visitor
// would be recommended what they had just bought (review finding,
// helper-56). When the id is admitted its items join its history first;
// until then a RECOMMEND for it excludes them and reads them as its history.
//
// Bounded: at most `maxUsers` ids (the one pending longest is dropped to
// make room, as the admission sketch would forget it soon) with at most
// `maxItems` items each (the oldest fall off), so a stream of one-off ids
// costs no more than that. Held in memory only: a restart forgets them
// (the admission counts, in the snapshot, do not). Owned by the admitting
// thread.

public final class PendingUserItems {
    public let maxUsers: Int
    public let maxItems: Int
    private var items: [UInt64: [UInt64]] = [:]
    /// Ids in the order they first became pending (dropped or admitted
    /// ones are skipped when they come to the front).
    private var order: [UInt64] = []
    private var orderStart = 0

    public init(maxUsers: Int, maxItems: Int) {
        self.maxUsers = maxUsers
        self.maxItems = maxItems
    }

    public var count: Int { items.count }

    /// Remembers that pending user `user` interacted with `item`.
    public func record(user: UInt64, item: UInt64) {
        guard maxUsers > 0 && maxItems > 0 else { return }
        if items[user] == nil {
            while items.count >= maxUsers, orderStart < order.count {
                items[order[orderStart]] = nil
                orderStart += 1
            }
            order.append(user)
        }
        items[user, default: []].append(item)
        if items[user]!.count > maxItems { items[user]!.removeFirst() }
        // Compact the order list once most of it is spent.
        if orderStart > 1024 && orderStart * 2 > order.count {
            order = order[orderStart...].filter { items[$0] != nil }
            orderStart = 0
        }
    }

    /// The user's pending items, oldest first (empty when none).
    public func items(of user: UInt64) -> [UInt64] { items[user] ?? [] }

    /// Forgets the user's items (admitted, or deleted), returning them.
    @discardableResult
    public func take(_ user: UInt64) -> [UInt64] { items.removeValue(forKey: user) ?? [] }

    public var bytes: Int { items.count * (48 + 8 * max(1, maxItems)) + order.capacity * 8 }
}
