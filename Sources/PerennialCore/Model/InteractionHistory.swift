// Each user's most recent distinct items (bounded per user), which every
// scorer reads as the user's context and RECOMMEND excludes from answers.
// An item seen again moves to the most recent place rather than taking a
// second one, so repeated events on one item never push the user's other
// items out of the exclusions. Owned by the thread that admits events
// (which also serves RECOMMEND and SCORE: their reads clean lists, below).
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
// timer tick until every list is clean. One pass over every list at the
// deletion held the event loop 7-9 ms at 150,000 users (each list a
// separate array: a cache miss each).
//
// Each deletion has a number; each index keeps the number of its latest
// deletion (`deletedAt`), each list the number it was last cleaned to
// (`cleanedTo`). A list is clean as of its number, and every entry it
// gains is recorded after a clean, so an entry names a forgotten item
// exactly when its index was deleted after the list's number: one lookup
// per entry however many deletions are pending, and an index a deletion
// freed and a new item then took is kept in lists that recorded it since.
// Most entries are passed by a 4,096-bit sieve of the indices deleted in
// the sweep's last two passes (the only deletions a list can lack), while
// those are few: a sweep that expires a thousand items or more sets nearly
// every bit for two passes, and every entry is then looked up.
//
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
    /// Deletions so far, each index's latest (0: never deleted; indices
    /// past the end never were), and each list's number (see the header).
    private var deletions: Int32 = 0
    private var deletedAt: [Int32] = []
    private var cleanedTo: [Int32] = []
    /// Bits (index modulo 4,096) of the indices deleted during the sweep's
    /// current pass, and during it and the previous one.
    private var sievePass = [UInt64](repeating: 0, count: 64)
    private var sieve = [UInt64](repeating: 0, count: 64)
    /// The sweep: the next user it cleans, and the number every list is
    /// clean to once the pass ends. Settled: every list is clean.
    private var sweepNext = 0
    private var sweepCovers: Int32 = 0
    private var settled = true

    public init(limitPerUser: Int) { self.limit = limitPerUser }

    private func ensure(_ u: Int) {
        if u >= lists.count {
            lists.append(contentsOf: repeatElement([], count: u + 1 - lists.count))
            kinds.append(contentsOf: repeatElement([], count: u + 1 - kinds.count))
            // (A new list holds nothing to clean.)
            cleanedTo.append(contentsOf: repeatElement(deletions, count: u + 1 - cleanedTo.count))
        }
    }

    /// Drops from user u's list the entries deleted since it was last cleaned.
    @inline(__always)
    private func clean(_ u: Int) {
        guard u < lists.count, cleanedTo[u] < deletions else { return }
        let since = cleanedTo[u]
        cleanedTo[u] = deletions
        let deleted = { [deletedAt, sieve] (i: Int32) -> Bool in
            let b = Int(i) & 4095
            return sieve[b >> 6] & (1 << UInt64(b & 63)) != 0 && Int(i) < deletedAt.count && i >= 0 && deletedAt[Int(i)] > since
        }
        guard lists[u].contains(where: deleted) else { return }
        let kept = zip(lists[u], kinds[u]).filter { !deleted($0.0) }
        totalEntries -= lists[u].count - kept.count
        lists[u] = kept.map(\.0)
        kinds[u] = kept.map(\.1)
    }

    /// Cleans up to `users` more lists (the loop's timer, every 100 ms).
    /// Returns whether some list may still hold a forgotten item.
    @discardableResult
    public func sweep(users budget: Int) -> Bool {
        guard !settled else { return false }
        let end = min(lists.count, sweepNext + budget)
        for u in sweepNext..<end { clean(u) }
        sweepNext = end
        if sweepNext >= lists.count {
            // Every list was cleaned during this pass (or made after it
            // began): each is clean to `sweepCovers`, so only the deletions
            // made during the pass may still be missing from some list.
            sweepNext = 0
            settled = deletions == sweepCovers
            sweepCovers = deletions
            sieve = settled ? [UInt64](repeating: 0, count: 64) : sievePass
            sievePass = [UInt64](repeating: 0, count: 64)
        }
        return !settled
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

    /// Forgets items (deleted, or expired by a sweep: their indices may
    /// name other items later) in every user's list, lazily (see the header).
    public func remove(_ retired: RetiredItems) {
        guard !retired.isEmpty else { return }
        if deletions == .max {
            // (Numbers start again once every list is clean of them all.)
            cleanAll()
            deletions = 0
            deletedAt = [Int32](repeating: 0, count: deletedAt.count)
            cleanedTo = [Int32](repeating: 0, count: cleanedTo.count)
        }
        deletions += 1
        for i in retired.indices {
            if Int(i) >= deletedAt.count { deletedAt.append(contentsOf: repeatElement(0, count: Int(i) + 1 - deletedAt.count)) }
            deletedAt[Int(i)] = deletions
            let b = Int(i) & 4095
            sievePass[b >> 6] |= 1 << UInt64(b & 63)
            sieve[b >> 6] |= 1 << UInt64(b & 63)
        }
        if settled {
            settled = false
            sweepNext = 0
            sweepCovers = deletions
        }
    }

    /// Whether some list may still hold a forgotten item (for tests).
    var unsettled: Bool { !settled }

    /// Cleans every list now.
    public func cleanAll() {
        guard !settled else { return }
        for u in lists.indices { clean(u) }
        sweepNext = lists.count
        sweepCovers = deletions
        sweep(users: 0)
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
