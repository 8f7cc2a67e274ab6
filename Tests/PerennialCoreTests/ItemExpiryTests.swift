import Testing
import PerennialPlugins
@testable import CollaborativeFiltering
@testable import GANCandidates
@testable import SessionRNN
@testable import TextCNN
@testable import PerennialCore

/// Item id expiry: idle items are forgotten in sweeps, every reference to
/// them goes, and their indices serve new items as fresh ones.
@Suite struct ItemExpiryTests {
    static let all = ["cf", "popularity", "text-cnn", "session-rnn", "gan"]

    func model(_ load: [String], expireAfter: Int, _ set: (inout ConfigDocument) -> Void = { _ in }) throws -> Model {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array(load.map { .string($0) }))
        doc.set("lifelong.item_expire_after_seconds", .integer(expireAfter))
        set(&doc)
        return Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
    }

    /// Admits one batch and learns it.
    func feed(_ m: Model, _ events: [(user: UInt64, item: UInt64, at: Int64)]) {
        var out: [LearnEvent] = []
        m.admit(events.map { IncomingEvent(user: $0.user, item: $0.item, kind: .click, value: 1, timestamp: $0.at) },
                now: 0, into: &out)
        for l in out { m.learn(l) }
    }

    @Test func aMillionDistinctItemsStayWithinTheBound() throws {
        // Expiry after 1,000 s, sweeps every 125 s, one new item a second.
        let m = try model(["popularity"], expireAfter: 1000) { d in d.set("history.max_items_per_user", .integer(20)) }
        var sizeAt200k = 0
        for k in 1...1_000_000 {
            feed(m, [(UInt64(1 + k % 50), UInt64(k), Int64(k))])
            if k % 100_000 == 0 {
                // Live: the last 1,000 s of items, plus up to a sweep interval.
                #expect(m.items.liveCount <= 1126 && m.items.count <= 1126, "at \(k): \(m.items.liveCount) live, \(m.items.count) rows")
                #expect(m.table.itemRows <= 1126 + 1024)  // (rows come in chunks)
                let size = m.items.bytes + m.table.bytes + m.itemLifecycle.bytes
                if k == 200_000 { sizeAt200k = size }
                if k > 200_000 { #expect(size <= sizeAt200k, "model bytes grew from \(sizeAt200k) to \(size) at \(k)") }
            }
        }
        #expect(m.itemLifecycle.expired >= 998_000)
        #expect(m.items.index(of: 1_000_000) != nil && m.items.index(of: 1) == nil)
        // Nothing vacant is ever recommended, and each answer is full.
        let recs = try m.recommend(user: 7, k: 50)
        #expect(recs.count == 50 && recs.allSatisfy { m.items.index(of: $0.item) != nil })
    }

    /// Items 1-10 stay active; items 11-20 go idle and are forgotten.
    func churned(_ load: [String]) throws -> Model {
        let m = try model(load, expireAfter: 100)
        for id in 1...20 { _ = m.upsertItem(id: UInt64(id), text: "item \(id) words \(id % 3) topic \(id % 4)", attributes: []) }
        var t: Int64 = 1000
        for round in 0..<30 {
            var batch: [(UInt64, UInt64, Int64)] = []
            for u in 1...12 { batch.append((UInt64(u), UInt64(1 + (u * 7 + round) % 20), t)) }
            feed(m, batch)
            t += 1
        }
        // Now only items 1-10, for 150 s: 11-20 are idle past 100 s.
        for round in 0..<16 {
            var batch: [(UInt64, UInt64, Int64)] = []
            for u in 1...12 { batch.append((UInt64(u), UInt64(1 + (u + round) % 10), t)) }
            feed(m, batch)
            t += 10
        }
        return m
    }

    @Test func anExpiredItemLeavesNoReferenceBehind() throws {
        let m = try churned(Self.all)
        #expect(m.itemLifecycle.expired == 10)
        let gone = Set(m.items.vacantIndices)
        #expect(gone.count == 10 && m.items.liveCount == 10)
        for id in 11...20 { #expect(m.items.index(of: UInt64(id)) == nil) }
        for id in 1...10 { #expect(m.items.index(of: UInt64(id)) != nil) }
        // Ids, texts, histories and the replay buffer.
        for i in gone { #expect(m.catalogue.record(of: i) == nil) }
        for u in 0..<Int32(m.users.count) { #expect(m.history.items(of: u).allSatisfy { !gone.contains($0) }) }
        #expect(m.catalogue.count == 10)
        // Every scorer's references.
        let cf = try #require(try m.scorer(named: "cf") as? CollaborativeFilteringScorer)
        #expect(cf.recent.allSatisfy { $0.allSatisfy { !gone.contains($0) } })
        #expect(cf.sampler.allSatisfy { !gone.contains($0) })
        for a in 0..<Int32(m.items.count) {
            for b in gone { #expect(cf.neighbourhood.count(a, b) == 0 && cf.neighbourhood.count(b, a) == 0) }
        }
        for i in gone { #expect(cf.itemStats.row(Int(i))[2] == 0) }
        let rnn = try #require(try m.scorer(named: "session-rnn") as? SessionRNNScorer)
        #expect(rnn.recent.allSatisfy { $0.allSatisfy { !gone.contains($0) } })
        for a in 0..<Int32(m.items.count) { for b in gone { #expect(rnn.transitions.count(a, b) == 0) } }
        let gan = try #require(try m.scorer(named: "gan") as? GANScorer)
        #expect(gan.recent.allSatisfy { $0.allSatisfy { !gone.contains($0) } })
        let cnn = try #require(try m.scorer(named: "text-cnn") as? TextCNNScorer)
        #expect(cnn.seenItems.allSatisfy { !gone.contains($0) })
        // No scorer recommends a vacant index, and each fills its answer
        // from the live items.
        for name in Self.all {
            let recs = try m.recommend(user: 3, k: 10, scorer: name)
            #expect(recs.allSatisfy { (1...10).contains($0.item) }, "\(name): \(recs.map(\.item))")
        }
    }

    @Test func aNewItemTakesAVacantIndexAsAFreshOne() throws {
        let m = try churned(Self.all)
        let vacant = try #require(m.items.vacantIndices.last)
        // The fresh state an index has before any event: a model that never
        // saw anything, grown to the same size.
        let fresh = try model(Self.all, expireAfter: 100)
        for id in 1...m.items.count { _ = fresh.items.insert(UInt64(id)) }
        _ = fresh.upsertItem(id: 999_999, text: "a new item", attributes: [])
        let d = m.table.dimension
        var out: [LearnEvent] = []
        m.admit([IncomingEvent(user: 1, item: 555, kind: .click, value: 1, timestamp: 1190)], now: 0, into: &out)
        #expect(m.items.index(of: 555) == vacant)
        let row = (0..<d).map { m.table.item(vacant)[$0] }
        #expect(row == (0..<d).map { fresh.table.item(vacant)[$0] })
        #expect(m.table.itemAdagrad[Int(vacant)] == 0)
        let cf = try #require(try m.scorer(named: "cf") as? CollaborativeFilteringScorer)
        #expect((0..<3).map { cf.itemStats.row(Int(vacant))[$0] } == [0, 0, 0])
        #expect((0..<d).allSatisfy { cf.context.row(Int(vacant))[$0] == 0 })
        let gan = try #require(try m.scorer(named: "gan") as? GANScorer)
        let freshGAN = try #require(try fresh.scorer(named: "gan") as? GANScorer)
        #expect((0...gan.D).map { gan.genItems.row(Int(vacant))[$0] } == (0...gan.D).map { freshGAN.genItems.row(Int(vacant))[$0] })
        // It is recommendable again, and learning it works.
        for l in out { m.learn(l) }
        #expect(m.history.items(of: try #require(m.users.index(of: 1))).last == vacant)
        #expect(try m.score(user: 2, items: [555]).first?.known == true)
    }

    @Test func aSnapshotKeepsVacanciesAndTheNextSweep() throws {
        let m = try churned(Self.all)
        var w = SnapshotWriter()
        m.save(to: &w)
        let copy = try model(Self.all, expireAfter: 100)
        var r = SnapshotReader(bytes: w.bytes)
        try copy.restore(from: &r)
        #expect(copy.items.vacantIndices == m.items.vacantIndices && copy.itemLifecycle.expired == 10)
        for user: UInt64 in [1, 5, 9] {
            for name in Self.all { #expect(try copy.recommend(user: user, k: 8, scorer: name) == m.recommend(user: user, k: 8, scorer: name)) }
        }
        // The same later stream gives the same model: new items take the
        // same indices, and the next sweep forgets the same items.
        var t: Int64 = 1200
        for round in 0..<20 {
            let batch: [(UInt64, UInt64, Int64)] = (1...6).map { u in (UInt64(u), UInt64(round < 10 ? 100 + (u + round) % 15 : 1 + u), t) }
            feed(m, batch)
            feed(copy, batch)
            t += 15
        }
        #expect(m.itemLifecycle.expired > 10 && copy.itemLifecycle.expired == m.itemLifecycle.expired)
        for id: UInt64 in 100..<115 { #expect(copy.items.index(of: id) == m.items.index(of: id)) }
        var a = SnapshotWriter(), b = SnapshotWriter()
        m.save(to: &a)
        copy.save(to: &b)
        #expect(a.bytes == b.bytes)
    }

    @Test func idleItemsCountAsRoomAtASweep() throws {
        let m = try model(["cf", "popularity"], expireAfter: 100)
        feed(m, (1...5).map { (1, UInt64($0), 1000) })
        // Five items held, bound 5: a new one is refused while none is idle...
        let early = [IncomingEvent(user: 1, item: 6, kind: .click, value: 1, timestamp: 1050)]
        #expect(m.firstBreach(of: early, maxUserIDs: 0, maxItemIDs: 5)?.kind == .item)
        // ...and fits when the batch's sweep will forget idle ones; an idle
        // item the batch names again needs a row of its own then.
        let late = [IncomingEvent(user: 1, item: 6, kind: .click, value: 1, timestamp: 1200)]
        #expect(m.firstBreach(of: late, maxUserIDs: 0, maxItemIDs: 5) == nil)
        let back = (1...6).map { IncomingEvent(user: 1, item: UInt64($0), kind: .click, value: 1, timestamp: 1200) }
        #expect(m.firstBreach(of: back, maxUserIDs: 0, maxItemIDs: 5)?.index == 5)
        feed(m, late.map { ($0.user, $0.item, $0.timestamp) })
        #expect(m.items.liveCount == 1 && m.itemLifecycle.expired == 5)
    }

    @Test func anUpsertKeepsAnItemAliveAndAnUnstampedOneIsStampedAtTheSweep() throws {
        let m = try model(["popularity"], expireAfter: 100)
        _ = m.upsertItem(id: 50, text: "upserted before any event", attributes: [])
        feed(m, [(1, 1, 1000)])  // the first sweep stamps item 50 at 1000
        feed(m, [(1, 2, 1090)])
        _ = m.upsertItem(id: 1, text: "item 1 again", attributes: [])  // seen at 1090
        feed(m, [(1, 2, 1150)])
        #expect(m.items.index(of: 1) != nil && m.items.index(of: 50) == nil && m.itemLifecycle.expired == 1)
        feed(m, [(1, 2, 1220)])
        #expect(m.items.index(of: 1) == nil && m.items.index(of: 2) != nil && m.itemLifecycle.expired == 2)
    }
}
