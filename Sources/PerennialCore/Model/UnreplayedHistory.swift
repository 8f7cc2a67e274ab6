// What each user did in the part of the log a recovery has not replayed yet.
//
// A server that serves while it replays its log (server.serve_while_recovering)
// answers reads from the model as far as the replay has got. Without this,
// an item a user viewed in the part still to come could be recommended back
// to them, and their latest events would not steer the answer. The log is
// read whole before the port opens anyway (to check it), so that read also
// notes each user's events here, and a read during the replay excludes, and
// takes as the user's latest items, the entries the model has not admitted
// yet (sequence numbers after its own).
//
// The entries stand for the history as the replay will leave it: a user
// deleted later in the log loses the entries before the deletion, and an
// entry whose item is deleted after it no longer counts (the id may come
// back as a new item). Each user keeps at most the history's per-user bound.
// Memory: about 24 bytes per event of the log after the snapshot, which
// recovery_seconds keeps bounded, and it is dropped when the replay ends.
//
// Threading: filled before the port opens, then read on the serving thread
// only, and dropped there.

public final class UnreplayedHistory {
    public struct Entry: Equatable, Sendable {
        public var seq: UInt64
        public var item: UInt64
        public var kind: FeedbackKind
    }

    let limitPerUser: Int
    /// Per user id: entries in sequence order.
    private var byUser: [UInt64: [Entry]] = [:]
    /// Per item id: the sequence number before its latest deletion in the log.
    private var itemDeletedAfter: [UInt64: UInt64] = [:]
    /// The last sequence number noted (a deletion is placed after it).
    private var lastSeq: UInt64 = 0
    public private(set) var events = 0
    /// Entries held (at most twice the bound per user).
    public var storedEntries: Int { byUser.values.reduce(0) { $0 + $1.count } }

    public init(limitPerUser: Int) { self.limitPerUser = limitPerUser }

    /// Notes one record of the log, in log order.
    public func note(_ record: LogRecord) {
        switch record {
        case .feedback(let first, let events):
            guard limitPerUser > 0 else { return }
            for (k, e) in events.enumerated() {
                let entry = Entry(seq: first + UInt64(k), item: e.item, kind: e.kind)
                byUser[e.user, default: []].append(entry)
                if byUser[e.user]!.count > 2 * limitPerUser {
                    byUser[e.user]!.removeFirst(byUser[e.user]!.count - limitPerUser)
                }
            }
            self.events += events.count
            lastSeq = first + UInt64(events.count) - 1
        case .deleteUsers(let users):
            for u in users { byUser[u] = nil }
        case .deleteItems(let items), .deleteItemsUnremembered(let items):
            for i in items { itemDeletedAfter[i] = lastSeq }
        case .upsert:
            break
        }
    }

    /// The user's entries after sequence `seq` (those not yet admitted),
    /// oldest first, without entries whose item was deleted after them.
    public func entries(of user: UInt64, after seq: UInt64) -> [Entry] {
        guard let list = byUser[user], let last = list.last, last.seq > seq else { return [] }
        // (Entries are in sequence order: the first one after `seq`.)
        var lo = 0, hi = list.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if list[mid].seq <= seq { lo = mid + 1 } else { hi = mid }
        }
        let later = list[lo...]
        if itemDeletedAfter.isEmpty { return Array(later.suffix(limitPerUser)) }
        return Array(later.filter { e in itemDeletedAfter[e.item].map { e.seq > $0 } ?? true }.suffix(limitPerUser))
    }
}
