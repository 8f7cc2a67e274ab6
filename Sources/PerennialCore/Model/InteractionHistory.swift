// Each user's most recent distinct items (bounded per user), which every
// scorer reads as the user's context and RECOMMEND excludes from answers.
// An item seen again moves to the most recent place rather than taking a
// second one, so repeated events on one item never push the user's other
// items out of the exclusions. Owned by the thread that admits events.
//
// Each entry also keeps which kinds of event the user had on it (a bit per
// FeedbackKind), so `[history] exclude_kinds` can leave some kinds out of
// the exclusions (a shop that shows viewed products again but never a
// purchased one) and can change on a RELOAD: the policy is applied when a
// request reads the history, not when an event is recorded.

import CKernels

public final class InteractionHistory {
    public let limit: Int
    /// Per user: distinct item indices, oldest first, at most `limit` of them.
    private var lists: [[Int32]] = []
    /// Per user, parallel to `lists`: the kinds of event on each entry
    /// (`KindMask`); 0 = not known (entries restored from snapshots written
    /// before kinds were kept, and items of users admitted late), which
    /// every policy excludes.
    private var kinds: [[UInt8]] = []
    public private(set) var totalEntries = 0

    public init(limitPerUser: Int) { self.limit = limitPerUser }

    private func ensure(_ u: Int) {
        if u >= lists.count {
            lists.append(contentsOf: repeatElement([], count: u + 1 - lists.count))
            kinds.append(contentsOf: repeatElement([], count: u + 1 - kinds.count))
        }
    }

    /// Records an event of kind `kind` (nil: not known) by `user` on `item`.
    public func record(user: Int32, item: Int32, kind: FeedbackKind?) {
        guard limit > 0 else { return }
        let u = Int(user)
        ensure(u)
        let bit = kind.map(KindMask.of) ?? 0
        // (Searched from the newest end, eight at a time: a repeat is
        // usually recent, and most events are not repeats.)
        let at = lists[u].withUnsafeBufferPointer { pk_last_index_i32($0.baseAddress, $0.count, item) }
        if at >= 0 {
            lists[u].remove(at: at)
            lists[u].append(item)
            let before = kinds[u].remove(at: at)
            // (Unknown stays unknown: some earlier kind is not recorded.)
            kinds[u].append(before == 0 ? 0 : before | bit)
            return
        }
        if lists[u].count >= limit {
            let drop = lists[u].count - limit + 1
            lists[u].removeFirst(drop)
            kinds[u].removeFirst(drop)
            totalEntries -= drop
        }
        lists[u].append(item)
        kinds[u].append(bit)
        totalEntries += 1
    }

    /// Sets a user's items as a snapshot saved them, oldest first, with
    /// their kinds (nil: not known; else one per item). A repeat (in
    /// snapshots from before histories were distinct) keeps only its newest
    /// place, as `record` would have, and a list longer than the limit
    /// (lowered since) keeps its newest items, with their kinds.
    public func restore(user: Int32, items: [Int32], kinds saved: [UInt8]? = nil) {
        guard limit > 0 else { return }
        let u = Int(user)
        ensure(u)
        var seen = Set<Int32>()
        var entries: [(Int32, UInt8)] = []
        for k in items.indices.reversed() where seen.insert(items[k]).inserted {
            entries.append((items[k], saved.map { $0[k] } ?? 0))
        }
        entries.reverse()
        let kept = entries.suffix(limit)
        totalEntries -= lists[u].count
        lists[u] = kept.map(\.0)
        kinds[u] = kept.map(\.1)
        totalEntries += lists[u].count
    }

    /// Forgets a user's items (the user's id expired).
    public func clear(user: Int32) {
        let u = Int(user)
        guard u < lists.count else { return }
        totalEntries -= lists[u].count
        lists[u] = []
        kinds[u] = []
    }

    /// Removes expired items from every user's list (an item expiry sweep:
    /// their indices will name other items).
    public func remove(_ retired: RetiredItems) {
        // (Found first, then changed: the scan reads the lists without
        // a write access to `lists` per user.)
        let holding = lists.indices.filter { lists[$0].withUnsafeBufferPointer(retired.containsAny) }
        for u in holding {
            let kept = zip(lists[u], kinds[u]).filter { !retired.contains($0.0) }
            totalEntries -= lists[u].count - kept.count
            lists[u] = kept.map(\.0)
            kinds[u] = kept.map(\.1)
        }
    }

    /// The user's items, oldest first.
    public func items(of user: Int32) -> [Int32] {
        let u = Int(user)
        return u < lists.count ? lists[u] : []
    }

    /// The kinds of event on each of the user's items (`KindMask`), in the
    /// order of `items(of:)`.
    public func kinds(of user: Int32) -> [UInt8] {
        let u = Int(user)
        return u < kinds.count ? kinds[u] : []
    }

    /// The user's items that `excluded` (the kinds whose events exclude an
    /// item) excludes: those with an event of such a kind, or of unknown kind.
    public func forEachExcludedItem(of user: Int32, excluded: UInt8, _ body: (Int32) -> Void) {
        let u = Int(user)
        guard u < lists.count else { return }
        if excluded == KindMask.all {
            for i in lists[u] { body(i) }
            return
        }
        for (i, k) in zip(lists[u], kinds[u]) where k == 0 || k & excluded != 0 { body(i) }
    }
}

/// A set of FeedbackKinds as bits, one per kind.
public enum KindMask {
    @inline(__always)
    public static func of(_ kind: FeedbackKind) -> UInt8 { 1 << (kind.rawValue - 1) }
    public static let all: UInt8 = FeedbackKind.allCases.reduce(0) { $0 | of($1) }
    public static func of(_ kinds: some Sequence<FeedbackKind>) -> UInt8 { kinds.reduce(0) { $0 | of($1) } }
}
