import Testing
import PerennialPlugins
@testable import CollaborativeFiltering
@testable import SessionRNN
@testable import TextCNN
@testable import PerennialCore

/// DELETE_ITEMS and DELETE_USERS at the model: a deleted item is forgotten
/// with every reference to it, as an expired one is; a deleted user with
/// everything held for them alone; and a replay of the log that holds the
/// deletions rebuilds the same model.
@Suite struct DeletionTests {
    static let all = ["cf", "popularity", "text-cnn", "session-rnn", "gan"]

    func model(_ load: [String] = Self.all, _ configure: (inout ConfigDocument) -> Void = { _ in }) throws -> Model {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array(load.map { .string($0) }))
        configure(&doc)
        return Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
    }

    /// Twelve users over items 1-20, in 30 batches (the records a server logs).
    func stream() -> [LogRecord] {
        var records: [LogRecord] = (1...20).map { .upsert(item: UInt64($0), text: "item \($0) words \($0 % 3) topic \($0 % 4)", attributes: []) }
        var seq: UInt64 = 0
        for round in 0..<30 {
            let batch = (1...12).map { u in
                IncomingEvent(user: UInt64(u), item: UInt64(1 + (u * 7 + round) % 20), kind: .click, value: 1, timestamp: 1000 + Int64(round))
            }
            records.append(.feedback(firstSeq: seq + 1, events: batch))
            seq += UInt64(batch.count)
        }
        return records
    }

    func replay(_ m: Model, _ records: [LogRecord]) throws {
        var scratch: [LearnEvent] = []
        for r in records { try m.replay(r, scratch: &scratch) }
    }

    @Test func aDeletedItemLeavesNoReferenceBehind() throws {
        let m = try model()
        try replay(m, stream())
        let gone = (11...20).map { try! #require(m.items.index(of: UInt64($0))) }
        // Held ones count once; an unknown id is ignored.
        #expect(m.deleteItems((11...20).map(UInt64.init) + [11, 999]) == 10)
        #expect(m.deleteItems([11, 999]) == 0)
        #expect(Set(m.items.vacantIndices) == Set(gone) && m.items.liveCount == 10)
        for id in 11...20 { #expect(m.items.index(of: UInt64(id)) == nil) }
        for i in gone { #expect(m.catalogue.record(of: i) == nil) }
        for u in 0..<Int32(m.users.count) { #expect(m.history.items(of: u).allSatisfy { !gone.contains($0) }) }
        let cf = try #require(try m.scorer(named: "cf") as? CollaborativeFilteringScorer)
        #expect(cf.recent.allSatisfy { $0.allSatisfy { !gone.contains($0) } })
        #expect(cf.sampler.allSatisfy { !gone.contains($0) })
        for a in 0..<Int32(m.items.count) {
            for b in gone { #expect(cf.neighbourhood.count(a, b) == 0 && cf.neighbourhood.count(b, a) == 0) }
        }
        let rnn = try #require(try m.scorer(named: "session-rnn") as? SessionRNNScorer)
        #expect(rnn.recent.allSatisfy { $0.allSatisfy { !gone.contains($0) } })
        let cnn = try #require(try m.scorer(named: "text-cnn") as? TextCNNScorer)
        #expect(cnn.texts.withLock { t in gone.allSatisfy { t[$0] == nil } })
        #expect(m.replayBufferEvents.count > 0 && m.replayBufferEvents.allSatisfy { !gone.contains($0.item) })
        // No scorer returns a deleted item, even when asked to rank it.
        for name in Self.all {
            let recs = try m.recommend(user: 777, k: 20, scorer: name)
            #expect(recs.count == 10 && recs.allSatisfy { $0.item <= 10 }, "\(name): \(recs.map(\.item))")
            let asked = try m.recommend(user: 777, k: 5, scorer: name, candidates: [12, 15, 2])
            #expect(asked.map(\.item) == [2], "\(name): \(asked.map(\.item))")
        }
        #expect(try m.score(user: 3, items: [12]).first?.known == false)
    }

    /// With a learner running, a deletion hands the scorers' table purges
    /// and rebuilds to it (the serving thread no longer holds every connection while
    /// they visit every item's table: 0.18 s at a million items), and it
    /// runs them before any event queued after: the model ends as one that
    /// purged at once, here with the deleted id brought back by an upsert
    /// into the vacant index and learned from at once (learned before the
    /// purge, those counts would be wiped).
    @Test func aDeletionsPurgeOnTheLearnerEndsAsOneDoneAtOnce() throws {
        let atOnce = try model(["cf", "popularity", "session-rnn"])
        let handed = try model(["cf", "popularity", "session-rnn"])
        try replay(atOnce, stream())
        try replay(handed, stream())
        let learner = Learner(model: handed, capacity: 10_000)
        handed.learnerJobs = { learner.enqueue($0) }
        learner.start()
        let later: [IncomingEvent] = (0..<40).map { (k: Int) -> IncomingEvent in
            let item: UInt64 = k % 3 == 0 ? 15 : UInt64(1 + k % 10)
            return IncomingEvent(user: UInt64(1 + k % 12), item: item, kind: .click, value: 1, timestamp: 2000 + Int64(k))
        }
        for m in [atOnce, handed] {
            #expect(m.deleteItems([15, 16, 17]) == 3)
            _ = m.upsertItem(id: 15, text: "back again", attributes: [])
            var batch: [LearnEvent] = []
            m.admit(later, now: 0, into: &batch)
            if m === handed { #expect(learner.tryEnqueue(batch)) } else { for e in batch { m.learn(e) } }
        }
        learner.stop()
        #expect(handed.learnerIdle && handed.appliedSeq == atOnce.appliedSeq)
        let a = try #require(try atOnce.scorer(named: "cf") as? CollaborativeFilteringScorer)
        let h = try #require(try handed.scorer(named: "cf") as? CollaborativeFilteringScorer)
        let ra = try #require(try atOnce.scorer(named: "session-rnn") as? SessionRNNScorer)
        let rh = try #require(try handed.scorer(named: "session-rnn") as? SessionRNNScorer)
        let back = try #require(handed.items.index(of: 15))
        #expect((1...10).contains { i in h.neighbourhood.count(back, Int32(i)) > 0 })   // learned after the purge
        for x in 0..<Int32(atOnce.items.count) {
            for y in 0..<Int32(atOnce.items.count) {
                #expect(a.neighbourhood.count(x, y) == h.neighbourhood.count(x, y))
                #expect(ra.transitions.count(x, y) == rh.transitions.count(x, y))
            }
        }
        #expect(a.recent == h.recent && ra.recent == rh.recent)
        #expect(a.sampler == h.sampler && a.samplerNext == h.samplerNext)
        for u in 1...12 {
            #expect(try atOnce.recommend(user: UInt64(u), k: 10) == handed.recommend(user: UInt64(u), k: 10))
        }
        // (A stranger's answers come from the leaderboards the jobs rebuilt.)
        for name in ["cf", "popularity"] {
            #expect(try atOnce.recommend(user: 999, k: 10, scorer: name) == handed.recommend(user: 999, k: 10, scorer: name))
        }
        // A job handed to a learner that has stopped runs at once.
        var ran = false
        learner.enqueue(LearnerJob { ran = true })
        #expect(ran)
    }

    /// A late event naming a deleted item does not bring it back (it
    /// trains the shared fallback item), also after a snapshot; an upsert
    /// brings it back on purpose, as a new item in the vacant index.
    @Test func aDeletedItemStaysDeletedUntilUpserted() throws {
        let m = try model(["cf", "popularity"])
        try replay(m, stream())
        let old = try #require(m.items.index(of: 15))
        #expect(m.deleteItems([15]) == 1)
        let late = { (m: Model) in
            try self.replay(m, [.feedback(firstSeq: m.lastSeq + 1, events: [IncomingEvent(user: 4, item: 15, kind: .click, value: 1, timestamp: 2000)])])
        }
        try late(m)
        #expect(m.items.index(of: 15) == nil && m.eventsOnDeletedItems == 1)
        #expect(try m.score(user: 2, items: [15], scorer: "popularity").first?.known == false)
        let fallback = try #require(m.fallbackItem)
        for name in ["cf", "popularity"] {
            let recs = try m.recommend(user: 4, k: 40, scorer: name).map(\.item)
            #expect(!recs.contains(15) && !recs.contains(ItemLifecycle.fallbackItemID), "\(name)")
        }
        #expect(m.items.id(at: fallback) == ItemLifecycle.fallbackItemID)
        // A repeated deletion of a remembered id is logged (it holds that).
        #expect(m.holdsAnyItem(of: [15]) && !m.holdsAnyItem(of: [999]))
        // Restored from a snapshot, it is still remembered.
        var w = SnapshotWriter()
        m.save(to: &w)
        var r = SnapshotReader(bytes: w.bytes)
        let copy = try model(["cf", "popularity"])
        try copy.restore(from: &r)
        try late(copy)
        #expect(copy.items.index(of: 15) == nil && copy.eventsOnDeletedItems == 2)
        // (The fallback item took the deleted item's vacant index.)
        #expect(fallback == old)
        // The upsert: held again, as a new item, and an event counts.
        #expect(copy.upsertItem(id: 15, text: "back", attributes: []).created)
        let back = try #require(copy.items.index(of: 15))
        try late(copy)
        let cf = try #require(try copy.scorer(named: "cf") as? CollaborativeFilteringScorer)
        #expect(cf.itemStats.row(Int(back))[2] == 1 && copy.eventsOnDeletedItems == 2)
        #expect(try copy.score(user: 2, items: [15], scorer: "popularity").first?.known == true)
    }

    /// The CAPACITY check does not count an event on a remembered deleted
    /// id as a new item (helper-61: a late event on it was refused at
    /// max_item_ids), nor the shared fallback item's row it trains, which
    /// is no client's id (helper-88: at the bound, the event was refused,
    /// "item id 1 would be new").
    @Test func eventsOnDeletedItemsNeedNoRoom() throws {
        let m = try model(["popularity"])
        func click(_ item: UInt64) -> IncomingEvent { IncomingEvent(user: 1, item: item, kind: .click, value: 1, timestamp: 10) }
        try replay(m, [.feedback(firstSeq: 1, events: [click(1), click(2)])])
        #expect(m.deleteItems([1]) == 1)
        // Items 2 and 3 fill a bound of 2; then the deleted item's event,
        // which makes the fallback item's first row, still fits.
        #expect(m.firstBreach(of: [click(3)], maxUserIDs: 0, maxItemIDs: 2) == nil)
        try replay(m, [.feedback(firstSeq: m.lastSeq + 1, events: [click(3)])])
        #expect(m.firstBreach(of: [click(1)], maxUserIDs: 0, maxItemIDs: 2) == nil)
        try replay(m, [.feedback(firstSeq: m.lastSeq + 1, events: [click(1)])])
        #expect(m.items.liveCount == 3 && m.items.index(of: 1) == nil && m.fallbackItem != nil)   // 2, 3 and the fallback
        #expect(m.firstBreach(of: [click(2), click(1), click(1)], maxUserIDs: 0, maxItemIDs: 2) == nil)
        // A new id is refused at the bound, and is let in one above it.
        #expect(m.firstBreach(of: [click(2), click(4)], maxUserIDs: 0, maxItemIDs: 2)?.index == 1)
        #expect(m.firstBreach(of: [click(2), click(4)], maxUserIDs: 0, maxItemIDs: 3) == nil)
        #expect(m.upsertBreach(item: 4, maxItemIDs: 2) != nil && m.upsertBreach(item: 4, maxItemIDs: 3) == nil)
        #expect(m.boundsReached(maxUserIDs: 0, maxItemIDs: 2).count == 1 && m.boundsReached(maxUserIDs: 0, maxItemIDs: 3).isEmpty)
    }

    /// A deletion logged by a build from before the deleted ids were
    /// remembered (record type 3) replays as that build applied it: a later
    /// event in its log brings the item back, so a kill -9 upgrade rebuilds
    /// the model the old server served (review finding, helper-63: the
    /// replay sent those events to the fallback item, and every answer
    /// changed). This build writes type 5.
    @Test func aDeletionAnOlderBuildLoggedReplaysAsItDid() throws {
        var legacy: [UInt8] = []
        LogRecord.deleteItemsUnremembered(items: [15]).encode(into: &legacy)
        #expect(legacy[8] == 3)
        var current: [UInt8] = []
        LogRecord.deleteItems(items: [15]).encode(into: &current)
        #expect(current[8] == 5)
        let decoded = legacy.withUnsafeBytes { LogRecord.decode(payload: UnsafeRawBufferPointer(rebasing: $0[8...])) }
        #expect(decoded == .deleteItemsUnremembered(items: [15]))
        let m = try model(["cf", "popularity"])
        try replay(m, stream())
        let late = LogRecord.feedback(firstSeq: m.lastSeq + 1, events: [IncomingEvent(user: 4, item: 15, kind: .click, value: 1, timestamp: 2000)])
        try replay(m, [try #require(decoded), late])
        #expect(m.items.index(of: 15) != nil && m.eventsOnDeletedItems == 0 && m.deletedItems.count == 0)
    }

    /// With `deleted_items_remembered = 0`, an event brings a deleted id
    /// back as a new item, with one event's count.
    @Test func withNoDeletedItemsRememberedAnEventBringsItBack() throws {
        let m = try model(["cf", "popularity"]) { d in d.set("lifelong.deleted_items_remembered", .integer(0)) }
        try replay(m, stream())
        let old = try #require(m.items.index(of: 15))
        #expect(m.deleteItems([15]) == 1)
        try replay(m, [.feedback(firstSeq: m.lastSeq + 1, events: [IncomingEvent(user: 4, item: 15, kind: .click, value: 1, timestamp: 2000)])])
        #expect(m.items.index(of: 15) == old)
        let cf = try #require(try m.scorer(named: "cf") as? CollaborativeFilteringScorer)
        #expect(cf.itemStats.row(Int(old))[2] == 1)
        #expect(try m.score(user: 2, items: [15], scorer: "popularity").first?.known == true)
    }

    @Test func deletedItemIdsStayWithinTheirBound() throws {
        let d = DeletedItemIds(capacity: 1000)
        for k in 1...200_000 { d.insert(UInt64(k)) }
        #expect(d.count == 1000 && d.contains(200_000) && d.contains(199_001) && !d.contains(199_000))
        #expect(d.bytes < 200_000)
        d.insert(199_001)                    // deleted again: the latest now
        d.insert(300_000)
        #expect(d.contains(199_001) && !d.contains(199_002))
        d.remove(300_000)
        #expect(!d.contains(300_000) && d.count == 999)
        var w = SnapshotWriter()
        d.save(to: &w)
        let small = DeletedItemIds(capacity: 10)   // restored under a smaller bound: the latest stay
        var r = SnapshotReader(bytes: w.bytes)
        try small.load(from: &r)
        #expect(small.count == 10 && small.contains(199_001) && small.contains(200_000) && !small.contains(199_990))
    }

    @Test func aDeletedUserLeavesNothingOfTheirOwn() throws {
        let m = try model()
        try replay(m, stream())
        let u = try #require(m.users.index(of: 5))
        #expect(m.history.items(of: u).count > 0 && m.replayBufferEvents.contains { $0.user == u })
        #expect(m.deleteUsers([5, 5, 999]) == 1)
        #expect(m.deleteUsers([5]) == 0)
        #expect(m.users.index(of: 5) == nil && m.users.vacantIndices == [u])
        #expect(m.history.items(of: u).isEmpty)
        #expect(!m.replayBufferEvents.contains { $0.user == u })
        // The row is as a never-seen user's (a fresh model's same index).
        let fresh = try model()
        for id in 1...m.users.count { _ = fresh.users.insert(UInt64(id)) }
        fresh.table.grow(users: m.users.count, items: 1)
        let d = m.table.dimension
        #expect((0..<d).map { m.table.user(u)[$0] } == (0..<d).map { fresh.table.user(u)[$0] })
        #expect(m.table.userAdagrad[Int(u)] == 0)
        let cf = try #require(try m.scorer(named: "cf") as? CollaborativeFilteringScorer)
        #expect(cf.recent[Int(u)].isEmpty)
        // Asked about, the deleted id is a stranger: the answer of an id never seen.
        for name in Self.all {
            let deleted = try m.recommend(user: 5, k: 10, scorer: name), stranger = try m.recommend(user: 424_242, k: 10, scorer: name)
            #expect(deleted == stranger, "\(name)")
        }
        // Back with an event, it is a new user in the vacant index.
        try replay(m, [.feedback(firstSeq: m.lastSeq + 1, events: [IncomingEvent(user: 5, item: 3, kind: .click, value: 1, timestamp: 2000)])])
        let item3 = try #require(m.items.index(of: 3))
        #expect(m.users.index(of: 5) == u && m.history.items(of: u) == [item3])
    }

    /// With `min_occurrences`, the id's sightings go too: back, it is a new
    /// id that must be seen that often again (review finding: it was let
    /// straight back in, told apart from a new id).
    @Test func aDeletedUsersSightingsGoWithIt() throws {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array([.string("cf")]))
        doc.set("lifelong.min_occurrences", .integer(3))
        let m = Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
        func click(_ user: UInt64, _ item: UInt64) throws {
            try replay(m, [.feedback(firstSeq: m.lastSeq + 1, events: [IncomingEvent(user: user, item: item, kind: .click, value: 1, timestamp: 1000)])])
        }
        for i in 1...3 { try click(5, UInt64(i)) }
        #expect(m.users.index(of: 5) != nil)
        try click(7, 1)                                  // seen once: not held
        #expect(m.users.index(of: 7) == nil)
        #expect(m.deleteUsers([5, 7]) == 1)
        try click(5, 4)
        try click(6, 4)
        #expect(m.users.index(of: 5) == nil && m.users.index(of: 6) == nil)
        try click(7, 2)
        try click(7, 3)                                  // its sightings went too: 2 of 3
        #expect(m.users.index(of: 7) == nil)
        try click(5, 5)
        try click(5, 6)
        #expect(m.users.index(of: 5) != nil)             // seen three times again
    }

    @Test func replayingTheLogWithADeletionRebuildsTheSameModel() throws {
        let records = stream()
        var withDeletion = Array(records.prefix(35))
        withDeletion.append(.deleteItems(items: [4, 17]))
        withDeletion.append(.deleteUsers(users: [2, 9]))
        var seq = UInt64(15 * 12)
        for round in 0..<10 {
            let batch = (1...12).map { u in
                IncomingEvent(user: UInt64(u), item: UInt64(1 + (u * 5 + round) % 22), kind: .click, value: 1, timestamp: 3000 + Int64(round))
            }
            withDeletion.append(.feedback(firstSeq: seq + 1, events: batch))
            seq += 12
        }
        // The log bytes, decoded again, as recovery reads them.
        let decoded = try withDeletion.map { r in
            var bytes: [UInt8] = []
            r.encode(into: &bytes)
            return try #require(bytes.withUnsafeBytes { LogRecord.decode(payload: UnsafeRawBufferPointer(rebasing: $0[8...])) })
        }
        #expect(decoded == withDeletion)
        let a = try model(), b = try model()
        try replay(a, withDeletion)
        try replay(b, decoded)
        // (Item 4 is named by later events, and stays deleted.)
        #expect(a.items.index(of: 4) == nil && a.eventsOnDeletedItems > 0)
        var wa = SnapshotWriter(), wb = SnapshotWriter()
        a.save(to: &wa)
        b.save(to: &wb)
        let identical = wa.bytes == wb.bytes
        #expect(identical)
        for name in Self.all { #expect(try a.recommend(user: 5, k: 10, scorer: name) == b.recommend(user: 5, k: 10, scorer: name)) }
    }
}
