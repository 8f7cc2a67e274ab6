// The session-rnn scorer and server-kept sessions through a real server:
// planted sequences, sessions given inline or by id, and the edge cases.

import Foundation
import Testing
import PerennialClient
import PerennialProtocol

@Suite(.serialized) struct SessionRNNServerTests {
    /// 40 planted chains A → B → C (items 3c+1, 3c+2, 3c+3) streamed by
    /// many users; then RECOMMEND with the session [A, B], inline or built
    /// up under a session id, ranks C first for most chains (chance: 1 in 120).
    @Test func plantedSequencesThroughTheServer() async throws {
        let s = try TestServer("""
            [limits]
            wait_ms = 120000
            max_items = 10000
            [sessions]
            max_sessions = 1000
            [scorers]
            load = ["session-rnn", "cf"]
            [scorers.session-rnn]
            negatives = 64
            """)
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port, timeout: 120)
        defer { c.close() }
        var rng = SplitMix(seed: 8)
        var events: [WireEvent] = []
        for _ in 0..<3000 {
            let user = UInt64(rng.below(300) + 1)
            let chain = UInt64(rng.below(40))
            for step in 1...3 { events.append(WireEvent(user: user, item: chain * 3 + UInt64(step), kind: .click)) }
        }
        let ack = try await c.stream(events, batchSize: 1000)
        #expect(ack?.lastSeq == 9000)
        var inline = 0, byID = 0
        for chain in 0..<UInt64(40) {
            let a = chain * 3 + 1
            let recs = try await c.recommend(user: 100_000, k: 1, scorer: "session-rnn", session: [a, a + 1])
            if recs.first?.item == a + 2 { inline += 1 }
            // The same session sent one click at a time under an id.
            _ = try await c.recommend(user: 100_000, k: 1, scorer: "session-rnn", session: [a], sessionID: "s\(chain)")
            let second = try await c.recommend(user: 100_000, k: 1, scorer: "session-rnn", session: [a + 1], sessionID: "s\(chain)")
            if second.first?.item == a + 2 { byID += 1 }
        }
        #expect(inline >= 30, "C first for \(inline) of 40 chains")
        #expect(byID == inline)

        // Length 0: the user's own history stands in (an unknown user gets
        // the learned item biases); length 1; length 10,000 (the scorer reads
        // the last `steps`; every item in it is excluded from the answer);
        // unknown ids are ignored.
        #expect(try await c.recommend(user: 100_000, k: 5, scorer: "session-rnn").count == 5)
        #expect(try await c.recommend(user: 100_000, k: 5, scorer: "session-rnn", session: [4]).count == 5)
        let long = (0..<9_998).map { UInt64($0 % 114 + 7) } + [4, 5]
        let answer = try await c.recommend(user: 100_000, k: 10, scorer: "session-rnn", session: long)
        #expect(answer.count == 4 && answer.allSatisfy { $0.item <= 6 && $0.item != 4 && $0.item != 5 })
        #expect(try await c.recommend(user: 100_000, k: 1, scorer: "session-rnn", session: long).first?.item == 6)
        #expect(try await c.recommend(user: 100_000, k: 1, scorer: "session-rnn", session: [4, 999_999, 5]).first?.item == 6)
        let scores = try await c.score(user: 100_000, items: [6, 7, 424242], scorer: "session-rnn", session: [4, 5])
        #expect(scores[0].score > scores[1].score && !scores[2].known)

        // Many distinct session ids: the server keeps at most max_sessions.
        for chunk in 0..<20 {
            let requests = (0..<1000).map { k in
                Request.recommend(RecommendRequest(user: 7, k: 1, scorer: "cf", sessionID: "flood-\(chunk)-\(k)", sessionItems: [1]))
            }
            _ = try await c.pipeline(requests)
        }
        let stats = try await c.stats()
        #expect(stats["sessions"] == 1000)
        #expect(stats["sessions_evicted"]! >= 19_040)
        #expect(stats["session_items"]! <= 1000 * 50)
    }

    @Test func sessionLimitsHaveDefinedErrors() async throws {
        let s = try TestServer("[scorers]\nload = [\"session-rnn\"]\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        // More session items than limits.max_items (1,000 by default).
        await #expect(throws: PerennialClientError.self) {
            _ = try await c.recommend(user: 1, k: 5, session: (1...10_000).map { UInt64($0) })
        }
        // A session id longer than 256 bytes.
        await #expect(throws: PerennialClientError.self) {
            _ = try await c.recommend(user: 1, k: 5, sessionID: String(repeating: "x", count: 300))
        }
        // A request naming an unknown scorer is refused and leaves its session alone.
        await #expect(throws: PerennialClientError.self) {
            _ = try await c.recommend(user: 1, k: 5, scorer: "nope", session: [1], sessionID: "kept-empty")
        }
        #expect(try await c.stats()["sessions"] == 0)
        // An empty model answers with nothing, not an error.
        #expect(try await c.recommend(user: 1, k: 5, session: [1, 2]).isEmpty)
        try await c.ping()
    }
}
