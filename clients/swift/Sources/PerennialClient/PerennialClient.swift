// The bundled Swift client: async/await over one TCP connection, in the same
// shape as the Python client. Requests may be pipelined (`pipeline`) and
// feedback streamed with a bounded window of unacknowledged batches
// (`stream`).
//
// Threading invariant (why this is `@unchecked Sendable`): all mutable state
// (socket, buffers, request ids) is touched only on `queue`, a serial queue;
// every public method hops onto it, so blocking socket calls never block
// Swift's cooperative threads and calls from many tasks are serialised.

@_exported import PerennialProtocol
import Foundation

public enum PerennialClientError: Error, Sendable, CustomStringConvertible, Equatable {
    case connection(String)
    case timeout(String)
    /// The server's bytes broke the protocol.
    case protocolViolation(ProtocolError)
    /// The server answered with an ERROR frame.
    case server(code: ErrorCode?, rawCode: UInt16, detail: UInt32, message: String)
    /// A request longer than the server's max_frame_bytes (from HELLO, else
    /// the default 4 MiB): refused before anything was sent, since the server
    /// would drop the connection while it is still being sent.
    case requestTooLarge(bytes: Int, maxFrameBytes: Int)

    public var description: String {
        switch self {
        case .connection(let m): "connection error: \(m)"
        case .timeout(let m): "timeout: \(m)"
        case .protocolViolation(let e): "protocol violation: \(e)"
        case .server(let code, let raw, _, let m): "server error \(code?.name ?? String(raw)): \(m)"
        case .requestTooLarge(let n, let max): "a request of \(n) bytes exceeds the server's max_frame_bytes (\(max)); nothing was sent"
        }
    }

    /// The server's error code, when this is a server error.
    public var serverCode: ErrorCode? {
        if case .server(let c, _, _, _) = self { return c }
        return nil
    }
}

public final class PerennialClient: @unchecked Sendable {
    public let host: String
    public let port: Int
    private let queue = DispatchQueue(label: "perennial.client")
    private let socket: BlockingSocket
    private var nextID: UInt32 = 1
    private var inbox: [UInt8] = []
    private var outbox: [UInt8] = []
    private var maxEvents = 10_000
    private var maxFrameBytes = 4 * 1024 * 1024

    /// Connects (blocking) to a server. `timeout` bounds every reply wait.
    public init(host: String = "127.0.0.1", port: Int = 7878, timeout: Double = 10) throws {
        self.host = host
        self.port = port
        socket = try BlockingSocket(host: host, port: port, timeout: timeout)
    }

    /// Connects without blocking the caller's thread.
    public static func connect(host: String = "127.0.0.1", port: Int = 7878, timeout: Double = 10) async throws -> PerennialClient {
        try await withCheckedThrowingContinuation { cont in
            DispatchQueue.global().async {
                cont.resume(with: Result { try PerennialClient(host: host, port: port, timeout: timeout) })
            }
        }
    }

    public func close() { queue.sync { socket.close() } }

    private func onQueue<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { cont in
            queue.async { cont.resume(with: Result { try body() }) }
        }
    }

    // MARK: calls

    /// Protocol handshake; also learns the server's limits.
    /// A peer that does not answer it like a Perennial server (a web
    /// server's "HTTP/1.1 400" read as a frame length, silence, a close)
    /// gets an error of the same kind that says so and quotes its first
    /// bytes; the server's own refusal (a wrong token) is thrown as it is.
    public func hello(clientName: String = "perennial-swift", token: String = "") async throws -> HelloReply {
        let reply: Reply
        do {
            reply = try await call(.hello(Hello(clientName: clientName, token: token)))
        } catch let e as PerennialClientError {
            let bytes = queue.sync { socket.firstBytes }
            let heard = bytes.isEmpty ? "it sent nothing"
                : "its first bytes were \"" + bytes.map { (32..<127).contains($0) ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }.joined() + "\""
            let why = { (what: String) in
                "\(self.host):\(self.port) did not answer HELLO like a Perennial server (\(what); \(heard)): is a Perennial server listening there?"
            }
            switch e {
            case .timeout(let m): throw PerennialClientError.timeout(why(m))
            case .connection(let m): throw PerennialClientError.connection(why(m))
            case .protocolViolation(let p): throw PerennialClientError.protocolViolation(ProtocolError(p.code, why(p.message)))
            default: throw e
            }
        }
        guard case .hello(let h) = reply else { throw unexpected() }
        queue.sync {
            maxEvents = Int(h.maxEvents)
            maxFrameBytes = Int(h.maxFrameBytes)
        }
        return h
    }

    public func ping() async throws {
        guard case .ping = try await call(.ping) else { throw unexpected() }
    }

    /// The k best items for `user`, best first.
    public func recommend(user: UInt64, k: Int = 10, scorer: String = "", session: [UInt64] = [],
                          sessionID: String = "", exclude: [UInt64] = [], candidates: [UInt64] = [],
                          minAppliedSeq: UInt64 = 0, shadow: String = "") async throws -> [RankedItem] {
        var q = RecommendRequest(user: user, k: UInt16(clamping: k), minAppliedSeq: minAppliedSeq, scorer: scorer,
                                 sessionID: sessionID, sessionItems: session, exclude: exclude, candidates: candidates)
        q.shadowScorer = shadow
        guard case .recommend(let r) = try await call(.recommend(q)) else { throw unexpected() }
        return r.items
    }

    /// Scores for `items`, in their order.
    public func score(user: UInt64, items: [UInt64], scorer: String = "", session: [UInt64] = []) async throws -> [ItemScore] {
        guard case .score(let s) = try await call(.score(ScoreRequest(user: user, scorer: scorer, sessionItems: session, items: items))) else {
            throw unexpected()
        }
        return s
    }

    /// Sends one batch and returns once it is acknowledged.
    public func feedback(_ events: [WireEvent]) async throws -> FeedbackAck {
        guard case .feedback(let a) = try await call(.feedback(events)) else { throw unexpected() }
        return a
    }

    public func upsertItem(_ item: UInt64, text: String, attributes: [ItemAttribute] = []) async throws -> UpsertReply {
        guard case .upsertItem(let u) = try await call(.upsertItem(UpsertItem(item: item, text: text, attributes: attributes))) else {
            throw unexpected()
        }
        return u
    }

    /// Deletes items for good (a discontinued product, a withdrawn
    /// article): the server forgets each with everything learned about it
    /// and never recommends it again. Returns how many it held; ids it did
    /// not hold are ignored. An item sent again later starts afresh.
    public func deleteItems(_ items: [UInt64]) async throws -> Int {
        guard case .deleteItems(let n) = try await call(.deleteItems(items)) else { throw unexpected() }
        return Int(n)
    }

    /// Deletes users (a closed account, an erasure request): the server
    /// forgets each with everything it holds for them alone (their row,
    /// history, context and sessions' state). Returns how many it held.
    public func deleteUsers(_ users: [UInt64]) async throws -> Int {
        guard case .deleteUsers(let n) = try await call(.deleteUsers(users)) else { throw unexpected() }
        return Int(n)
    }

    /// The server's named counters.
    public func stats() async throws -> [String: UInt64] {
        guard case .stats(let c) = try await call(.stats) else { throw unexpected() }
        return Dictionary(c.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
    }

    public func shutdown() async throws {
        guard case .shutdown = try await call(.shutdown) else { throw unexpected() }
    }

    /// One request, one reply. ERROR replies throw `.server`.
    public func call(_ request: Request) async throws -> Reply {
        let replies = try await pipeline([request])
        if case .error(let e) = replies[0] {
            throw PerennialClientError.server(code: e.code, rawCode: e.rawCode, detail: e.detail, message: e.message)
        }
        return replies[0]
    }

    /// Sends all requests in one write, then reads their replies in order.
    /// ERROR replies are returned in place, not thrown.
    public func pipeline(_ requests: [Request]) async throws -> [Reply] {
        try await onQueue { [self] in
            outbox.removeAll(keepingCapacity: true)
            var ids: [UInt32] = []
            for r in requests {
                let start = outbox.count, id = takeID()
                r.encode(into: &outbox, requestID: id)
                // (The frame's length field counts the bytes after it.)
                if outbox.count - start - 4 > maxFrameBytes {
                    throw PerennialClientError.requestTooLarge(bytes: outbox.count - start, maxFrameBytes: maxFrameBytes)
                }
                ids.append(id)
            }
            try socket.send(outbox)
            return try ids.map { try readReply(for: $0) }
        }
    }

    /// Streams events in batches of `batchSize`, keeping at most `window`
    /// batches unacknowledged; returns the last acknowledgement. `progress`
    /// gets the number of events acknowledged so far.
    public func stream(_ events: [WireEvent], batchSize: Int = 1000, window: Int = 8,
                       progress: (@Sendable (Int) -> Void)? = nil) async throws -> FeedbackAck? {
        try await onQueue { [self] in
            let size = max(1, min(batchSize, maxEvents))
            var pending: [(id: UInt32, count: Int)] = []
            var acked = 0
            var last: FeedbackAck?
            var start = 0
            func readOne() throws {
                let (id, n) = pending.removeFirst()
                let reply = try readReply(for: id)
                switch reply {
                case .feedback(let a): last = a
                case .error(let e): throw PerennialClientError.server(code: e.code, rawCode: e.rawCode, detail: e.detail, message: e.message)
                default: throw unexpected()
                }
                acked += n
                progress?(acked)
            }
            while start < events.count {
                let end = min(events.count, start + size)
                outbox.removeAll(keepingCapacity: true)
                let id = takeID()
                let frame = outbox.beginFrame(opcode: Opcode.feedback.rawValue, flags: 0, requestID: id)
                Request.encodeFeedback(events[start..<end], into: &outbox)
                outbox.endFrame(frame)
                try socket.send(outbox)
                pending.append((id, end - start))
                start = end
                while pending.count >= window { try readOne() }
            }
            while !pending.isEmpty { try readOne() }
            return last
        }
    }

    // MARK: framing (on `queue`)

    private func takeID() -> UInt32 {
        defer { nextID = nextID == UInt32.max ? 1 : nextID + 1 }
        return nextID
    }

    /// Decoding the server's replies: only the frame size matters, and it
    /// is generous (the largest reply, 65,535 scores, is under 1 MB) yet
    /// small enough that a stranger's bytes read as a length fail at once.
    private static let replyLimits = ProtocolLimits(maxFrameBytes: 64 << 20)

    private func readReply(for id: UInt32) throws -> Reply {
        while true {
            let result = inbox.withUnsafeBytes { FrameDecoder.decode($0, limits: Self.replyLimits) }
            switch result {
            case .needMore:
                try socket.receive(into: &inbox)
            case .fatal(let e, _):
                socket.close()
                throw PerennialClientError.protocolViolation(e)
            case .frame(let header):
                defer { inbox.removeFirst(header.frameLength) }
                guard header.requestID == id || (header.requestID == 0 && header.opcode == Opcode.error.rawValue) else {
                    socket.close()
                    throw PerennialClientError.protocolViolation(
                        ProtocolError(.malformedPayload, "reply for request \(header.requestID) while waiting for \(id)"))
                }
                do {
                    guard let op = Opcode(rawValue: header.opcode), header.isReply else {
                        throw ProtocolError(.unknownOpcode, "unexpected frame opcode \(header.opcode)")
                    }
                    return try inbox.withUnsafeBytes { raw throws(ProtocolError) in
                        try Reply.decode(opcode: op, payload: UnsafeRawBufferPointer(rebasing: raw[FrameHeader.size..<header.frameLength]))
                    }
                } catch let e as ProtocolError {
                    throw PerennialClientError.protocolViolation(e)
                }
            }
        }
    }

    private func unexpected() -> PerennialClientError {
        .protocolViolation(ProtocolError(.malformedPayload, "reply of the wrong kind"))
    }
}
