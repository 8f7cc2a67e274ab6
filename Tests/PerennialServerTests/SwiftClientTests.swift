// The Swift client against a real server, as a Swift user drives it: what it
// refuses before sending, how a stream reports a refused batch, a pipeline
// larger than the server's reply buffer, a connection the server closed
// while idle, close() and cancellation while a call is in flight
// (review findings, helper-38).

import Foundation
import Synchronization
import Testing
import PerennialClient
import PerennialProtocol
import ScratchDirectory
#if canImport(Glibc)
import Glibc
#endif

@Suite struct SwiftClientTests {
    private func isInvalidArgument(_ e: any Error) -> Bool {
        if case .invalidArgument? = e as? PerennialClientError { return true }
        return false
    }

    /// Lists the protocol cannot carry used to be cut at 65,535 ids without
    /// a word: a deletion of 70,000 users deleted 65,535 and said so.
    @Test func argumentsTheProtocolCannotCarryAreRefusedBeforeSending() async throws {
        let s = try TestServer("[limits]\nmax_items = 65535\nmax_frame_bytes = 4194304\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        _ = try await c.feedback((1...20).map { WireEvent(user: UInt64($0), item: UInt64($0), kind: .click) })
        let many = (1...70_000).map { UInt64($0) }
        for attempt in [
            { _ = try await c.deleteUsers(many) },
            { _ = try await c.recommend(user: 1, k: 5, exclude: many) },
            { _ = try await c.recommend(user: 1, k: 0) },
            { _ = try await c.recommend(user: 1, k: 70_000) },
            { _ = try await c.upsertItem(5, text: "x", attributes: (0..<70_000).map { ItemAttribute(key: "k\($0)", value: "v") }) },
            { _ = try await c.stream([WireEvent(user: 1, item: 1, kind: .click)], window: 0) },
        ] as [@Sendable () async throws -> Void] {
            await #expect(throws: PerennialClientError.self) { try await attempt() }
            do { try await attempt() } catch { #expect(isInvalidArgument(error), "\(error)") }
        }
        // Nothing of it reached the server: all 20 users are still there.
        #expect(try await c.stats()["users"] == 20)
        for t in [0, -1, .nan] as [Double] {
            #expect(throws: PerennialClientError.self) { _ = try PerennialClient(port: s.port, timeout: t) }
        }
        #expect(throws: PerennialClientError.invalidArgument("port 72937 is outside 1...65535")) {
            _ = try PerennialClient(port: 72_937)
        }
        // No time limit at all is .infinity (it used to crash converting to Int).
        let patient = try PerennialClient(port: s.port, timeout: .infinity)
        try await patient.ping()
    }

    /// A refused batch used to end `stream` with the batches behind it
    /// unread, so the next call read their replies as its own ("reply for
    /// request 3 while waiting for 6"), and it named the event by its index
    /// in the batch.
    @Test func aStreamGoesOnPastARefusedBatchAndNamesIt() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        var events = (0..<50).map { WireEvent(user: UInt64(1 + $0 % 5), item: UInt64(5000 + $0), kind: .click) }
        events[15].item = 0
        do {
            _ = try await c.stream(events, batchSize: 10, window: 8)
            Issue.record("the refused batch was not reported")
        } catch PerennialClientError.streamRefused(let acked, let refused) {
            #expect(acked == 40)
            #expect(refused.count == 1 && refused[0].offset == 10 && refused[0].count == 10 && refused[0].streamIndex == 15)
            #expect(refused[0].description.hasPrefix("stream index 15 (batch of 10 events from index 10)"))
        }
        try await c.ping()
        #expect(try await c.stats()["events_accepted"] == 40)
        let known = try await c.score(user: 1, items: [5005, 5015, 5025, 5045])
        #expect(known.map(\.known) == [true, false, true, true])
    }

    /// Sending the whole pipeline before reading used to deadlock once the
    /// server held max_pending_bytes of unread replies and stopped reading.
    @Test func aPipelineLargerThanTheServersReplyBufferCompletes() async throws {
        let s = try TestServer("[limits]\nmax_pending_bytes = 65536\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port, timeout: 60)
        let replies = try await c.pipeline(Array(repeating: .ping, count: 200_000))
        #expect(replies.count == 200_000 && replies.allSatisfy { $0 == .ping })
    }

    /// The client used to keep a connection the server had closed and fail
    /// every later call; now the next call opens a new one, with the HELLO
    /// sent before.
    @Test func aConnectionClosedWhileIdleIsOpenedAgain() async throws {
        let s = try TestServer("[limits]\nidle_timeout_ms = 300\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        _ = try await c.hello(clientName: "swift-test")
        try await c.ping()
        try await Task.sleep(nanoseconds: 900_000_000)
        try await c.ping()
        let stats = try await c.stats()
        #expect(stats["connections_total"]! >= 2)
        // close(), even from a stream's progress callback (it used to crash
        // there: close() waited on the queue it was called on).
        let events = (0..<2000).map { WireEvent(user: UInt64(1 + $0 % 9), item: UInt64(1 + $0), kind: .click) }
        await #expect(throws: PerennialClientError.self) {
            _ = try await c.stream(events, batchSize: 100, window: 2) { acked in if acked >= 300 { c.close() } }
        }
        try await c.ping()
        c.close()
        try await c.ping()
    }

    /// close() and a cancelled task no longer wait for a reply that is not
    /// coming (they waited out the timeout, blocking a thread meanwhile).
    @Test func closeAndCancellationInterruptACallInFlight() async throws {
        let silent = try SilentListener()
        defer { silent.close() }
        // (What tells the old behaviour from the new is the error: the
        // timeout's, after 120 s, against the cancellation's or close()'s;
        // no bound on the time, as a loaded machine may take long to run
        // the tasks at all.)
        let c = try PerennialClient(port: silent.port, timeout: 120, greet: false)
        try await expectCancelAndCloseToStopACall(c, cancelAfterNanos: 200_000_000)
    }

    /// A reply wait shorter than the server's default limits.wait_ms says
    /// that the server may hold a request that long (review finding,
    /// helper-91: a write held for a log replay timed out in the client,
    /// and the error did not say why); a longer one does not.
    @Test func aTimeoutBelowTheServersWaitSaysSo() async throws {
        let silent = try SilentListener()
        defer { silent.close() }
        // (Not of a PING, which the server never holds.)
        for (timeout, ping, hinted) in [(0.3, false, true), (6.0, false, false), (0.3, true, false)] {
            let c = try PerennialClient(port: silent.port, timeout: timeout, greet: false)
            do {
                if ping { try await c.ping() } else { _ = try await c.recommend(user: 1) }
                Issue.record("a silent peer answered")
            } catch PerennialClientError.timeout(let m) {
                #expect(m.contains("limits.wait_ms") == hinted, "\(m)")
            }
            c.close()
        }
    }

    /// A cancelled `connect` stops waiting for the HELLO's reply (review
    /// finding, helper-91: it waited out its timeout, here 120 s, and threw
    /// the timeout's error).
    @Test func aCancelledConnectStopsWaiting() async throws {
        let silent = try SilentListener()
        defer { silent.close() }
        let task = Task { try await PerennialClient.connect(port: silent.port, timeout: 120) }
        try await Task.sleep(nanoseconds: 200_000_000)
        task.cancel()
        if case .failure(let e) = await task.result { #expect(e is CancellationError, "\(e)") } else { Issue.record("connected to a silent peer") }
        // (Cancelled before it starts, it does not connect at all.)
        let early = Task { try await PerennialClient.connect(port: silent.port, timeout: 120) }
        early.cancel()
        if case .failure(let e) = await early.result { #expect(e is CancellationError, "\(e)") } else { Issue.record("connected to a silent peer") }
    }
}

/// Second review (helper-40) of the client above: faults of the first
/// version, each reproduced against it.
@Suite struct SwiftClientReviewTests {
    /// A reply with another request's id crashed the process (the reply
    /// was removed from a buffer the drop had already emptied).
    @Test func aReplyOutOfStepIsAProtocolViolation() async throws {
        let peer = try SilentListener()
        defer { peer.close() }
        let c = try PerennialClient(port: peer.port, timeout: 120, greet: false)
        peer.serveOne { conn in
            var buf = [UInt8](repeating: 0, count: 64)
            _ = recv(conn, &buf, buf.count, 0)
            var reply: [UInt8] = []
            Reply.ping.encode(into: &reply, requestID: 101)
            _ = reply.withUnsafeBytes { send(conn, $0.baseAddress, $0.count, 0) }
            Thread.sleep(forTimeInterval: 1)
        }
        do {
            try await c.ping()
            Issue.record("a reply for request 101 was taken")
        } catch PerennialClientError.protocolViolation(let e) {
            #expect(e.message.contains("reply for request 101"))
        }
    }

    /// A pipeline whose connection failed part-way threw away the replies
    /// it had read (helper-91): a caller could not tell which of its
    /// FEEDBACKs had been accepted. A peer that answers the first 3 of 10
    /// PINGs and hangs up: the error carries those 3 and counts the 7.
    @Test func aPipelineCutPartWayKeepsTheRepliesReadBeforeIt() async throws {
        let peer = try SilentListener()
        defer { peer.close() }
        let c = try PerennialClient(port: peer.port, timeout: 120, greet: false)
        peer.serveOne { conn in
            // Read the 10 frames whole, then answer the first 3 by their ids.
            var bytes: [UInt8] = [], ids: [UInt32] = []
            var buf = [UInt8](repeating: 0, count: 4096)
            while ids.count < 10 {
                let n = recv(conn, &buf, buf.count, 0)
                if n <= 0 { break }
                bytes += buf[0..<n]
                ids += takeFrames(&bytes).map(\.id)
            }
            var reply: [UInt8] = []
            for id in ids.prefix(3) { Reply.ping.encode(into: &reply, requestID: id) }
            _ = reply.withUnsafeBytes { send(conn, $0.baseAddress, $0.count, 0) }
        }
        do {
            _ = try await c.pipeline(Array(repeating: .ping, count: 10))
            Issue.record("a pipeline answered 3 of 10 times succeeded")
        } catch PerennialClientError.pipelineCut(let replies, let unanswered, let reason) {
            #expect(replies == [.ping, .ping, .ping])
            #expect(unanswered == 7)
            #expect(reason.contains("closed"), "\(reason)")
        }
    }

    /// The same cut while the pipeline is still being sent (helper-92):
    /// the replies read during the send were lost with it. The peer reads
    /// 200 KB of 500,000 PINGs, answers the first 3, stops reading (the
    /// client, blocked writing, reads the replies meanwhile), then hangs up.
    @Test func aPipelineCutWhileSendingKeepsTheRepliesReadMeanwhile() async throws {
        let peer = try SilentListener()
        defer { peer.close() }
        let c = try PerennialClient(port: peer.port, timeout: 120, greet: false)
        peer.serveOne { conn in
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while bytes.count < 200_000 {
                let n = recv(conn, &buf, buf.count, 0)
                if n <= 0 { break }
                bytes += buf[0..<n]
            }
            var reply: [UInt8] = []
            for frame in takeFrames(&bytes).prefix(3) { Reply.ping.encode(into: &reply, requestID: frame.id) }
            _ = reply.withUnsafeBytes { send(conn, $0.baseAddress, $0.count, 0) }
            Thread.sleep(forTimeInterval: 0.5)
        }
        do {
            _ = try await c.pipeline(Array(repeating: .ping, count: 500_000))
            Issue.record("a pipeline the peer hung up on succeeded")
        } catch PerennialClientError.pipelineCut(let replies, let unanswered, _) {
            #expect(replies == [.ping, .ping, .ping])
            #expect(unanswered == 500_000 - 3)
        }
    }

    /// A stream's batch refused RECOVERING went again only after the
    /// whole stream, so once the replay ended it was learned after later
    /// batches (helper-92). A peer refuses the second of five batches once:
    /// it comes again before the third.
    @Test func aStreamSendsABatchRefusedRecoveringAgainBeforeLaterOnes() async throws {
        let peer = try SilentListener()
        defer { peer.close() }
        let c = try PerennialClient(port: peer.port, timeout: 120, recoveryWait: 30, greet: false)
        let order = Mutex<[UInt64]>([])
        peer.serveOne { conn in
            var bytes: [UInt8] = [], refusedOnce = false
            var buf = [UInt8](repeating: 0, count: 65536)
            while order.withLock({ $0.count }) < 6 {
                let n = recv(conn, &buf, buf.count, 0)
                if n <= 0 { break }
                bytes += buf[0..<n]
                for (id, payload) in takeFrames(&bytes) {
                    let request = payload.withUnsafeBytes { try? Request.decode(opcode: .feedback, payload: $0, limits: ProtocolLimits()) }
                    guard case .feedback(let events)? = request else { continue }
                    let user = events[0].user
                    order.withLock { $0.append(user) }
                    var reply: [UInt8] = []
                    if user == 2 && !refusedOnce {
                        refusedOnce = true
                        Reply.error(ErrorReply(code: .recovering, message: "replaying")).encode(into: &reply, requestID: id)
                    } else {
                        Reply.feedback(FeedbackAck(firstSeq: user, lastSeq: user, durableSeq: user, appliedSeq: 0)).encode(into: &reply, requestID: id)
                    }
                    _ = reply.withUnsafeBytes { send(conn, $0.baseAddress, $0.count, 0) }
                }
            }
        }
        let events = (1...5).map { WireEvent(user: UInt64($0), item: 1, kind: .click) }
        _ = try await c.stream(events, batchSize: 1, window: 1)
        #expect(order.withLock { $0 } == [1, 2, 2, 3, 4, 5])
    }

    /// Timeouts of 25 to 366 days trapped converting to poll's Int32.
    @Test func aVeryLongTimeoutIsNoTrap() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try PerennialClient(port: s.port, timeout: 10_000_000)
        try await c.ping()
    }

    /// A call cancelled (or a close()) while it reconnected went on
    /// connecting until the timeout, and its request was sent anyway.
    @Test func cancellingACallWhileItReconnects() async throws {
        let peer = try SilentListener(backlog: 0)
        defer { peer.close() }
        let c = try PerennialClient(port: peer.port, timeout: 120, greet: false)
        let first = accept(peer.fd, nil, nil)
        // The accept queue filled by connections never accepted: the
        // reconnect's handshake gets no answer.
        var fillers: [Int32] = []
        for _ in 0..<4 {
            let f = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            _ = fcntl(f, F_SETFL, fcntl(f, F_GETFL) | O_NONBLOCK)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = UInt16(peer.port).bigEndian
            _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(f, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            fillers.append(f)
        }
        defer { for f in fillers { Glibc.close(f) } }
        try await Task.sleep(nanoseconds: 300_000_000)
        Glibc.close(first)   // the client's connection ends: its next call reconnects
        try await Task.sleep(nanoseconds: 200_000_000)
        try await expectCancelAndCloseToStopACall(c, cancelAfterNanos: 500_000_000)
    }
}

/// Third review (helper-73): the client as a Swift service uses it.
@Suite struct SwiftClientServiceTests {
    /// Without a hello() the client assumed max_events 10,000 and 4 MiB
    /// frames: a 5,000-event list went as one frame over a server's 64 KiB
    /// and the server dropped the connection. Now connecting greets.
    @Test func theClientLearnsTheServersLimitsWhenItConnects() async throws {
        let s = try TestServer("[limits]\nmax_frame_bytes = 65536\nmax_events = 2000\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        let events = (0..<5000).map { (k: Int) -> WireEvent in WireEvent(user: UInt64(k % 50 + 1), item: UInt64(k % 400 + 1), kind: .view) }
        let ack = try await c.feedback(events)
        #expect(ack.lastSeq == 5000)
        // (A service hands the answers on as JSON, or in a set.)
        let top = try await c.recommend(user: 3, k: 5)
        #expect(try JSONDecoder().decode([RankedItem].self, from: JSONEncoder().encode(top)) == top)
        #expect(Set(top).count == top.count && Set(events).count == 400)   // (user, item) repeats every 400 events
        #expect(try await c.stream(events, batchSize: 3000)?.lastSeq == 10_000)
        // (A HELLO the protocol cannot carry is refused before connecting.)
        await #expect(throws: PerennialClientError.self) { _ = try await PerennialClient.connect(port: s.port, clientName: String(repeating: "x", count: 70_000)) }
    }

    /// A RELOAD by another client lowers max_frame_bytes (and so
    /// max_events): a batch sized by the old limits is refused
    /// FRAME_TOO_LARGE and the connection closed; feedback() learns the
    /// limits on a new connection and sends the list whole, split (review
    /// finding, helper-91: it threw, nothing of the list accepted).
    @Test func feedbackFollowsALoweredMaxFrameBytes() async throws {
        let s = try TestServer("")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        let other = try await PerennialClient.connect(port: s.port)
        try s.rewriteConfig("[limits]\nmax_frame_bytes = 65536\nmax_events = 2000\n")
        try await other.reload()
        // (5,000 events are 145,012 bytes: one batch under the old limits.)
        let events = (0..<5000).map { (k: Int) -> WireEvent in WireEvent(user: UInt64(k % 50 + 1), item: UInt64(k % 70 + 1), kind: .click) }
        let ack = try await c.feedback(events)
        #expect(ack.lastSeq == 5000 && ack.firstSeq == 4001, "\(ack)")
        #expect(try await c.stats()["events_accepted"] == 5000)
    }

    /// A stream after a RELOAD that lowered max_events (the client's own,
    /// or another client's) had every batch refused; now the limits are
    /// learned again.
    @Test func aStreamFollowsALoweredMaxEvents() async throws {
        let s = try TestServer("[limits]\nmax_events = 100\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        let other = try await PerennialClient.connect(port: s.port)
        let events = (0..<300).map { (k: Int) -> WireEvent in WireEvent(user: UInt64(k % 20 + 1), item: UInt64(k % 90 + 1), kind: .click) }
        try s.rewriteConfig("[limits]\nmax_events = 50\n")
        try await c.reload()
        #expect(try await c.stream(events, batchSize: 1000)?.lastSeq == 300)
        try s.rewriteConfig("[limits]\nmax_events = 25\n")
        try await other.reload()
        #expect(try await c.stream(events, batchSize: 1000)?.lastSeq == 600)
        // Lowered under a stream already in the limit's batches: each is
        // refused whole and goes again split, after the rest.
        try s.rewriteConfig("[limits]\nmax_events = 10\n")
        try await other.reload()
        #expect(try await c.stream(events, batchSize: 20, window: 3)?.lastSeq == 900)
        let stats = try await c.stats()
        #expect(stats["events_accepted"] == 900)
        // A batch refused whole for its contents is not sent again.
        var bad = events
        bad[40] = WireEvent(user: 0, item: 1, kind: .click)
        do {
            _ = try await c.stream(bad, batchSize: 10)
            Issue.record("a user id of 0 was accepted")
        } catch PerennialClientError.streamRefused(let acknowledged, let refused) {
            #expect(acknowledged == 290 && refused.count == 1 && refused[0].offset == 40, "\(refused)")
        }
    }

    /// A RELOAD that changed the token made reload() throw UNAUTHORIZED
    /// (its HELLO to learn the limits met the new token) though it was
    /// applied (helper-74). A rotation: the new token added, the client
    /// moved to it by hello(), the old one removed; streams go on
    /// throughout, and no HELLO of the client's fails. A connection left on
    /// the removed token loses its access at its next request.
    @Test func aTokenRotatedByReloadStopsNeitherReloadNorStream() async throws {
        let dir = ScratchDirectory.path("rotate")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "secret-token-AAAA\n".write(toFile: dir + "/token", atomically: true, encoding: .utf8)
        let s = try TestServer("[auth]\ntoken_file = \"\(dir)/token\"\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port, token: "secret-token-AAAA")
        let left = try await PerennialClient.connect(port: s.port, token: "secret-token-AAAA")
        let events = (0..<300).map { (k: Int) -> WireEvent in WireEvent(user: UInt64(k % 20 + 1), item: UInt64(k % 90 + 1), kind: .click) }
        try "secret-token-AAAA\nsecret-token-BBBB\n".write(toFile: dir + "/token", atomically: true, encoding: .utf8)
        try await c.reload()
        #expect(try await c.stream(events, batchSize: 100)?.lastSeq == 300)
        _ = try await c.hello(token: "secret-token-BBBB")
        try "secret-token-BBBB\n".write(toFile: dir + "/token", atomically: true, encoding: .utf8)
        try await c.reload()
        #expect(try await c.stats()["reloads"] == 2)
        #expect(try await c.stream(events, batchSize: 100)?.lastSeq == 600)
        #expect(try await c.stats()["auth_failures"] == 0)
        // The connection left on the removed token, and a new one with it.
        do {
            _ = try await left.stats()
            Issue.record("a connection on a removed token was answered")
        } catch let PerennialClientError.server(code, _, _, message) {
            #expect(code == .unauthorized && message.contains("was removed"), "\(message)")
        }
        await #expect(throws: PerennialClientError.self) { _ = try await PerennialClient.connect(port: s.port, token: "secret-token-AAAA") }
        // A hard swap (the client's token replaced at once): reload() does
        // not throw for the RELOAD it applied, though its HELLO is refused.
        try "secret-token-CCCC\n".write(toFile: dir + "/token", atomically: true, encoding: .utf8)
        try await c.reload()
        #expect(try await PerennialClient.connect(port: s.port, token: "secret-token-CCCC").stats()["reloads"] == 3)
    }

    /// A CAPACITY refusal's detail stayed the index in the batch (80 for
    /// event 180 in batches of 100), and a stream named no event.
    @Test func aCapacityRefusalNamesTheEventInTheList() async throws {
        let s = try TestServer("[limits]\nmax_events = 100\nmax_item_ids = 200\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        _ = try await c.feedback((0..<200).map { (k: Int) -> WireEvent in WireEvent(user: 1, item: UInt64(k + 1), kind: .click) })
        let events = (0..<250).map { (k: Int) -> WireEvent in
            let item: UInt64 = k < 180 ? UInt64(k % 200 + 1) : UInt64(10_000 + k)
            return WireEvent(user: 2, item: item, kind: .click)
        }
        do {
            _ = try await c.feedback(events)
            Issue.record("an event past max_item_ids was accepted")
        } catch let PerennialClientError.server(code, _, detail, _) {
            #expect(code == .capacity && detail == 180)
        }
        do {
            _ = try await c.stream(events, batchSize: 100, window: 2)
            Issue.record("an event past max_item_ids was accepted")
        } catch PerennialClientError.streamRefused(_, let refused) {
            #expect(refused.first?.streamIndex == 180, "\(refused)")
        }
    }

    /// snapshot() and reload() wait for the whole model to be written: up
    /// to `adminTimeout` (600 s), as the Python client's admin_timeout,
    /// where they timed out after the 10 s of any other reply.
    @Test func aSnapshotWaitsLongerThanOtherReplies() async throws {
        let peer = try SilentListener()
        defer { peer.close() }
        let c = try PerennialClient(port: peer.port, timeout: 0.3, greet: false, adminTimeout: 5)
        // (A peer that answers each request after 0.8 s, on its own thread.)
        peer.serveOne { conn in
            var buf = [UInt8](repeating: 0, count: 256)
            for reply in [Reply.snapshot(seq: 7, version: "v7"), Reply.ping] {
                guard recv(conn, &buf, buf.count, 0) >= 12 else { break }
                let id = UInt32(buf[8]) | UInt32(buf[9]) << 8 | UInt32(buf[10]) << 16 | UInt32(buf[11]) << 24
                Thread.sleep(forTimeInterval: 0.8)
                var out: [UInt8] = []
                reply.encode(into: &out, requestID: id)
                _ = out.withUnsafeBytes { send(conn, $0.baseAddress, $0.count, 0) }
            }
            Thread.sleep(forTimeInterval: 1)
        }
        let snap = try await c.snapshot()
        #expect(snap.seq == 7 && snap.version == "v7")
        await #expect(throws: PerennialClientError.self) { try await c.ping() }   // 0.8 s > the 0.3 s timeout
    }

    /// A call cancelled while it waited for its turn behind a slow call
    /// ended only when that call did (7.75 s, its timeout); now at once,
    /// and it is never sent.
    @Test func aCallCancelledWhileQueuedEndsAtOnce() async throws {
        let silent = try SilentListener()
        defer { silent.close() }
        let c = try PerennialClient(port: silent.port, timeout: 120, greet: false)
        let slow = Task { try await c.ping() }               // never answered
        try await Task.sleep(nanoseconds: 200_000_000)
        let queued = Task { try await c.ping() }
        try await Task.sleep(nanoseconds: 200_000_000)
        queued.cancel()
        if case .failure(let e) = await queued.result { #expect(e is CancellationError, "\(e)") } else { Issue.record("the queued ping was answered") }
        // (The slow call is still waiting: the queued one did not wait for it.)
        let slowEnded = Finished()
        Task { _ = await slow.result; slowEnded.set() }
        try await Task.sleep(nanoseconds: 100_000_000)
        #expect(!slowEnded.value)
        c.close()
        _ = await slow.result
    }
}

/// A ping to a peer that will not answer it: cancelled, it throws
/// CancellationError; then another, ended by close(), says so.
private func expectCancelAndCloseToStopACall(_ c: PerennialClient, cancelAfterNanos: UInt64) async throws {
    let task = Task { try await c.ping() }
    try await Task.sleep(nanoseconds: cancelAfterNanos)
    task.cancel()
    if case .failure(let e) = await task.result { #expect(e is CancellationError, "\(e)") } else { Issue.record("the ping was answered") }
    let closing = Task { try await c.ping() }
    if case .failure(let e) = await closeUntilDone(c, closing) {
        #expect("\(e)".contains("closed by close()"), "\(e)")
    } else { Issue.record("the ping was answered") }
}

/// Calls `close()` every 100 ms until `task` ends (a close() before the
/// task's call started only ends the idle connection; on a loaded machine
/// a task may start late), then its result.
private func closeUntilDone(_ c: PerennialClient, _ task: Task<Void, any Error>) async -> Result<Void, any Error> {
    let finished = Finished()
    let watcher = Task { () -> Result<Void, any Error> in
        let r = await task.result
        finished.set()
        return r
    }
    for _ in 0..<600 where !finished.value {
        try? await Task.sleep(nanoseconds: 100_000_000)
        c.close()
    }
    return await watcher.value
}

private final class Finished: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false
    func set() { lock.withLock { done = true } }
    var value: Bool { lock.withLock { done } }
}

/// A listening socket that accepts (the kernel completes the handshake) and
/// never answers.
/// The whole frames at the front of `bytes`, taken from it: each one's
/// request id and payload (for the tests' fake peers).
private func takeFrames(_ bytes: inout [UInt8]) -> [(id: UInt32, payload: [UInt8])] {
    var frames: [(id: UInt32, payload: [UInt8])] = []
    var at = 0
    while bytes.count - at >= FrameHeader.size {
        let length = Int(bytes[at]) | Int(bytes[at + 1]) << 8 | Int(bytes[at + 2]) << 16 | Int(bytes[at + 3]) << 24
        guard bytes.count - at >= 4 + length else { break }
        let id = UInt32(bytes[at + 8]) | UInt32(bytes[at + 9]) << 8 | UInt32(bytes[at + 10]) << 16 | UInt32(bytes[at + 11]) << 24
        frames.append((id, Array(bytes[(at + FrameHeader.size)..<(at + 4 + length)])))
        at += 4 + length
    }
    bytes.removeFirst(at)
    return frames
}

private final class SilentListener: @unchecked Sendable {
    let fd: Int32
    let port: Int

    init(backlog: Int32 = 16) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        guard bound == 0, listen(fd, backlog) == 0 else { throw PerennialClientError.connection("cannot listen") }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        self.fd = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
    }

    func close() { Glibc.close(fd) }

    /// Accepts one connection on a thread of its own (the test's
    /// cooperative threads may all be busy while the whole suite runs),
    /// hands it to `peer`, then closes it.
    func serveOne(_ peer: @escaping @Sendable (Int32) -> Void) {
        let fd = self.fd
        Thread {
            let conn = accept(fd, nil, nil)
            peer(conn)
            Glibc.close(conn)
        }.start()
    }

    /// A list longer than the server's max_events goes as several batches,
    /// as in the Python client (helper-60: the Swift client sent it whole
    /// and the server refused it); a bad event is named by its index in
    /// the whole list, with how many were acknowledged before its batch.
    @Test func feedbackSplitsALongListIntoTheServersBatches() async throws {
        let s = try TestServer("[limits]\nmax_events = 1000\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        let events: [WireEvent] = (0..<2500).map { (k: Int) -> WireEvent in
            WireEvent(user: UInt64(k % 50 + 1), item: UInt64(k % 300 + 1), kind: .click)
        }
        let ack = try await c.feedback(events)
        #expect(ack.firstSeq == 2001 && ack.lastSeq == 2500)
        var bad = events
        bad[1700] = WireEvent(user: 1, item: 0, kind: .click)
        do {
            _ = try await c.feedback(bad)
            Issue.record("a list with an item id of 0 was accepted")
        } catch let PerennialClientError.server(code, _, detail, message) {
            #expect(code == .invalidEvent && detail == 1700, "\(message)")
            #expect(message.contains("1000..<2000") && message.contains("the 1000 before it were acknowledged"), "\(message)")
        }
        let stats = try await c.stats()
        #expect(stats["events_accepted"] == 3500)
    }
}
