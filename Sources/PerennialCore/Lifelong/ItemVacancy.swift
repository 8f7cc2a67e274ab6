// Which item indices hold no item, as the learner must see them. An expired
// item's index is vacant until a new item takes it (ItemLifecycle). Events
// never name a vacant index, but a scorer's negative sampling draws indices
// by number (uniform draws, a softmax over the catalogue) and must skip
// vacant ones: a step on a vacant row would hand the next item to take the
// index a row that is no longer a fresh one.
//
// What the learner sees depends on the log alone: an index is vacant for
// the learner until the log position at which a new item took it, however
// far the learner has got when the admitting thread records that.
//
// Threading invariant (why this is `@unchecked Sendable`): `markVacant` and
// `load` run on the admitting thread with the learner idle; `markTaken` on
// the admitting thread while the learner runs, writing a 64-bit value in
// memory that never moves, before the events that may name the index are
// handed to the learner. A learner reading it concurrently sees the old
// value (UInt64.max) or the new one (a position at or after every event it
// has been handed), and both say vacant for those events. `position` and
// the reads are the learner's.

public final class ItemVacancy: @unchecked Sendable {
    /// Per index: the log position after which it holds an item (0: an
    /// index never vacated; UInt64.max: vacant now).
    private let liveAfter = ChunkedBuffer<UInt64>(width: 1, fill: 0, rowsPerChunkLog2: 12)
    /// Whether any index was ever vacated (the check costs nothing until then).
    public private(set) var any = false
    /// The sequence number of the event being learned (learner thread).
    public var position: UInt64 = 0

    public init() {}

    func grow(items: Int) { liveAfter.ensure(rows: items) }

    /// Index i's item expired (admitting thread, learner idle).
    func markVacant(_ i: Int32) {
        liveAfter[Int(i)] = .max
        any = true
    }

    /// A new item took index i for events after log position `seq`.
    func markTaken(_ i: Int32, after seq: UInt64) { liveAfter[Int(i)] = seq }

    /// The log position after which index i's current item holds it (0:
    /// since its creation; UInt64.max: vacant). Admitting thread.
    public func heldSince(_ i: Int32) -> UInt64 { liveAfter[Int(i)] }

    /// Whether index i holds no item for the event being learned (learner thread).
    @inline(__always)
    public func isVacant(_ i: Int32) -> Bool { any && liveAfter[Int(i)] >= position }

    func save(to w: inout SnapshotWriter, items: Int) {
        w.bool(any)
        if any { w.rows(liveAfter, count: items) }
    }

    func load(from r: inout SnapshotReader, items: Int) throws {
        any = try r.bool()
        if any { try r.rows(into: liveAfter, expected: items) }
    }
}

/// The item indices one expiry sweep forgets, with O(1) membership.
public struct RetiredItems {
    public let indices: [Int32]
    private let member: [Bool]
    /// One bit per index modulo 4,096, set for the retired: a clear bit
    /// answers "not retired" from 512 bytes in L1 cache. Every user's recent
    /// items (cf, session-rnn: millions of entries at 150,000 users) are
    /// checked against these, and `member` (a megabyte at a million items)
    /// missed cache on most of them. (Every bit set for sets over 1,024
    /// items, which would set most bits anyway: `member` answers alone.)
    private let sieve: [UInt64]

    public init(_ indices: [Int32], itemCount: Int) {
        self.indices = indices
        var m = [Bool](repeating: false, count: itemCount)
        var s = [UInt64](repeating: indices.count > 1_024 ? .max : 0, count: 64)
        for i in indices {
            m[Int(i)] = true
            let b = Int(i) & 4095
            s[b >> 6] |= 1 << UInt64(b & 63)
        }
        member = m
        sieve = s
    }

    @inline(__always)
    public func contains(_ i: Int32) -> Bool {
        let b = Int(i) & 4095
        guard sieve[b >> 6] & (1 << UInt64(b & 63)) != 0 else { return false }
        return Int(i) < member.count && i >= 0 && member[Int(i)]
    }

    public var isEmpty: Bool { indices.isEmpty }
    /// The items there were when these were retired (indices below it).
    public var itemCount: Int { member.count }

    /// Removes them from every list (users' histories, recent items);
    /// returns how many entries went.
    @discardableResult
    public func remove(from lists: inout [[Int32]]) -> Int {
        var removed = 0
        for u in lists.indices where lists[u].contains(where: contains) {
            let before = lists[u].count
            lists[u].removeAll(where: contains)
            removed += before - lists[u].count
        }
        return removed
    }
}
