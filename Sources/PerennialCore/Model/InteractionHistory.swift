// Each user's most recent items (bounded per user), which every scorer uses to
// exclude what the user has already interacted with. Owned by the thread that
// admits events.

public final class InteractionHistory {
    public let limit: Int
    /// Per user: the item indices, oldest first, at most `limit` of them.
    private var lists: [[Int32]] = []
    public private(set) var totalEntries = 0

    public init(limitPerUser: Int) { self.limit = limitPerUser }

    public func record(user: Int32, item: Int32) {
        guard limit > 0 else { return }
        let u = Int(user)
        if u >= lists.count { lists.append(contentsOf: repeatElement([], count: u + 1 - lists.count)) }
        if lists[u].count >= limit {
            lists[u].removeFirst(lists[u].count - limit + 1)
            totalEntries -= 1
        }
        lists[u].append(item)
        totalEntries += 1
    }

    /// Forgets a user's items (the user's id expired).
    public func clear(user: Int32) {
        let u = Int(user)
        guard u < lists.count else { return }
        totalEntries -= lists[u].count
        lists[u] = []
    }

    /// The user's items, oldest first.
    public func items(of user: Int32) -> [Int32] {
        let u = Int(user)
        return u < lists.count ? lists[u] : []
    }

    public func forEachItem(of user: Int32, _ body: (Int32) -> Void) {
        let u = Int(user)
        guard u < lists.count else { return }
        for i in lists[u] { body(i) }
    }
}
