// Keys in the order they were last seen, oldest first: the bookkeeping
// behind "least recently seen" policies (the id lifecycle's bound and age
// expiry, the shadow tracker's bound).
//
// Seeing a key again appends a new entry with a new stamp; the caller keeps
// each key's latest stamp, and `isLive(key, stamp)` says whether an entry is
// still that. Older entries of a key are stale: skipped when they reach the
// front (lazy deletion), and dropped in bulk whenever the queue has doubled
// since the last sweep, so it holds about one entry per live key at an
// amortised constant cost per append.

public struct RecencyQueue<Key> {
    public typealias Entry = (key: Key, stamp: UInt64)

    private var entries: [Entry] = []
    /// Entries before `head` are consumed.
    private var head = 0
    private var sweptSize = 0

    public init() {}

    public mutating func append(_ key: Key, stamp: UInt64, isLive: (Key, UInt64) -> Bool) {
        entries.append((key, stamp))
        if entries.count - head > max(1024, 2 * sweptSize) {
            entries = entries[head...].filter { isLive($0.key, $0.stamp) }
            head = 0
            sweptSize = entries.count
        }
    }

    /// The oldest live entry, discarding the stale ones in front of it.
    public mutating func oldest(isLive: (Key, UInt64) -> Bool) -> Entry? {
        while head < entries.count {
            let e = entries[head]
            if isLive(e.key, e.stamp) { return e }
            consumeOne()
        }
        return nil
    }

    /// Removes the entry `oldest` returned.
    public mutating func removeOldest() {
        guard head < entries.count else { return }
        consumeOne()
    }

    private mutating func consumeOne() {
        head += 1
        // Drop the consumed prefix once it is most of the array.
        if head > 4096 && head * 2 > entries.count {
            entries.removeFirst(head)
            head = 0
        }
    }

    /// Visits the live entries, oldest first, while `body` returns true.
    public func visitOldest(isLive: (Key, UInt64) -> Bool, _ body: (Entry) -> Bool) {
        var i = head
        while i < entries.count {
            let e = entries[i]
            i += 1
            if isLive(e.key, e.stamp) && !body(e) { return }
        }
    }

    /// The live entries, oldest first (what a snapshot keeps).
    public func live(isLive: (Key, UInt64) -> Bool) -> [Entry] {
        entries[head...].filter { isLive($0.key, $0.stamp) }
    }

    /// Puts `front` before every entry (they become the oldest).
    public mutating func prepend(_ front: [Entry]) {
        entries = front + entries[head...]
        head = 0
    }

    /// Replaces the contents (a snapshot's `live` entries, or none).
    public mutating func reset(_ to: [Entry] = []) {
        entries = to
        head = 0
        sweptSize = to.count
    }

    /// Entries held, stale ones included.
    public var count: Int { entries.count - head }
    public var bytes: Int { entries.capacity * MemoryLayout<Entry>.stride }
}
