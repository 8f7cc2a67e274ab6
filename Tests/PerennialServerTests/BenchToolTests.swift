// The load tool's parts: the histogram's accuracy, the open-loop pacer's
// schedule, and the driver against a real server.

import Foundation
import ScratchDirectory
import Testing
import PerennialProtocol
@testable import PerennialBench

@Suite struct BenchToolTests {
    @Test func histogramPercentilesWithinOnePercent() {
        var h = LatencyHistogram()
        for v in 1...1_000_000 { h.record(UInt64(v)) }
        #expect(h.count == 1_000_000 && h.max == 1_000_000 && h.min == 1)
        for (q, exact) in [(0.5, 500_000.0), (0.9, 900_000.0), (0.99, 990_000.0), (0.999, 999_000.0)] {
            let got = Double(h.value(atQuantile: q))
            #expect(got >= exact && got <= exact * 1.008, "q \(q): \(got)")
        }
        #expect(h.value(atQuantile: 1) == 1_000_000)
        // Small values are exact; huge ones stay within the bucket width.
        var s = LatencyHistogram()
        for v: UInt64 in [0, 3, 255] { s.record(v) }
        #expect(s.value(atQuantile: 0.34) == 3 && s.value(atQuantile: 1) == 255)
        for v: UInt64 in [1 << 40, UInt64.max >> 1] {
            let i = LatencyHistogram.index(of: v)
            #expect(LatencyHistogram.highestValue(of: i) >= v)
            #expect(Double(LatencyHistogram.highestValue(of: i) - v) <= Double(v) / 128)
        }
        // Merging equals recording everything in one.
        var a = LatencyHistogram(), b = LatencyHistogram(), both = LatencyHistogram()
        for v in 1...1000 { (v % 2 == 0 ? { a.record(UInt64(v)) } : { b.record(UInt64(v)) })(); both.record(UInt64(v)) }
        a.merge(b)
        #expect(a.value(atQuantile: 0.5) == both.value(atQuantile: 0.5) && a.count == both.count)
    }

    @Test func pacerIssuesOnScheduleWithoutBursts() {
        var p = OpenLoopPacer(rate: 1000, start: 1_000_000_000)
        #expect(p.due(now: 999_999_999) == 0)
        #expect(p.due(now: 1_000_000_000) == 1)
        // One second in: 1,001 requests due (at 0, 1 ms, …, 1000 ms).
        #expect(p.due(now: 2_000_000_000) == 1001)
        var intended: [UInt64] = []
        for _ in 0..<1001 { intended.append(p.issue()) }
        #expect(intended.first == 1_000_000_000 && intended.last == 2_000_000_000)
        #expect(zip(intended, intended.dropFirst()).allSatisfy { $1 - $0 == 1_000_000 })
        #expect(p.due(now: 2_000_000_000) == 0)
        // Falling behind does not move the schedule: the late ones are all due.
        #expect(p.due(now: 2_010_000_000) == 10)
    }

    @Test func driverAgainstARealServer() throws {
        let s = try TestServer()
        defer { s.stop() }
        let closed = LoadDriver(host: "127.0.0.1", port: s.port, connections: 4, pipeline: 4, rate: nil, framing: .perennial) {
            _, n in var b: [UInt8] = []; Request.ping.encode(into: &b, requestID: UInt32(n)); return (b, 1)
        }
        let r = try closed.run(seconds: 0.5, warmup: 0.1)
        #expect(r.requests > 100 && r.errors == 0)
        // (Requests still in flight at the end count in the latency too,
        // up to the end: a stall is not dropped from the percentiles.)
        #expect(r.latency.count == UInt64(r.requests + r.unanswered) && r.unanswered <= 16)
        // Open loop at 2,000/s for a second: about 2,000 requests, never more.
        let open = LoadDriver(host: "127.0.0.1", port: s.port, connections: 2, pipeline: 1, rate: 2000, framing: .perennial) {
            _, n in var b: [UInt8] = []; Request.ping.encode(into: &b, requestID: UInt32(n)); return (b, 1)
        }
        let o = try open.run(seconds: 1, warmup: 0.2)
        #expect(o.requests > 1000 && o.requests <= 2050, "\(o.requests)")  // never more than the schedule; fewer only if the machine is loaded
        // Errors are counted: RECOMMEND with k = 0 is INVALID_ARGUMENT.
        let bad = LoadDriver(host: "127.0.0.1", port: s.port, connections: 1, pipeline: 1, rate: nil, framing: .perennial) {
            _, n in var b: [UInt8] = []
            Request.recommend(RecommendRequest(user: 1, k: 0)).encode(into: &b, requestID: UInt32(n)); return (b, 1)
        }
        let e = try bad.run(seconds: 0.2, warmup: 0)
        #expect(e.errors == e.requests && e.requests > 0)
        #expect(e.firstError?.contains("k") == true && e.firstError?.hasPrefix("INVALID_ARGUMENT") == true, "\(e.firstError ?? "none")")
        // A mixed load's latency also by request kind, each reply counted
        // once under the kind of request it answers.
        let maker = RequestMaker(.mixed, settings: WorkloadSettings(), connections: 2)
        let mixed = LoadDriver(host: "127.0.0.1", port: s.port, connections: 2, pipeline: 2, rate: nil, framing: .perennial) {
            maker.make(connection: $0, n: $1)
        }
        let m = try mixed.run(seconds: 0.5, warmup: 0.1)
        let recommends = m.latencyByOpcode[Opcode.recommend.rawValue]?.count ?? 0
        let feedbacks = m.latencyByOpcode[Opcode.feedback.rawValue]?.count ?? 0
        #expect(m.errors == 0 && recommends > 0 && feedbacks > 0 && recommends + feedbacks == UInt64(m.requests))
        #expect(m.latencyByOpcode.keys.sorted() == [Opcode.recommend.rawValue, Opcode.feedback.rawValue])
        let kinds = m.json["by_request"] as? [String: Any]
        #expect(kinds?.keys.sorted() == ["feedback", "recommend"])
        // (A single-kind load has no breakdown.)
        #expect(r.json["by_request"] == nil)
        // Freshness: every sample ends, in well under a second on an idle server.
        let fresh = try FreshnessProbe(host: "127.0.0.1", port: s.port).run(samples: 50)
        #expect(fresh.count == 50 && fresh.max < 1_000_000_000)
    }

    /// Against a server with a token: HELLO with it first on every
    /// connection lets the load through; a wrong token stops the run with
    /// the server's reason.
    @Test func driverSendsHelloWithTheToken() throws {
        let dir = URL(fileURLWithPath: ScratchDirectory.path("bench"))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let tokenFile = dir.appendingPathComponent("token").path
        try "bench-secret-1".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let s = try TestServer("[auth]\ntoken_file = \"\(tokenFile)\"\n")
        defer { s.stop() }
        func hello(_ token: String) -> [UInt8] {
            var b: [UInt8] = []
            Request.hello(Hello(clientName: "test", token: token)).encode(into: &b, requestID: 0)
            return b
        }
        var d = LoadDriver(host: "127.0.0.1", port: s.port, connections: 3, pipeline: 2, rate: nil, framing: .perennial) {
            _, n in var b: [UInt8] = []; Request.ping.encode(into: &b, requestID: UInt32(n)); return (b, 1)
        }
        d.handshake = hello("bench-secret-1")
        let r = try d.run(seconds: 0.3, warmup: 0.05)
        #expect(r.requests > 100 && r.errors == 0 && r.firstError == nil)
        d.handshake = hello("wrong-token-9")
        #expect(throws: BenchError.self) { _ = try d.run(seconds: 0.3, warmup: 0) }
        let fresh = try FreshnessProbe(host: "127.0.0.1", port: s.port, handshake: hello("bench-secret-1")).run(samples: 5)
        #expect(fresh.count == 5)
    }
}
