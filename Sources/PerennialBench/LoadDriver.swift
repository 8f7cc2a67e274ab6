// The load generator behind `perennial bench`: N non-blocking connections
// driven by one thread with poll(2). Closed loop keeps `pipeline` requests
// in flight per connection (latency from the actual send); open loop sends
// on an OpenLoopPacer's schedule spread over the connections (latency from
// the intended time), with at most `maxInFlight` outstanding per connection
// so a dead server cannot make it queue without bound.
//
// Replies come back in order on each connection, so each one is matched
// to the oldest outstanding request. Perennial replies are length-prefixed
// frames (an ERROR frame counts as an error); RESP replies to PING are the
// fixed 7 bytes "+PONG\r\n".

import CEpoll
import Foundation
import PerennialClient
import PerennialProtocol
#if canImport(Glibc)
import Glibc
#endif

public enum ReplyFraming: Sendable {
    case perennial
    case fixed(Int)
}

public struct LoadResult: Sendable {
    public var requests = 0
    public var units = 0        // requests, or events for FEEDBACK loads
    /// Requests sent in the measured time and still unanswered at its end:
    /// not in `requests`, but their latency (up to the end) is in `latency`,
    /// so a server that stalls or stops shows in the percentiles instead of
    /// vanishing from them (coordinated omission).
    public var unanswered = 0
    public var errors = 0
    /// The first measured ERROR reply's message, to say why.
    public var firstError: String?
    public var seconds = 0.0
    /// The load client's own CPU time over the run's wall time (user and
    /// system): near 1 means the client, not the server, set the pace.
    public var clientCPUShare = 0.0
    public var latency = LatencyHistogram()
    /// Perennial loads that send more than one kind of request (mixed):
    /// the latency of each kind on its own, by opcode, since a FEEDBACK
    /// that waits (for the learner, or for a snapshot) says nothing of how
    /// long a RECOMMEND waited.
    public var latencyByOpcode: [UInt8: LatencyHistogram] = [:]
    public var throughput: Double { seconds > 0 ? Double(units) / seconds : 0 }
    public var requestRate: Double { seconds > 0 ? Double(requests) / seconds : 0 }

    public var json: [String: Any] {
        let us = { (q: Double) in Double(self.latency.value(atQuantile: q)) / 1000 }
        var doc: [String: Any] = ["throughput": throughput, "requests_per_second": requestRate, "requests": requests, "errors": errors,
                "seconds": seconds, "unanswered": unanswered, "client_cpu_share": clientCPUShare, "p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99), "p999_us": us(0.999),
                "max_us": Double(latency.max) / 1000, "mean_us": latency.mean / 1000]
        if latencyByOpcode.count > 1 {
            // e.g. "by_request": {"recommend": {"requests": …, "p99_us": …}, "feedback": {…}}
            var kinds: [String: Any] = [:]
            for (opcode, h) in latencyByOpcode {
                let name = Opcode(rawValue: opcode).map { "\($0)".lowercased() } ?? "opcode_\(opcode)"
                let q = { (x: Double) in Double(h.value(atQuantile: x)) / 1000 }
                kinds[name] = ["requests": h.count, "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999),
                               "max_us": Double(h.max) / 1000]
            }
            doc["by_request"] = kinds
        }
        return doc
    }
}

public struct LoadDriver {
    public var host: String
    public var port: Int
    public var connections: Int
    public var pipeline: Int
    /// Requests per second over all connections (nil: closed loop).
    public var rate: Double?
    public var maxInFlight = 10_000
    public var framing: ReplyFraming
    /// Builds request k for connection c: its bytes and the units it carries.
    public var makeRequest: (_ connection: Int, _ k: Int) -> (bytes: [UInt8], units: Int)
    /// When every request is the same bytes (PING), they are copied from
    /// here instead of built per request, so the client's cost per request
    /// stays well below the servers' and does not cap what is measured.
    public var fixedRequest: [UInt8]?
    /// Sent first on every connection (HELLO with a token), its reply
    /// awaited before the run; an ERROR reply stops it with its message.
    public var handshake: [UInt8]?

    public init(host: String, port: Int, connections: Int, pipeline: Int, rate: Double?, framing: ReplyFraming,
                makeRequest: @escaping (Int, Int) -> (bytes: [UInt8], units: Int)) {
        self.host = host
        self.port = port
        self.connections = connections
        self.pipeline = pipeline
        self.rate = rate
        self.framing = framing
        self.makeRequest = makeRequest
    }

    private struct Conn {
        var fd: Int32
        var inbox: [UInt8] = []
        var outstanding: [(at: UInt64, units: Int, opcode: UInt8)] = []
        var head = 0
        var sent = 0
        var pacer: OpenLoopPacer?
        var inFlight: Int { outstanding.count - head }
    }

    /// Sends one request on a connection of its own and throws if the
    /// server answers it with an ERROR (a mistyped scorer, a missing
    /// token), so a run does not spend its whole duration failing.
    public static func probe(host: String, port: Int, handshake: [UInt8]?, request: [UInt8]) throws {
        let frames = try BlockingFrames(host: host, port: port)  // (owns the socket: closed when done)
        if let handshake { try frames.hello(handshake) }
        let reply = try frames.call(request)
        if reply.opcode == Opcode.error.rawValue {
            throw BenchError("the first request was refused: \(errorMessage(reply.payload)); nothing measured")
        }
    }

    public func run(seconds: Double, warmup: Double = 0.5) throws -> LoadResult {
        var conns: [Conn] = []
        defer { for c in conns { close(c.fd) } }
        for _ in 0..<connections {
            let fd = try Self.connect(host: host, port: port)
            conns.append(Conn(fd: fd))
            if let handshake { try BlockingFrames(adopting: fd).hello(handshake) }
        }
        let t0 = Self.now()
        let cpu0 = Self.cpuNanos()
        let measureFrom = t0 + UInt64(warmup * 1e9)
        let stopAt = measureFrom + UInt64(seconds * 1e9)
        if let rate {
            // Each connection gets an equal share, offset so sends interleave.
            let per = rate / Double(connections)
            for i in conns.indices {
                conns[i].pacer = OpenLoopPacer(rate: per, start: t0 + UInt64(Double(i) / rate * 1e9))
            }
        }
        var result = LoadResult()
        // epoll, not poll over every connection per wait: the client's own
        // kernel time per request must stay well below the servers' (with
        // poll it saturated the client's core at PING pipeline 16).
        let ep = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard ep >= 0 else { throw BenchError("epoll_create1: \(String(cString: strerror(errno)))") }
        defer { close(ep) }
        for (i, c) in conns.enumerated() {
            var ev = epoll_event()
            ev.events = EPOLLIN.rawValue
            ev.data.u32 = UInt32(i)
            guard epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev) == 0 else { throw BenchError("epoll_ctl: \(String(cString: strerror(errno)))") }
        }
        var events = [epoll_event](repeating: epoll_event(), count: conns.count)
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var out: [UInt8] = []
        while true {
            let now = Self.now()
            if now >= stopAt { break }
            // Send what is due.
            for i in conns.indices {
                out.removeAll(keepingCapacity: true)
                if var pacer = conns[i].pacer {
                    var due = pacer.due(now: now)
                    while due > 0 && conns[i].inFlight < maxInFlight {
                        let at = pacer.issue()
                        let (bytes, units) = makeRequest(i, conns[i].sent)
                        out += bytes
                        conns[i].outstanding.append((at, units, Self.opcode(bytes)))
                        conns[i].sent += 1
                        due -= 1
                    }
                    conns[i].pacer = pacer
                } else {
                    while conns[i].inFlight < pipeline {
                        if let fixed = fixedRequest {
                            out.append(contentsOf: fixed)
                            conns[i].outstanding.append((now, 1, 0))
                        } else {
                            let (bytes, units) = makeRequest(i, conns[i].sent)
                            out += bytes
                            conns[i].outstanding.append((now, units, Self.opcode(bytes)))
                        }
                        conns[i].sent += 1
                    }
                }
                if !out.isEmpty && !Self.sendAll(conns[i].fd, out, until: stopAt + 5_000_000_000) {
                    throw BenchError("could not send for 5 s past the run's end: the server stopped reading (use a smaller --pipeline / --batch)")
                }
            }
            // Wait for replies: in open loop only until the next request is
            // due. poll counts whole milliseconds, which would add up to 1 ms
            // of the client's own delay to latencies, so under 2 ms to go the
            // client polls without waiting (it has a core of its own).
            var timeout: Int32 = 100
            if rate != nil {
                let next = conns.compactMap { $0.pacer.map { $0.intended($0.issued) } }.min() ?? now
                let after = Self.now()
                let nanos = next > after ? Int(next - after) : 0
                timeout = nanos >= 2_000_000 ? Int32(nanos / 1_000_000 - 1) : 0
            }
            let n = epoll_wait(ep, &events, Int32(events.count), timeout)
            if n < 0 { if errno == EINTR { continue }; throw BenchError("epoll_wait: \(String(cString: strerror(errno)))") }
            if n == 0 { continue }
            let received = Self.now()
            for e in events.prefix(Int(n)) {
                let i = Int(e.data.u32)
                let got = buffer.withUnsafeMutableBytes { recv(conns[i].fd, $0.baseAddress, $0.count, 0) }
                if got == 0 { throw BenchError("the server closed a connection") }
                if got < 0 { if errno == EAGAIN || errno == EINTR { continue }; throw BenchError("recv: \(String(cString: strerror(errno)))") }
                conns[i].inbox.append(contentsOf: buffer[0..<got])
                var offset = 0
                while let (size, isError) = nextReply(conns[i].inbox, from: offset) {
                    let start = offset
                    offset += size
                    guard conns[i].head < conns[i].outstanding.count else {
                        throw BenchError("a reply arrived for no request")
                    }
                    let (at, units, opcode) = conns[i].outstanding[conns[i].head]
                    conns[i].head += 1
                    if at >= measureFrom {
                        result.requests += 1
                        result.units += units
                        if isError { result.errors += 1 }
                        if isError && result.firstError == nil {
                            let frame = conns[i].inbox[start..<offset]
                            if case .perennial = framing {
                                result.firstError = Self.errorMessage(Array(frame.dropFirst(FrameHeader.size)))
                            } else {
                                result.firstError = String(decoding: frame, as: UTF8.self)
                            }
                        }
                        result.latency.record(received >= at ? received - at : 0)
                        if opcode != 0 { result.latencyByOpcode[opcode, default: LatencyHistogram()].record(received >= at ? received - at : 0) }
                    }
                }
                if offset > 0 { conns[i].inbox.removeFirst(offset) }
                if conns[i].head > 4096 {
                    conns[i].outstanding.removeFirst(conns[i].head)
                    conns[i].head = 0
                }
            }
        }
        let end = Self.now()
        for c in conns {
            for (at, _, _) in c.outstanding[c.head...] where at >= measureFrom && at < end {
                result.unanswered += 1
                result.latency.record(end - at)
            }
        }
        result.seconds = Double(end - measureFrom) / 1e9
        result.clientCPUShare = Double(Self.cpuNanos() - cpu0) / Double(max(end - t0, 1))
        return result
    }

    /// The size of the whole reply at `offset` and whether it is an error,
    /// or nil when it has not fully arrived.
    private func nextReply(_ inbox: [UInt8], from offset: Int) -> (Int, Bool)? {
        switch framing {
        case .fixed(let size):
            return inbox.count - offset >= size ? (size, inbox[offset] == UInt8(ascii: "-")) : nil
        case .perennial:
            // (The protocol's one framing: a frame that breaks it is an
            // error taking the rest of the input, as the connection would.)
            let decoded = inbox.withUnsafeBytes { raw in
                FrameDecoder.decode(UnsafeRawBufferPointer(rebasing: raw[offset...]), limits: Self.replyLimits)
            }
            switch decoded {
            case .needMore: return nil
            case .frame(let header): return (header.frameLength, header.opcode == Opcode.error.rawValue)
            case .fatal: return (inbox.count - offset, true)
            }
        }
    }

    /// Replies are bounded only by what a reply can be (the largest, 65,535
    /// scores, is under 1 MB), as in the clients.
    private static let replyLimits = ProtocolLimits(maxFrameBytes: 64 << 20)

    /// A Perennial request's opcode (0 for anything else, e.g. RESP).
    static func opcode(_ bytes: [UInt8]) -> UInt8 {
        let decoded = bytes.withUnsafeBytes { FrameDecoder.decode($0, limits: replyLimits) }
        if case .frame(let header) = decoded { return header.opcode }
        return 0
    }

    /// An ERROR frame's payload as "CODE: message".
    static func errorMessage(_ payload: [UInt8]) -> String {
        let reply = payload.withUnsafeBytes { try? Reply.decode(opcode: .error, payload: $0) }
        guard case .error(let e)? = reply else { return "an ERROR reply that does not parse" }
        return "\(e.code?.name ?? "code \(e.rawCode)"): \(e.message)"
    }

    /// This process's CPU time (user and system), in nanoseconds.
    static func cpuNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    static func connect(host: String, port: Int) throws -> Int32 {
        let fd: Int32
        do { fd = try TCPConnection.open(host: host, port: port) } catch { throw BenchError("\(error)") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    /// Sends every byte, waiting for room when the socket buffer is full,
    /// but not past `deadline` (so a server that stops reading cannot hang
    /// the run).
    static func sendAll(_ fd: Int32, _ bytes: [UInt8], until deadline: UInt64 = .max) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EINTR) {
                // Full socket buffer: wait for room, but not past the deadline.
                if now() > deadline { return false }
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, 100)
                continue
            }
            return false
        }
        return true
    }
}

public struct BenchError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
