// The id bounds (`[limits] max_user_ids`, `max_item_ids`): before a FEEDBACK
// batch or an item upsert is logged, the server asks whether it would need
// a row beyond a bound, and refuses it whole (CAPACITY) if so. This is the
// "noeviction" answer to memory pressure (as in Redis's maxmemory policy):
// every id costs memory for good (an item about 3.3 KB with cf, a user
// about 0.8 KB plus their history), so without a bound a stream of ever-new
// ids grows the process until it is killed, and then again on every
// restart, since recovery replays the log. Known ids keep learning at the
// bound. Users have a second answer, eviction: with `[lifelong] max_users`
// the least recently seen user makes room, so this bound is not applied to
// them then. Items idle past `[lifelong] item_expire_after_seconds` count as
// room when the batch's time runs an expiry sweep.
//
// Admitting thread only (it reads the id maps and the admission sketch).

public enum IdKind: Sendable, Equatable {
    case user, item
}

/// Why a batch or upsert was refused: the event's index, which id it is,
/// and the bound.
public struct IdBoundBreach: Sendable, Equatable {
    public var index: Int
    public var kind: IdKind
    public var id: UInt64
    public var limit: Int
}

extension Model {
    /// Whether a model holding `users` user ids and `items` item ids (a
    /// client's, as the bounds count them: not the shared fallbacks' rows)
    /// is within the bounds: the check for FEEDBACK accepted while the log
    /// replays, against the ids the model will hold once the replay ends
    /// (the server's projection).
    public func boundsAdmit(users: Int, items: Int, maxUserIDs: Int, maxItemIDs: Int) -> Bool {
        let boundUsers = maxUserIDs > 0 && lifecycle.maxUsers == 0
        return !(boundUsers && users > maxUserIDs) && !(maxItemIDs > 0 && items > maxItemIDs)
    }

    /// The first event of `events` that would need a row beyond a bound
    /// (0 = no bound), or nil when the whole batch fits.
    public func firstBreach(of events: some Collection<IncomingEvent>, maxUserIDs: Int, maxItemIDs: Int) -> IdBoundBreach? {
        // Users beyond max_users are evicted, not refused.
        let boundUsers = maxUserIDs > 0 && lifecycle.maxUsers == 0
        let boundItems = maxItemIDs > 0
        // The usual case costs two comparisons: even all-new ids would fit.
        let checkUsers = boundUsers && users.liveCount + events.count + 1 > maxUserIDs
        let checkItems = boundItems && items.liveCount + events.count > maxItemIDs
        guard checkUsers || checkItems else { return nil }
        // Item expiry: a sweep due at this batch's time frees the idle
        // items' rows before its events are admitted, and an idle item the
        // batch names comes back as a new one. (The fallback item's row is
        // not counted, idle or not.)
        var itemsHeld = clientItemIDs
        var sweepTime: Int64? = nil
        if checkItems, let first = events.first, itemLifecycle.sweepDue(now: first.timestamp) {
            sweepTime = first.timestamp
            itemsHeld -= idleItems(at: first.timestamp).filter { $0 != fallbackItem }.count
        }
        func isNewItem(_ id: UInt64) -> Bool {
            guard let i = items.index(of: id) else { return true }
            return sweepTime.map { itemLifecycle.isIdle(i, now: $0) } ?? false
        }
        // Admission is simulated for users: age expiry forgets idle users
        // at the batch's first timestamp and again before each new user
        // takes a row (at that event's time), so their rows are free; a
        // forgotten user who comes back takes a new row; a user with an
        // event in the batch can no longer expire. A user's first sighting
        // under min_occurrences > 1 goes to the shared fallback user, whose
        // row is new the first time.
        // The shared fallback user's and item's rows are not ids a client
        // sent, and the bounds leave them out: an event that trains one (a
        // user or item not yet admitted, a deleted item) is accepted at the
        // bound, as PROTOCOL.md says (it had been refused CAPACITY, naming
        // the id as new: review finding, helper-88). One row each.
        var usersHeld = clientUserIDs
        var touched = Set<Int32>(), forgotten = Set<Int32>()
        var expiredUpTo = Int64.min
        func expire(at time: Int64) {
            guard checkUsers, time > expiredUpTo else { return }
            expiredUpTo = time
            lifecycle.forEachExpirable(now: time, before: lastSeq, skipping: { touched.contains($0) || forgotten.contains($0) || $0 == fallbackUser }) { u in
                forgotten.insert(u)
                usersHeld -= 1
            }
        }
        if let first = events.first { expire(at: first.timestamp) }
        // Under item_min_occurrences, an event's item id seen fewer times
        // than that goes to the shared fallback item (a new row the first time).
        var itemSightings = BatchSightings()
        var newItems = Set<UInt64>()
        var newUsers = Set<UInt64>()
        // Sightings in this batch of user ids not yet admitted (min_occurrences > 1).
        var sightings = BatchSightings()
        for (n, e) in events.enumerated() {
            if checkItems, isNewItem(e.item), !newItems.contains(e.item) {
                // (A remembered deleted id goes to the fallback item too:
                // review finding, helper-61.)
                if !deletedItems.contains(e.item), itemSightings.admitsNext(e.item, by: itemLifecycle.admission) {
                    newItems.insert(e.item)
                }
                if itemsHeld + newItems.count > maxItemIDs {
                    return IdBoundBreach(index: n, kind: .item, id: e.item, limit: maxItemIDs)
                }
            }
            guard checkUsers, !newUsers.contains(e.user) else { continue }
            if let u = users.index(of: e.user), !forgotten.contains(u) {
                touched.insert(u)
                continue
            }
            if sightings.admitsNext(e.user, by: lifecycle.admission) {
                expire(at: e.timestamp)
                newUsers.insert(e.user)
            }
            if usersHeld + newUsers.count > maxUserIDs {
                return IdBoundBreach(index: n, kind: .user, id: e.user, limit: maxUserIDs)
            }
        }
        return nil
    }

    /// The ids the bounds count: every held id but the shared fallbacks'.
    public var clientItemIDs: Int { items.liveCount - (fallbackItem == nil ? 0 : 1) }
    public var clientUserIDs: Int { users.liveCount - (fallbackUser == nil ? 0 : 1) }

    /// Why an upsert of item `id` would need a row beyond the bound, if it would.
    public func upsertBreach(item id: UInt64, maxItemIDs: Int) -> IdBoundBreach? {
        guard maxItemIDs > 0, items.index(of: id) == nil, clientItemIDs >= maxItemIDs else { return nil }
        return IdBoundBreach(index: 0, kind: .item, id: id, limit: maxItemIDs)
    }

    /// One line per bound the model already holds as many ids as (or more):
    /// new ids of that kind are refused (start-up and RELOAD log them).
    public func boundsReached(maxUserIDs: Int, maxItemIDs: Int) -> [String] {
        var lines: [String] = []
        if maxItemIDs > 0 && clientItemIDs >= maxItemIDs {
            lines.append("the model holds \(clientItemIDs) item ids, at or above limits.max_item_ids (\(maxItemIDs)): events and upserts of new items will be refused (CAPACITY)")
        }
        if maxUserIDs > 0 && lifecycle.maxUsers == 0 && clientUserIDs >= maxUserIDs {
            lines.append("the model holds \(clientUserIDs) user ids, at or above limits.max_user_ids (\(maxUserIDs)): events of new users will be refused (CAPACITY)")
        }
        return lines
    }
}

/// Sightings, within one batch, of ids not yet holding rows: whether the
/// next one gets its row, by the admission sketch as it stood before the
/// batch (with admission off, always).
private struct BatchSightings {
    private var seen: [UInt64: Int] = [:]

    mutating func admitsNext(_ id: UInt64, by admission: AdmissionFilter) -> Bool {
        let n = seen[id, default: 0] + 1
        seen[id] = n
        return admission.wouldAdmit(id, afterMore: n)
    }
}
