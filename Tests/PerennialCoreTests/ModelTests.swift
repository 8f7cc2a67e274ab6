import Testing
@testable import PerennialCore
import Popularity

func popularityOnly() throws -> PerennialConfig {
    var doc = ConfigDocument(file: "test")
    doc.set("scorers.load", .array([.string("popularity")]))
    return try PerennialConfig.load(doc, registry: ScorerRegistry([PopularityScorer.factory]))
}

@Suite struct ModelTests {
    @Test func topKKeepsTheBestInOrderWithStableTies() {
        var top = TopK(k: 3)
        let scores: [Float] = [0.5, 2, 2, -1, 7, 0.5, 3]
        for (i, s) in scores.enumerated() { top.push(Int32(i), s) }
        #expect(top.sorted().map(\.item) == [4, 6, 1])
        top.reset(k: 10)
        for (i, s) in scores.enumerated() { top.push(Int32(i), s) }
        #expect(top.sorted().map(\.item) == [4, 6, 1, 2, 0, 5, 3])
        top.reset(k: 0)
        top.push(1, 1)
        #expect(top.sorted().isEmpty)
    }

    @Test func topKMatchesFullSort() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            let n = Int.random(in: 0..<300, using: &rng)
            let k = Int.random(in: 1..<40, using: &rng)
            let scores = (0..<n).map { _ in Float(Int.random(in: 0..<50, using: &rng)) }
            var top = TopK(k: k)
            for (i, s) in scores.enumerated() { top.push(Int32(i), s) }
            let expected = scores.enumerated().sorted { $0.element > $1.element || ($0.element == $1.element && $0.offset < $1.offset) }
                .prefix(k).map { Int32($0.offset) }
            #expect(top.sorted().map(\.item) == Array(expected))
        }
    }

    @Test func chunkedBufferGrowsAcrossChunksWithoutMoving() {
        let b = ChunkedBuffer<Float>(width: 3, fill: 0, rowsPerChunkLog2: 2, maxRows: 64)
        b.ensure(rows: 3)
        let first = b.row(0)
        b.row(2)[1] = 5
        b.ensure(rows: 40)
        #expect(b.row(0) == first)
        #expect(b.row(2)[1] == 5)
        b.row(39)[2] = 9
        #expect(b.row(39)[2] == 9)
        #expect(b.allocatedRows == 40)
    }

    @Test func idMapInsertsOnFirstSightWithoutCollisions() {
        let m = IdMap()
        #expect(m.insert(42) == (0, true))
        #expect(m.insert(UInt64(Int64.max)) == (1, true))
        #expect(m.insert(42) == (0, false))
        #expect(m.id(at: 1) == UInt64(Int64.max))
        for i in 0..<10_000 { _ = m.insert(UInt64(i) * 7919 + 100) }
        #expect(m.count == 10_002)
        #expect(m.index(of: 7919 * 5000 + 100) == 5002)
    }

    @Test func historyIsBoundedPerUser() {
        let h = InteractionHistory(limitPerUser: 3)
        for i in 0..<5 { h.record(user: 2, item: Int32(i), kind: .click) }
        #expect(h.items(of: 2) == [2, 3, 4])
        #expect(h.items(of: 0).isEmpty)
        #expect(h.totalEntries == 3)
        // An item seen again moves to the newest place; repeats never push
        // the user's other items out.
        for _ in 0..<1000 { h.record(user: 2, item: 3, kind: .view) }
        #expect(h.items(of: 2) == [2, 4, 3])
        #expect(h.totalEntries == 3)
        h.record(user: 2, item: 9, kind: .purchase)
        #expect(h.items(of: 2) == [4, 3, 9])
        // The kinds follow their entries: item 3 had a click and views.
        #expect(h.kinds(of: 2) == [KindMask.of(.click), KindMask.of([.click, .view]), KindMask.of(.purchase)])
        h.restore(user: 5, items: [1, 2, 3, 4])
        #expect(h.items(of: 5) == [2, 3, 4] && h.kinds(of: 5) == [0, 0, 0])
        #expect(h.totalEntries == 6)
    }

    /// `exclude_kinds` chooses which entries are excluded; an entry of
    /// unknown kind (restored from an older snapshot) always is.
    @Test func historyExcludesByKind() {
        let h = InteractionHistory(limitPerUser: 10)
        h.record(user: 0, item: 1, kind: .view)
        h.record(user: 0, item: 2, kind: .purchase)
        h.record(user: 0, item: 3, kind: .view)
        h.record(user: 0, item: 3, kind: .purchase)   // viewed, then bought
        h.record(user: 0, item: 4, kind: .click)
        func excluded(_ kinds: [FeedbackKind]) -> [Int32] {
            var out: [Int32] = []
            h.forEachExcludedItem(of: 0, excluded: KindMask.of(kinds)) { out.append($0) }
            return out
        }
        #expect(excluded([.purchase]) == [2, 3])
        #expect(excluded([.purchase, .click]) == [2, 3, 4])
        #expect(excluded([]) == [])
        #expect(excluded(FeedbackKind.allCases) == [1, 2, 3, 4])
        h.restore(user: 1, items: [7, 8], kinds: [KindMask.of(.view), 0])
        var old: [Int32] = []
        h.forEachExcludedItem(of: 1, excluded: KindMask.of(.purchase)) { old.append($0) }
        #expect(old == [8])
    }

    @Test func popularityRecommendsUnseenPopularItems() throws {
        let model = Model(config: try popularityOnly(), registry: ScorerRegistry([PopularityScorer.factory]))
        var out: [LearnEvent] = []
        let events = [(1, 10), (2, 10), (3, 10), (1, 20), (2, 20), (4, 30)].map {
            IncomingEvent(user: UInt64($0.0), item: UInt64($0.1), kind: .click, value: 0, timestamp: 1)
        }
        model.admit(events, now: 0, into: &out)
        #expect(out.map(\.seq) == [1, 2, 3, 4, 5, 6])
        #expect(out.allSatisfy { $0.value == 1 })
        for e in out { model.learn(e) }
        #expect(model.appliedSeq == 6)
        #expect(try model.recommend(user: 9, k: 2).map(\.item) == [10, 20])
        // A user's own items are excluded.
        #expect(try model.recommend(user: 1, k: 5).map(\.item) == [30])
        #expect(try model.recommend(user: 9, k: 5, exclude: [10]).map(\.item) == [20, 30])
        // So are the session's items, whatever the scorer (999: not known).
        #expect(try model.recommend(user: 9, k: 5, session: [20, 999]).map(\.item) == [10, 30])
        #expect(try model.recommend(user: 9, k: 5, candidates: [30, 20, 999]).map(\.item) == [20, 30])
        #expect(throws: ModelError.self) { try model.recommend(user: 1, k: 1, scorer: "nope") }
        let scores = try model.score(user: 9, items: [10, 999])
        #expect(scores[0] == (3, true))
        #expect(scores[1] == (0, false))
    }

    @Test func learnerAppliesInOrderAndRefusesWhenFull() throws {
        let model = Model(config: try popularityOnly(), registry: ScorerRegistry([PopularityScorer.factory]))
        let learner = Learner(model: model, capacity: 100)
        var batch: [LearnEvent] = []
        model.admit((0..<80).map { IncomingEvent(user: 1, item: UInt64($0 + 1), kind: .view, value: 0, timestamp: 1) }, now: 0, into: &batch)
        #expect(learner.tryEnqueue(batch))
        var second: [LearnEvent] = []
        model.admit((0..<30).map { IncomingEvent(user: 2, item: UInt64($0 + 1), kind: .view, value: 0, timestamp: 1) }, now: 0, into: &second)
        // Not started: 80 queued, 30 more do not fit, and nothing is taken.
        #expect(!learner.tryEnqueue(second))
        #expect(learner.queued == 80)
        learner.start()
        learner.stop()
        #expect(model.appliedSeq == 80)
        #expect(learner.queued == 0)
    }
}
