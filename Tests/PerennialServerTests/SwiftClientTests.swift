// The Swift client against a real server, as a Swift user drives it: what it
// refuses before sending, how a stream reports a refused batch, a pipeline
// larger than the server's reply buffer, a connection the server closed
// while idle, close() and cancellation while a call is in flight
// (review findings, helper-38).

import Foundation
import Testing
import PerennialClient
import PerennialProtocol
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
        // timeout's, after 120 s, against the cancellation's or close()'s.
        // The time bound is loose, as a loaded machine may take long to
        // run the tasks at all.)
        let c = try PerennialClient(port: silent.port, timeout: 120)
        let t0 = Date()
        let task = Task { try await c.ping() }
        try await Task.sleep(nanoseconds: 200_000_000)
        task.cancel()
        let result = await task.result
        #expect(Date().timeIntervalSince(t0) < 60)
        if case .failure(let e) = result { #expect(e is CancellationError, "\(e)") } else { Issue.record("a silent peer answered") }

        let t1 = Date()
        let pending = Task { try await c.ping() }
        try await Task.sleep(nanoseconds: 200_000_000)
        c.close()
        let closed = await pending.result
        #expect(Date().timeIntervalSince(t1) < 60)
        if case .failure(let e) = closed {
            #expect("\(e)".contains("closed by close()"), "\(e)")
        } else { Issue.record("a silent peer answered") }
    }
}

/// A listening socket that accepts (the kernel completes the handshake) and
/// never answers.
private final class SilentListener: @unchecked Sendable {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        guard bound == 0, listen(fd, 16) == 0 else { throw PerennialClientError.connection("cannot listen") }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        self.fd = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
    }

    func close() { Glibc.close(fd) }
}
