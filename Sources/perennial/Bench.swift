// `perennial bench`: load a running server (or a redis-server, for the
// protocol floor) and report throughput and latency percentiles from an
// HDR-style histogram. Closed loop by default (`--pipeline` requests in
// flight per connection); `--rate` switches to open loop, where latency is
// measured from each request's scheduled time (no coordinated omission).
// `freshness` measures acknowledgement-to-visible time instead.

import ArgumentParser
import Foundation
import PerennialBench
import PerennialEval
import PerennialProtocol

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load-test a server: ping, recommend, feedback, mixed; or measure freshness.",
        discussion: """
            Examples:
              perennial bench ping --connections 50 --pipeline 16 --duration 5
              perennial bench ping --redis 127.0.0.1:6379     (RESP PING, same client)
              perennial bench recommend --connections 16 --duration 10 --json r.json
              perennial bench recommend --connections 16 --rate 5000   (open loop)
              perennial bench feedback --connections 1 --batch 1000
              perennial bench mixed --connections 16 --feedback-share 0.1
              perennial bench freshness --samples 2000
            JSON: throughput (requests, or events for feedback, per second), p50_us,
            p90_us, p99_us, p999_us, max_us, errors.
            feedback, mixed and freshness send synthetic events, which the server
            logs and learns for good: run them against a scratch server (its own
            --data-dir), never one whose model you keep.
            """
    )

    @Argument(help: "Workload: ping, recommend, feedback, mixed or freshness.")
    var workload = "ping"
    @Option var host = "127.0.0.1"
    @Option(parsing: .unconditional) var port = 7878
    @Option(parsing: .unconditional, help: "Concurrent connections.")
    var connections = 50
    @Option(parsing: .unconditional, help: "Requests in flight per connection (closed loop).")
    var pipeline = 1
    @Option(parsing: .unconditional, help: "Seconds to measure (after a 0.5 s warm-up).")
    var duration = 5.0
    @Option(parsing: .unconditional, help: "Open loop: requests per second over all connections.")
    var rate: Double?
    @Option(help: "Measure a redis-server at HOST:PORT with RESP PING instead.")
    var redis: String?
    @Option(parsing: .unconditional, help: "Users and items ids are drawn from 1…users and 1…items.")
    var users = 610
    @Option(parsing: .unconditional) var items = 9742
    @Option(parsing: .unconditional, help: "RECOMMEND: top k, and the scorer (\"\" = default).")
    var k = 10
    @Option var scorer = ""
    @Option(parsing: .unconditional, help: "FEEDBACK: events per request.")
    var batch = 100
    @Option(parsing: .unconditional, help: "mixed: share of requests that are one-event FEEDBACK.")
    var feedbackShare = 0.1
    @Option(parsing: .unconditional, help: "freshness: samples to take.")
    var samples = 1000
    @Option(help: "Write the results as JSON here.")
    var json: String?
    @Option(help: "A file holding the server's token (auth.token_file; its first token when it lists several): every connection sends HELLO with it first.")
    var tokenFile: String?

    /// Every number checked before a connection opens (review finding:
    /// nan, 0 or negative values trapped deep in the load driver).
    func validate() throws {
        guard ["ping", "recommend", "feedback", "mixed", "freshness"].contains(workload) else {
            throw ValidationError("unknown workload '\(workload)': use ping, recommend, feedback, mixed or freshness")
        }
        try OutputPath.check(json, flag: "--json")
        func check(_ ok: Bool, _ what: String) throws { if !ok { throw ValidationError(what) } }
        try check((1...65535).contains(port), "--port must be in 1...65535, not \(port)")
        try check((1...10_000).contains(connections), "--connections must be in 1...10000, not \(connections)")
        try check((1...65_536).contains(pipeline), "--pipeline must be in 1...65536, not \(pipeline)")
        try check(duration > 0 && duration <= 86_400, "--duration must be more than 0 and at most 86400 seconds, not \(duration)")
        if let rate { try check(rate > 0 && rate <= 1e9, "--rate must be more than 0 and at most 1e9 requests per second, not \(rate)") }
        try check(users >= 1 && items >= 1, "--users and --items must be at least 1")
        try check((1...65535).contains(k), "--k must be in 1...65535, not \(k)")
        try check((1...1_000_000).contains(batch), "--batch must be in 1...1000000, not \(batch)")
        try check(feedbackShare >= 0 && feedbackShare <= 1, "--feedback-share must be between 0 and 1, not \(feedbackShare)")
        try check((1...100_000_000).contains(samples), "--samples must be in 1...100000000, not \(samples)")
        if let redis {
            try check(workload == "ping", "--redis works with the ping workload only")
            let parts = redis.split(separator: ":")
            try check(parts.count == 2 && Int(parts[1]).map { (1...65535).contains($0) } == true, "--redis takes HOST:PORT, not \(redis)")
        }
    }

    func run() throws {
        let handshake = try tokenFile.map { path -> [UInt8] in
            var bytes: [UInt8] = []
            Request.hello(Hello(clientName: "perennial-bench", token: try readToken(path))).encode(into: &bytes, requestID: 0)
            return bytes
        }
        if workload == "freshness" {
            let h = try FreshnessProbe(host: host, port: port, handshake: handshake).run(samples: samples, users: users, items: items)
            let us = { (q: Double) in Double(h.value(atQuantile: q)) / 1000 }
            print(String(format: "freshness over %d samples: p50 %.0f us, p90 %.0f us, p99 %.0f us, max %.0f us",
                         samples, us(0.5), us(0.9), us(0.99), Double(h.max) / 1000))
            try write(["workload": "freshness", "samples": samples, "p50_us": us(0.5), "p90_us": us(0.9),
                       "p99_us": us(0.99), "p999_us": us(0.999), "max_us": Double(h.max) / 1000, "errors": 0])
            return
        }
        guard let w = Workload(rawValue: workload) else {
            throw ValidationError("unknown workload \(workload): ping, recommend, feedback, mixed or freshness")
        }
        var target = (host, port)
        var framing = ReplyFraming.perennial
        var settings = WorkloadSettings()
        settings.users = users; settings.items = items; settings.k = k; settings.scorer = scorer
        settings.feedbackBatch = batch; settings.feedbackShare = feedbackShare
        let maker = RequestMaker(w, settings: settings, connections: connections)
        var make: (Int, Int) -> (bytes: [UInt8], units: Int) = { c, n in maker.make(connection: c, n: n) }
        if let redis {
            guard w == .ping else { throw ValidationError("--redis works with the ping workload only") }
            let parts = redis.split(separator: ":")
            guard parts.count == 2, let p = Int(parts[1]) else { throw ValidationError("--redis takes HOST:PORT") }
            target = (String(parts[0]), p)
            framing = .fixed(7)  // "+PONG\r\n"
            let ping = Array("*1\r\n$4\r\nPING\r\n".utf8)
            make = { _, _ in (ping, 1) }
        }
        // (RECOMMEND and PING: a probe of the other workloads would change
        // what the server holds. A refused PING, a missing token, fails at
        // once rather than after a run of errors: helper-76.)
        if redis == nil && (w == .recommend || w == .ping) {
            try LoadDriver.probe(host: host, port: port, handshake: handshake, request: make(0, 1).bytes)
        }
        var driver = LoadDriver(host: target.0, port: target.1, connections: connections, pipeline: pipeline,
                                rate: rate, framing: framing, makeRequest: make)
        if w == .ping { driver.fixedRequest = make(0, 0).bytes }
        if redis == nil { driver.handshake = handshake }
        let r = try driver.run(seconds: duration)
        let label = redis == nil ? "perennial" : "redis"
        let mode = rate.map { String(format: "open loop at %.0f/s", $0) } ?? "pipeline \(pipeline)"
        let us = { (q: Double) in Double(r.latency.value(atQuantile: q)) / 1000 }
        print(String(format: "%@ %@: %d connections, %@: %.0f %@/s; latency p50 %.0f us, p90 %.0f, p99 %.0f, p99.9 %.0f, max %.0f; %d errors",
                     label, workload, connections, mode, r.throughput, w == .feedback ? "events" : "requests",
                     us(0.5), us(0.9), us(0.99), us(0.999), Double(r.latency.max) / 1000, r.errors))
        if r.latencyByOpcode.count > 1 {
            for (opcode, h) in r.latencyByOpcode.sorted(by: { $0.key < $1.key }) {
                let q = { (x: Double) in Double(h.value(atQuantile: x)) / 1000 }
                print(String(format: "  %@: %llu requests; latency p50 %.0f us, p90 %.0f, p99 %.0f, p99.9 %.0f, max %.0f",
                             Opcode(rawValue: opcode).map { "\($0)".uppercased() } ?? "opcode \(opcode)", h.count,
                             q(0.5), q(0.9), q(0.99), q(0.999), Double(h.max) / 1000))
            }
        }
        var doc = r.json
        doc["workload"] = workload
        doc["target"] = label
        doc["connections"] = connections
        doc["pipeline"] = pipeline
        if let rate { doc["rate"] = rate }
        try write(doc)
        // A run whose requests failed, or got no reply at all, measured
        // nothing worth reporting (a stopped server used to read as 0
        // requests/s with 0 errors and exit 0: helper-76).
        if r.requests == 0 {
            throw CommandError("no reply to any request sent in the run (\(r.unanswered) unanswered): is the server answering?")
        }
        if let first = r.firstError {
            throw CommandError("\(r.errors) of \(r.requests) measured requests got an ERROR reply; the first: \(first)")
        }
    }

    private func write(_ doc: [String: Any]) throws {
        guard let json else { return }
        try JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys, .prettyPrinted]).write(to: URL(fileURLWithPath: json))
    }
}
