// Each user's most recent distinct items (bounded per user), which every
// scorer uses to exclude what the user has already interacted with. An item
// seen again moves to the most recent place rather than taking a second one,
// so repeated events on one item never push the user's other items out of
// the exclusions. Owned by the thread that admits events.

import CKernels

public final class InteractionHistory {
    public let limit: Int
    /// Per user: distinct item indices, oldest first, at most `limit` of them.
    private var lists: [[Int32]] = []
    public private(set) var totalEntries = 0

    public init(limitPerUser: Int) { self.limit = limitPerUser }

    public func record(user: Int32, item: Int32) {
        guard limit > 0 else { return }
        let u = Int(user)
        if u >= lists.count { lists.append(contentsOf: repeatElement([], count: u + 1 - lists.count)) }
        // (Searched from the newest end, eight at a time: a repeat is
        // usually recent, and most events are not repeats.)
        let at = lists[u].withUnsafeBufferPointer { pk_last_index_i32($0.baseAddress, $0.count, item) }
        if at >= 0 {
            lists[u].remove(at: at)
            lists[u].append(item)
            return
        }
        if lists[u].count >= limit {
            lists[u].removeFirst(lists[u].count - limit + 1)
            totalEntries -= 1
        }
        lists[u].append(item)
        totalEntries += 1
    }

    /// Sets a user's items as a snapshot saved them, oldest first. A repeat
    /// (in snapshots from before histories were distinct) keeps only its
    /// newest place, as `record` would have.
    public func restore(user: Int32, items: [Int32]) {
        guard limit > 0 else { return }
        let u = Int(user)
        if u >= lists.count { lists.append(contentsOf: repeatElement([], count: u + 1 - lists.count)) }
        var seen = Set<Int32>()
        let distinct = items.reversed().filter { seen.insert($0).inserted }.reversed()
        totalEntries -= lists[u].count
        lists[u] = Array(distinct.suffix(limit))
        totalEntries += lists[u].count
    }

    /// Forgets a user's items (the user's id expired).
    public func clear(user: Int32) {
        let u = Int(user)
        guard u < lists.count else { return }
        totalEntries -= lists[u].count
        lists[u] = []
    }

    /// Removes expired items from every user's list (an item expiry sweep:
    /// their indices will name other items).
    public func remove(_ retired: RetiredItems) {
        totalEntries -= retired.remove(from: &lists)
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
