// The server through real loopback sockets: the client library, raw bytes,
// hostile input, many connections, pipelining, backpressure and stopping.

import Foundation
import ScratchDirectory
import Testing
import PerennialClient
import PerennialCore
import PerennialProtocol
import Synchronization
@testable import PerennialServer

@Suite(.serialized) struct ServerTests {
    @Test func pingRecommendAndReadYourWrites() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        let hello = try await c.hello()
        #expect(hello.protocolVersion == 1 && hello.maxEvents == 10_000)
        try await c.ping()
        #expect(try await c.recommend(user: 1, k: 5).isEmpty)
        // Item 10 is clicked by three users, 20 by two, 30 by one.
        let events = [(1, 10), (2, 10), (3, 10), (1, 20), (2, 20), (4, 30)].map {
            WireEvent(user: UInt64($0.0), item: UInt64($0.1), kind: .click)
        }
        let ack = try await c.feedback(events)
        #expect(ack.firstSeq == 1 && ack.lastSeq == 6)
        // Sent right after the acknowledgement on the same connection: sees it.
        let recs = try await c.recommend(user: 99, k: 5, scorer: "popularity")
        #expect(recs.map(\.item) == [10, 20, 30])
        #expect(recs.map(\.score) == [3, 2, 1])
        // Own history excluded.
        #expect(try await c.recommend(user: 1, k: 5).map(\.item) == [30])
        // The default scorer (cf) knows nobody about user 99: most popular first.
        #expect(try await c.recommend(user: 99, k: 5).map(\.item) == [10, 20, 30])
        let scores = try await c.score(user: 99, items: [10, 12345], scorer: "popularity")
        #expect(scores == [ItemScore(score: 3, known: true), ItemScore(score: 0, known: false)])
        let stats = try await c.stats()
        #expect(stats["events_accepted"] == 6)
        #expect(stats["events_applied"] == 6)
        #expect(stats["connections"] == 1)
        for key in ["connections", "events_accepted", "events_durable", "events_applied", "users", "items", "uptime_ms"] {
            #expect(stats[key] != nil, "missing \(key)")
        }
        // Another connection reads its writes with min_applied_seq.
        let other = try await PerennialClient.connect(port: s.port)
        defer { other.close() }
        let a2 = try await c.feedback([WireEvent(user: 5, item: 30, kind: .purchase, value: 5)])
        let r2 = try await other.recommend(user: 98, k: 1, scorer: "popularity", minAppliedSeq: a2.lastSeq)
        #expect(r2.first?.item == 30)  // 1 + 5 = 6 > 3
        await #expect(throws: PerennialClientError.self) {
            _ = try await other.recommend(user: 98, k: 1, minAppliedSeq: 1_000_000)
        }
    }

    @Test func badEventsRefuseTheWholeBatchWithItsIndex() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        let batch = [
            WireEvent(user: 1, item: 1, kind: .click),
            WireEvent(user: 1, item: 2, kind: .rating, value: 4),
            WireEvent(user: 1, item: 3, kind: .rating, value: .nan),
        ]
        do {
            _ = try await c.feedback(batch)
            Issue.record("NaN accepted")
        } catch let e as PerennialClientError {
            guard case .server(let code, _, let detail, let message) = e else { Issue.record("\(e)"); return }
            #expect(code == .invalidEvent && detail == 2)
            #expect(message.contains("event 2"))
        }
        #expect(try await c.stats()["events_accepted"] == 0)
        await #expect(throws: PerennialClientError.self) { _ = try await c.recommend(user: 1, k: 3, scorer: "nope") }
        // The connection is still healthy.
        try await c.ping()
        #expect(try await c.feedback(Array(batch.prefix(2))).lastSeq == 2)
    }

    @Test func hostileBytesGetErrorsAndOthersKeepWorking() async throws {
        let s = try TestServer("[limits]\nframe_timeout_ms = 300\n")
        defer { s.stop() }
        let healthy = try await PerennialClient.connect(port: s.port)
        defer { healthy.close() }

        // Garbage: a length below the header size → fatal MALFORMED_FRAME, then close.
        let g = try RawSocket(port: s.port)
        try g.send([3, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6])
        let gf = try g.readUntilClosed()
        #expect(gf.count == 1 && gf[0].error?.code == .malformedFrame)

        // Oversized: refused from the header alone.
        let o = try RawSocket(port: s.port)
        try o.send(header(length: 100_000_000, opcode: 2, id: 5))
        let of = try o.readUntilClosed()
        #expect(of.count == 1 && of[0].error?.code == .frameTooLarge && of[0].header.requestID == 5)

        // Wrong version: fatal.
        let v = try RawSocket(port: s.port)
        try v.send(header(length: 8, version: 2, opcode: 2, id: 6))
        #expect(try v.readUntilClosed().first?.error?.code == .unsupportedVersion)

        // Unknown opcode: an error for that request, and the connection goes on.
        let u = try RawSocket(port: s.port)
        try u.send(header(length: 8, opcode: 0x42, id: 7) + header(length: 8, opcode: 2, id: 8))
        let u1 = try u.readFrame(), u2 = try u.readFrame()
        #expect(u1?.error?.code == .unknownOpcode && u1?.header.requestID == 7)
        #expect(u2?.header.opcode == Opcode.ping.rawValue && u2?.header.requestID == 8)

        // Bad UTF-8 in a scorer name: MALFORMED_PAYLOAD, not fatal.
        var bad: [UInt8] = []
        Request.recommend(RecommendRequest(user: 1, k: 1, scorer: "ab")).encode(into: &bad, requestID: 9)
        let at = bad.firstIndex(of: UInt8(ascii: "a"))!
        bad[at] = 0xff
        try u.send(bad)
        #expect(try u.readFrame()?.error?.code == .malformedPayload)
        try u.send(.ping, id: 10)
        #expect(try u.readFrame()?.header.requestID == 10)

        // A frame cut off by a disconnect.
        let d = try RawSocket(port: s.port)
        try d.send(header(length: 100, opcode: 2, id: 11) + [1, 2, 3])
        d.close()

        // Half a frame, then silence: TIMEOUT after frame_timeout_ms, then close.
        let h = try RawSocket(port: s.port)
        try h.send(Array(header(length: 8, opcode: 2, id: 12).prefix(6)))
        let hf = try h.readUntilClosed()
        #expect(hf.count == 1 && hf[0].error?.code == .timeout)

        // Through all that the healthy connection kept working.
        try await healthy.ping()
        for sock in [g, o, v, u, h] { sock.close() }
        #expect(try await eventually { try await healthy.stats()["connections"] == 1 })
        let stats = try await healthy.stats()
        #expect(stats["fatal_errors"]! >= 4)
    }

    @Test func pipelinedRequestsComeBackInOrder() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let sock = try RawSocket(port: s.port)
        var bytes: [UInt8] = []
        for i in 0..<100 {
            let r: Request = i % 3 == 0 ? .ping : i % 3 == 1
                ? .recommend(RecommendRequest(user: UInt64(i + 1), k: 3))
                : .feedback([WireEvent(user: UInt64(i), item: UInt64(i % 7 + 1), kind: .view)])
            r.encode(into: &bytes, requestID: UInt32(1000 + i))
        }
        try sock.send(bytes)  // one write
        for i in 0..<100 {
            let f = try #require(try sock.readFrame())
            #expect(f.header.requestID == UInt32(1000 + i))
            #expect(f.header.isReply && f.error == nil)
        }
    }

    /// RECOMMENDs read in one turn of the loop, from one connection's
    /// pipeline and from several connections, are answered in batches; each
    /// answer is exactly the one the request gets alone, in the order
    /// asked, and the requests between them (PING, an error, FEEDBACK) keep
    /// their places.
    @Test func recommendsReadTogetherAreAnsweredAsAlone() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        var rng = SplitMix64(seed: 5)
        let events = (0..<3000).map { _ in
            let u = rng.below(60) + 1
            return WireEvent(user: UInt64(u), item: UInt64((u % 3) * 40 + rng.below(40) + 1), kind: .click)
        }
        _ = try await c.feedback(events)
        let users: [UInt64] = Array(1...24) + [999]
        var alone: [UInt64: [RankedItem]] = [:]
        for u in users { alone[u] = try await c.recommend(user: u, k: 7) }
        #expect(alone[1]!.count == 7)

        // One connection's pipeline, with other requests among the RECOMMENDs.
        let sock = try RawSocket(port: s.port)
        var bytes: [UInt8] = []
        for (i, u) in users.enumerated() {
            Request.recommend(RecommendRequest(user: u, k: 7)).encode(into: &bytes, requestID: UInt32(100 + 3 * i))
            let other: Request = i % 2 == 0 ? .ping : .recommend(RecommendRequest(user: u, k: 7, scorer: "absent"))
            other.encode(into: &bytes, requestID: UInt32(101 + 3 * i))
            Request.recommend(RecommendRequest(user: u, k: 7)).encode(into: &bytes, requestID: UInt32(102 + 3 * i))
        }
        try sock.send(bytes)
        for (i, u) in users.enumerated() {
            for j in 0..<3 {
                let f = try #require(try sock.readFrame())
                #expect(f.header.requestID == UInt32(100 + 3 * i + j))
                if j == 1 {
                    #expect((f.error != nil) == (i % 2 == 1))
                } else if case .recommend(let r)? = f.reply {
                    #expect(r.items == alone[u]!, "user \(u)")
                } else {
                    Issue.record("request \(100 + 3 * i + j): not a RECOMMEND reply")
                }
            }
        }

        // Several connections at once.
        let socks = try (0..<6).map { _ in try RawSocket(port: s.port) }
        for (n, sock) in socks.enumerated() {
            var b: [UInt8] = []
            for (i, u) in users.enumerated() where i % 6 == n {
                Request.recommend(RecommendRequest(user: u, k: 7)).encode(into: &b, requestID: UInt32(i))
            }
            try sock.send(b)
        }
        for (n, sock) in socks.enumerated() {
            for (i, u) in users.enumerated() where i % 6 == n {
                let f = try #require(try sock.readFrame())
                #expect(f.header.requestID == UInt32(i))
                if case .recommend(let r)? = f.reply { #expect(r.items == alone[u]!) } else { Issue.record("no reply for user \(u)") }
            }
            sock.close()
        }
        let stats = try await c.stats()
        #expect(stats["recommends_batched"]! > stats["recommend_batches"]!, "no batch held more than one request")
    }

    /// A batch waits for the connections the previous batch answered
    /// (`server.recommend_batch_wait_us`), and only for them: a lone client
    /// is never held, and many clients in a closed loop still get exactly
    /// the answers they would get alone.
    @Test func batchesWaitOnlyForConnectionsExpectedBack() async throws {
        let s = try TestServer("[server]\nrecommend_batch_wait_us = 50000\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        var rng = SplitMix64(seed: 9)
        let events = (0..<2000).map { _ in
            WireEvent(user: UInt64(rng.below(40) + 1), item: UInt64(rng.below(150) + 1), kind: .click)
        }
        _ = try await c.feedback(events)
        let users = Array(UInt64(1)...40)
        var alone: [UInt64: [RankedItem]] = [:]
        for u in users { alone[u] = try await c.recommend(user: u, k: 5) }
        let lone = try await c.stats()
        #expect(lone["recommend_batch_waits"] == 0, "a lone client's requests were held")
        #expect(lone["recommend_batches"] == 40)

        // Eight clients in a closed loop, each sending its next request
        // when the last reply came.
        let socks = try (0..<8).map { _ in try RawSocket(port: s.port) }
        // (Threads, not tasks: the sockets block, and the clients must
        // really run at once.)
        let done = DispatchGroup()
        let failures = Mutex<[String]>([])
        let expected = alone
        for (n, sock) in socks.enumerated() {
            done.enter()
            Thread.detachNewThread {
                defer { sock.close(); done.leave() }
                for round in 0..<40 {
                    let u = users[(n * 5 + round) % users.count]
                    var b: [UInt8] = []
                    Request.recommend(RecommendRequest(user: u, k: 5)).encode(into: &b, requestID: UInt32(round))
                    guard (try? sock.send(b)) != nil, let f = try? sock.readFrame() else {
                        failures.withLock { $0.append("client \(n): no reply in round \(round)") }
                        return
                    }
                    guard f.header.requestID == UInt32(round), case .recommend(let r)? = f.reply, r.items == expected[u]! else {
                        failures.withLock { $0.append("client \(n), user \(u): not the answer it gets alone") }
                        return
                    }
                }
            }
        }
        done.wait()
        #expect(failures.withLock { $0 } == [])
        let after = try await c.stats()
        #expect(after["recommends_batched"]! - lone["recommends_batched"]! == 320)
    }

    @Test func aHalfClosedClientGetsEveryReply() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let sock = try RawSocket(port: s.port)
        var bytes: [UInt8] = []
        // Feedback then reads that must wait for the learner, then EOF.
        Request.feedback((1...500).map { WireEvent(user: UInt64($0 % 9 + 1), item: UInt64($0), kind: .click) })
            .encode(into: &bytes, requestID: 1)
        for i in 2...50 { Request.recommend(RecommendRequest(user: 3, k: 5)).encode(into: &bytes, requestID: UInt32(i)) }
        bytes += header(length: 100, opcode: 2, id: 99) + [1, 2]  // a partial frame: discarded
        try sock.send(bytes)
        sock.shutdownWrite()
        let frames = try sock.readUntilClosed()
        #expect(frames.map(\.header.requestID) == Array(1...50))
        #expect(frames.allSatisfy { $0.error == nil })
    }

    @Test func aThousandConcurrentConnections() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let seed = try await PerennialClient.connect(port: s.port)
        _ = try await seed.feedback((1...50).map { WireEvent(user: 1, item: UInt64($0), kind: .click) })
        seed.close()
        var socks: [RawSocket] = []
        for _ in 0..<1000 { socks.append(try RawSocket(port: s.port, timeout: 20)) }
        for (i, sock) in socks.enumerated() {
            var b: [UInt8] = []
            Request.ping.encode(into: &b, requestID: 1)
            Request.recommend(RecommendRequest(user: UInt64(i + 2), k: 10)).encode(into: &b, requestID: 2)
            try sock.send(b)
        }
        var ok = 0
        for sock in socks {
            let p = try sock.readFrame(), r = try sock.readFrame()
            if p?.header.opcode == Opcode.ping.rawValue, case .recommend(let rec)? = r?.reply, rec.items.count == 10 { ok += 1 }
        }
        #expect(ok == 1000)
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        #expect(try await c.stats()["connections"] == 1001)
        for sock in socks { sock.close() }
        #expect(try await eventually(10) { try await c.stats()["connections"] == 1 })
    }

    /// A client that sends far more than it reads: replies wait, reading
    /// pauses (counted), nothing is lost or reordered, whether RECOMMENDs are
    /// answered one by one or in batches (whose replies count as owed from
    /// the moment their requests are read).
    @Test(arguments: [1, 16]) func writeBackpressureLosesNothing(batch: Int) async throws {
        let s = try TestServer("[server]\nrecommend_batch = \(batch)\n[limits]\nmax_pending_bytes = 4096\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        // 1,500 items, so an answer of k = 1000 is 12 KB.
        _ = try await c.feedback((1...1500).map { WireEvent(user: 1, item: UInt64($0), kind: .view) })
        let sock = try RawSocket(port: s.port)
        // 600 requests (about 7 MB of replies), the replies left unread
        // for half a second: the kernel's buffers fill, the server pauses.
        let n = 600
        var bytes: [UInt8] = []
        for i in 0..<n { Request.recommend(RecommendRequest(user: 2, k: 1000)).encode(into: &bytes, requestID: UInt32(i)) }
        let payload = bytes
        let writer = Thread { try? sock.send(payload) }
        writer.start()
        try await Task.sleep(nanoseconds: 500_000_000)
        var seen = 0
        while seen < n, let f = try sock.readFrame() {
            #expect(f.header.requestID == UInt32(seen) && f.error == nil)
            if case .recommend(let r)? = f.reply, seen == 0 { #expect(r.items.count == 1000) }
            seen += 1
        }
        #expect(seen == n)
        #expect(try await c.stats()["backpressure_pauses"]! > 0)
    }

    @Test func learnerQueueBackpressureNeverDrops() async throws {
        let s = try TestServer("[limits]\nmax_events = 16\n[learner]\nqueue_capacity = 16\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        _ = try await c.hello()
        let events = (0..<20_000).map { (i: Int) -> WireEvent in
            let user = UInt64(i % 97 + 1), item = UInt64(i % 301 + 1)
            return WireEvent(user: user, item: item, kind: .view)
        }
        let ack = try await c.stream(events, batchSize: 16, window: 32)
        #expect(ack?.lastSeq == 20_000)
        _ = try await c.recommend(user: 1, k: 1, minAppliedSeq: 20_000)
        let stats = try await c.stats()
        #expect(stats["events_applied"] == 20_000)
        #expect(stats["learner_queue_capacity"] == 16)
    }

    @Test func connectionLimitAndGracefulStop() async throws {
        let s = try TestServer("[limits]\nmax_connections = 3\n")
        let a = try RawSocket(port: s.port), b = try RawSocket(port: s.port), c = try RawSocket(port: s.port)
        let d = try RawSocket(port: s.port)
        #expect(try d.readUntilClosed().first?.error?.code == .busy)
        // Pipelined work then a stop: everything read is answered, then EOF.
        var bytes: [UInt8] = []
        for i in 0..<50 { Request.ping.encode(into: &bytes, requestID: UInt32(i)) }
        try a.send(bytes)
        try await Task.sleep(nanoseconds: 100_000_000)
        s.stop()
        let frames = try a.readUntilClosed()
        #expect(frames.count == 50)
        #expect(try b.readUntilClosed().isEmpty)
        _ = c
    }

    @Test func upsertItemTextIsCutAtTheLimit() async throws {
        let s = try TestServer("[limits]\nmax_text_bytes = 10\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        let first = try await c.upsertItem(7, text: "héllo wörld", attributes: [ItemAttribute(key: "genre", value: "x")])
        #expect(first == UpsertReply(created: true, truncated: true))
        let second = try await c.upsertItem(7, text: "")
        #expect(second == UpsertReply(created: false, truncated: false))
        #expect(try await c.score(user: 1, items: [7])[0].known)
        #expect(try await c.stats()["items_with_text"] == 1)
    }

    @Test func deletedItemsAndUsersAreForgottenThroughTheSwiftClient() async throws {
        let s = try TestServer("")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        var events: [WireEvent] = []
        for u in 1...20 { for i in 1...8 { events.append(WireEvent(user: UInt64(u), item: UInt64(i + u % 3), kind: .click, value: 1, timestamp: 0)) } }
        _ = try await c.feedback(events)
        #expect(try await c.recommend(user: 500, k: 10).contains { $0.item == 3 })
        #expect(try await c.deleteItems([3, 4, 999]) == 2)
        #expect(try await c.deleteItems([3]) == 0)
        let after = try await c.recommend(user: 500, k: 10)
        #expect(!after.isEmpty && after.allSatisfy { $0.item != 3 && $0.item != 4 })
        #expect(try await c.score(user: 1, items: [3, 5]).map(\.known) == [false, true])
        #expect(try await c.stats()["items_deleted"] == 2)
        await #expect(throws: PerennialClientError.self) { _ = try await c.deleteItems([]) }
        // User 4 has a history (its answer leaves out items 2-9); deleted, it is a stranger.
        #expect(try await c.recommend(user: 4, k: 10) != c.recommend(user: 500, k: 10))
        #expect(try await c.deleteUsers([4, 4, 999]) == 1)
        #expect(try await c.recommend(user: 4, k: 10) == c.recommend(user: 500, k: 10))
        #expect(try await c.stats()["users"] == 19)
        try await c.ping()
    }

    @Test func replayOfMovieLensAppliesEveryEvent() async throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared/data/ml-latest-small/ratings.csv")
        guard let text = try? String(contentsOf: folder, encoding: .utf8) else {
            print("skipping: ../shared/data/ml-latest-small is not present")
            return
        }
        var events: [WireEvent] = []
        for line in text.split(whereSeparator: { $0.isNewline }).dropFirst() {
            let f = line.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) }
            let user = UInt64(f[0])!, item = UInt64(f[1])!
            let rating = Float(f[2])!, timestamp = Int64(f[3])!
            events.append(WireEvent(user: user, item: item, kind: .rating, value: rating, timestamp: timestamp))
        }
        // The spine's replay check: popularity only, so a debug build applies
        // the whole stream quickly (CF's cost is measured by `perennial eval`).
        let s = try TestServer("[scorers]\nload = [\"popularity\"]\n[limits]\nwait_ms = 120000\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        let ack = try await c.stream(events, batchSize: 1000, window: 8)
        #expect(ack?.lastSeq == 100_836)
        _ = try await c.recommend(user: 1, k: 10, minAppliedSeq: 100_836)
        let stats = try await c.stats()
        #expect(stats["events_applied"] == 100_836)
        #expect(stats["users"] == 610)
    }
}

/// CF through a real server: a planted preference structure streamed in,
/// then a held-out user's recommendations move toward their group.
@Suite struct CFServerTests {
    @Test func plantedPreferencesThroughTheServer() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        var rng = SystemRandomNumberGenerator()
        var events: [WireEvent] = []
        for _ in 0..<6000 {
            let user = UInt64.random(in: 1...300, using: &rng)
            let group = Int(user % 3)
            let own = Int.random(in: 0..<10, using: &rng) != 0
            let g = own ? group : Int.random(in: 0..<3, using: &rng)
            events.append(WireEvent(user: user, item: UInt64(g * 40 + Int.random(in: 1...40, using: &rng)), kind: .click))
        }
        let ack = try await c.stream(events, batchSize: 500, window: 4)
        #expect(ack?.lastSeq == 6000)
        // Before: an unknown user gets popular items from all groups.
        let before = try await c.recommend(user: 5000, k: 10)
        // The held-out user clicks two items of group 2 (items 81...120).
        _ = try await c.feedback([WireEvent(user: 5000, item: 85, kind: .click), WireEvent(user: 5000, item: 99, kind: .click)])
        let after = try await c.recommend(user: 5000, k: 10)
        let inGroup = { (r: [RankedItem]) in r.filter { (81...120).contains($0.item) }.count }
        #expect(inGroup(after) >= 8, "after: \(after.map(\.item))")
        #expect(inGroup(after) > inGroup(before))
        let stats = try await c.stats()
        #expect(stats["table_item_rows"] == 120)
        #expect(stats["cf_events"] == 6002)
    }

    @Test func nanRatingsAreRefusedAndChangeNothing() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        _ = try await c.feedback([WireEvent(user: 1, item: 1, kind: .rating, value: 4)])
        let before = try await c.score(user: 2, items: [1])
        for bad: Float in [.nan, .infinity, -1, 11] {
            await #expect(throws: PerennialClientError.self) {
                _ = try await c.feedback([WireEvent(user: 3, item: 1, kind: .rating, value: bad)])
            }
        }
        #expect(try await c.score(user: 2, items: [1]) == before)
        let stats = try await c.stats()
        #expect(stats["events_accepted"] == 1 && stats["users"] == 1)
    }

    /// A connection that sent a large frame and got a long reply holds its
    /// grown buffers only while it needs them: idle, it is back to a few KiB.
    @Test func idleConnectionsGiveBackLargeBuffers() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        let big = try await PerennialClient.connect(port: s.port)
        defer { big.close() }
        // A 290 KB frame in, and a long reply (1,000 items) out.
        _ = try await big.feedback((0..<10_000).map { WireEvent(user: UInt64($0 % 50 + 1), item: UInt64($0 + 1), kind: .view) })
        #expect(try await big.recommend(user: 999, k: 1000).count == 1000)
        _ = try await big.upsertItem(5, text: String(repeating: "long text ", count: 6000))
        let held = try await c.stats()["connection_buffer_bytes"]!
        #expect(held <= 400_000, "two connections hold \(held) bytes")
    }

    /// A client still sending an oversized frame when the server refuses it
    /// reads the FRAME_TOO_LARGE error, not a connection reset: the server
    /// shuts its side down and drops the rest (a lingering close); once the
    /// client closes too, the connection is gone.
    @Test func anOversizedFrameGetsItsErrorNotAReset() async throws {
        let s = try TestServer("[limits]\nmax_frame_bytes = 65536\nmax_events = 1000\n")
        defer { s.stop() }
        for _ in 0..<3 {
            let sock = try RawSocket(port: s.port)
            // Announces 8 MiB and sends 2 MiB of it in one go.
            var bytes = header(length: 8 << 20, opcode: Opcode.upsertItem.rawValue, id: 77)
            bytes += [UInt8](repeating: 0x61, count: 2 << 20)
            try sock.send(bytes)
            let f = try #require(try sock.readFrame())
            #expect(f.error?.code == .frameTooLarge && f.header.requestID == 77)
            #expect(try sock.readFrame() == nil)  // then the server's side ends
            sock.close()
        }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        #expect(try await eventually { try await c.stats()["connections"] == 1 })
    }

    /// Connections lingering after a fatal error hold no connection slot,
    /// and one refused with BUSY is closed at once instead of lingering.
    @Test func lingeringAndRefusedConnectionsHoldNoSlots() async throws {
        let s = try TestServer("[limits]\nmax_connections = 3\nmax_frame_bytes = 65536\nmax_events = 1000\n")
        defer { s.stop() }
        let held = try (0..<2).map { _ in try RawSocket(port: s.port) }
        for sock in held {
            try sock.send(.ping, id: 1)
            #expect(try sock.readFrame()?.error == nil)
        }
        var lingering: [RawSocket] = []
        for _ in 0..<4 {
            let sock = try RawSocket(port: s.port)
            try sock.send(header(length: 8 << 20, opcode: Opcode.upsertItem.rawValue, id: 5) + [UInt8](repeating: 1, count: 100_000))
            #expect(try sock.readFrame()?.error?.code == .frameTooLarge)
            lingering.append(sock)  // left open: the server lingers on it
        }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        try await c.ping()
        let extra = try RawSocket(port: s.port)
        #expect(try extra.readFrame()?.error?.code == .busy)
        #expect(try extra.readFrame() == nil)
        for sock in held + lingering + [extra] { sock.close() }
    }

    /// The Swift client refuses a request over the server's max_frame_bytes
    /// before sending it (the server would drop the connection mid-send),
    /// and the connection goes on.
    @Test func oversizedRequestsAreRefusedByTheClient() async throws {
        let s = try TestServer("[limits]\nmax_frame_bytes = 65536\nmax_events = 1000\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        _ = try await c.hello()
        await #expect(throws: PerennialClientError.requestTooLarge(bytes: 100_026, maxFrameBytes: 65536)) {
            _ = try await c.upsertItem(5, text: String(repeating: "x", count: 100_000))
        }
        try await c.ping()
        #expect(try await c.upsertItem(5, text: "short").created)
    }

    /// Timestamps drive id expiry: an event from the far future (or one in
    /// milliseconds) is refused with its index, so it cannot make every
    /// user look idle; a small clock skew is accepted.
    @Test func idBoundsRefuseNewIdsAndKnownIdsKeepLearning() async throws {
        let s = try TestServer("[limits]\nmax_user_ids = 3\nmax_item_ids = 4\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        func refusal(_ call: () async throws -> Void) async -> (ErrorCode?, UInt32, String) {
            do { try await call() } catch PerennialClientError.server(let code, _, let detail, let message) {
                return (code, detail, message)
            } catch { return (nil, 0, "\(error)") }
            return (nil, 0, "accepted")
        }
        _ = try await c.feedback([WireEvent(user: 1, item: 1, kind: .click), WireEvent(user: 2, item: 2, kind: .click),
                                  WireEvent(user: 2, item: 3, kind: .click)])
        // The fifth item id, at index 2 (item 4 before it is the fourth).
        var (code, detail, message) = await refusal {
            _ = try await c.feedback([WireEvent(user: 1, item: 4, kind: .click), WireEvent(user: 2, item: 4, kind: .click),
                                      WireEvent(user: 1, item: 5, kind: .click)])
        }
        #expect(code == .capacity && detail == 2 && message.contains("item id 5") && message.contains("limits.max_item_ids"), "\(message)")
        // The fourth user id, at index 1 (user 3 is the third).
        (code, detail, message) = await refusal {
            _ = try await c.feedback([WireEvent(user: 3, item: 1, kind: .click), WireEvent(user: 4, item: 1, kind: .click)])
        }
        #expect(code == .capacity && detail == 1 && message.contains("user id 4") && message.contains("limits.max_user_ids"), "\(message)")
        // Nothing of a refused batch was taken; ids up to the bounds and known ids still are.
        var stats = try await c.stats()
        #expect(stats["events_accepted"] == 3 && stats["users"] == 2 && stats["items"] == 3 && stats["capacity_refusals"] == 2)
        _ = try await c.feedback([WireEvent(user: 3, item: 4, kind: .click), WireEvent(user: 1, item: 2, kind: .click)])
        // Both bounds reached: a new item's text is refused, a known one's kept.
        (code, _, message) = await refusal { _ = try await c.upsertItem(9, text: "a new item") }
        #expect(code == .capacity && message.contains("item id 9"), "\(message)")
        #expect(try await c.upsertItem(4, text: "known item").created == false)
        (code, detail, _) = await refusal { _ = try await c.feedback([WireEvent(user: 2, item: 1, kind: .click), WireEvent(user: 2, item: 6, kind: .click)]) }
        #expect(code == .capacity && detail == 1)
        _ = try await c.feedback([WireEvent(user: 2, item: 1, kind: .click)])
        stats = try await c.stats()
        #expect(stats["events_accepted"] == 6 && stats["users"] == 3 && stats["items"] == 4 && stats["capacity_refusals"] == 4)
        #expect(try await c.recommend(user: 3, k: 3).count == 3)
        try await c.ping()
    }

    @Test func idBoundsCountOnlyAdmittedUsers() async throws {
        // With min_occurrences 2 a first sighting takes no row of its own
        // (the shared fallback user, whose row is no client's id and is not
        // counted, learns it).
        let s = try TestServer("[limits]\nmax_user_ids = 2\n[lifelong]\nmin_occurrences = 2\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        // Ids with rows: users 1 and 2 at their second events (and the fallback user's row).
        _ = try await c.feedback([WireEvent(user: 1, item: 1, kind: .click), WireEvent(user: 2, item: 1, kind: .click),
                                  WireEvent(user: 3, item: 1, kind: .click), WireEvent(user: 1, item: 2, kind: .click)])
        _ = try await c.feedback([WireEvent(user: 2, item: 2, kind: .click), WireEvent(user: 4, item: 2, kind: .click)])
        do {
            _ = try await c.feedback([WireEvent(user: 5, item: 1, kind: .click), WireEvent(user: 3, item: 1, kind: .click)])
            Issue.record("a third user id was given a row")
        } catch PerennialClientError.server(let code, _, let detail, let message) {
            #expect(code == .capacity && detail == 1 && message.contains("user id 3"), "\(message)")
        }
        // Users evicted by max_users are never refused.
        let e = try TestServer("[limits]\nmax_user_ids = 2\n[lifelong]\nmax_users = 2\n")
        defer { e.stop() }
        let d = try await PerennialClient.connect(port: e.port)
        defer { d.close() }
        for u in 1...6 { _ = try await d.feedback([WireEvent(user: UInt64(u), item: 1, kind: .click)]) }
        #expect(try await d.stats()["lifelong_users_expired"] == 4)
        // Users idle past expire_after_seconds are room: the batch forgets
        // them before its new users take rows. (Review finding: refused.)
        let x = try TestServer("[limits]\nmax_user_ids = 2\n[lifelong]\nexpire_after_seconds = 100\n")
        defer { x.stop() }
        let y = try await PerennialClient.connect(port: x.port)
        defer { y.close() }
        let now = Int64(Date().timeIntervalSince1970)
        _ = try await y.feedback([WireEvent(user: 1, item: 1, kind: .click, timestamp: now - 10_000),
                                  WireEvent(user: 2, item: 1, kind: .click, timestamp: now - 10_000)])
        _ = try await y.feedback([WireEvent(user: 3, item: 1, kind: .click, timestamp: now),
                                  WireEvent(user: 4, item: 1, kind: .click, timestamp: now)])
        var stats = try await y.stats()
        #expect(stats["users"] == 2 && stats["lifelong_users_expired"] == 2 && stats["capacity_refusals"] == 0)
        // An idle user who comes back in the batch that forgets them takes a
        // new row (review finding: counted as freed, and never as taken again).
        let b = try TestServer("[limits]\nmax_user_ids = 3\n[lifelong]\nexpire_after_seconds = 3600\n")
        defer { b.stop() }
        let bc = try await PerennialClient.connect(port: b.port)
        defer { bc.close() }
        _ = try await bc.feedback((1...3).map { WireEvent(user: UInt64($0), item: 1, kind: .click, timestamp: now - 10_000) })
        do {
            _ = try await bc.feedback([1, 4, 5, 6].map { WireEvent(user: $0, item: 1, kind: .click, timestamp: now) })
            Issue.record("a fourth row was given")
        } catch PerennialClientError.server(let code, _, let detail, _) {
            #expect(code == .capacity && detail == 3)
        }
        // Expiry also runs at each new user's own time: a back-dated first
        // event does not hide the room the later ones make.
        _ = try await bc.feedback([WireEvent(user: 1, item: 2, kind: .click, timestamp: now - 9_000),
                                   WireEvent(user: 5, item: 2, kind: .click, timestamp: now),
                                   WireEvent(user: 6, item: 2, kind: .click, timestamp: now)])
        stats = try await bc.stats()
        #expect(stats["users"] == 3 && stats["lifelong_users_expired"] == 2)
        // The shared fallback user's row is made at the bound without
        // refusing the event that needs it (it had been counted, and a
        // first sighting at the bound was refused as a new id: helper-88),
        // and a second client id is still refused.
        let f = try TestServer("[limits]\nmax_user_ids = 1\n[lifelong]\nmin_occurrences = 2\n")
        defer { f.stop() }
        let g = try await PerennialClient.connect(port: f.port)
        defer { g.close() }
        _ = try await g.feedback([WireEvent(user: 1, item: 1, kind: .click), WireEvent(user: 1, item: 2, kind: .click)])
        do {
            _ = try await g.feedback([WireEvent(user: 2, item: 1, kind: .click), WireEvent(user: 2, item: 2, kind: .click)])
            Issue.record("a second user id was given a row")
        } catch PerennialClientError.server(let code, _, let detail, _) {
            #expect(code == .capacity && detail == 1)
        }
        _ = try await g.feedback([WireEvent(user: 2, item: 1, kind: .click)])  // learned by the shared user
        stats = try await g.stats()
        #expect(stats["users"] == 2 && stats["events_accepted"] == 3)
    }

    /// While the log replays, FEEDBACK is checked against the ids the model
    /// will hold (IdsAhead), counted as the live check counts them: not the
    /// shared fallback user's row (helper-90: the projection still counted
    /// it, and held a batch the live server takes until RECOVERING).
    @Test func theReplayProjectionCountsIdsAsTheLiveCheckDoes() throws {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array([.string("popularity")]))
        doc.set("lifelong.min_occurrences", .integer(2))
        let m = Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
        var out: [LearnEvent] = []
        // Users 1 and 2 get rows at their second events; user 3, seen once, makes the fallback user.
        m.admit([(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)].map { IncomingEvent(user: $0.0, item: $0.1, kind: .click, value: 1, timestamp: 1000) },
                now: 0, into: &out)
        for l in out { m.learn(l) }
        #expect(m.fallbackUser != nil && m.users.liveCount == 3 && m.clientUserIDs == 2)
        // (A new user's two events, so that the live check gives it a row:
        // the projection counts every unknown id as a row, first sightings
        // too, and stays stricter for those.)
        let known = [WireEvent(user: 1, item: 1, kind: .click)]
        let newUser = [WireEvent(user: 4, item: 1, kind: .click), WireEvent(user: 4, item: 2, kind: .click)]
        for bound in [2, 3] {
            for batch in [known, newUser] {
                let live = m.firstBreach(of: batch.map { IncomingEvent(user: $0.user, item: $0.item, kind: .click, value: 1, timestamp: 1001) },
                                         maxUserIDs: bound, maxItemIDs: 0) == nil
                let p = IdsAhead(model: m).projected(with: batch, model: m)
                let replaying = m.boundsAdmit(users: p.users, items: p.items, maxUserIDs: bound, maxItemIDs: 0)
                #expect(live == replaying, "bound \(bound), user \(batch[0].user): live \(live), during the replay \(replaying)")
            }
        }
    }

    @Test func farFutureTimestampsAreRefusedAndExpireNobody() async throws {
        let s = try TestServer("[lifelong]\nexpire_after_seconds = 3600\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        _ = try await c.feedback((1...5).map { WireEvent(user: UInt64($0), item: 7, kind: .click) })
        let now = Int64(Date().timeIntervalSince1970)
        // Expiry after an hour: at most 6 minutes ahead (the reviewer's 23 h
        // ahead expired every user when only a day was the limit).
        for (late, index) in [(Int64.max, 1), (now * 1000, 1), (now + 200_000, 1), (now + 82_800, 1), (now + 400, 1)] {
            do {
                _ = try await c.feedback([WireEvent(user: 9, item: 8, kind: .click, timestamp: now),
                                          WireEvent(user: 10, item: 8, kind: .click, timestamp: late)])
                Issue.record("timestamp \(late) was accepted")
            } catch PerennialClientError.server(let code, _, let detail, let message) {
                #expect(code == .invalidEvent && detail == UInt32(index), "\(message)")
                #expect(message.contains("ahead of the server's clock"))
            }
        }
        _ = try await c.feedback([WireEvent(user: 11, item: 8, kind: .click, timestamp: now + 300)])
        let stats = try await c.stats()
        #expect(stats["events_accepted"] == 6 && stats["lifelong_users_expired"] == 0 && stats["users"] == 6)
        // Item expiry bounds it the same way. Items seen 3,250 s ago: the
        // refused batch (400 s ahead) would have forgotten them; one 300 s
        // ahead, within the tenth, does not.
        let items = try TestServer("[lifelong]\nitem_expire_after_seconds = 3600\n")
        defer { items.stop() }
        let d = try await PerennialClient.connect(port: items.port)
        defer { d.close() }
        _ = try await d.feedback((1...5).map { WireEvent(user: 1, item: UInt64($0), kind: .click, timestamp: now - 3250) })
        do {
            _ = try await d.feedback([WireEvent(user: 2, item: 9, kind: .click, timestamp: now + 400)])
            Issue.record("a timestamp 400 s ahead was accepted")
        } catch PerennialClientError.server(let code, _, _, let message) {
            #expect(code == .invalidEvent && message.contains("item_expire_after_seconds"), "\(message)")
        }
        _ = try await d.feedback([WireEvent(user: 2, item: 9, kind: .click, timestamp: now + 300)])
        let itemStats = try await d.stats()
        #expect(itemStats["items"] == 6 && itemStats["lifelong_items_expired"] == 0)
    }
}

@Suite struct AuthTests {
    @Test func tokensGuardEverythingButHello() async throws {
        let dir = URL(fileURLWithPath: ScratchDirectory.path("auth"))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try "client-secret-1\n".write(to: dir.appendingPathComponent("token"), atomically: true, encoding: .utf8)
        try "admin-secret-22".write(to: dir.appendingPathComponent("admin"), atomically: true, encoding: .utf8)
        let s = try TestServer("[auth]\ntoken_file = \"\(dir.path)/token\"\nadmin_token_file = \"\(dir.path)/admin\"\n")
        defer { s.stop() }

        let anonymous = try await PerennialClient.connect(port: s.port)
        defer { anonymous.close() }
        for call in [{ try await anonymous.ping() }, { _ = try await anonymous.stats() },
                     { _ = try await anonymous.recommend(user: 1) }, { _ = try await anonymous.feedback([WireEvent(user: 1, item: 1, kind: .click)]) }] {
            do { try await call(); Issue.record("allowed without a token") } catch let e as PerennialClientError {
                #expect(e.serverCode == .unauthorized)
            }
        }
        do { _ = try await anonymous.hello(token: "wrong-token"); Issue.record("wrong token accepted") } catch let e as PerennialClientError {
            #expect(e.serverCode == .unauthorized)
        }

        let client = try await PerennialClient.connect(port: s.port, token: "client-secret-1")
        defer { client.close() }
        try await client.ping()
        _ = try await client.feedback([WireEvent(user: 1, item: 1, kind: .click)])
        do { try await client.shutdown(); Issue.record("admin op without the admin token") } catch let e as PerennialClientError {
            #expect(e.serverCode == .unauthorized)
        }
        // (The wrong token; not the anonymous client's HELLO at connect,
        // which carried none.)
        let stats = try await client.stats()
        #expect(stats["auth_failures"] == 1)

        // A HELLO refused for its protocol version proves nothing, even with
        // the admin token, and ends the connection as the error table says
        // (review finding, helper-78: the PING and SNAPSHOT after it were
        // answered).
        let raw = try RawSocket(port: s.port)
        try raw.send(.hello(Hello(protocolVersion: 0, clientName: "old", token: "admin-secret-22")), id: 1)
        try raw.send(.snapshot, id: 2)
        let answers = try raw.readUntilClosed()
        #expect(answers.count == 1 && answers.first?.error?.code == .unsupportedVersion && answers.first?.header.requestID == 1, "\(answers)")

        let admin = try await PerennialClient.connect(port: s.port)   // greeted later, as before connect greeted
        defer { admin.close() }
        _ = try await admin.hello(token: "admin-secret-22")
        try await admin.ping()
        try await admin.shutdown()
    }
}

@Suite struct QueueShareTests {
    /// One connection may hold at most its share of the learner queue; a
    /// second connection's feedback still gets in while the first streams.
    @Test func oneFeederCannotFillTheQueue() async throws {
        let s = try TestServer("[limits]\nmax_events = 16\nfeedback_queue_share = 0.25\n[learner]\nqueue_capacity = 64\n[scorers]\nload = [\"popularity\"]\n")
        defer { s.stop() }
        let heavy = try await PerennialClient.connect(port: s.port)
        let light = try await PerennialClient.connect(port: s.port)
        defer { heavy.close(); light.close() }
        _ = try await heavy.hello()
        var events: [WireEvent] = []
        for i in 0..<20_000 { events.append(WireEvent(user: UInt64(i % 50 + 1), item: UInt64(i % 70 + 1), kind: .view)) }
        let stream = events
        async let streamed = heavy.stream(stream, batchSize: 16, window: 64)
        var lightAcks = 0
        for i in 0..<20 {
            _ = try await light.feedback([WireEvent(user: 9999, item: UInt64(i + 1), kind: .click)])
            lightAcks += 1
        }
        let ack = try await streamed
        #expect(lightAcks == 20)
        #expect(ack?.lastSeq == 20_020 || ack?.lastSeq ?? 0 >= 20_000)
        _ = try await light.recommend(user: 1, k: 1, minAppliedSeq: 20_020)
        let stats = try await light.stats()
        #expect(stats["events_applied"] == 20_020)
        #expect(stats["queue_full_pauses"]! > 0)
    }
}
