import Testing
import PerennialPlugins
@testable import PerennialCore

/// `[lifelong] item_min_occurrences`: an item id seen in fewer events than
/// that has no row of its own; its events train the shared fallback item,
/// which is never recommended.
@Suite struct ItemAdmissionTests {
    static let scorers = ["cf", "popularity", "session-rnn", "gan"]

    func model(_ minOccurrences: Int, _ load: [String] = Self.scorers) throws -> Model {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array(load.map { .string($0) }))
        doc.set("lifelong.item_min_occurrences", .integer(minOccurrences))
        return Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
    }

    func feed(_ m: Model, _ events: [(user: UInt64, item: UInt64)]) {
        var out: [LearnEvent] = []
        m.admit(events.map { IncomingEvent(user: $0.user, item: $0.item, kind: .click, value: 1, timestamp: 1000) }, now: 0, into: &out)
        for l in out { m.learn(l) }
    }

    /// Items 1-20 seen often; 101-140 once or twice each.
    func stream(_ m: Model) {
        for round in 0..<20 { feed(m, (1...12).map { u in (UInt64(u), UInt64(1 + (u * 3 + round) % 20)) }) }
        for k in 0..<60 { feed(m, [(UInt64(1 + k % 12), UInt64(101 + k % 40))]) }
    }

    @Test func rareItemsShareTheFallbackUntilSeenOftenEnough() throws {
        let m = try model(3)
        stream(m)
        // Seen once or twice: no row, unknown; their 60 events went to the
        // fallback, as did the first two of each of items 1-20.
        for id: UInt64 in 101...140 { #expect(m.items.index(of: id) == nil) }
        #expect(m.fallbackItem != nil && m.itemLifecycle.sharedEvents == 60 + 2 * 20)
        #expect(try m.score(user: 1, items: [101]).first?.known == false)
        // The third sighting gives item 101 its row.
        feed(m, [(5, 101)])
        #expect(m.items.index(of: 101) != nil && m.itemLifecycle.sharedEvents == 100)
        // The fallback is never an answer, whatever is asked.
        for name in Self.scorers {
            for user: UInt64 in [1, 7, 999] {
                let recs = try m.recommend(user: user, k: 100, scorer: name)
                #expect(!recs.isEmpty && !recs.contains { $0.item == ItemLifecycle.fallbackItemID }, "\(name)")
            }
        }
        // Without the setting every id has its row.
        let plain = try model(1)
        stream(plain)
        #expect(plain.fallbackItem == nil && plain.items.liveCount == 60)
        #expect(m.items.liveCount == 20 + 1 + 1)  // 1-20, 101, the fallback
    }

    @Test func anUpsertGivesARowAtOnce() throws {
        let m = try model(3)
        _ = m.upsertItem(id: 500, text: "a catalogue entry", attributes: [])
        feed(m, [(1, 500)])
        #expect(m.items.index(of: 500) != nil && m.itemLifecycle.sharedEvents == 0)
    }

    @Test func rareIdsDoNotCountAgainstTheItemBound() throws {
        let m = try model(3, ["cf"])
        for _ in 0..<3 { feed(m, (1...5).map { (1, UInt64($0)) }) }
        // Five ids held (items 1-5; the fallback's row is no client's id and
        // not counted: helper-88), bound 5: new ids seen once need no row...
        let once = (6...10).map { IncomingEvent(user: 1, item: UInt64($0), kind: .click, value: 1, timestamp: 1000) }
        #expect(m.firstBreach(of: once, maxUserIDs: 0, maxItemIDs: 5) == nil)
        // ...and one seen three times in the batch needs its own, past the bound.
        let thrice = once + (0..<3).map { _ in IncomingEvent(user: 1, item: 11, kind: .click, value: 1, timestamp: 1000) }
        #expect(m.firstBreach(of: thrice, maxUserIDs: 0, maxItemIDs: 5)?.index == 7)
        #expect(m.firstBreach(of: thrice, maxUserIDs: 0, maxItemIDs: 6) == nil)
    }

    /// Review findings: a deleted item's sightings go with it, and a sweep
    /// that forgets the fallback item frees its row for the bound.
    @Test func aDeletedItemWaitsForItsRowAgain() throws {
        let m = try model(3, ["cf"])
        feed(m, [(1, 200), (2, 200), (3, 200)])
        #expect(m.items.index(of: 200) != nil)
        #expect(m.deleteItems([200]) == 1)
        feed(m, [(4, 200)])
        #expect(m.items.index(of: 200) == nil)
        // An id held only as sightings is deleted too (its count goes).
        feed(m, [(1, 300), (2, 300)])
        #expect(m.holdsAnyItem(of: [300]) && m.deleteItems([300]) == 0)
        feed(m, [(3, 300)])
        #expect(m.items.index(of: 300) == nil)
    }

    /// A sweep that forgets the fallback item frees nothing the bound
    /// counts (its row never was), and the new fallback it makes takes no
    /// room either.
    @Test func theBoundLeavesOutAFallbackItemThatASweepRecreates() throws {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array([.string("cf")]))
        doc.set("lifelong.item_min_occurrences", .integer(2))
        doc.set("lifelong.item_expire_after_seconds", .integer(100))
        let m = Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
        var out: [LearnEvent] = []
        m.admit([1, 1].map { IncomingEvent(user: 1, item: $0, kind: .click, value: 1, timestamp: 1000) }, now: 0, into: &out)
        for l in out { m.learn(l) }
        #expect(m.items.liveCount == 2)  // item 1 and the fallback
        // At 1500 the sweep forgets both; 1 comes back (a row), 99 goes to a
        // new fallback (not counted), 50 twice gets its own: two ids, bound 1.
        let batch = [1, 99, 50, 50].map { IncomingEvent(user: 1, item: UInt64($0), kind: .click, value: 1, timestamp: 1500) }
        #expect(m.firstBreach(of: batch, maxUserIDs: 0, maxItemIDs: 1)?.index == 3)
        #expect(m.firstBreach(of: batch, maxUserIDs: 0, maxItemIDs: 2) == nil)
    }

    @Test func manyRareIdsKeepTheItemRowsFlat() throws {
        let m = try model(3, ["popularity"])
        for k in 0..<200_000 { feed(m, [(UInt64(1 + k % 50), UInt64(10_000 + k))]) }
        // (A count-min sketch overestimates as it fills: a few ids seen
        // once may be counted thrice by collisions.)
        #expect(m.items.liveCount < 2_000, "\(m.items.liveCount) item ids hold rows")
    }

    @Test func aSnapshotKeepsTheCountsAndTheFallback() throws {
        let m = try model(3)
        stream(m)
        var w = SnapshotWriter()
        m.save(to: &w)
        let copy = try model(3)
        var r = SnapshotReader(bytes: w.bytes)
        try copy.restore(from: &r)
        #expect(copy.fallbackItem == m.fallbackItem && copy.itemLifecycle.sharedEvents == 100)
        for name in Self.scorers {
            let a = try m.recommend(user: 3, k: 30, scorer: name), b = try copy.recommend(user: 3, k: 30, scorer: name)
            #expect(a == b && !b.contains { $0.item == ItemLifecycle.fallbackItemID }, "\(name)")
        }
        // The same later stream admits the same ids at the same events:
        // 101-120 reach three sightings, 121-140 two.
        for k in 0..<40 { let e = [(UInt64(1 + k % 12), UInt64(101 + k % 40))]; feed(m, e); feed(copy, e) }
        #expect(copy.items.liveCount == m.items.liveCount && m.items.liveCount == 20 + 1 + 20)
        var a = SnapshotWriter(), b = SnapshotWriter()
        m.save(to: &a)
        copy.save(to: &b)
        let identical = a.bytes == b.bytes
        #expect(identical)
    }
}
