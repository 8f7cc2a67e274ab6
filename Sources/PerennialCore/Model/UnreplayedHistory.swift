// What each user did in the part of the log a recovery has not replayed yet.
//
// A server that serves while it replays its log (server.serve_while_recovering)
// answers reads from the model as far as the replay has got. Without this,
// an item a user viewed in the part still to come could be recommended back
// to them, and their latest events would not steer the answer. The log is
// read whole before the port opens anyway (to check it), so that read also
// notes each user's events here (and FEEDBACK accepted during the replay is
// noted as it is logged), and a read during the replay excludes, and takes
// as the user's latest items, the entries the model has not admitted yet
// (sequence numbers after its own).
//
// The entries stand for the history as the replay will leave it: a user
// deleted later in the log loses the entries before the deletion, an entry
// whose item is deleted after it no longer counts, and an item deleted in
// the part still to come is excluded from every read (it is gone once the
// replay gets there, unless an upsert brings it back). Like the history, a
// user keeps at most its per-user bound of distinct items (twice that in
// entries before they are compacted). Memory: at most about 24 bytes per
// event still to replay, and it is dropped when the replay ends.
//
// Threading: filled before the port opens, then read and added to on the
// serving thread only, and dropped there.

public final class UnreplayedHistory {
    /// A user's event, or (after `compact`) their latest on an item with
    /// the kinds of all their events on it (`KindMask`).
    public struct Entry: Equatable, Sendable {
        public var seq: UInt64
        public var item: UInt64
        public var kinds: UInt8
    }

    let limitPerUser: Int
    /// Per user id: entries in sequence order.
    private var byUser: [UInt64: [Entry]] = [:]
    /// Per item id: the sequence number before its latest deletion in the log.
    private var itemDeletedAfter: [UInt64: UInt64] = [:]
    /// Items deleted in the log and not upserted again after (where).
    private var itemGoneAfter: [UInt64: UInt64] = [:]
    /// The last sequence number noted (a deletion is placed after it).
    private var lastSeq: UInt64
    public private(set) var events = 0

    /// `after`: the sequence the log to note follows (the snapshot's).
    public init(limitPerUser: Int, after: UInt64 = 0) {
        self.limitPerUser = limitPerUser
        lastSeq = after
    }

    /// Entries held (at most twice the bound per user).
    public var storedEntries: Int { byUser.values.reduce(0) { $0 + $1.count } }

    /// Notes one record of the log, in log order.
    public func note(_ record: LogRecord) {
        switch record {
        case .feedback(let first, let events):
            guard limitPerUser > 0 else { return }
            for (k, e) in events.enumerated() {
                let entry = Entry(seq: first + UInt64(k), item: e.item, kinds: KindMask.of(e.kind))
                byUser[e.user, default: []].append(entry)
                if byUser[e.user]!.count > 2 * limitPerUser { byUser[e.user] = compact(byUser[e.user]![...]) }
            }
            self.events += events.count
            lastSeq = first + UInt64(events.count) - 1
        case .deleteUsers(let users):
            for u in users { byUser[u] = nil }
        case .deleteItems(let items), .deleteItemsUnremembered(let items):
            for i in items {
                itemDeletedAfter[i] = lastSeq
                itemGoneAfter[i] = lastSeq
            }
        case .upsert(let item, _, _):
            itemGoneAfter[item] = nil
        }
    }

    /// Each item once, at its latest entry, with the kinds of all its
    /// entries; the newest `limitPerUser` of them.
    private func compact(_ list: ArraySlice<Entry>) -> [Entry] {
        var at: [UInt64: Int] = [:]
        var out: [Entry] = []
        for e in list.reversed() {
            if let k = at[e.item] {
                out[k].kinds |= e.kinds
            } else {
                at[e.item] = out.count
                out.append(e)
            }
        }
        return Array(out.prefix(limitPerUser).reversed())
    }

    /// The user's entries after sequence `seq` (those not yet admitted),
    /// each item once at its latest place with all its kinds, oldest first,
    /// without entries whose item was deleted after them.
    public func entries(of user: UInt64, after seq: UInt64) -> [Entry] {
        guard let list = byUser[user], let last = list.last, last.seq > seq else { return [] }
        // (Entries are in sequence order: the first one after `seq`.)
        var lo = 0, hi = list.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if list[mid].seq <= seq { lo = mid + 1 } else { hi = mid }
        }
        let later = itemDeletedAfter.isEmpty ? list[lo...]
            : list[lo...].filter { e in itemDeletedAfter[e.item].map { e.seq > $0 } ?? true }[...]
        return compact(later)
    }

    /// Calls `body` with every item deleted in the part of the log after
    /// sequence `seq` (still in the model until the replay gets there) and
    /// not upserted again after its deletion.
    public func forEachItemDeletedAfter(_ seq: UInt64, _ body: (UInt64) -> Void) {
        for (item, at) in itemGoneAfter where at >= seq { body(item) }
    }
}
