// Sessions the server remembers for RECOMMEND's `session_id`: each id keeps
// its most recent items (external ids, most recent last). Memory is bounded
// three ways — at most `maxSessions` sessions (the least recently used one
// is dropped to make room), at most `maxItems` items per session (the oldest
// fall off), and a session unused for `idleSeconds` expires — so a stream of
// a million distinct session ids costs no more than `maxSessions` of them.
//
// A least-recently-used list threaded through an array of slots (indices,
// not references), so touching, evicting and expiring are O(1) and a freed
// slot is reused. Owned by the serving thread.

public final class SessionStore {
    public let maxSessions: Int
    public let maxItems: Int
    public let idleSeconds: Double

    private struct Slot {
        var key: String
        var items: [UInt64]
        var lastUsed: Double
        var newer: Int   // towards the most recently used; -1 = none
        var older: Int   // towards the least recently used; -1 = none
    }
    private var slots: [Slot] = []
    private var free: [Int] = []
    /// Slots by the id's UTF-8 bytes: ids are byte strings on the wire, and
    /// Swift's String equality would merge canonically equivalent ones
    /// ("café" composed and decomposed: review finding, helper-88).
    private var index: [[UInt8]: Int] = [:]
    private var newest = -1, oldest = -1
    public private(set) var evicted: UInt64 = 0
    public private(set) var expired: UInt64 = 0

    public init(maxSessions: Int, maxItems: Int, idleSeconds: Double) {
        self.maxSessions = maxSessions
        self.maxItems = maxItems
        self.idleSeconds = idleSeconds
    }

    public var count: Int { index.count }

    /// Appends `items` to session `key` (creating it) and returns the
    /// session's items, most recent last. With maxSessions 0 nothing is kept
    /// and the request's own items are returned.
    public func update(_ key: String, appending items: [UInt64], now: Double) -> [UInt64] {
        guard maxSessions > 0 && maxItems > 0 else { return Array(items.suffix(maxItems)) }
        expire(now: now)
        let bytes = Array(key.utf8)
        let s: Int
        if let found = index[bytes] {
            s = found
            unlink(s)
        } else {
            if index.count >= maxSessions { drop(oldest); evicted += 1 }
            let slot = Slot(key: key, items: [], lastUsed: now, newer: -1, older: -1)
            if let reused = free.popLast() { s = reused; slots[s] = slot } else { s = slots.count; slots.append(slot) }
            index[bytes] = s
        }
        slots[s].lastUsed = now
        if !items.isEmpty {
            slots[s].items.append(contentsOf: items.suffix(maxItems))
            let over = slots[s].items.count - maxItems
            if over > 0 { slots[s].items.removeFirst(over) }
        }
        pushNewest(s)
        return slots[s].items
    }

    /// The session's items without touching it (nil when unknown or expired).
    public func items(of key: String, now: Double) -> [UInt64]? {
        guard let s = index[Array(key.utf8)], now - slots[s].lastUsed <= idleSeconds else { return nil }
        return slots[s].items
    }

    /// Every live session, least recently used first: its key, items and
    /// how many seconds it has been idle (what a graceful stop saves).
    public func live(now: Double) -> [(key: String, items: [UInt64], idle: Double)] {
        expire(now: now)
        var out: [(key: String, items: [UInt64], idle: Double)] = []
        var s = oldest
        while s >= 0 {
            out.append((slots[s].key, slots[s].items, max(0, now - slots[s].lastUsed)))
            s = slots[s].newer
        }
        return out
    }

    /// Puts back a saved session, idle for `idle` seconds now (a restart:
    /// call in the order `live` gave, least recently used first). One idle
    /// past `idleSeconds` is not kept; the bounds hold as for `update`.
    public func restore(_ key: String, items: [UInt64], idle: Double, now: Double) {
        guard maxSessions > 0, maxItems > 0, idle <= idleSeconds, index[Array(key.utf8)] == nil else { return }
        // (Sessions past a lowered max_sessions make room as in `update`,
        // but that is the restart's trimming, not an eviction: helper-75.)
        let evictedBefore = evicted
        _ = update(key, appending: items, now: now)
        evicted = evictedBefore
        if let s = index[Array(key.utf8)] { slots[s].lastUsed = now - idle }
    }

    /// Drops sessions idle for longer than `idleSeconds` (oldest first, so
    /// this stops at the first live one).
    public func expire(now: Double) {
        while oldest >= 0 && now - slots[oldest].lastUsed > idleSeconds {
            drop(oldest)
            expired += 1
        }
    }

    /// Item slots held (for STATS), an upper bound on memory / 8 bytes.
    public var storedItems: Int { index.values.reduce(0) { $0 + slots[$1].items.count } }

    private func drop(_ s: Int) {
        unlink(s)
        index[Array(slots[s].key.utf8)] = nil
        slots[s].key = ""
        slots[s].items = []
        free.append(s)
    }

    private func unlink(_ s: Int) {
        let n = slots[s].newer, o = slots[s].older
        if n >= 0 { slots[n].older = o } else if newest == s { newest = o }
        if o >= 0 { slots[o].newer = n } else if oldest == s { oldest = n }
        slots[s].newer = -1
        slots[s].older = -1
    }

    private func pushNewest(_ s: Int) {
        slots[s].older = newest
        slots[s].newer = -1
        if newest >= 0 { slots[newest].newer = s }
        newest = s
        if oldest < 0 { oldest = s }
    }
}
