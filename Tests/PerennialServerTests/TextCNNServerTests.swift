// The text-cnn scorer through a real server: cold items recommended from
// their text alone, and the text edge cases of UPSERT_ITEM.

import Foundation
import Testing
import PerennialClient
import PerennialProtocol

@Suite(.serialized) struct TextCNNServerTests {
    /// Three clusters of items, each with its own vocabulary, liked by three
    /// groups of users. Two items nobody has touched are upserted: one with
    /// text of cluster 0's vocabulary, one with unrelated words. For a user
    /// of cluster 0 the first ranks among the cluster's items, the second
    /// far below.
    @Test func anUntouchedItemIsRecommendedFromItsText() async throws {
        let s = try TestServer("""
            [limits]
            wait_ms = 120000
            [scorers]
            load = ["cf", "text-cnn"]
            [scorers.text-cnn]
            batch = 16
            refresh_steps = 1
            """)
        defer { s.stop() }
        // Debug builds learn slowly; the first read waits for all of it.
        let c = try await PerennialClient.connect(port: s.port, timeout: 120)
        defer { c.close() }
        let vocab = [["space", "robot", "laser", "galaxy", "alien", "starship"],
                     ["romance", "wedding", "kiss", "paris", "love", "letters"],
                     ["detective", "murder", "clue", "noir", "alibi", "suspect"]]
        var requests: [Request] = []
        for i in 1...150 {
            let words = vocab[i % 3]
            requests.append(.upsertItem(UpsertItem(item: UInt64(i), text: "\(words[i % 6]) \(words[(i / 3) % 6]) \(words[(i / 7) % 6]) part \(i)")))
        }
        requests.append(.upsertItem(UpsertItem(item: 1000, text: "galaxy alien starship")))
        requests.append(.upsertItem(UpsertItem(item: 1001, text: "cooking recipes garden")))
        _ = try await c.pipeline(requests)
        var rng = SplitMix(seed: 5)
        var events: [WireEvent] = []
        for _ in 0..<8000 {
            let user = UInt64(rng.below(90) + 1)
            let cluster = Int(user % 3)
            let item = UInt64(rng.below(50) * 3 + (cluster == 0 ? 3 : cluster))
            events.append(WireEvent(user: user, item: item, kind: .click))
        }
        let ack = try await c.stream(events, batchSize: 500)
        #expect(ack?.lastSeq == 8000)
        let recs = try await c.recommend(user: 3, k: 60, scorer: "text-cnn", exclude: [])
        let rank = { (item: UInt64) in recs.firstIndex { $0.item == item } }
        // User 3 is in cluster 0 (items 3, 6, 9, …): 50 items, most seen.
        let r1000 = try #require(rank(1000), "the cold item of the user's cluster is not in the top 60: \(recs.map(\.item))")
        let seen = recs.map { "\($0.item):\($0.score)" }
        // Among the cluster's items not yet seen by the user…
        let cluster = recs.filter { $0.item < 1000 && $0.item % 3 == 0 }
        #expect(r1000 <= cluster.count, "\(seen)")
        // …while the unrelated one scores below every item of the cluster.
        if let r1001 = rank(1001) {
            #expect(r1001 > r1000 && recs[r1001].score < cluster.map(\.score).min()!, "\(seen)")
        }
        let scores = try await c.score(user: 3, items: [1000, 1001], scorer: "text-cnn")
        #expect(scores[0].score > scores[1].score)
        let stats = try await c.stats()
        #expect(stats["text_cnn_positives_learned"]! > 7000)
    }

    @Test func textEdgeCasesHaveDefinedAnswers() async throws {
        let s = try TestServer("""
            [scorers]
            load = ["text-cnn", "cf"]
            """)
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        // Empty text: stored, scorable (the encoder reads no words).
        #expect(try await c.upsertItem(1, text: "") == UpsertReply(created: true, truncated: false))
        // 1 MB of text: cut to limits.max_text_bytes (64 KiB by default).
        let big = String(repeating: "abcdefgh ", count: 1_048_576 / 9 + 1)
        #expect(try await c.upsertItem(2, text: big) == UpsertReply(created: true, truncated: true))
        // Invalid UTF-8 on the wire: refused as MALFORMED_PAYLOAD, nothing stored.
        let raw = try RawSocket(port: s.port)
        var payload: [UInt8] = []
        payload.append(contentsOf: withUnsafeBytes(of: UInt64(3).littleEndian) { Array($0) })
        payload.append(contentsOf: [4, 0, 0, 0, 0xFF, 0xFE, 0x41, 0x42])  // u32 length, bad bytes
        payload.append(contentsOf: [0, 0])                                  // no attributes
        var frame = withUnsafeBytes(of: UInt32(8 + payload.count).littleEndian) { Array($0) }
        frame += [1, Opcode.upsertItem.rawValue, 0, 0, 9, 0, 0, 0] + payload
        try raw.send(frame)
        let reply = try #require(try raw.readFrame())
        #expect(reply.error?.code == .malformedPayload, "\(String(describing: reply.reply))")
        try await c.ping()
        // 100,000 upserts in one stream of pipelined requests.
        var total = 0
        for chunk in 0..<20 {
            let batch = (0..<5000).map { k in
                Request.upsertItem(UpsertItem(item: UInt64(10 + chunk * 5000 + k), text: "item number \(k) genre \(k % 17)"))
            }
            let replies = try await c.pipeline(batch)
            total += replies.filter { if case .upsertItem = $0 { true } else { false } }.count
        }
        #expect(total == 100_000)
        let stats = try await c.stats()
        #expect(stats["items_with_text"] == 100_002)
        #expect(stats["text_cnn_items_with_text"] == 100_002)
        let recs = try await c.recommend(user: 1, k: 5, scorer: "text-cnn")
        #expect(recs.count == 5)
        #expect(recs.allSatisfy { $0.score.isFinite })
    }
}

/// A seeded generator for reproducible test streams.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
