// The session memory behind RECOMMEND's session_id: appending, the per-session
// bound, least-recently-used eviction, idle expiry, and memory under a flood
// of distinct ids.

import Testing
@testable import PerennialCore

@Suite struct SessionStoreTests {
    @Test func appendsAndKeepsTheMostRecentItems() {
        let s = SessionStore(maxSessions: 10, maxItems: 3, idleSeconds: 60)
        #expect(s.update("a", appending: [1, 2], now: 0) == [1, 2])
        #expect(s.update("a", appending: [3, 4], now: 1) == [2, 3, 4])
        #expect(s.update("a", appending: [], now: 2) == [2, 3, 4])
        // More than fit in one request: the last ones are kept.
        #expect(s.update("b", appending: Array(1...10_000), now: 2) == [9998, 9999, 10_000])
        #expect(s.update("c", appending: [], now: 2) == [])
        #expect(s.count == 3)
    }

    /// Ids are byte strings: "café" composed (c3 a9) and decomposed (65 cc
    /// 81) are two sessions, though Swift's String calls them equal.
    @Test func canonicallyEquivalentIdsAreDistinctSessions() {
        let s = SessionStore(maxSessions: 10, maxItems: 5, idleSeconds: 60)
        let composed = "s-caf\u{E9}", decomposed = "s-cafe\u{301}"
        #expect(composed == decomposed && Array(composed.utf8) != Array(decomposed.utf8))
        #expect(s.update(composed, appending: [1, 2], now: 0) == [1, 2])
        #expect(s.update(decomposed, appending: [7], now: 1) == [7])
        #expect(s.items(of: composed, now: 2) == [1, 2])
        #expect(s.count == 2)
        #expect(Set(s.live(now: 2).map { Array($0.key.utf8) }) == [Array(composed.utf8), Array(decomposed.utf8)])
    }

    /// What a graceful stop saves and the next start puts back: the live
    /// sessions in use order, with their idle time; one idle too long, or
    /// past the bound, is not kept.
    @Test func liveSessionsAreRestoredInOrderWithTheirIdleTime() {
        let s = SessionStore(maxSessions: 3, maxItems: 5, idleSeconds: 60)
        _ = s.update("a", appending: [1], now: 0)
        _ = s.update("b", appending: [2, 3], now: 10)
        _ = s.update("c", appending: [4], now: 50)
        let live = s.live(now: 55)
        #expect(live.map(\.key) == ["a", "b", "c"] && live.map(\.idle) == [55, 45, 5] && live[1].items == [2, 3])
        let back = SessionStore(maxSessions: 2, maxItems: 5, idleSeconds: 60)
        // (10 s of downtime: "a" is then idle 65 s, past the 60.)
        for e in live { back.restore(e.key, items: e.items, idle: e.idle + 10, now: 1000) }
        #expect(back.count == 2 && back.items(of: "a", now: 1000) == nil)
        #expect(back.items(of: "b", now: 1000) == [2, 3] && back.items(of: "c", now: 1000) == [4])
        // "b" expires first: it was idle 55 s at the restart.
        back.expire(now: 1006)
        #expect(back.items(of: "b", now: 1006) == nil && back.items(of: "c", now: 1006) == [4])
        // A lowered max_sessions trims at the restart: not evictions (helper-75).
        let fewer = SessionStore(maxSessions: 1, maxItems: 5, idleSeconds: 600)
        for e in live { fewer.restore(e.key, items: e.items, idle: e.idle, now: 1000) }
        #expect(fewer.count == 1 && fewer.items(of: "c", now: 1000) == [4] && fewer.evicted == 0)
    }

    @Test func theLeastRecentlyUsedSessionMakesRoom() {
        let s = SessionStore(maxSessions: 2, maxItems: 5, idleSeconds: 60)
        _ = s.update("a", appending: [1], now: 0)
        _ = s.update("b", appending: [2], now: 1)
        _ = s.update("a", appending: [3], now: 2)  // a is now the newest
        _ = s.update("c", appending: [4], now: 3)  // b goes
        #expect(s.items(of: "b", now: 3) == nil)
        #expect(s.items(of: "a", now: 3) == [1, 3])
        #expect(s.items(of: "c", now: 3) == [4])
        #expect(s.evicted == 1 && s.count == 2)
    }

    @Test func idleSessionsExpire() {
        let s = SessionStore(maxSessions: 100, maxItems: 5, idleSeconds: 10)
        _ = s.update("old", appending: [1], now: 0)
        _ = s.update("new", appending: [2], now: 8)
        #expect(s.items(of: "old", now: 11) == nil)
        s.expire(now: 11)
        #expect(s.count == 1 && s.expired == 1)
        // An expired session starts again empty.
        #expect(s.update("old", appending: [], now: 12) == [])
    }

    @Test func aMillionDistinctSessionIdsStayWithinTheBound() {
        let s = SessionStore(maxSessions: 1000, maxItems: 4, idleSeconds: 1e9)
        for n in 0..<1_000_000 {
            _ = s.update("session-\(n)", appending: [UInt64(n), UInt64(n + 1)], now: Double(n))
        }
        #expect(s.count == 1000)
        #expect(s.storedItems == 2000)
        #expect(s.evicted == 999_000)
        #expect(s.items(of: "session-999999", now: 1e6) == [999_999, 1_000_000])
    }

    @Test func zeroSessionsKeepsNothing() {
        let s = SessionStore(maxSessions: 0, maxItems: 5, idleSeconds: 10)
        #expect(s.update("a", appending: [1, 2], now: 0) == [1, 2])
        #expect(s.count == 0)
    }
}
