// Freshness: how long after a FEEDBACK is acknowledged the first RECOMMEND
// reflects it. One connection sends a one-event FEEDBACK and notes the
// acknowledgement's time and sequence number; a second connection then
// sends RECOMMEND back to back until a reply's applied_seq (the learner's
// position when it was answered) covers that sequence. The time from the
// acknowledgement to that reply is one sample.

import Foundation
import PerennialProtocol
#if canImport(Glibc)
import Glibc
#endif

public struct FreshnessProbe {
    public var host: String
    public var port: Int
    /// HELLO sent first on both connections (a server with a token).
    public var handshake: [UInt8]?
    public init(host: String, port: Int, handshake: [UInt8]? = nil) {
        self.host = host
        self.port = port
        self.handshake = handshake
    }

    public func run(samples: Int, users: Int = 610, items: Int = 9742) throws -> LatencyHistogram {
        let writer = try BlockingFrames(host: host, port: port)
        let reader = try BlockingFrames(host: host, port: port)
        if let handshake {
            for c in [writer, reader] { try c.hello(handshake) }
        }
        var h = LatencyHistogram()
        var rng = UInt64(12345)
        for n in 0..<samples {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            let user = (rng >> 33) % UInt64(users) + 1, item = (rng >> 13) % UInt64(items) + 1
            var out: [UInt8] = []
            Request.feedback([WireEvent(user: user, item: item, kind: .click)]).encode(into: &out, requestID: UInt32(n))
            let ack = try writer.call(out)
            let acked = LoadDriver.now()
            guard ack.opcode == Opcode.feedback.rawValue, ack.payload.count >= 16 else {
                throw BenchError("FEEDBACK refused: \(LoadDriver.errorMessage(ack.payload))")
            }
            let last = ack.u64(at: 8)
            while true {
                out.removeAll(keepingCapacity: true)
                Request.recommend(RecommendRequest(user: user, k: 10)).encode(into: &out, requestID: UInt32(n))
                let reply = try reader.call(out)
                guard reply.opcode == Opcode.recommend.rawValue else {
                    throw BenchError("RECOMMEND refused: \(LoadDriver.errorMessage(reply.payload))")
                }
                if reply.u64(at: 0) >= last {
                    h.record(LoadDriver.now() - acked)
                    break
                }
            }
        }
        return h
    }
}

/// One request, one reply, over a blocking socket.
final class BlockingFrames {
    let fd: Int32
    private var inbox: [UInt8] = []

    /// Owns the connection (closed when this goes).
    init(host: String, port: Int) throws {
        fd = try LoadDriver.connect(host: host, port: port)
        owns = true
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        // (A stopped server must not hang the tool: helper-76, a probe
        // waited forever.)
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
    /// Uses `fd` for a call or two and leaves it open and non-blocking.
    init(adopting fd: Int32) {
        self.fd = fd
        owns = false
    }
    private let owns: Bool
    deinit { if owns { close(fd) } }

    struct Frame {
        var opcode: UInt8
        var payload: [UInt8]
        func u64(at o: Int) -> UInt64 {
            (0..<8).reduce(UInt64(0)) { $0 | UInt64(payload[o + $1]) << (8 * UInt64($1)) }
        }
    }

    /// Sends a HELLO frame and checks its reply (a wrong token stops the run).
    func hello(_ frame: [UInt8]) throws {
        let reply = try call(frame)
        if reply.opcode == Opcode.error.rawValue { throw BenchError("HELLO refused: \(LoadDriver.errorMessage(reply.payload))") }
    }

    func call(_ request: [UInt8]) throws -> Frame {
        guard LoadDriver.sendAll(fd, request) else { throw BenchError("send failed") }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            if inbox.count >= 12 {
                let length = Int(inbox[0]) | Int(inbox[1]) << 8 | Int(inbox[2]) << 16 | Int(inbox[3]) << 24
                if inbox.count >= 4 + length {
                    let f = Frame(opcode: inbox[5], payload: Array(inbox[12..<(4 + length)]))
                    inbox.removeFirst(4 + length)
                    return f
                }
            }
            if !owns {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 10_000) == 1 else { throw BenchError("no reply within 10 s") }
            }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EAGAIN && owns { throw BenchError("no reply within 10 s: is the server answering?") }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { continue }
            guard n > 0 else { throw BenchError("the server closed the connection") }
            inbox.append(contentsOf: buffer[0..<n])
        }
    }
}
