// Live comparison of a candidate scorer with the one serving: a RECOMMEND
// that names a `shadow_scorer` is also answered by it (not returned), and
// both answers are remembered for the user. When that user's next positive
// feedback arrives (a rating >= 4, or a view, click or purchase of a kind the
// config learns from), it counts as a hit for each answer that held the item. STATS reports, per shadow scorer,
// the requests, the follow-up events, the hits of the serving scorer and of
// the shadow, and how much the two answers overlapped: a new scorer is
// judged on real traffic before it is swapped in.
//
// Loop thread only. At most `capacity` users, and `itemBudget` item ids over
// all remembered answers (answers may be long: k up to limits.max_items), are
// remembered; the oldest remembered answer makes room, so one client asking
// shadowed RECOMMENDs for many users cannot grow the server's memory without
// bound.

import Foundation
import PerennialCore

final class ShadowTracker {
    struct Tally {
        var requests: UInt64 = 0
        var followups: UInt64 = 0
        var servedHits: UInt64 = 0
        var shadowHits: UInt64 = 0
        var overlap: UInt64 = 0
        var listed: UInt64 = 0
    }

    struct Pending {
        var shadow: String
        var served: [UInt64]
        var other: [UInt64]
        /// Which `order` entry is this answer's (older entries are stale).
        var ticket: UInt64
    }

    let capacity: Int
    let itemBudget: Int
    private var pending: [UInt64: Pending] = [:]
    /// Item ids held by `pending`'s answers.
    private(set) var heldItems = 0
    /// Users in the order their answers were remembered, stamped with the
    /// ticket of that answer; an entry whose ticket no longer matches is
    /// stale (answered or replaced since).
    private var order = RecencyQueue<UInt64>()
    private var nextTicket: UInt64 = 0
    private(set) var tallies: [String: Tally] = [:]

    init(capacity: Int = 100_000, itemBudget: Int = 2_000_000) {
        self.capacity = capacity
        self.itemBudget = itemBudget
    }

    var isEmpty: Bool { pending.isEmpty }

    /// Remembers both answers to one RECOMMEND.
    func record(user: UInt64, shadow: String, served: [UInt64], other: [UInt64]) {
        var t = tallies[shadow, default: Tally()]
        t.requests += 1
        t.overlap += UInt64(Set(served).intersection(other).count)
        t.listed += UInt64(served.count)
        tallies[shadow] = t
        nextTicket += 1
        forget(user)
        pending[user] = Pending(shadow: shadow, served: served, other: other, ticket: nextTicket)
        heldItems += served.count + other.count
        order.append(user, stamp: nextTicket, isLive: isPending)
        // Forget the oldest remembered answers beyond the bounds.
        while pending.count > capacity || heldItems > itemBudget, let (u, _) = order.oldest(isLive: isPending) {
            order.removeOldest()
            forget(u)
        }
    }

    /// Drops the user's remembered answers, if any (answered, replaced, or
    /// the user deleted); returns them.
    @discardableResult
    func forget(_ user: UInt64) -> Pending? {
        guard let p = pending.removeValue(forKey: user) else { return nil }
        heldItems -= p.served.count + p.other.count
        return p
    }

    private func isPending(_ user: UInt64, _ ticket: UInt64) -> Bool { pending[user]?.ticket == ticket }

    /// A feedback event: the first positive one after a shadowed RECOMMEND
    /// for its user scores both answers (FeedbackWeights.isPositive: a
    /// rating of 4 or more, or an implicit event of a kind that is learned).
    func observe(user: UInt64, item: UInt64, kind: FeedbackKind, value: Float, weights: FeedbackWeights) {
        guard weights.isPositive(kind, value: value), let p = forget(user) else { return }
        var t = tallies[p.shadow, default: Tally()]
        t.followups += 1
        if p.served.contains(item) { t.servedHits += 1 }
        if p.other.contains(item) { t.shadowHits += 1 }
        tallies[p.shadow] = t
    }

    var counters: [(String, UInt64)] {
        var c: [(String, UInt64)] = [("shadow_pending_users", UInt64(pending.count)), ("shadow_pending_items", UInt64(heldItems))]
        for (name, t) in tallies.sorted(by: { $0.key < $1.key }) {
            let key = "shadow_" + name.replacingOccurrences(of: "-", with: "_").replacingOccurrences(of: "+", with: "_")
            c += [(key + "_requests", t.requests), (key + "_followups", t.followups),
                  (key + "_served_hits", t.servedHits), (key + "_shadow_hits", t.shadowHits),
                  (key + "_overlap_items", t.overlap), (key + "_served_items", t.listed)]
        }
        return c
    }
}
