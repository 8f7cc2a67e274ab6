// The bundled Swift client: async/await over one TCP connection, in the same
// shape as the Python client. Requests may be pipelined (`pipeline`) and
// feedback streamed with a bounded window of unacknowledged batches
// (`stream`).
//
// Threading invariant (why this is `@unchecked Sendable`): all mutable state
// (socket, buffers, request ids) is touched only on `queue`, a serial queue;
// every public method hops onto it, so blocking socket calls never block
// Swift's cooperative threads and calls from many tasks are serialised. The
// one exception is the open descriptor's copy under `abortLock`, which
// `close()` and a cancelled call shut down from any thread (shutdown(2) on a
// descriptor the queue may be blocked reading is what wakes it; the copy is
// cleared, under the lock, before the queue closes the descriptor, so a
// reused number is never shut).
//
// Like the Python client, it greets every connection it opens with HELLO
// (learning the server's limits), and opens a new connection for the next
// call when the server closed the idle one (a restart, its idle timeout) or
// after `close()`. Linux only (glibc), like the server.

// The protocol types a caller names, re-exported one by one: the whole
// module would put `Request`, `Reply` and `Hello` beside a web framework's
// own (review finding, helper-73: "'Request' is ambiguous" in a Vapor-style
// app). `pipeline` and `call` take the module's Request: import
// PerennialProtocol for them (and qualify where names collide).
@_exported import struct PerennialProtocol.WireEvent
@_exported import enum PerennialProtocol.EventKind
@_exported import struct PerennialProtocol.RankedItem
@_exported import struct PerennialProtocol.ItemScore
@_exported import struct PerennialProtocol.FeedbackAck
@_exported import struct PerennialProtocol.UpsertReply
@_exported import struct PerennialProtocol.ItemAttribute
@_exported import struct PerennialProtocol.HelloReply
@_exported import struct PerennialProtocol.ErrorReply
@_exported import enum PerennialProtocol.ErrorCode
@_exported import struct PerennialProtocol.ProtocolError
import PerennialProtocol
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum PerennialClientError: Error, Sendable, CustomStringConvertible, Equatable, LocalizedError {
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
    /// An argument the client or the protocol cannot take (a list of more
    /// than 65,535 ids, k outside 1...65,535, a window of 0, a timeout that
    /// is not a positive number, a port outside 1...65,535): refused before
    /// anything was sent.
    case invalidArgument(String)
    /// `stream`: the server refused these batches (none of their events was
    /// accepted); the stream's other batches went on, and `acknowledged`
    /// events were accepted.
    case streamRefused(acknowledged: Int, refused: [RefusedBatch])
    /// `pipeline`: the connection failed (or timed out, or was closed or
    /// cancelled) after the first `replies.count` requests were answered;
    /// their replies are here, in order. The other `unanswered` were sent
    /// without an answer: the server may have carried out some of them
    /// (for FEEDBACK, its STATS events_accepted tells), so send them again
    /// only if doing so twice is harmless.
    case pipelineCut(replies: [Reply], unanswered: Int, reason: String)

    public var description: String {
        switch self {
        case .connection(let m): "connection error: \(m)"
        case .timeout(let m): "timeout: \(m)"
        case .protocolViolation(let e): "protocol violation: \(e)"
        case .server(let code, let raw, _, let m): "server error \(code?.name ?? String(raw)): \(m)"
        case .requestTooLarge(let n, let max): "a request of \(n) bytes exceeds the server's max_frame_bytes (\(max)); nothing was sent"
        case .invalidArgument(let m): "invalid argument: \(m); nothing was sent"
        case .streamRefused(let acked, let refused):
            "the server refused \(refused.count) batch(es) of the stream, none of whose events was accepted (\(acked) events of the other batches were); the first: \(refused.first.map { "\($0)" } ?? "")"
        case .pipelineCut(let replies, let unanswered, let reason):
            "a pipeline was cut after \(replies.count) of its \(replies.count + unanswered) requests were answered (their replies are in the error); the other \(unanswered) were sent without an answer, and the server may have carried out some of them: \(reason)"
        }
    }

    /// (`localizedDescription` says the same, not "error 3".)
    public var errorDescription: String? { description }

    /// The same error with its message rewritten (said of a connection,
    /// timeout or protocol error; any other is returned as it is).
    func rewording(_ message: (String) -> String) -> PerennialClientError {
        switch self {
        case .connection(let m): .connection(message(m))
        case .timeout(let m): .timeout(message(m))
        case .protocolViolation(let p): .protocolViolation(ProtocolError(p.code, message(p.message)))
        default: self
        }
    }

    /// The server's error code, when this is a server error.
    public var serverCode: ErrorCode? {
        if case .server(let c, _, _, _) = self { return c }
        return nil
    }
}

/// A batch of a `stream` the server refused.
public struct RefusedBatch: Sendable, Equatable, CustomStringConvertible {
    /// The stream index of the batch's first event, and its size.
    public var offset: Int
    public var count: Int
    /// The server's ERROR reply.
    public var error: ErrorReply
    /// The refused event's index in the stream (an INVALID_EVENT or a
    /// CAPACITY names the event's index in its batch).
    public var streamIndex: Int? { Self.namesEvent(error.code) ? offset + Int(error.detail) : nil }

    /// Whether an error's `detail` is an event's index in its batch.
    static func namesEvent(_ code: ErrorCode?) -> Bool { code == .invalidEvent || code == .capacity }

    public var description: String {
        let at = streamIndex.map { "stream index \($0) (batch of \(count) events from index \(offset))" } ?? "the batch of \(count) events from index \(offset)"
        return "\(at): \(error.code?.name ?? "code \(error.rawCode)"): \(error.message)"
    }
}

public final class PerennialClient: @unchecked Sendable {
    public let host: String
    public let port: Int
    /// Seconds a connect or a reply may take; nil for no bound.
    public let timeout: Double?
    /// Seconds a call goes on sending a write again, every 50 ms, while the
    /// server answers RECOVERING (it is replaying its log after a restart,
    /// and nothing of the refused write was accepted), after the server's
    /// own hold of limits.wait_ms on the connection's first write; 0
    /// throws at once. Pipelines and streams do not wait: their refusals
    /// are returned or thrown.
    public let recoveryWait: Double
    /// Seconds the reply to `snapshot()` or `reload()` may take, which
    /// write the whole model first (nil: no bound; never below `timeout`),
    /// as the Python client's `admin_timeout`.
    public let adminTimeout: Double?
    private let queue = DispatchQueue(label: "perennial.client")
    // On `queue` only:
    private var socket: BlockingSocket?
    private var nextID: UInt32 = 1
    private var inbox: [UInt8] = []
    private var outbox: [UInt8] = []
    private var maxEvents = 10_000
    private var maxFrameBytes = 4 * 1024 * 1024
    /// The HELLO last answered, sent again first on a new connection (the
    /// server restarted, or closed an idle connection, or `close()`).
    private var greeting: Hello?
    /// Whether this connection has brought a whole reply (a failed HELLO
    /// then does not mean "not a Perennial server").
    private var answered = false
    /// The first bytes of the connection last dropped (quoted when a HELLO
    /// it was dropped for failed).
    private var heardFirst: [UInt8] = []
    // Shared with any thread, under `abortLock`: the open (or opening)
    // descriptor and the call running on the queue, so that `close()` and
    // a cancellation can shut the descriptor at once (a call blocked
    // reading wakes) and tell that call why.
    private let abortLock = NSLock()
    private var liveFD: Int32 = -1
    private var running: CallState?
    /// While `connect` opens the first connection (on `queue`): its
    /// cancellation.
    private var connectStop: ConnectStop?

    /// Connects (blocking) to a server and greets it with HELLO (`token`:
    /// the server's client token, if it asks for one), learning its limits;
    /// every connection the client opens later is greeted the same way (a
    /// server that wants a token, when none is given, is left ungreeted:
    /// `hello(token:)` then greets it).
    /// `timeout` (seconds, `.infinity` for none) bounds the connect and
    /// every reply wait. (`greet: false` leaves the HELLO to `hello()`;
    /// until then the client assumes the default limits. Review finding,
    /// helper-73: without a HELLO the client sent a 5,000-event list as one
    /// frame over a server's lower max_frame_bytes, and was dropped.)
    public convenience init(host: String = "127.0.0.1", port: Int = 7878, timeout: Double = 10, recoveryWait: Double = 60,
                            token: String = "", clientName: String = "perennial-swift", greet: Bool = true,
                            adminTimeout: Double = 600) throws {
        try self.init(host: host, port: port, timeout: timeout, recoveryWait: recoveryWait, token: token,
                      clientName: clientName, greet: greet, adminTimeout: adminTimeout, stop: nil)
    }

    /// `init`, which `stop` (from `connect`'s cancellation) may end early.
    private init(host: String, port: Int, timeout: Double, recoveryWait: Double, token: String, clientName: String,
                 greet: Bool, adminTimeout: Double, stop: ConnectStop?) throws {
        guard timeout > 0 else { throw PerennialClientError.invalidArgument("timeout must be a positive number of seconds (.infinity: none), not \(timeout)") }
        guard adminTimeout > 0 else { throw PerennialClientError.invalidArgument("adminTimeout must be a positive number of seconds (.infinity: none), not \(adminTimeout)") }
        guard recoveryWait >= 0 else { throw PerennialClientError.invalidArgument("recoveryWait must be 0 or more seconds, not \(recoveryWait)") }
        let greeting = Hello(clientName: clientName, token: token)
        if greet, let problem = Request.hello(greeting).wireProblem { throw PerennialClientError.invalidArgument(problem) }
        self.host = host
        self.port = port
        self.recoveryWait = recoveryWait
        self.timeout = timeout.isFinite && timeout <= 86_400 * 366 ? timeout : nil
        let admin = max(timeout, adminTimeout)
        self.adminTimeout = admin.isFinite && admin <= 86_400 * 366 ? admin : nil
        try queue.sync {
            connectStop = stop
            // (Once connected and greeted, a cancellation of `connect` no
            // longer concerns this connection.)
            defer { stop?.forget(); connectStop = nil }
            try connectNow(for: nil)
            if greet {
                do {
                    try greetNow(greeting)
                } catch PerennialClientError.server(code: .unauthorized?, _, _, _) where token.isEmpty {
                    // A server that asks for a token, and none given: the
                    // caller sends it with hello(token:) next (or the first
                    // call says UNAUTHORIZED), as before connect greeted.
                    dropConnection()
                } catch {
                    dropConnection()
                    throw error
                }
            }
        }
    }

    /// Connects without blocking the caller's thread (as `init`). A
    /// cancelled task stops connecting (or waiting for the HELLO's reply)
    /// within about 50 ms and throws `CancellationError` (review finding,
    /// helper-91: it waited for its timeout).
    public static func connect(host: String = "127.0.0.1", port: Int = 7878, timeout: Double = 10,
                               recoveryWait: Double = 60, token: String = "", clientName: String = "perennial-swift",
                               greet: Bool = true, adminTimeout: Double = 600) async throws -> PerennialClient {
        let stop = ConnectStop()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { cont in
                DispatchQueue.global().async {
                    cont.resume(with: Result {
                        do {
                            return try PerennialClient(host: host, port: port, timeout: timeout, recoveryWait: recoveryWait,
                                                       token: token, clientName: clientName, greet: greet,
                                                       adminTimeout: adminTimeout, stop: stop)
                        } catch {
                            if stop.cancelled { throw CancellationError() }
                            throw error
                        }
                    })
                }
            }
        } onCancel: {
            stop.cancel()
        }
    }

    /// A `connect` that its task's cancellation may stop (any thread):
    /// the descriptor being connected or greeted, shut down on cancellation
    /// to wake a blocked read. The client clears it, under the lock, before
    /// it closes that descriptor, so a reused number is never shut.
    private final class ConnectStop: @unchecked Sendable {
        private let lock = NSLock()
        private var fd: Int32 = -1
        private var isCancelled = false
        var cancelled: Bool { lock.withLock { isCancelled } }
        func cancel() {
            lock.withLock {
                isCancelled = true
                if fd >= 0 { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
            }
        }
        /// The descriptor now being connected (-1: none).
        func opening(_ s: Int32) {
            lock.withLock {
                fd = s
                if isCancelled && s >= 0 { _ = Glibc.shutdown(s, Int32(SHUT_RDWR)) }
            }
        }
        func forget() { lock.withLock { fd = -1 } }
    }

    /// Closes the connection at once: a call in flight (connecting,
    /// sending or waiting) fails with a connection error; the next call
    /// opens a new connection (and sends the last HELLO again). Safe from
    /// any thread, a `stream` progress callback included.
    public func close() {
        abortLock.withLock {
            running?.abort(because: Self.closed)
            if liveFD >= 0 { _ = Glibc.shutdown(liveFD, Int32(SHUT_RDWR)) }
        }
        queue.async { [self] in dropConnection() }
    }
    private static let closed = "the connection was closed by close()"
    private static let cancelled = "the call was cancelled"

    /// One call's state, shared with a cancellation that may come at any
    /// time (under its lock): one still queued is dropped when its turn
    /// comes; one running is told why it must stop (the client then shuts
    /// its descriptor: a reply half read would garble the next).
    private final class CallState: @unchecked Sendable {
        private let lock = NSLock()
        private var started = false, done = false, reason: String?
        /// False when cancelled before its turn.
        func start() -> Bool { lock.withLock { started = reason == nil; return started } }
        func finish() { lock.withLock { done = true } }
        /// Records why the call must stop; true when it is running now.
        @discardableResult
        func abort(because why: String) -> Bool {
            lock.withLock {
                if reason == nil && !done { reason = why }
                return started && !done
            }
        }
        /// Why the call was stopped, if it was.
        var abortReason: String? { lock.withLock { reason } }
        /// Whether it never started and never will (cancelled while queued).
        var droppedBeforeStart: Bool { lock.withLock { !started && reason != nil } }
    }

    /// A continuation resumed once, by whichever comes first: the call's
    /// outcome on the queue, or a cancellation while it waits for its turn.
    private final class OnceContinuation<T: Sendable>: @unchecked Sendable {
        private let lock = NSLock()
        private var continuation: CheckedContinuation<T, any Error>?
        private var early: Result<T, any Error>?
        /// Takes the continuation; resumes it at once if the outcome came first.
        func set(_ c: CheckedContinuation<T, any Error>) {
            let outcome: Result<T, any Error>? = lock.withLock {
                if let early { return early }
                continuation = c
                return nil
            }
            if let outcome { c.resume(with: outcome) }
        }
        func resume(with result: Result<T, any Error>) {
            let c: CheckedContinuation<T, any Error>? = lock.withLock {
                guard early == nil else { return nil }
                early = result
                defer { continuation = nil }
                return continuation
            }
            c?.resume(with: result)
        }
    }

    private func onQueue<T: Sendable>(_ body: @escaping @Sendable (CallState) throws -> T) async throws -> T {
        let call = CallState()
        let outcome = OnceContinuation<T>()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { cont in
                outcome.set(cont)
                queue.async { [self] in
                    guard call.start() else { return outcome.resume(with: .failure(CancellationError())) }
                    abortLock.withLock { running = call }
                    var result = Result { try body(call) }
                    abortLock.withLock { running = nil }
                    call.finish()
                    if case .failure(let error) = result {
                        // A connection that failed (or was shut) is not
                        // used again: a late reply would answer the next call.
                        if Self.endsConnection(error) { dropConnection() }
                        if let why = call.abortReason, !Self.explains(error) {
                            result = .failure(why == Self.cancelled ? CancellationError() : PerennialClientError.connection(why))
                        } else if let why = call.abortReason, case .pipelineCut(let replies, let unanswered, _)? = error as? PerennialClientError {
                            // (Cut by close() or cancellation: that is the reason,
                            // and the replies read before it are kept.)
                            result = .failure(PerennialClientError.pipelineCut(replies: replies, unanswered: unanswered,
                                                                               reason: why == Self.cancelled ? "the calling task was cancelled" : why))
                        }
                    }
                    outcome.resume(with: result)
                }
            }
        } onCancel: { [self] in
            abortLock.withLock {
                if call.abort(because: Self.cancelled), running === call, liveFD >= 0 {
                    _ = Glibc.shutdown(liveFD, Int32(SHUT_RDWR))
                }
            }
            // Still waiting for its turn (behind a slow call): it ends now,
            // and is dropped unsent when its turn comes (review finding,
            // helper-73: it waited for the call ahead, 7.75 s).
            if call.droppedBeforeStart { outcome.resume(with: .failure(CancellationError())) }
        }
    }

    private static func endsConnection(_ error: any Error) -> Bool {
        switch error as? PerennialClientError {
        case .connection?, .timeout?, .protocolViolation?, .pipelineCut?: return true
        case .none: return error is CancellationError
        default: return false
        }
    }

    /// An error that already says why the call stopped (a stream's, with
    /// its counts): kept as it is.
    private static func explains(_ error: any Error) -> Bool {
        if error is CancellationError { return true }
        if case .pipelineCut? = error as? PerennialClientError { return true }
        if case .connection(let m)? = error as? PerennialClientError { return m.contains(closed) }
        return false
    }

    // MARK: the connection (on `queue`)

    /// Opens a connection; `call` (nil at init) may be stopped meanwhile.
    private func connectNow(for call: CallState?) throws {
        let stop = connectStop
        let s = try BlockingSocket(host: host, port: port, timeout: timeout, opening: { [self] fd in
            abortLock.withLock { liveFD = fd }
            stop?.opening(fd)
        }, stopped: { call?.abortReason ?? (stop?.cancelled == true ? Self.cancelled : nil) })
        socket = s
        inbox.removeAll()
        answered = false
        heardFirst = []
    }

    private func dropConnection() {
        // (The shared copy goes first, under the lock: a close() from
        // another thread never shuts a number the system has reused.)
        abortLock.withLock { liveFD = -1 }
        connectStop?.forget()
        if let s = socket { heardFirst = s.firstBytes }
        socket?.close()
        socket = nil
        inbox.removeAll()
    }

    /// A usable connection for the next call: the open one, unless the
    /// server closed it meanwhile (a restart, its idle timeout) or `close()`
    /// did; then a new one, greeted with the last HELLO. Throws, before
    /// anything is sent, when `call` was stopped meanwhile.
    private func ensureConnected(_ call: CallState, greet: Bool = true) throws {
        if let s = socket, s.usableWhileIdle() {
            try stopIfAsked(call)
            return
        }
        dropConnection()
        try connectNow(for: call)
        try stopIfAsked(call)
        if greet, let g = greeting {
            let reply: Reply
            do { reply = try exchange([.hello(g)])[0] } catch let e as PerennialClientError {
                throw e.rewording { "the HELLO sent again on a new connection failed: \($0)" }
            }
            switch reply {
            case .hello(let h): learn(h)
            case .error(let e):
                // (Not left open: the next call would skip the HELLO.)
                dropConnection()
                // (The token hint only where the token is what was refused:
                // a BUSY for too many connections is not about it.)
                let hint = e.code == .unauthorized ? "; call hello() with the right token" : ""
                throw PerennialClientError.server(code: e.code, rawCode: e.rawCode, detail: e.detail,
                                                  message: "the HELLO sent again on a new connection was refused: \(e.message)\(hint)")
            default: throw unexpected()
            }
        }
    }

    private func stopIfAsked(_ call: CallState) throws {
        if let why = call.abortReason { throw why == Self.cancelled ? CancellationError() as any Error : PerennialClientError.connection(why) }
    }

    private func learn(_ h: HelloReply) {
        maxEvents = Int(h.maxEvents)
        maxFrameBytes = Int(h.maxFrameBytes)
    }

    // MARK: calls

    /// Protocol handshake; also learns the server's limits, and is sent
    /// again on every new connection the client opens later.
    /// A peer that does not answer it like a Perennial server (a web
    /// server's "HTTP/1.1 400" read as a frame length, silence, a close)
    /// gets an error of the same kind that says so and quotes its first
    /// bytes; the server's own refusal (a wrong token) is thrown as it is.
    /// Without `clientName`, the name the client greeted with so far stays
    /// (it was reset to "perennial-swift": review finding, helper-91).
    public func hello(clientName: String? = nil, token: String = "") async throws -> HelloReply {
        return try await onQueue { [self] call in
            let greeting = Hello(clientName: clientName ?? self.greeting?.clientName ?? "perennial-swift", token: token)
            if let problem = Request.hello(greeting).wireProblem { throw PerennialClientError.invalidArgument(problem) }
            // (Not with the last HELLO first: this one may carry a new token.)
            try ensureConnected(call, greet: false)
            return try greetNow(greeting)
        }
    }

    /// Sends `greeting` on the open connection (on `queue`): learns the
    /// server's limits and keeps it for the connections opened later.
    @discardableResult
    private func greetNow(_ greeting: Hello) throws -> HelloReply {
        let reply: Reply
        do {
            reply = try exchange([.hello(greeting)])[0]
        } catch let e as PerennialClientError where !answered {
            throw notAPerennialServer(e)
        }
        switch reply {
        case .hello(let h):
            learn(h)
            self.greeting = greeting
            return h
        case .error(let e): throw PerennialClientError.server(code: e.code, rawCode: e.rawCode, detail: e.detail, message: e.message)
        default: throw unexpected()
        }
    }

    /// A HELLO that found no Perennial server: the error, saying so.
    private func notAPerennialServer(_ e: PerennialClientError) -> PerennialClientError {
        let bytes = socket?.firstBytes ?? heardFirst
        let heard = bytes.isEmpty ? "it sent nothing"
            : "its first bytes were \"" + bytes.map { (32..<127).contains($0) ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }.joined() + "\""
        return e.rewording { what in
            "\(self.host):\(self.port) did not answer HELLO like a Perennial server (\(what); \(heard)): is a Perennial server listening there?"
        }
    }

    public func ping() async throws {
        guard case .ping = try await call(.ping) else { throw unexpected() }
    }

    /// The k best items for `user`, best first.
    public func recommend(user: UInt64, k: Int = 10, scorer: String = "", session: [UInt64] = [],
                          sessionID: String = "", exclude: [UInt64] = [], candidates: [UInt64] = [],
                          minAppliedSeq: UInt64 = 0, shadow: String = "") async throws -> [RankedItem] {
        guard (1...Int(UInt16.max)).contains(k) else { throw PerennialClientError.invalidArgument("k = \(k) is outside 1...65535") }
        var q = RecommendRequest(user: user, k: UInt16(k), minAppliedSeq: minAppliedSeq, scorer: scorer,
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

    /// Sends the events and returns once they are acknowledged (the last
    /// batch's acknowledgement). A list longer than the server's max_events
    /// (from HELLO) or than one frame holds goes as several batches, one
    /// after the other, as the Python client's `feedback` does; each batch
    /// is all or nothing. A refused batch throws the server's error, its
    /// message naming the batch and how many of the list's events were
    /// acknowledged before it; the `detail` of an INVALID_EVENT or a
    /// CAPACITY is the event's index in `events`. For a long stream
    /// without waiting per batch, use `stream`.
    public func feedback(_ events: [WireEvent]) async throws -> FeedbackAck {
        // (The server refuses an empty batch; as the Python client does,
        // say so before a round trip: review finding, helper-91.)
        guard !events.isEmpty else { throw PerennialClientError.invalidArgument("feedback needs at least one event") }
        var size = try await onQueue { [self] call in
            try ensureConnected(call)
            return feedbackBatchLimit()
        }
        var start = 0
        var last: FeedbackAck?
        var relearned = false
        repeat {
            let end = min(events.count, start + size)
            do {
                do {
                    guard case .feedback(let a) = try await call(.feedback(Array(events[start..<end]))) else { throw unexpected() }
                    last = a
                } catch let e as PerennialClientError
                            where (e.serverCode == .invalidArgument || e.serverCode == .frameTooLarge) && end - start > 1 && !relearned {
                    // The server's max_events is lower than this client knew (no
                    // HELLO yet, or a RELOAD lowered it): the batch was refused
                    // whole, so learn the limits with a HELLO and send it again.
                    // (A RELOAD that lowered max_frame_bytes too makes such a
                    // batch FRAME_TOO_LARGE, and the server closes the
                    // connection: the HELLO goes on a new one. Review finding,
                    // helper-91: that was thrown, nothing of the list accepted.)
                    relearned = true
                    let greeted = try await onQueue { [self] _ in greeting }
                    _ = try await hello(clientName: greeted?.clientName ?? "perennial-swift", token: greeted?.token ?? "")
                    let learned = try await onQueue { [self] _ in feedbackBatchLimit() }
                    guard learned < end - start else { throw e }
                    size = learned
                    continue
                }
            } catch let e as PerennialClientError where events.count > size {
                let place = "the batch of events \(start)..<\(end) of \(events.count); the \(start) before it were acknowledged"
                if case .server(let code, let raw, let detail, let message) = e {
                    throw PerennialClientError.server(code: code, rawCode: raw, detail: RefusedBatch.namesEvent(code) ? detail + UInt32(start) : detail,
                                                      message: "\(message) (\(place))")
                }
                throw e.rewording { "\($0) (\(place))" }
            }
            start = end
        } while start < events.count
        return last!
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
    /// not hold are ignored. A later event naming it does not bring it
    /// back (while the server remembers the deletion); an upsert does, as
    /// a new item.
    public func deleteItems(_ items: [UInt64]) async throws -> Int {
        guard case .deleteItems(let n) = try await call(.deleteItems(items)) else { throw unexpected() }
        return Int(n)
    }

    /// Deletes users (a closed account, an erasure request): the server
    /// forgets each with everything it holds for them alone (their row,
    /// history and each scorer's state for them; sessions are keyed by
    /// session_id, not by user, and stay). Returns how many it held.
    public func deleteUsers(_ users: [UInt64]) async throws -> Int {
        guard case .deleteUsers(let n) = try await call(.deleteUsers(users)) else { throw unexpected() }
        return Int(n)
    }

    /// The server's named counters.
    public func stats() async throws -> [String: UInt64] {
        guard case .stats(let c) = try await call(.stats) else { throw unexpected() }
        return Dictionary(c.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
    }

    /// Writes a snapshot (a model version) now; returns the log position it
    /// covers and the version's id (`v<seq>`, or `v<seq>.<serial>` when a
    /// rollback or a RELOAD wrote another version there first), the id
    /// `perennial serve --from-version` takes. It waits while the server
    /// writes the whole model, up to `adminTimeout`.
    public func snapshot() async throws -> (seq: UInt64, version: String) {
        guard case .snapshot(let seq, let version) = try await call(.snapshot, waiting: adminTimeout) else { throw unexpected() }
        return (seq, version)
    }

    /// The server re-reads its config file and applies it (throws when
    /// refused; the old one stays). The client then learns the limits it
    /// may have changed (a HELLO, when it greeted the server), as the
    /// Python client does.
    public func reload() async throws {
        guard case .reload = try await call(.reload, waiting: adminTimeout) else { throw unexpected() }
        // (The RELOAD stands whatever this HELLO meets: one that removed
        // this client's token refuses it, and the connection's later
        // requests too, until hello() with a listed token. Review finding,
        // helper-74: reload() threw UNAUTHORIZED for a RELOAD that was
        // applied.)
        _ = try? await onQueue { [self] call in
            try ensureConnected(call)
            try relearnLimits()
        }
    }

    /// Sends the last HELLO again on the open connection (on `queue`) to
    /// learn the server's limits now; nothing when the client never greeted
    /// it. A refusal (a RELOAD removed the token since) keeps the limits
    /// known; the connection has then lost its access, until hello() with
    /// a token the server lists.
    private func relearnLimits() throws {
        guard let greeting else { return }
        do { try greetNow(greeting) } catch PerennialClientError.server { }
    }

    public func shutdown() async throws {
        guard case .shutdown = try await call(.shutdown) else { throw unexpected() }
    }

    /// One request, one reply. ERROR replies throw `.server`. A write
    /// refused RECOVERING is sent again for up to `recoveryWait` seconds.
    public func call(_ request: Request) async throws -> Reply {
        try await call(request, waiting: timeout)
    }

    /// `call`, its reply waited for up to `wait` seconds (nil: no bound).
    private func call(_ request: Request, waiting wait: Double?) async throws -> Reply {
        var replies = try await exchangeHinting(request, waiting: wait)
        let deadline = Date().addingTimeInterval(recoveryWait)
        while case .error(let e) = replies[0], e.code == .recovering, request.changesState, Date() < deadline {
            try await Task.sleep(nanoseconds: 50_000_000)
            replies = try await exchangeHinting(request, waiting: wait)
        }
        if case .error(let e) = replies[0] {
            throw PerennialClientError.server(code: e.code, rawCode: e.rawCode, detail: e.detail, message: e.message)
        }
        return replies[0]
    }

    /// One request's exchange; a timeout shorter than the server's default
    /// limits.wait_ms, for a request the server may hold (not PING, HELLO
    /// or STATS), says so (review finding, helper-91: a timeout under it
    /// ended a write's wait for a log replay, and the error did not say why).
    private func exchangeHinting(_ request: Request, waiting wait: Double?) async throws -> [Reply] {
        do {
            return try await exchangeOnQueue([request], waiting: wait)
        } catch PerennialClientError.timeout(let m) where (wait ?? .infinity) < 5 {
            switch request {
            case .ping, .hello, .stats: throw PerennialClientError.timeout(m)
            default: throw PerennialClientError.timeout(m + Self.belowServerWait)
            }
        }
    }
    private static let belowServerWait = "; the server may hold a request up to its limits.wait_ms (5 s by default) before it answers (a write while it replays its log after a restart, a read until this connection's earlier feedback is learned): keep the client's timeout above it"

    /// Sends all requests in one write, reading replies meanwhile so the
    /// server never stops for want of room, and returns their replies in
    /// order. ERROR replies are returned in place, not thrown. A connection
    /// that fails part-way throws `.pipelineCut` with the replies read
    /// before it (review finding, helper-91: they were lost, so a caller
    /// could not tell which FEEDBACKs had been accepted).
    public func pipeline(_ requests: [Request]) async throws -> [Reply] {
        try await exchangeOnQueue(requests, waiting: timeout)
    }

    /// Checks `requests`, then sends them and reads their replies on the
    /// queue, each wait bounded by `wait` seconds (nil: none).
    private func exchangeOnQueue(_ requests: [Request], waiting wait: Double?) async throws -> [Reply] {
        for r in requests {
            if let problem = r.wireProblem { throw PerennialClientError.invalidArgument(problem) }
        }
        return try await onQueue { [self] call in
            try ensureConnected(call)
            guard let socket else { throw PerennialClientError.connection("the connection is closed") }
            return try socket.waiting(wait) { try exchange(requests) }
        }
    }

    /// Sends `requests` and reads their replies (on `queue`, connected).
    private func exchange(_ requests: [Request]) throws -> [Reply] {
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
        var replies: [Reply] = []
        replies.reserveCapacity(ids.count)
        do {
            try send(outbox)
            for id in ids { replies.append(try readReply(for: id)) }
        } catch let e as PerennialClientError where ids.count > 1 {
            // Replies that came while the pipeline was still being sent
            // (`send` reads them so that the server never stops for want
            // of room) are whole frames in `inbox`: they count too (review
            // finding, helper-92: a large pipeline cut while sending lost them).
            while replies.count < ids.count, let r = try? bufferedReply(for: ids[replies.count]) { replies.append(r) }
            throw PerennialClientError.pipelineCut(replies: replies, unanswered: ids.count - replies.count, reason: e.description)
        }
        return replies
    }

    /// Sends on the open connection; when the server closed it meanwhile
    /// after saying why (an ERROR frame for the connection, request id 0,
    /// already read), that is the error. (An ERROR answering one request is
    /// that request's reply, not the reason.)
    private func send(_ bytes: [UInt8]) throws {
        guard let s = socket else { throw PerennialClientError.connection("the connection is closed") }
        do {
            try s.send(bytes, readingInto: &inbox)
        } catch {
            if case .frame(let header) = inbox.withUnsafeBytes({ FrameDecoder.decode($0, limits: Self.replyLimits) }),
               header.opcode == Opcode.error.rawValue, header.requestID == 0,
               case .error(let e)? = try? inbox.withUnsafeBytes({ raw throws(ProtocolError) in
                   try Reply.decode(opcode: .error, payload: UnsafeRawBufferPointer(rebasing: raw[FrameHeader.size..<header.frameLength]))
               }) {
                throw PerennialClientError.server(code: e.code, rawCode: e.rawCode, detail: e.detail, message: e.message)
            }
            throw error
        }
    }

    /// The most events one FEEDBACK may carry: the server's max_events and
    /// what fits its max_frame_bytes (on the client's queue).
    private func feedbackBatchLimit() -> Int {
        max(1, min(maxEvents, (maxFrameBytes - 16) / WireEvent.wireSize))
    }

    /// Streams events in batches of `batchSize`, keeping at most `window`
    /// batches unacknowledged; returns the last acknowledgement. `progress`
    /// gets the number of events acknowledged so far (on the client's
    /// queue: it may call `close()`, nothing that waits for the client).
    /// A batch the server refuses does not stop the stream: the others go
    /// on, and the call then throws `.streamRefused`, naming each refused
    /// batch (and event) by its place in `events`. Batches refused as
    /// larger than a max_events a RELOAD lowered go again, split, after
    /// the others (so their events are numbered after them). Batches
    /// refused RECOVERING (the server replays its log after a restart) go
    /// again every 50 ms before any later batch is sent, for up to
    /// `recoveryWait` seconds; then they are refused batches. (Later
    /// batches already in flight, at most `window - 1`, may be taken
    /// first if the replay ends meanwhile.) A broken connection throws at once,
    /// saying how many events were acknowledged. A cancelled task throws
    /// `CancellationError`, as Swift's own calls do: `progress` has said how
    /// many events were acknowledged (batches in flight may have been
    /// accepted too; STATS events_accepted tells).
    public func stream(_ events: [WireEvent], batchSize: Int = 1000, window: Int = 8,
                       progress: (@Sendable (Int) -> Void)? = nil) async throws -> FeedbackAck? {
        guard batchSize >= 1, window >= 1 else {
            throw PerennialClientError.invalidArgument("batchSize (\(batchSize)) and window (\(window)) must be at least 1")
        }
        return try await onQueue { [self] call in
            try ensureConnected(call)
            let size = min(batchSize, feedbackBatchLimit())
            var pending: [(id: UInt32, offset: Int, count: Int)] = []
            var acked = 0
            var last: FeedbackAck?
            var refused: [RefusedBatch] = []
            // Batches refused INVALID_ARGUMENT whole: larger, perhaps, than
            // a max_events a RELOAD lowered since the client learned it.
            var oversized: [RefusedBatch] = []
            // Batches refused RECOVERING (the server replays its log after a
            // restart): sent again, as `call` sends a write again.
            var recovering: [RefusedBatch] = []
            // When the first RECOVERING refusal since the last acknowledgement
            // came: the batches wait for the replay up to `recoveryWait` from it.
            var waitingSince: Date?
            var relearned = 0
            func readOne() throws {
                let (id, offset, n) = pending[0]
                let reply = try readReply(for: id)
                pending.removeFirst()
                switch reply {
                case .feedback(let a):
                    last = a
                    acked += n
                    waitingSince = nil
                    progress?(acked)
                case .error(let e) where e.code == .invalidArgument && n > 1 && relearned < 3:
                    oversized.append(RefusedBatch(offset: offset, count: n, error: e))
                case .error(let e) where e.code == .recovering:
                    recovering.append(RefusedBatch(offset: offset, count: n, error: e))
                case .error(let e):
                    refused.append(RefusedBatch(offset: offset, count: n, error: e))
                default: throw unexpected()
                }
            }
            /// Sends these stretches of `events`, each as one batch, keeping
            /// at most `window` unanswered. Batches refused RECOVERING go
            /// again every 50 ms, before any later batch is sent (review
            /// finding, helper-92: sent again after the whole stream, they
            /// went in after later batches once the replay ended), for up to
            /// `recoveryWait` seconds; then they are refusals.
            func sendBatches(_ batches: [(offset: Int, count: Int)]) throws {
                var queue = batches, next = 0
                while true {
                    if !recovering.isEmpty {
                        // (The replies in flight first: a later batch the
                        // server took meanwhile is acknowledged, not sent again.)
                        while !pending.isEmpty { try readOne() }
                        let since = waitingSince ?? Date()
                        waitingSince = since
                        guard Date().timeIntervalSince(since) < recoveryWait else {
                            refused += recovering
                            recovering.removeAll()
                            waitingSince = nil
                            continue
                        }
                        usleep(50_000)
                        try stopIfAsked(call)
                        let again = recovering.sorted { $0.offset < $1.offset }.map { ($0.offset, $0.count) }
                        recovering.removeAll()
                        queue.replaceSubrange(next..<next, with: again)
                        continue
                    }
                    if pending.count >= window || (next == queue.count && !pending.isEmpty) {
                        try readOne()
                        continue
                    }
                    guard next < queue.count else { break }
                    let (offset, n) = queue[next]
                    next += 1
                    outbox.removeAll(keepingCapacity: true)
                    let id = takeID()
                    let frame = outbox.beginFrame(opcode: Opcode.feedback.rawValue, flags: 0, requestID: id)
                    Request.encodeFeedback(events[offset..<(offset + n)], into: &outbox)
                    outbox.endFrame(frame)
                    pending.append((id, offset, n))
                    try send(outbox)
                }
            }
            func split(_ from: Int, _ count: Int, by size: Int) -> [(offset: Int, count: Int)] {
                stride(from: from, to: from + count, by: size).map { ($0, min(size, from + count - $0)) }
            }
            do {
                try sendBatches(split(0, events.count, by: size))
                // A RELOAD may have lowered max_events since the client
                // learned it: then every batch is refused whole. Learn the
                // limits (one HELLO) and send those above the new limit
                // again, split, in stream order; the others' refusals
                // stand. (A HELLO before every stream cost a round trip,
                // and, once a RELOAD had rotated the token, counted as a
                // failed authentication each time.)
                while !oversized.isEmpty {
                    relearned += 1
                    try relearnLimits()
                    let limit = feedbackBatchLimit()
                    let again = oversized.sorted { $0.offset < $1.offset }
                    oversized.removeAll()
                    refused += again.filter { $0.count <= limit }
                    try sendBatches(again.filter { $0.count > limit }.flatMap { split($0.offset, $0.count, by: limit) })
                }
            } catch {
                refused += recovering
                // What the caller needs to go on: what was acknowledged, what
                // went unanswered (the batch whose reply failed and those
                // after it), what was refused before.
                var detail = "after \(acked) of the stream's events were acknowledged"
                if let first = pending.first {
                    let unanswered = pending.reduce(0) { $0 + $1.count }
                    detail += "; \(unanswered) events in \(pending.count) batch(es) from stream index \(first.offset) were sent without an answer (the server may have accepted some: its STATS events_accepted tells)"
                }
                refused += oversized
                if let r = refused.min(by: { $0.offset < $1.offset }) { detail += "; \(refused.count) batch(es) were refused before that, the first at \(r)" }
                if let why = call.abortReason {
                    if why == Self.cancelled { throw CancellationError() }
                    throw PerennialClientError.connection("\(why), \(detail)")
                }
                guard let e = error as? PerennialClientError else { throw error }
                throw e.rewording { "\($0), \(detail)" }
            }
            refused += oversized
            refused.sort { $0.offset < $1.offset }
            if !refused.isEmpty { throw PerennialClientError.streamRefused(acknowledged: acked, refused: refused) }
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
        guard let socket else { throw PerennialClientError.connection("the connection is closed") }
        while true {
            if let reply = try bufferedReply(for: id, orConnectionError: true) { return reply }
            try socket.receive(into: &inbox)
        }
    }

    /// The reply to `id` if a whole frame of it is in `inbox` (taken from
    /// it), else nil. `orConnectionError`: an ERROR for the connection
    /// (request id 0) answers it too.
    private func bufferedReply(for id: UInt32, orConnectionError: Bool = false) throws -> Reply? {
        let result = inbox.withUnsafeBytes { FrameDecoder.decode($0, limits: Self.replyLimits) }
        switch result {
        case .needMore:
            return nil
        case .fatal(let e, _):
            throw PerennialClientError.protocolViolation(e)
        case .frame(let header):
            // (Out of step, the connection is of no further use: the
            // caller drops it, with what is left unread.)
            guard header.requestID == id || (orConnectionError && header.requestID == 0 && header.opcode == Opcode.error.rawValue) else {
                throw PerennialClientError.protocolViolation(
                    ProtocolError(.malformedPayload, "reply for request \(header.requestID) while waiting for \(id)"))
            }
            answered = true
            let decoded: Result<Reply, ProtocolError> = inbox.withUnsafeBytes { raw in
                guard let op = Opcode(rawValue: header.opcode), header.isReply else {
                    return .failure(ProtocolError(.unknownOpcode, "unexpected frame opcode \(header.opcode)"))
                }
                return Result { () throws(ProtocolError) in
                    try Reply.decode(opcode: op, payload: UnsafeRawBufferPointer(rebasing: raw[FrameHeader.size..<header.frameLength]))
                }
            }
            inbox.removeFirst(header.frameLength)
            switch decoded {
            case .success(let reply): return reply
            case .failure(let e): throw PerennialClientError.protocolViolation(e)
            }
        }
    }

    private func unexpected() -> PerennialClientError {
        .protocolViolation(ProtocolError(.malformedPayload, "reply of the wrong kind"))
    }
}
