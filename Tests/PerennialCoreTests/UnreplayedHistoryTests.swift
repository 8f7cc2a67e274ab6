// UnreplayedHistory: what a recovery's reads take from the log not yet
// replayed (RecoveryWhileServingTests covers it through a server).

import Testing
import PerennialCore

@Suite struct UnreplayedHistoryTests {
    static func click(_ user: UInt64, _ item: UInt64) -> IncomingEvent {
        IncomingEvent(user: user, item: item, kind: .click, value: 1, timestamp: 1)
    }

    @Test func entriesAfterASequenceInOrderAsTheReplayWillLeaveThem() {
        let h = UnreplayedHistory(limitPerUser: 3)
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
    }

    @Test func aUserWithManyEventsKeepsBoundedMemory() {
        let h = UnreplayedHistory(limitPerUser: 10)
        for k in 0..<1000 { h.note(.feedback(firstSeq: UInt64(k + 1), events: [Self.click(1, UInt64(k))])) }
        #expect(h.entries(of: 1, after: 0).map(\.item) == Array(990..<1000).map(UInt64.init))
        #expect(h.storedEntries <= 20)
    }
}
