// `perennial bench ping`: a closed-loop load generator for the protocol
// floor. One thread drives every connection with epoll, keeping `pipeline`
// requests in flight on each; `--redis` sends RESP PING to a redis-server
// instead, so both servers are measured by the same client machinery.
// poll(2) over a few dozen sockets costs little next to the servers' work.
// (Open-loop pacing, histograms and the other workloads are later work.)

import ArgumentParser
import Foundation
import PerennialCore
import PerennialEval
import PerennialProtocol
#if canImport(Glibc)
import Glibc
#endif

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load-test a server with PING (closed loop, pipelined).",
        discussion: """
            Example: perennial bench ping --connections 50 --pipeline 16 --duration 5
            With --redis HOST:PORT the same client sends RESP PING to redis-server.
            """
    )

    @Argument(help: "Workload: ping.")
    var workload = "ping"
    @Option var host = "127.0.0.1"
    @Option var port = 7878
    @Option(help: "Concurrent connections.")
    var connections = 50
    @Option(help: "Requests in flight per connection.")
    var pipeline = 1
    @Option(help: "Seconds to run (after a 0.5 s warm-up).")
    var duration = 5.0
    @Option(help: "Measure a redis-server at HOST:PORT with RESP PING instead.")
    var redis: String?
    @Option(help: "Write {throughput, ...} as JSON here.")
    var json: String?

    func run() throws {
        guard workload == "ping" else { throw ValidationError("only the ping workload exists in this build") }
        var target = (host, port)
        var request: [UInt8]
        let replySize: Int
        if let redis {
            let parts = redis.split(separator: ":")
            guard parts.count == 2, let p = Int(parts[1]) else { throw ValidationError("--redis takes HOST:PORT") }
            target = (String(parts[0]), p)
            request = Array("*1\r\n$4\r\nPING\r\n".utf8)
            replySize = 7  // "+PONG\r\n"
        } else {
            request = []
            Request.ping.encode(into: &request, requestID: 1)
            replySize = FrameHeader.size
        }
        let result = try PingLoad(host: target.0, port: target.1, connections: connections, pipeline: pipeline,
                                  request: request, replySize: replySize).run(seconds: duration)
        let label = redis == nil ? "perennial" : "redis"
        print(String(format: "%@ ping: %d connections, pipeline %d: %.0f requests/s (%d requests in %.2f s, %d errors)",
                     label, connections, pipeline, result.throughput, result.requests, result.seconds, result.errors))
        if let json {
            let doc: [String: Any] = ["workload": "ping", "target": label, "connections": connections, "pipeline": pipeline,
                                      "throughput": result.throughput, "requests": result.requests, "errors": result.errors,
                                      "seconds": result.seconds]
            try JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys]).write(to: URL(fileURLWithPath: json))
        }
    }
}

/// Fixed-size request/reply load over non-blocking sockets and poll(2).
struct PingLoad {
    var host: String
    var port: Int
    var connections: Int
    var pipeline: Int
    var request: [UInt8]
    var replySize: Int

    struct Result { var throughput: Double; var requests: Int; var seconds: Double; var errors: Int }

    func run(seconds: Double) throws -> Result {
        var fds: [Int32] = []
        var carry: [Int] = []  // bytes of a partly received reply, per connection
        defer { for fd in fds { close(fd) } }
        var batch: [UInt8] = []
        for _ in 0..<pipeline { batch += request }
        for _ in 0..<connections {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            addr.sin_addr.s_addr = inet_addr(host)
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else { throw CommandError("cannot connect to \(host):\(port): \(String(cString: strerror(errno)))") }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            fds.append(fd)
            carry.append(0)
        }
        let warmupEnd = MonotonicClock.nowNanos() + 500_000_000
        var measuring = false
        var start: UInt64 = 0
        var end: UInt64 = 0
        var done = 0
        var errors = 0
        // Prime every connection with a full pipeline.
        for fd in fds {
            if send(fd, batch, batch.count, Int32(MSG_NOSIGNAL)) != batch.count { errors += 1 }
        }
        var pollSet = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let now = MonotonicClock.nowNanos()
            if !measuring && now >= warmupEnd {
                measuring = true
                start = now
                end = now + UInt64(seconds * 1e9)
            }
            if measuring && now >= end { break }
            let n = poll(&pollSet, nfds_t(pollSet.count), 100)
            if n < 0 { if errno == EINTR { continue }; break }
            for i in pollSet.indices where pollSet[i].revents != 0 {
                pollSet[i].revents = 0
                let got = buffer.withUnsafeMutableBytes { recv(fds[i], $0.baseAddress, $0.count, 0) }
                if got <= 0 { if got == 0 || (errno != EAGAIN && errno != EINTR) { errors += 1 }; continue }
                // Replies are fixed-size and in order: count the whole ones
                // these bytes complete, and answer each with a new request.
                let completed = (carry[i] + got) / replySize
                carry[i] = (carry[i] + got) % replySize
                if completed > 0 {
                    if measuring { done += completed }
                    var out: [UInt8] = []
                    for _ in 0..<completed { out += request }
                    if send(fds[i], out, out.count, Int32(MSG_NOSIGNAL)) != out.count { errors += 1 }
                }
            }
        }
        let secs = Double(MonotonicClock.nowNanos() - start) / 1e9
        return Result(throughput: Double(done) / secs, requests: done, seconds: secs, errors: errors)
    }
}
