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
//
// Forgotten items (a deletion, an expiry sweep) leave the lists lazily: a
// user's list is cleaned of the deletions made since it was last cleaned
// when it is next read or written, and `sweep` cleans a slice of users each
// timer tick until every list is clean and the deletions are let go. One
// pass over every list at the deletion held the event loop 7-9 ms at
// 150,000 users (each list a separate array: a cache miss each). An index
// a deletion freed may name a new item later; a list that records it is
// cleaned first, so only entries older than the deletion are dropped.
// Reads change the lists, then: a snapshot's thread, which reads them while
// the loop serves, starts only after `cleanAll` (SnapshotScheduler).

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
    /// Entries held, counting those of forgotten items not yet cleaned away.
    public private(set) var totalEntries = 0
    /// Deletions not yet applied to every list, oldest first, each with its
    /// number (`deletions` when it was made).
    private var pending: [(number: Int, items: RetiredItems)] = []
    private var deletions = 0
    /// Per user: the number of the latest deletion applied to their list.
    private var cleanedTo: [Int] = []
    /// The sweep: the next user it cleans, and the deletions made when its
    /// pass began (every list is clean of those once the pass ends).
    private var sweepNext = 0
    private var sweepCovers = 0
    /// More deletions than this pending: every list is cleaned at once (a
    /// deletion holds a megabyte per million items until let go).
    static let maxPending = 16

    public init(limitPerUser: Int) { self.limit = limitPerUser }

    private func ensure(_ u: Int) {
        if u >= lists.count {
            lists.append(contentsOf: repeatElement([], count: u + 1 - lists.count))
            kinds.append(contentsOf: repeatElement([], count: u + 1 - kinds.count))
            // (A new list holds nothing to clean.)
            cleanedTo.append(contentsOf: repeatElement(deletions, count: u + 1 - cleanedTo.count))
        }
    }

    /// Applies to user u's list the deletions made since it was last cleaned.
    @inline(__always)
    private func clean(_ u: Int) {
        guard !pending.isEmpty, u < lists.count, cleanedTo[u] < deletions else { return }
        let since = cleanedTo[u]
        cleanedTo[u] = deletions
        for p in pending where p.number > since && lists[u].withUnsafeBufferPointer(p.items.containsAny) {
            let kept = zip(lists[u], kinds[u]).filter { !p.items.contains($0.0) }
            totalEntries -= lists[u].count - kept.count
            lists[u] = kept.map(\.0)
            kinds[u] = kept.map(\.1)
        }
    }

    /// Cleans up to `users` more lists (the loop's timer, every 100 ms), and
    /// lets go of the deletions every list is clean of. Returns whether
    /// deletions are still pending.
    @discardableResult
    public func sweep(users budget: Int) -> Bool {
        guard !pending.isEmpty else { return false }
        let end = min(lists.count, sweepNext + budget)
        for u in sweepNext..<end { clean(u) }
        sweepNext = end
        if sweepNext >= lists.count {
            // Every list was cleaned during this pass, or made after it
            // began, so each is clean of what was pending when it began.
            pending.removeAll { $0.number <= sweepCovers }
            sweepNext = 0
            sweepCovers = deletions
        }
        return !pending.isEmpty
    }

    /// Records an event of kind `kind` (nil: not known) by `user` on `item`.
    public func record(user: Int32, item: Int32, kind: FeedbackKind?) {
        guard limit > 0 else { return }
        let u = Int(user)
        ensure(u)
        clean(u)
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
        clean(u)
        totalEntries -= lists[u].count
        lists[u] = kept.map(\.0)
        kinds[u] = kept.map(\.1)
        totalEntries += lists[u].count
    }

    /// Forgets a user's items (the user's id expired).
    public func clear(user: Int32) {
        let u = Int(user)
        guard u < lists.count else { return }
        clean(u)
        totalEntries -= lists[u].count
        lists[u] = []
        kinds[u] = []
    }

    /// Removes expired items from every user's list (an item expiry sweep:
    /// their indices will name other items).
    public func remove(_ retired: RetiredItems) {
        guard !retired.isEmpty else { return }
        if pending.count >= Self.maxPending { cleanAll() }
        if pending.isEmpty {
            sweepNext = 0
            sweepCovers = deletions + 1
        }
        deletions += 1
        pending.append((deletions, retired))
    }

    /// Deletions not yet applied to every list (for tests).
    var pendingDeletions: Int { pending.count }

    /// Applies every pending deletion to every list now.
    public func cleanAll() {
        while sweep(users: lists.count) {}
    }

    /// The user's items, oldest first.
    public func items(of user: Int32) -> [Int32] {
        let u = Int(user)
        clean(u)
        return u < lists.count ? lists[u] : []
    }

    /// The kinds of event on each of the user's items (`KindMask`), in the
    /// order of `items(of:)`.
    public func kinds(of user: Int32) -> [UInt8] {
        let u = Int(user)
        clean(u)
        return u < kinds.count ? kinds[u] : []
    }

    /// The user's items that `excluded` (the kinds whose events exclude an
    /// item) excludes: those with an event of such a kind, or of unknown kind.
    public func forEachExcludedItem(of user: Int32, excluded: UInt8, _ body: (Int32) -> Void) {
        let u = Int(user)
        guard u < lists.count else { return }
        clean(u)
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
