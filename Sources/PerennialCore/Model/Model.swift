// The model a server holds: id maps, per-user histories, the item catalogue
// and the loaded scorers, with the two entry points the threads use —
// `admit` (the serving thread turns incoming events into learn events) and
// `learn` (the learner thread applies them).
//
// Threading invariant (why this is `@unchecked Sendable`): the id maps,
// histories and catalogue are touched only by the admitting thread (the
// server's loop, or the one thread of an in-process evaluation). `learn` is
// called only by the learner thread; it touches the scorers, which follow
// the `Scorer` contract (state shared with readers lives in never-moving
// ChunkedBuffers), the table's rows, and the learner's own lifelong state:
// the replay buffer, the item vacancy position, the users' learned
// generations (the STATS counters it publishes are atomics). The admitting
// thread touches that learner state only while the learner is idle
// (deletions, expiry sweeps, save and restore wait for it). The scorer set, and a scorer's settings
// (`reconfigure`, including adjustments in place), change only while the
// learner is idle and no snapshot's thread is serialising (RELOAD waits for
// both first). `save` may also run on an automatic snapshot's thread,
// with the learner idle, while the admitting thread only serves reads and
// admits nothing (the server's SnapshotInFlight states that invariant).

import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An event as a client sent it.
public struct IncomingEvent: Sendable, Equatable {
    public var user: UInt64
    public var item: UInt64
    public var kind: FeedbackKind
    public var value: Float
    public var timestamp: Int64

    public init(user: UInt64, item: UInt64, kind: FeedbackKind, value: Float, timestamp: Int64) {
        self.user = user
        self.item = item
        self.kind = kind
        self.value = value
        self.timestamp = timestamp
    }
}

public enum ModelError: Error, Equatable, CustomStringConvertible {
    case unknownScorer(String, loaded: [String])

    public var description: String {
        switch self {
        case .unknownScorer(let name, let loaded):
            "scorer \"\(name)\" is not loaded; loaded: \(loaded.joined(separator: ", "))"
        }
    }
}

/// One ranked result, with external ids.
public struct Recommendation: Sendable, Equatable {
    public var item: UInt64
    public var score: Float
}

/// One RECOMMEND's question, with external ids (see `Model.recommend`).
public struct RecommendQuestion: Sendable, Equatable {
    public var user: UInt64
    public var k: Int
    public var scorer: String
    public var session: [UInt64]
    public var exclude: [UInt64]
    public var candidates: [UInt64]

    public init(user: UInt64, k: Int, scorer: String = "", session: [UInt64] = [], exclude: [UInt64] = [],
                candidates: [UInt64] = []) {
        self.user = user
        self.k = k
        self.scorer = scorer
        self.session = session
        self.exclude = exclude
        self.candidates = candidates
    }
}

public final class Model: @unchecked Sendable {
    public let users = IdMap()
    public let items = IdMap()
    public let history: InteractionHistory
    /// While a recovery replays the log with the port open: each user's
    /// events in the part not yet admitted, which reads exclude and take as
    /// the user's latest items (admitting thread; nil otherwise).
    public var unreplayed: UnreplayedHistory?
    public let catalogue = ItemCatalogue()
    /// The embedding table all scorers share.
    public let table: EmbeddingTable
    public private(set) var scorerNames: [String]
    public private(set) var defaultScorer: String
    /// Candidate → re-rank routes, by name.
    public private(set) var routes: [String: RouteConfig] = [:]
    /// Changed only by `reconfigure`, on the admitting thread, while the
    /// learner is idle (every admitted event applied).
    private var scorers: [any Scorer]
    private var settings: [String: any ScorerSettings] = [:]
    private let registry: ScorerRegistry
    public let maxTextBytes: Int

    /// The highest sequence number given to an admitted event.
    public private(set) var lastSeq: UInt64 = 0
    /// `lastSeq` when the batch being admitted began.
    private var batchStart: UInt64 = 0
    /// Events applied by `learn` (read by any thread).
    public let applied = Atomic<UInt64>(0)
    /// Lifelong learning's settings, and experience replay's buffer
    /// (learner thread; its counters are mirrored into atomics for STATS).
    public let lifelong: LifelongConfig
    public let feedbackWeights: FeedbackWeights
    private var replayBuffer: ReplayBuffer
    private let replayed = Atomic<UInt64>(0)
    private let replayHeld = Atomic<UInt64>(0)
    /// User ids' admission and expiry (admitting thread), and the index of
    /// the shared fallback user once one exists.
    public let lifecycle: IdLifecycle
    public private(set) var fallbackUser: Int32?
    /// Item ids' expiry (admitting thread), and which item indices are
    /// vacant as the learner sees them.
    public let itemLifecycle: ItemLifecycle
    public let itemVacancy = ItemVacancy()
    /// The longest an item expiry sweep held the admitting thread (waiting
    /// for the learner included), in µs since start (STATS).
    public private(set) var itemSweepMaxMicros: UInt64 = 0

    // Per-request scratch, reused so that serving allocates little.
    private let exclusions = ExclusionSet()
    private var top = TopK(k: 10)
    /// One exclusion set per query of the largest batch so far.
    private var batchExclusions: [ExclusionSet] = []

    public init(config: PerennialConfig, registry: ScorerRegistry) {
        history = InteractionHistory(limitPerUser: config.historyPerUser)
        excludedKinds = config.historyExcludedKinds
        table = EmbeddingTable(dimension: config.tableDimension, seed: UInt64(config.tableSeed), lifelong: config.lifelong)
        lifelong = config.lifelong
        feedbackWeights = config.feedbackWeights
        replayBuffer = ReplayBuffer(capacity: config.lifelong.replayBuffer, seed: config.lifelong.seed)
        lifecycle = IdLifecycle(config.lifelong)
        // Room for twice the events admission needs: the sketch's halving
        // can make an id wait for more (helper-57).
        pendingUserItems = PendingUserItems(maxUsers: config.lifelong.minOccurrences > 1 ? config.lifelong.admissionWindow : 0,
                                            maxItems: 2 * (config.lifelong.minOccurrences - 1))
        deletedItems = DeletedItemIds(capacity: config.lifelong.deletedItemsRemembered)
        itemLifecycle = ItemLifecycle(expireAfterSeconds: config.lifelong.itemExpireAfterSeconds,
                                      minOccurrences: config.lifelong.itemMinOccurrences,
                                      admissionWindow: config.lifelong.admissionWindow)
        let environment = ScorerEnvironment(table: table, vacancy: itemVacancy)
        var made: [any Scorer] = []
        for sc in config.scorers {
            guard let factory = registry.factory(named: sc.name) else { preconditionFailure("unvalidated scorer \(sc.name)") }
            made.append(factory.make(sc.settings, environment))
        }
        scorers = made
        scorerNames = made.map(\.name)
        self.registry = registry
        for sc in config.scorers { settings[sc.name] = sc.settings }
        defaultScorer = config.defaultScorer
        maxTextBytes = config.limits.maxTextBytes
        for r in config.routes { routes[r.name] = r }
    }

    /// Whether `name` ("" = default) is a loaded scorer or a route.
    public func canServe(_ name: String) -> Bool {
        name.isEmpty || routes[name] != nil || scorerNames.contains(name)
    }

    public func scorer(named name: String) throws(ModelError) -> any Scorer {
        let wanted = name.isEmpty ? defaultScorer : name
        guard let s = scorers.first(where: { $0.name == wanted }) else {
            throw ModelError.unknownScorer(wanted, loaded: scorerNames + routes.keys.sorted())
        }
        return s
    }

    // MARK: admitting thread

    private func growScorers() {
        lifecycle.grow(users: users.count)
        itemLifecycle.grow(items: items.count)
        itemVacancy.grow(items: items.count)
        table.grow(users: users.count, items: items.count)
        for s in scorers { s.grow(users: users.count, items: items.count) }
    }

    /// Turns incoming events into learn events: inserts new ids, gives each
    /// event the next sequence number, records histories. `now` stands in for
    /// a zero timestamp. An implicit event's value becomes its learning
    /// weight (FeedbackWeights: its kind's weight times its own, 0 meaning 1).
    /// `continuingBatch`: the events continue the batch `beginBatch` began
    /// (see there).
    public func admit(_ events: some Collection<IncomingEvent>, now: Int64, into out: inout [LearnEvent],
                      continuingBatch: Bool = false) {
        var grew = false
        if !continuingBatch, let first = events.first { beginBatch(at: first.timestamp == 0 ? now : first.timestamp) }
        for e in events {
            let timestamp = e.timestamp == 0 ? now : e.timestamp
            let (u, newUser, shared) = admitUser(e.user, timestamp: timestamp)
            let (i, newItem) = admitItem(e.item, byEvent: true)
            itemLifecycle.touch(i, timestamp: timestamp)
            grew = grew || newUser || newItem
            lastSeq += 1
            var learn = LearnEvent(seq: lastSeq, user: u, item: i, kind: e.kind,
                                   value: feedbackWeights.learnedValue(e.kind, value: e.value), timestamp: timestamp)
            // (Generations are checked even with the lifecycle off: a
            // snapshot may hold vacant indices from when it was on.)
            learn.userGeneration = lifecycle.generation[Int(u)]
            learn.sharedUser = shared
            if !shared { lifecycle.touch(u, timestamp: timestamp, seq: lastSeq) }
            out.append(learn)
            if !shared { history.record(user: u, item: i, kind: e.kind) }
            // (A shared user's event is one of an id still waiting for its row.)
            if shared { pendingUserItems.record(user: e.user, item: e.item) }
        }
        if grew { growScorers() }
    }

    /// The earliest batch time at which the next item expiry sweep runs
    /// (nil with item expiry off): a batch whose first event is at or after
    /// it runs the sweep (the server lets the learner drain before it
    /// admits one).
    public var nextItemSweep: Int64? { itemLifecycle.nextSweepTime }

    /// Whether a sweep at `time` would forget any item (asks; O(items)).
    /// A sweep that forgets nothing needs no idle learner.
    public func itemSweepWouldForget(at time: Int64) -> Bool { idleItems(at: time).first != nil }

    /// The held items a sweep at `time` would forget (asks; lazily, O(items)).
    func idleItems(at time: Int64) -> some Collection<Int32> {
        (0..<Int32(items.count)).lazy.filter { self.items.id(at: $0) != 0 && self.itemLifecycle.isIdle($0, now: time) }
    }

    /// What admitting a batch does before its events, at the batch's time
    /// (its first event's): users idle too long go, and an item expiry
    /// sweep runs when one is due. Id expiry depends on batch boundaries,
    /// so a caller that must admit a logged batch's events one at a time
    /// (an evaluation that scores each event before learning it) calls
    /// this once for the batch and admits its events with
    /// `continuingBatch`, and forgets exactly what the server did.
    public func beginBatch(at time: Int64) {
        batchStart = lastSeq
        // Users unseen for too long go, batch by batch.
        if lifecycle.enabled { expireUsers(now: time, makeRoom: false) }
        if itemLifecycle.enabled && itemLifecycle.sweepDue(now: time) { expireItems(now: time) }
    }

    /// The row index for a user id: its own, a new one (reusing an expired
    /// user's index when there is one), or the shared fallback user's while
    /// the id has fewer than `min_occurrences` events. Returns the index,
    /// whether it is newly allocated, and whether it is the shared one.
    private func admitUser(_ id: UInt64, timestamp: Int64) -> (Int32, Bool, Bool) {
        if let u = users.index(of: id) { return (u, false, false) }
        guard lifecycle.enabled else {
            let (u, isNew) = users.insert(id)
            if isNew { lifecycle.grow(users: users.count) }
            return (u, isNew, false)
        }
        if !lifecycle.admission.admits(id) {
            let (f, isNew) = users.insert(IdLifecycle.fallbackUserID)
            fallbackUser = f
            lifecycle.grow(users: users.count)
            return (f, isNew, true)
        }
        expireUsers(now: timestamp, makeRoom: true)
        let (u, isNew) = users.insert(id)
        lifecycle.grow(users: users.count)
        // What the id did while it waited for its row: its history, first.
        // (Their kinds are not kept: excluded under any exclude_kinds.)
        for item in pendingUserItems.take(id) { if let i = items.index(of: item) { history.record(user: u, item: i, kind: nil) } }
        return (u, isNew, false)
    }

    /// The items of user ids not yet admitted (PendingUserItems).
    let pendingUserItems: PendingUserItems

    /// Users whose ids expire give up their index: id, history and (on the
    /// learner, at the next generation's first event) learned state. Which
    /// users expire depends on the stream alone (never on how far the
    /// learner has got), so a replay of the log makes the same choices:
    /// only users whose last event came before this batch are candidates,
    /// and the loop waits for the learner to apply that event if it has not.
    private func expireUsers(now: Int64, makeRoom: Bool) {
        lifecycle.expire(now: now, before: batchStart, waitApplied: { seq in
            while self.appliedSeq < seq { usleep(50) }
        }, live: { users.liveCount - (fallbackUser == nil ? 0 : 1) }, makeRoom: makeRoom) { u in
            users.remove(index: u)
            history.clear(user: u)
        }
    }

    /// The shared fallback item's index, once a rare item id has used it.
    public private(set) var fallbackItem: Int32?

    /// The index for an item id: its own, a new one (an expired item's
    /// vacant index when there is one), or, for an event's id seen fewer
    /// than `item_min_occurrences` times, the shared fallback item's.
    /// Returns whether tables must grow.
    private func admitItem(_ id: UInt64, byEvent: Bool = false) -> (Int32, Bool) {
        if byEvent, !deletedItems.isEmpty, deletedItems.contains(id) {
            // A deleted item stays deleted (DeletedItemIds).
            eventsOnDeletedItems += 1
            return admitFallbackItem()
        }
        if byEvent, itemLifecycle.admission.filters, items.index(of: id) == nil, !itemLifecycle.admission.admits(id) {
            return admitFallbackItem()
        }
        let (i, isNew, reused) = items.insertReportingReuse(id)
        if isNew {
            itemLifecycle.grow(items: items.count)
            itemVacancy.grow(items: items.count)
        }
        if reused {
            // The index was reset when its item expired; from the next log
            // position on it holds this item.
            itemVacancy.markTaken(i, after: lastSeq)
            itemLifecycle.reset(i)
            forEachExclusionSet { $0.readmit(i) }
        }
        return (i, isNew)
    }

    /// The shared fallback item's index (made on first use): it takes the
    /// events of item ids without a row of their own, and is never an answer.
    private func admitFallbackItem() -> (Int32, Bool) {
        let (f, grows) = admitItem(ItemLifecycle.fallbackItemID)
        if fallbackItem != f {
            // Never an answer: excluded like a vacant index.
            fallbackItem = f
            forEachExclusionSet { $0.excludeAlways(f) }
        }
        return (f, grows)
    }

    /// The kinds of event that keep an item out of its user's answers
    /// (`[history] exclude_kinds`, a KindMask; RELOAD may change it).
    public private(set) var excludedKinds: UInt8

    /// The latest deleted item ids: events naming them train the fallback
    /// item (`lifelong.deleted_items_remembered`).
    let deletedItems: DeletedItemIds
    /// Events that named a remembered deleted item (STATS).
    public private(set) var eventsOnDeletedItems: UInt64 = 0

    /// Every item idle for the expiry time goes, with every reference to
    /// it (ItemLifecycle): its id, text and history entries here, its row
    /// in the table, and each scorer's state for it. The learner must be
    /// idle for that, so this waits for it (a caller that admits and
    /// learns on one thread has always learned what it admitted).
    private func expireItems(now: Int64) {
        let started = MonotonicClock.nowNanos()
        var drained = started
        let idle = itemLifecycle.sweep(now: now, items: items.count) { items.id(at: $0) != 0 }
        defer {
            let end = MonotonicClock.nowNanos()
            itemSweepMaxMicros = max(itemSweepMaxMicros, (end - started) / 1000)
            Log.debug("item expiry: a sweep at \(now) forgot \(idle.count) items: \((drained - started) / 1000) µs waiting for the learner, \((end - drained) / 1000) µs forgetting")
        }
        guard !idle.isEmpty else { return }
        while !learnerIdle { usleep(50) }
        drained = MonotonicClock.nowNanos()
        forget(items: idle)
    }

    /// Deletes items for good (DELETE_ITEMS, or its log record replayed):
    /// each held one is forgotten with every reference to it, as expiry
    /// forgets an idle item, and its index serves the next new item. Ids
    /// the model does not hold are ignored. Returns how many it held.
    /// The learner must have applied every admitted event (the server
    /// waits for that before it logs the deletion, so a replay of the log
    /// forgets at the same position). `remember`: the ids are remembered
    /// as deleted (DeletedItemIds); false for a deletion an older build
    /// logged, which it applied without remembering them.
    public func deleteItems(_ ids: [UInt64], remember: Bool = true) -> Int {
        // (With `item_min_occurrences`, the sketch's count of each id goes
        // too: back, the id waits for its row like a new one.)
        // Remembered as deleted: what the model holds of them, or already
        // remembered (a repeated deletion makes it the latest again). Only
        // ids this logged deletion held, so a replay remembers the same.
        let remembered = remember ? ids.filter { holdsAnything(ofItem: $0) } : []
        for id in ids { itemLifecycle.admission.forgetSightings(of: id) }
        pendingUserItems.remove(items: Set(ids))
        rememberDeleted(items: remembered)
        let held = heldIndices(ids, in: items)
        guard !held.isEmpty else { return 0 }
        precondition(learnerIdle, "ids are forgotten with the learner idle")
        forget(items: held)
        return held.count
    }

    /// Remembers item ids as deleted without forgetting anything (a
    /// rollback carrying a deletion made after its version over).
    public func rememberDeleted(items ids: [UInt64]) {
        for id in ids { deletedItems.insert(id) }
    }

    /// Deletes users (DELETE_USERS, or its log record replayed): each held
    /// one's id, history, table row (with its optimiser, anchor and meta
    /// state), every scorer's state for them and their events in the replay
    /// buffer go now, and the index serves the next new user. What their
    /// events added to statistics of the whole stream (item counts,
    /// co-occurrences, other rows) stays. Ids the model does not hold are
    /// ignored. Returns how many it held. The learner must be idle, as for
    /// `deleteItems`.
    public func deleteUsers(_ ids: [UInt64]) -> Int {
        // (With `min_occurrences`, the sketch's count of each id goes too:
        // back with events, the id is a new one, held only once it has
        // been seen that often again.)
        for id in ids { lifecycle.admission.forgetSightings(of: id); pendingUserItems.take(id) }
        let held = heldIndices(ids, in: users)
        guard !held.isEmpty else { return 0 }
        precondition(learnerIdle, "ids are forgotten with the learner idle")
        for u in held {
            // A new generation, already learned: the next user of the
            // index starts from the reset below, not from another one.
            lifecycle.forgetDeleted(u)
            table.resetUser(u)
            for s in scorers { s.forget(user: u) }
            history.clear(user: u)
            users.remove(index: u)
        }
        replayBuffer.remove(users: Set(held))
        replayHeld.store(UInt64(replayBuffer.events.count), ordering: .relaxed)
        return held.count
    }

    /// The indices `map` holds for `ids`, each once, in index order.
    private func heldIndices(_ ids: [UInt64], in map: IdMap) -> [Int32] {
        Set(ids).compactMap { map.index(of: $0) }.sorted()
    }

    /// Whether the model holds anything of these user ids: a row, or (with
    /// `min_occurrences`) a count of sightings or items while pending
    /// (admitting thread).
    public func holdsAnyUser(of ids: [UInt64]) -> Bool {
        ids.contains { users.index(of: $0) != nil || lifecycle.admission.hasSightings(of: $0) || pendingUserItems.holds($0) }
    }

    /// Whether the model holds anything of these item ids: a row, (with
    /// `item_min_occurrences`) a count of sightings, a place in a pending
    /// user's items, or a place among the deleted ids remembered (admitting
    /// thread): a deletion that changes anything is logged, so a replay
    /// makes the same change.
    public func holdsAnyItem(of ids: [UInt64]) -> Bool { ids.contains { holdsAnything(ofItem: $0) } }

    private func holdsAnything(ofItem id: UInt64) -> Bool {
        items.index(of: id) != nil || itemLifecycle.admission.hasSightings(of: id)
            || pendingUserItems.mentions(item: id) || deletedItems.contains(id)
    }

    /// Forgets held item indices (sorted) and every reference to them; the
    /// learner is idle.
    private func forget(items idle: [Int32]) {
        let retired = RetiredItems(idle, itemCount: items.count)
        history.remove(retired)
        pendingUserItems.remove(items: Set(idle.map { items.id(at: $0) }))
        replayBuffer.remove(retired)
        replayHeld.store(UInt64(replayBuffer.events.count), ordering: .relaxed)
        let purges = scorers.compactMap { $0.forgetLater(items: retired) }
        if !purges.isEmpty {
            if let learnerJobs {
                jobsPending.add(1, ordering: .relaxed)
                learnerJobs(LearnerJob { [self] in
                    for p in purges { p.run() }
                    jobsPending.subtract(1, ordering: .releasing)
                })
            } else {
                for p in purges { p.run() }
            }
        }
        if let f = fallbackItem, idle.contains(f) { fallbackItem = nil }
        for i in idle {
            itemLifecycle.reset(i)
            table.resetItem(i)
            catalogue.remove(i)
            items.remove(index: i)
            itemVacancy.markVacant(i)
            forEachExclusionSet { $0.excludeAlways(i) }
        }
    }

    /// Every exclusion set requests use (each keeps vacant items excluded).
    private func forEachExclusionSet(_ body: (ExclusionSet) -> Void) {
        body(exclusions)
        for set in batchExclusions { body(set) }
    }

    /// A new exclusion set, with the vacant item indices excluded.
    private func makeExclusionSet() -> ExclusionSet {
        let set = ExclusionSet()
        for i in items.vacantIndices { set.excludeAlways(i) }
        if let f = fallbackItem { set.excludeAlways(f) }
        return set
    }

    /// Stores an item's text (cut to `maxTextBytes` at a character
    /// boundary). Returns whether the id was new and whether the text was cut.
    public func upsertItem(id: UInt64, text: String, attributes: [(String, String)]) -> (created: Bool, truncated: Bool) {
        let wasKnown = items.index(of: id) != nil
        // (Brings a deleted id back on purpose.)
        deletedItems.remove(id)
        let (index, grows) = admitItem(id)
        let isNew = !wasKnown
        if grows { growScorers() }
        itemLifecycle.touchUpsert(index)
        let kept = cutText(text)
        catalogue.upsert(index, ItemRecord(text: kept, attributes: attributes))
        for s in scorers { s.itemTextChanged(index, text: kept, after: lastSeq) }
        return (isNew, kept.utf8.count != text.utf8.count)
    }

    /// `text` cut to `maxTextBytes` at the last whole UTF-8 character.
    public func cutText(_ text: String) -> String {
        guard text.utf8.count > maxTextBytes else { return text }
        var bytes = Array(text.utf8.prefix(maxTextBytes + 1))
        var end = maxTextBytes
        while end > 0 && (bytes[end] & 0xC0) == 0x80 { end -= 1 }
        bytes.removeSubrange(end...)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Deletion and upsert records (those without a sequence number)
    /// `replay` has applied (start-up: the newest snapshot does not hold
    /// them, so the server owes one that does).
    public private(set) var recordsWithoutSeqReplayed = 0
    /// And what applying them took (ns): the recovery estimate's share.
    public private(set) var recordsWithoutSeqReplayNanos: UInt64 = 0

    /// Replays one log record (start-up recovery, on the admitting thread,
    /// with no learner running): admits and learns synchronously, in log order.
    public func replay(_ record: LogRecord, scratch: inout [LearnEvent]) throws {
        try replayAdmitting(record, into: &scratch)
        for e in scratch { learn(e) }
    }

    /// `replay` in two steps, for a recovery that serves reads while it
    /// replays: applies the record, except that a feedback record's events
    /// are only admitted, their learn events left in `scratch` (emptied
    /// first) for the caller to `learn` in order before the next record.
    /// Between the two the model is as the live server's is while its
    /// learner catches up: accepted ahead of applied.
    public func replayAdmitting(_ record: LogRecord, into scratch: inout [LearnEvent]) throws {
        scratch.removeAll(keepingCapacity: true)
        switch record {
        case .feedback(let first, let events):
            guard first == lastSeq + 1 else {
                throw LogError("the log jumps from sequence \(lastSeq) to \(first): records are missing")
            }
            admit(events, now: 0, into: &scratch)
        case .upsert(let item, let text, let attributes):
            timedRecordWithoutSeq { _ = upsertItem(id: item, text: text, attributes: attributes.map { ($0.key, $0.value) }) }
        case .deleteItems(let items):
            timedRecordWithoutSeq { _ = deleteItems(items) }
        case .deleteItemsUnremembered(let items):
            timedRecordWithoutSeq { _ = deleteItems(items, remember: false) }
        case .deleteUsers(let users):
            timedRecordWithoutSeq { _ = deleteUsers(users) }
        }
    }

    private func timedRecordWithoutSeq(_ apply: () -> Void) {
        let t0 = MonotonicClock.nowNanos()
        apply()
        recordsWithoutSeqReplayed += 1
        recordsWithoutSeqReplayNanos &+= MonotonicClock.nowNanos() &- t0
    }

    /// A rollback to an older version: the log's events after this model's
    /// position up to `seq` stay in the log but are not learned; numbering
    /// continues after them. (Start-up only, before the learner runs.)
    public func skip(to seq: UInt64) {
        precondition(seq >= lastSeq && learnerIdle)
        lastSeq = seq
        applied.store(seq, ordering: .releasing)
    }

    // MARK: live reconfiguration (admitting thread, learner idle)

    /// The settings that differ between two values of one settings type, as
    /// "name old -> new" (by reflection, so every scorer's settings work).
    static func changedSettings(_ before: (any ScorerSettings)?, _ after: any ScorerSettings) -> [String] {
        guard let before else { return [] }
        let old = Dictionary(reflectedSettings(before).map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        return reflectedSettings(after).compactMap { key, value in
            guard let was = old[key], was != value else { return nil }
            return "\(key) \(was) -> \(value)"
        }
    }

    /// Swaps in the scorers of a new config: a scorer whose settings did
    /// not change is kept as it is; a re-configured one is rebuilt with the
    /// new settings and its learned state carried over (through its snapshot
    /// form; settings that change that state's shape, such as the neighbour
    /// capacity, are refused); a new one starts empty and learns from the
    /// next event; a dropped one is removed. The shared table is untouched.
    /// All or nothing: on error the old scorers stay. Returns what changed.
    public func reconfigure(_ config: PerennialConfig) throws -> Reconfiguration {
        precondition(learnerIdle, "reconfigure needs an idle learner")
        let environment = ScorerEnvironment(table: table, vacancy: itemVacancy)
        var next: [any Scorer] = []
        var changes: [String] = []
        var removed: [String] = []
        var rebuilt = false, retuned = false
        var adjusted: [(any Scorer, any ScorerSettings)] = []
        for sc in config.scorers {
            let old = scorers.first { $0.name == sc.name }
            if let old, let before = settings[sc.name], before.isEqual(to: sc.settings) {
                next.append(old)
                continue
            }
            let perQuery = old?.adjusts(to: sc.settings) ?? false
            if let old, perQuery || old.retunes(to: sc.settings) {
                // (Applied once every scorer is ready: all or nothing.)
                let changed = Self.changedSettings(settings[sc.name], sc.settings).joined(separator: ", ")
                changes.append("\(sc.name) adjusted in place (\(changed))")
                adjusted.append((old, sc.settings))
                next.append(old)
                // How it learns changed: a snapshot ties that to the log.
                if !perQuery { retuned = true }
                continue
            }
            guard let factory = registry.factory(named: sc.name) else { throw LogError("unknown scorer \(sc.name)") }
            rebuilt = true
            let fresh = factory.make(sc.settings, environment)
            fresh.grow(users: users.count, items: items.count)
            if let old {
                var w = SnapshotWriter()
                old.save(to: &w)
                var r = SnapshotReader(bytes: w.bytes)
                do {
                    try fresh.load(from: &r)
                } catch {
                    let changed = Self.changedSettings(settings[sc.name], sc.settings).map { "scorers.\(sc.name).\($0)" }
                    throw LogError("scorer \(sc.name): a changed setting shapes the state it has learned (\(error))\(changed.isEmpty ? "" : "; changed: " + changed.joined(separator: ", ")), so it cannot change on this data directory, not even by a restart: keep the old value, or serve from a new data directory and send it the events again")
                }
                changes.append("\(sc.name) re-configured (learned state kept)")
            } else {
                changes.append("\(sc.name) added (starts learning from the next event)")
            }
            // Item texts live in the catalogue, not in scorer snapshots.
            catalogue.forEach { fresh.itemTextChanged($0, text: $1.text, after: lastSeq) }
            next.append(fresh)
        }
        for old in scorers where !config.scorers.contains(where: { $0.name == old.name }) {
            changes.append("\(old.name) removed")
            removed.append(old.name)
            rebuilt = true
        }
        if config.defaultScorer != defaultScorer { changes.append("default scorer \(defaultScorer) -> \(config.defaultScorer)") }
        for (scorer, new) in adjusted { scorer.adjust(to: new) }
        scorers = next
        scorerNames = next.map(\.name)
        defaultScorer = config.defaultScorer
        excludedKinds = config.historyExcludedKinds
        routes = [:]
        for r in config.routes { routes[r.name] = r }
        settings = [:]
        for sc in config.scorers { settings[sc.name] = sc.settings }
        return Reconfiguration(changes: changes, scorerSetChanged: rebuilt || retuned, removed: removed)
    }

    /// What `reconfigure` did.
    public struct Reconfiguration: Sendable {
        /// In words, one entry per scorer changed (and the default scorer).
        public var changes: [String]
        /// A scorer was rebuilt, added or removed, or now learns otherwise
        /// (`retunes`), so a snapshot taken before differs from the model
        /// now even with no event since, or would be replayed under other
        /// settings (an adjustment of what is read per query, or a new
        /// default, changes neither).
        public var scorerSetChanged: Bool
        /// The scorers no longer loaded (their learned state is dropped).
        public var removed: [String]
    }

    // MARK: snapshots (admitting thread, or a snapshot's thread while the admitting thread only reads; learner idle)

    /// Everything the model holds, for a snapshot: ids, histories, item
    /// texts, the table's rows and optimiser state, and each scorer's state.
    public func save(to w: inout SnapshotWriter) {
        w.mark("model")
        w.u64(lastSeq)
        w.u64(appliedSeq)
        w.int(users.count)
        for u in 0..<users.count { w.u64(users.id(at: Int32(u))) }  // 0 = a vacant index
        w.int32s(users.vacantIndices)
        w.int(items.count)
        for i in 0..<items.count { w.u64(items.id(at: Int32(i))) }  // 0 = a vacant index
        w.int32s(items.vacantIndices)
        w.mark("history")
        for u in 0..<users.count { w.int32s(history.items(of: Int32(u))) }
        w.mark("catalogue")
        w.int(catalogue.count)
        for i in 0..<items.count {
            guard let r = catalogue.record(of: Int32(i)) else { continue }
            w.int(i)
            w.string(r.text)
            w.int(r.attributes.count)
            for (k, v) in r.attributes { w.string(k); w.string(v) }
        }
        w.mark("table")
        w.int(table.dimension)
        w.rows(table.users, count: table.userRows)
        w.rows(table.userAdagrad, count: table.userRows)
        w.rows(table.items, count: table.itemRows)
        w.rows(table.itemAdagrad, count: table.itemRows)
        w.mark("lifelong")
        w.bool(table.anchors != nil)
        if let a = table.anchors { w.rows(a.users, count: table.userRows); w.rows(a.items, count: table.itemRows) }
        w.bool(table.meta != nil)
        table.meta?.save(to: &w, users: table.userRows)
        replayBuffer.save(to: &w)
        lifecycle.save(to: &w, users: users.count)
        itemLifecycle.save(to: &w, items: items.count)
        itemVacancy.save(to: &w, items: items.count)
        itemLifecycle.saveAdmission(to: &w)
        pendingUserItems.save(to: &w)
        deletedItems.save(to: &w)
        w.u64(eventsOnDeletedItems)
        for u in 0..<users.count {
            let k = history.kinds(of: Int32(u))
            w.int(k.count)
            for b in k { w.u8(b) }
        }
        // Each scorer's state is a named, length-prefixed block, so a config
        // that adds or drops a scorer can still load the others.
        w.int(scorers.count)
        for s in scorers {
            w.string(s.name)
            w.block { s.save(to: &$0) }
        }
        w.mark("end")
    }

    /// An id map's saved vacant indices: each names a slot whose id is 0,
    /// once (handed out twice, one row would serve two ids).
    private static func vacantIndices(_ r: inout SnapshotReader, of ids: [UInt64]) throws -> [Int32] {
        let vacant = try r.indices(below: ids.count)
        var seen = Set<Int32>()
        for i in vacant where ids[Int(i)] != 0 || !seen.insert(i).inserted {
            throw LogError("snapshot: vacant index \(i) holds id \(ids[Int(i)]) or is listed twice")
        }
        return vacant
    }

    /// The scorers the last `restore` dropped as asked (`.refuseExcept`).
    public private(set) var droppedAtRestore: [String] = []

    /// Restores a fresh model from `save`'s output. A scorer the config
    /// loads but the snapshot lacks starts empty; one the snapshot holds but
    /// the config does not load is refused (UnloadedScorerError) unless
    /// `unloaded` lets it be dropped (see UnloadedScorers).
    public func restore(from r: inout SnapshotReader, unloaded: UnloadedScorers = .refuse) throws {
        droppedAtRestore = []
        precondition(users.count == 0 && items.count == 0, "restore needs a fresh model")
        try r.mark("model")
        let seq = try r.u64(), appliedAt = try r.u64()
        // (Counts and indices are checked as they are read (SnapshotReader):
        // a file whose checksum holds but whose contents do not throws, and
        // start-up falls back to an older version.)
        let userCount = try r.count(bytesEach: 8)
        var userIDs: [UInt64] = []
        for _ in 0..<userCount { userIDs.append(try r.u64()) }
        users.restore(ids: userIDs, vacant: try Self.vacantIndices(&r, of: userIDs))
        fallbackUser = users.index(of: IdLifecycle.fallbackUserID)
        let itemCount = try r.count(bytesEach: 8)
        var itemIDs: [UInt64] = []
        for _ in 0..<itemCount { itemIDs.append(try r.u64()) }
        items.restore(ids: itemIDs, vacant: r.format >= 3 ? try Self.vacantIndices(&r, of: itemIDs) : [])
        try r.mark("history")
        // (Restored once their kinds are read, in format 7, below: a smaller
        // max_items_per_user now cuts both together.)
        var savedHistory: [[Int32]] = []
        for _ in 0..<userCount { savedHistory.append(try r.indices(below: itemCount)) }
        try r.mark("catalogue")
        for _ in 0..<(try r.count(bytesEach: 24)) {
            let i = try r.index(below: itemCount)
            let text = try r.string()
            var attributes: [(String, String)] = []
            for _ in 0..<(try r.count(bytesEach: 16)) { attributes.append((try r.string(), try r.string())) }
            catalogue.upsert(i, ItemRecord(text: text, attributes: attributes))
        }
        try r.mark("table")
        let dimension = try r.int()
        guard dimension == table.dimension else {
            throw SnapshotSettingsMismatch("the snapshot's table has dimension \(dimension) but the config says \(table.dimension)")
        }
        // Every id has a table row of `dimension` floats here: check that the
        // bytes left can hold them before the scorers allocate per-id state
        // (many times an id's 8 bytes), so a file claiming millions of ids is
        // refused, not an out-of-memory kill.
        let rowBytes = table.dimension * MemoryLayout<Float>.stride
        guard userCount + itemCount <= r.remaining / rowBytes else {
            throw LogError("snapshot: \(userCount) users and \(itemCount) items need table rows of \(rowBytes) bytes each, more than the \(r.remaining) bytes left hold")
        }
        growScorers()
        for i in items.vacantIndices { forEachExclusionSet { $0.excludeAlways(i) } }
        fallbackItem = items.index(of: ItemLifecycle.fallbackItemID)
        if let f = fallbackItem { forEachExclusionSet { $0.excludeAlways(f) } }
        try r.rows(into: table.users, expected: userCount)
        try r.rows(into: table.userAdagrad, expected: userCount)
        try r.rows(into: table.items, expected: itemCount)
        try r.rows(into: table.itemAdagrad, expected: itemCount)
        try r.mark("lifelong")
        // Lifelong state saved under other settings: what is missing starts
        // fresh (anchors = the rows, a meta start that learns anew).
        if try r.bool() {
            if let a = table.anchors {
                try r.rows(into: a.users, expected: userCount); try r.rows(into: a.items, expected: itemCount)
            } else {
                let scratch = ChunkedBuffer<Float>(width: table.dimension, fill: 0)
                scratch.ensure(rows: max(userCount, itemCount))
                try r.rows(into: scratch, expected: userCount); try r.rows(into: scratch, expected: itemCount)
            }
        } else if let a = table.anchors {
            for u in 0..<userCount { a.users.row(u).update(from: table.users.row(u), count: table.dimension) }
            for i in 0..<itemCount { a.items.row(i).update(from: table.items.row(i), count: table.dimension) }
        }
        if try r.bool() {
            let meta = table.meta ?? MetaStart(dimension: table.dimension, events: lifelong.metaEvents, rate: lifelong.metaRate)
            meta.grow(users: userCount)
            try meta.load(from: &r, users: userCount)
        } else {
            // Saved without a meta-learned start: the users there are
            // already under way, not new.
            table.meta?.markAdapted(users: userCount)
        }
        try replayBuffer.load(from: &r, users: userCount, items: itemCount, maxWeight: feedbackWeights.maxWeight)
        try lifecycle.load(from: &r, users: userCount)
        if r.format >= 3 {
            try itemLifecycle.load(from: &r, items: itemCount)
            try itemVacancy.load(from: &r, items: itemCount)
        }
        if r.format >= 4 { try itemLifecycle.loadAdmission(from: &r) }
        if r.format >= 6 { try pendingUserItems.load(from: &r) }
        if r.format >= 7 {
            try deletedItems.load(from: &r)
            eventsOnDeletedItems = try r.u64()
            for u in 0..<userCount {
                var k: [UInt8] = []
                for _ in 0..<(try r.count(bytesEach: 1)) {
                    let b = try r.u8()
                    guard b & ~KindMask.all == 0 else { throw LogError("snapshot: history kind bits \(b) of user index \(u) name no kind") }
                    k.append(b)
                }
                guard k.count == savedHistory[u].count else {
                    throw LogError("snapshot: user index \(u) has \(k.count) history kinds for \(savedHistory[u].count) items")
                }
                history.restore(user: Int32(u), items: savedHistory[u], kinds: k)
            }
        } else {
            for (u, items) in savedHistory.enumerated() { history.restore(user: Int32(u), items: items) }
        }
        lifecycle.enrollUntracked(users: userCount) { u in users.id(at: u) != 0 && u != fallbackUser }
        replayHeld.store(UInt64(replayBuffer.events.count), ordering: .relaxed)
        replayed.store(replayBuffer.drawn, ordering: .relaxed)
        var restored = Set<String>()
        var refused: [String] = []
        for _ in 0..<(try r.count(bytesEach: 16)) {
            let name = try r.string()
            var sub = try r.blockReader()
            guard let s = scorers.first(where: { $0.name == name }) else {
                switch unloaded {
                case .dropAny:
                    break
                case .refuseExcept(let droppable) where droppable.contains(name):
                    droppedAtRestore.append(name)
                    Log.warning("snapshot: scorer \(name) is not loaded by this config and is dropped as asked (--drop-scorer): the next snapshot will not have it")
                case .refuseExcept:
                    refused.append(name)
                }
                continue
            }
            do {
                try s.load(from: &sub)
            } catch {
                // (A page that could not be read is damage, not settings.)
                if sub.storage.readFailed { throw error }
                throw LogError("snapshot: scorer \(name) cannot load its state with the current settings (\(error)); use the settings it was saved with")
            }
            restored.insert(name)
        }
        if !refused.isEmpty { throw UnloadedScorerError(names: refused) }
        catalogue.forEach { item, record in for s in scorers { s.itemTextChanged(item, text: record.text, after: seq) } }
        for s in scorers where !restored.contains(s.name) {
            Log.warning("snapshot: scorer \(s.name) was not in the snapshot; it starts empty and learns from new events")
        }
        try r.mark("end")
        lastSeq = seq
        applied.store(appliedAt, ordering: .releasing)
    }

    // MARK: learner thread

    /// Applies one event to every scorer, with lifelong learning around it:
    /// a new user's row starts from the meta-learned start, an adapted
    /// user's row teaches it, and `replay` past events from the reservoir
    /// are learned again by the scorers that replay.
    public func learn(_ event: LearnEvent) {
        itemVacancy.position = event.seq
        if lifecycle.learnedGeneration[Int(event.user)] != event.userGeneration {
            // The index serves a new user now: forget the old one.
            lifecycle.learnedGeneration[Int(event.user)] = event.userGeneration
            table.resetUser(event.user)
            for s in scorers { s.forget(user: event.user) }
        }
        table.meta?.willLearn(user: event.user, table: table)
        for s in scorers { s.learn(event) }
        table.meta?.didLearn(user: event.user, table: table)
        if lifelong.replay > 0 {
            for _ in 0..<lifelong.replay {
                guard let past = replayBuffer.draw() else { break }
                // (An event of a user whose index was reused since is skipped.)
                if lifecycle.learnedGeneration[Int(past.user)] != past.userGeneration { continue }
                for s in scorers where s.replays { s.replay(past) }
            }
            replayBuffer.offer(event)
            replayed.store(replayBuffer.drawn, ordering: .relaxed)
            replayHeld.store(UInt64(replayBuffer.events.count), ordering: .relaxed)
        }
        applied.store(event.seq, ordering: .releasing)
    }

    public var appliedSeq: UInt64 { applied.load(ordering: .acquiring) }

    /// Where forgetting items sends the scorers' table purges (LearnerJob):
    /// the running learner's queue, set by the server once it goes live.
    /// nil (a replay, an evaluation, tests): they run at once. Admitting
    /// thread only.
    public var learnerJobs: ((LearnerJob) -> Void)?
    /// Jobs handed to the learner and not yet done.
    private let jobsPending = Atomic<Int>(0)
    /// How many (STATS learner_jobs_pending).
    public var learnerJobsPending: Int { jobsPending.load(ordering: .relaxed) }

    /// Whether the learner has applied every accepted event and done every
    /// job it was handed: what a deletion, a RELOAD or a snapshot waits
    /// for (each reads or changes what the learner writes).
    public var learnerIdle: Bool {
        appliedSeq == lastSeq && jobsPending.load(ordering: .acquiring) == 0
    }

    /// The replay buffer's events (learner state: for tests, with the learner idle).
    var replayBufferEvents: [LearnEvent] { replayBuffer.events }

    // MARK: serving thread

    /// The k best items for a user by the named scorer ("" = default),
    /// excluding the user's history and `exclude`, optionally restricted to
    /// `candidates`. Unknown item ids in the lists are ignored.
    /// Each scorer does now what its first request would do for the whole
    /// catalogue (text-cnn encodes every text): the serving thread, before
    /// it serves, with the learner not started.
    public func warmUp() {
        for s in scorers { s.warmUp() }
    }

    public func recommend(user: UInt64, k: Int, scorer name: String = "", session: [UInt64] = [],
                          exclude: [UInt64] = [], candidates: [UInt64] = []) throws(ModelError) -> [Recommendation] {
        if let route = routes[name] {
            // Stage one: the source's best `count` (respecting the request's
            // own candidates and exclusions); stage two re-ranks only those.
            let proposed = try recommend(user: user, k: route.count, scorer: route.candidates, session: session,
                                         exclude: exclude, candidates: candidates)
            guard !proposed.isEmpty else { return [] }
            return try recommend(user: user, k: k, scorer: route.rerank, session: session, exclude: exclude,
                                 candidates: proposed.map(\.item))
        }
        let scorer = try scorer(named: name)
        let query = makeQuery(user: user, session: session, exclude: exclude, candidates: candidates)
        top.reset(k: k)
        scorer.recommend(query, into: &top)
        return recommendations(top)
    }

    /// A scorer's kept items, best first, with external ids.
    private func recommendations(_ top: TopK) -> [Recommendation] {
        top.sorted().map { Recommendation(item: items.id(at: $0.item), score: $0.score) }
    }

    /// Answers several RECOMMENDs, each exactly as `recommend` would alone.
    /// Questions to the same scorer go to it together
    /// (`Scorer.recommend(batch:)`), so a scorer that scans the catalogue
    /// reads it once for all of them; a route's questions are answered one
    /// by one.
    public func recommend(batch questions: [RecommendQuestion]) -> [Result<[Recommendation], ModelError>] {
        var answers = [Result<[Recommendation], ModelError>](repeating: .success([]), count: questions.count)
        var groups: [(scorer: any Scorer, members: [Int])] = []
        for (i, q) in questions.enumerated() {
            do throws(ModelError) {
                if routes[q.scorer] != nil {
                    answers[i] = .success(try recommend(user: q.user, k: q.k, scorer: q.scorer, session: q.session,
                                                        exclude: q.exclude, candidates: q.candidates))
                    continue
                }
                let s = try scorer(named: q.scorer)
                if let g = groups.firstIndex(where: { $0.scorer === s }) {
                    groups[g].members.append(i)
                } else {
                    groups.append((s, [i]))
                }
            } catch {
                answers[i] = .failure(error)
            }
        }
        for (scorer, members) in groups {
            while batchExclusions.count < members.count { batchExclusions.append(makeExclusionSet()) }
            var queries: [ScoringQuery] = []
            var tops: [TopK] = []
            queries.reserveCapacity(members.count)
            tops.reserveCapacity(members.count)
            for (slot, i) in members.enumerated() {
                let q = questions[i]
                queries.append(makeQuery(user: q.user, session: q.session, exclude: q.exclude, candidates: q.candidates,
                                         exclusions: batchExclusions[slot]))
                tops.append(TopK(k: q.k))
            }
            scorer.recommend(batch: queries, into: &tops)
            for (slot, i) in members.enumerated() {
                answers[i] = .success(recommendations(tops[slot]))
            }
        }
        return answers
    }

    /// Scores for the given item ids (in order) and whether each is known.
    public func score(user: UInt64, items ids: [UInt64], scorer name: String = "", session: [UInt64] = []) throws(ModelError) -> [(score: Float, known: Bool)] {
        // A route scores a given list with its re-ranking scorer.
        let scorer = try scorer(named: routes[name]?.rerank ?? name)
        let query = makeQuery(user: user, session: session, exclude: [], candidates: [])
        let dense = ids.map { items.index(of: $0) }
        let scores = scorer.score(query, items: dense)
        return zip(scores, dense).map { ($0.isFinite ? $0 : 0, $1 != nil) }
    }

    private func makeQuery(user: UInt64, session: [UInt64], exclude: [UInt64], candidates: [UInt64],
                           exclusions: ExclusionSet? = nil) -> ScoringQuery {
        let exclusions = exclusions ?? self.exclusions
        let own = users.index(of: user)
        // A user without a row of their own is answered from the shared
        // fallback user's row, when there is one (with no history). An index
        // reused for a new user still holds the expired user's row and
        // scorer state until the learner applies the new user's first event
        // (it resets them then): until that, the new user is answered from
        // their history alone, never from someone else's row.
        let u = own.map { rowIsCurrent($0) ? $0 : nil } ?? fallbackUser
        exclusions.reset(itemCount: items.count)
        if let own { history.forEachExcludedItem(of: own, excluded: excludedKinds) { exclusions.insert($0) } }
        // A user id still waiting for its row: its own items so far.
        var pending = own == nil ? pendingUserItems.items(of: user).compactMap { items.index(of: $0) } : []
        for i in pending { exclusions.insert(i) }
        // During a replay while serving: the user's events still to come,
        // and items deleted in it (gone once the replay gets there).
        var latest: ArraySlice<Int32>? = nil
        unreplayed?.forEachItemDeletedAfter(lastSeq) { if let i = items.index(of: $0) { exclusions.insert(i) } }
        if let later = unreplayed?.entries(of: user, after: lastSeq), !later.isEmpty {
            // (A user still without a row under min_occurrences has their
            // items recorded with no kind, which every policy excludes.)
            let excluded = own == nil && lifecycle.minOccurrences > 1 ? KindMask.all : excludedKinds
            var added: [Int32] = []
            for e in later {
                guard let i = items.index(of: e.item) else { continue }
                added.append(i)
                if e.kinds & excluded != 0 { exclusions.insert(i) }
            }
            if let own {
                latest = Self.appendDistinct(added, to: history.items(of: own), limit: history.limit)[...]
            } else {
                pending = Self.appendDistinct(added, to: pending, limit: history.limit)
            }
        }
        for id in exclude { if let i = items.index(of: id) { exclusions.insert(i) } }
        // What the session already holds is never recommended back, by any
        // scorer (E4 ranks excluding the input sequence the same way).
        let sessionItems = session.compactMap { items.index(of: $0) }
        for i in sessionItems { exclusions.insert(i) }
        // Known candidates, each once (a repeated id would be ranked twice).
        var seenCandidates = Set<Int32>()
        let cand: [Int32]? = candidates.isEmpty ? nil
            : candidates.compactMap { items.index(of: $0) }.filter { seenCandidates.insert($0).inserted }
        return ScoringQuery(user: u, sessionItems: sessionItems,
                            candidates: cand, exclusions: exclusions, itemCount: items.count,
                            history: latest ?? own.map { history.items(of: $0)[...] } ?? pending[...])
    }

    /// `items` after `list` as the history would record them: each item
    /// once, at its latest place, the newest `limit` kept.
    static func appendDistinct(_ items: [Int32], to list: [Int32], limit: Int) -> [Int32] {
        let moved = Set(items)
        var out = list.filter { !moved.contains($0) }
        var seen = Set<Int32>()
        var tail: [Int32] = []
        for i in items.reversed() where seen.insert(i).inserted { tail.append(i) }
        out += tail.reversed()
        return Array(out.suffix(limit))
    }

    /// Whether user index u's learned state belongs to the user holding it
    /// now (read on the serving thread; the learner writes the generation
    /// it has learned, a 32-bit value in memory that never moves).
    @inline(__always)
    private func rowIsCurrent(_ u: Int32) -> Bool {
        lifecycle.learnedGeneration[Int(u)] == lifecycle.generation[Int(u)]
    }

    /// Counters of the model and of every scorer (`<scorer>_<name>`).
    public var counters: [(String, UInt64)] {
        var c: [(String, UInt64)] = [
            ("users", UInt64(users.liveCount)),
            ("user_rows", UInt64(users.count)),
            ("items", UInt64(items.liveCount)),
            ("item_rows", UInt64(items.count)),
            ("items_with_text", UInt64(catalogue.count)),
            ("history_entries", UInt64(history.totalEntries)),
            ("id_map_bytes", UInt64(users.bytes + items.bytes)),
        ] + scorerNames.map { name in
            // Which scorers are loaded (1), and the default (2), as counters can say it.
            ("scorer_loaded_" + String(name.map { $0 == "-" ? "_" : $0 }), name == defaultScorer ? 2 : 1)
        } + table.counters + [
            ("lifelong_replay_ratio", UInt64(lifelong.replay)),
            ("lifelong_replay_buffer", replayHeld.load(ordering: .relaxed)),
            ("lifelong_replay_capacity", UInt64(lifelong.replayBuffer)),
            ("lifelong_replayed", replayed.load(ordering: .relaxed)),
            ("lifelong_replaying_scorers", UInt64(scorers.filter(\.replays).count)),
            ("lifelong_anchor_strength_1e6", UInt64((table.anchorStrength * 1_000_000).rounded())),
            ("lifelong_meta_adapted_users", table.meta?.adapted ?? 0),
            ("lifelong_meta_started_users", table.meta?.started ?? 0),
            ("lifelong_min_occurrences", UInt64(lifecycle.minOccurrences)),
            ("lifelong_max_users", UInt64(lifecycle.maxUsers)),
            ("lifelong_users_expired", lifecycle.expired),
            ("lifelong_shared_user_events", lifecycle.sharedEvents),
            ("lifelong_lifecycle_bytes", UInt64(lifecycle.bytes + itemLifecycle.bytes)),
            ("lifelong_item_expire_after_seconds", UInt64(itemLifecycle.expireAfterSeconds)),
            ("lifelong_items_expired", itemLifecycle.expired),
            ("lifelong_item_sweeps", itemLifecycle.sweeps),
            ("lifelong_item_min_occurrences", UInt64(itemLifecycle.minOccurrences)),
            ("lifelong_item_shared_events", itemLifecycle.sharedEvents),
            ("lifelong_deleted_items_remembered", UInt64(deletedItems.count)),
            ("lifelong_events_on_deleted_items", eventsOnDeletedItems),
            ("lifelong_admission_window", UInt64(lifelong.admissionWindow)),
            ("lifelong_item_sweep_max_us", itemSweepMaxMicros),
        ]
        for s in scorers {
            for (name, v) in s.counters { c.append(("\(s.name.replacingOccurrences(of: "-", with: "_"))_\(name)", v)) }
        }
        return c
    }
}

extension String {
    func replacingOccurrences(of a: Character, with b: Character) -> String {
        String(map { $0 == a ? b : $0 })
    }
}
