// UnreplayedHistory: what a recovery's reads take from the log not yet
// replayed (RecoveryWhileServingTests covers it through a server).

import Testing
import PerennialCore

@Suite struct UnreplayedHistoryTests {
    static func click(_ user: UInt64, _ item: UInt64, _ kind: FeedbackKind = .click) -> IncomingEvent {
        IncomingEvent(user: user, item: item, kind: kind, value: 1, timestamp: 1)
    }

    @Test func entriesAfterASequenceInOrderAsTheReplayWillLeaveThem() {
        let h = UnreplayedHistory(limitPerUser: 3, after: 10)
        h.note(.deleteItems(items: [999]))
        h.note(.feedback(firstSeq: 11, events: [Self.click(1, 100), Self.click(2, 200), Self.click(1, 101)]))
        h.note(.deleteItems(items: [100]))
        h.note(.feedback(firstSeq: 14, events: [Self.click(1, 100), Self.click(3, 300), Self.click(1, 102), Self.click(1, 103)]))
        h.note(.deleteUsers(users: [3]))
        h.note(.feedback(firstSeq: 18, events: [Self.click(3, 301)]))
        // Item 100's entry before its deletion is gone; its entry after stays.
        // The newest three only (the history's bound).
        #expect(h.entries(of: 1, after: 0).map(\.item) == [100, 102, 103])
        #expect(h.entries(of: 1, after: 0).map(\.seq) == [14, 16, 17])
        // Only what the model has not admitted yet.
        #expect(h.entries(of: 1, after: 14).map(\.item) == [102, 103])
        #expect(h.entries(of: 1, after: 17).isEmpty)
        #expect(h.entries(of: 2, after: 10).map(\.item) == [200])
        #expect(h.entries(of: 2, after: 12).isEmpty)
        // A deleted user keeps only what came after the deletion.
        #expect(h.entries(of: 3, after: 0).map(\.item) == [301])
        #expect(h.entries(of: 4, after: 0).isEmpty)
        #expect(h.events == 8)
        // Deleted items still ahead of the model: 100 after 13, 999 after 10.
        func deleted(after seq: UInt64) -> Set<UInt64> {
            var s = Set<UInt64>()
            h.forEachItemDeletedAfter(seq) { s.insert($0) }
            return s
        }
        #expect(deleted(after: 10) == [100, 999])
        #expect(deleted(after: 13) == [100])
        #expect(deleted(after: 14).isEmpty)
    }

    @Test func repeatsKeepDistinctItemsWithAllTheirKinds() {
        // (helper-68: a view of item 1 then four clicks of item 2 kept only item 2.)
        let h = UnreplayedHistory(limitPerUser: 3)
        h.note(.feedback(firstSeq: 1, events: [Self.click(1, 1, .view)] + Array(repeating: Self.click(1, 2), count: 4)
                         + [Self.click(1, 1, .purchase), Self.click(1, 3), Self.click(1, 4)]))
        let all = h.entries(of: 1, after: 0)
        #expect(all.map(\.item) == [1, 3, 4])
        #expect(all[0].kinds == KindMask.of([.view, .purchase]))
        #expect(h.entries(of: 1, after: 2).map(\.item) == [1, 3, 4])
        #expect(h.entries(of: 1, after: 6).map(\.item) == [3, 4])
        #expect(h.entries(of: 1, after: 6)[0].kinds == KindMask.of(.click))
    }

    @Test func aUserWithManyEventsKeepsBoundedMemory() {
        let h = UnreplayedHistory(limitPerUser: 10)
        for k in 0..<1000 { h.note(.feedback(firstSeq: UInt64(k + 1), events: [Self.click(1, UInt64(k))])) }
        #expect(h.entries(of: 1, after: 0).map(\.item) == Array(990..<1000).map(UInt64.init))
        #expect(h.storedEntries <= 20)
    }
}
