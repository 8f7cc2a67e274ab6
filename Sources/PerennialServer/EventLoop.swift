// The libuv loop: the listening socket, the accepted connections, a wake-up
// from the learner, a timer for timeouts, the stop signals. Everything here
// runs on the loop thread, except `EventLoopWaker`, the one thread-safe door in.

import CLibUV
import Foundation
import PerennialCore
import PerennialProtocol
import Synchronization

final class EventLoop {
    let loop: UnsafeMutablePointer<uv_loop_t>
    let handler: RequestHandler
    /// The current limits (a RELOAD may change them).
    var limits: LimitsConfig { handler.config.limits }
    private let listener: UnsafeMutablePointer<uv_tcp_t>
    private let progressAsync: UnsafeMutablePointer<uv_async_t>
    private let stopAsync: UnsafeMutablePointer<uv_async_t>
    private let timer: UnsafeMutablePointer<uv_timer_t>
    private let signals: [UnsafeMutablePointer<uv_signal_t>]
    private var connections: [ObjectIdentifier: Connection] = [:]
    /// Tickets handed to frames as they first need a larger buffer
    /// (Connection.growingSince).
    private var growthTickets: UInt64 = 0
    func nextGrowthTicket() -> UInt64 {
        growthTickets += 1
        return growthTickets
    }
    /// Whether `c`'s frame began growing before every other frame still
    /// being received: it may grow past limits.max_inbox_bytes. (Looked
    /// at only when a growth would pass the budget.)
    func isOldestGrowingFrame(_ c: Connection) -> Bool {
        !connections.values.contains { $0 !== c && !$0.closing && $0.growingSince != 0 && $0.growingSince < c.growingSince }
    }
    var parked: Set<ObjectIdentifier> = []
    /// Connections whose replies wait for the end-of-iteration fsync.
    var awaitingSync: Set<ObjectIdentifier> = []
    private let check: UnsafeMutablePointer<uv_check_t>
    /// Active while RECOMMENDs wait for the end of the turn, so the loop
    /// does not block in poll before answering them.
    private let batchIdle: UnsafeMutablePointer<uv_idle_t>
    /// Connections owed replies by the batch of RECOMMENDs being gathered (read
    /// this turn, or over a few turns while it is held), or
    /// waiting for it to make room, in the order they joined.
    private var batchMembers: [Connection] = []
    /// Gathering a batch (`waitForReturningConnections`): the connections
    /// the previous batch answered that usually come back soon (each with
    /// when it is expected; one that has sent since has `answeredAtNs` 0),
    /// when the gathering began (0: not yet), and how long the previous
    /// batch took to compute.
    private var expectedBack: [Connection] = []
    /// Active while the loop polls instead of sleeping (`busyPollTurn`):
    /// until `pollUntilNs`, set when a turn read something (`bytesIn`
    /// moved past `pollSeenBytes`).
    private let pollIdle: UnsafeMutablePointer<uv_idle_t>
    /// Active while the log is replayed a slice per turn (`recoveryTurn`).
    private let recoveryIdle: UnsafeMutablePointer<uv_idle_t>
    private var pollUntilNs: UInt64 = 0
    private var pollSeenBytes: UInt64 = 0
    private var gatherStartNs: UInt64 = 0
    private var lastBatchNs: UInt64 = 0
    private(set) var boundPort = 0
    private var stopping = false
    private var nextAcceptWarning: UInt64 = 0
    /// A graceful stop closes every connection by this time: first those
    /// waiting on the learner are answered (`waitsAbandoned`), then, after
    /// a lingering close's time, whatever is left is closed.
    private var stopDeadline: UInt64 = 0
    private var waitsAbandoned = false
    private var handlesClosed = false
    private var handlesSignals = false

    init(handler: RequestHandler) {
        self.handler = handler
        loop = .allocate(capacity: 1)
        uv_loop_init(loop)
        listener = .allocate(capacity: 1)
        progressAsync = .allocate(capacity: 1)
        stopAsync = .allocate(capacity: 1)
        timer = .allocate(capacity: 1)
        check = .allocate(capacity: 1)
        batchIdle = .allocate(capacity: 1)
        pollIdle = .allocate(capacity: 1)
        recoveryIdle = .allocate(capacity: 1)
        signals = [.allocate(capacity: 1), .allocate(capacity: 1), .allocate(capacity: 1)]
        handler.connectionBufferBytes = { [unowned self] in connections.values.reduce(0) { $0 + $1.bufferBytes } }
    }

    deinit {
        // A start that failed (a port in use) leaves the listener, and maybe
        // more, open: close what is left and let the loop finish closing it,
        // or the loop's own descriptors leak with it (helper-55). After a
        // stop nothing is left and the first close succeeds.
        var leftOpen = false
        if uv_loop_close(loop) != 0 {
            uv_walk(loop, { h, _ in if let h, uv_is_closing(h) == 0 { uv_close(h, nil) } }, nil)
            uv_run(loop, UV_RUN_DEFAULT)
            if uv_loop_close(loop) != 0 { leftOpen = true }
        }
        let port = requestedPort
        Self.closes.withLock { $0[port, default: (0, 0)].freed += 1; if leftOpen { $0[port]!.leftOpen += 1 } }
        loop.deallocate()
        listener.deallocate()
        progressAsync.deallocate()
        stopAsync.deallocate()
        timer.deallocate()
        check.deallocate()
        batchIdle.deallocate()
        pollIdle.deallocate()
        recoveryIdle.deallocate()
        for s in signals { s.deallocate() }
    }

    /// For tests, by the port a loop was asked to listen on: loops freed,
    /// and of those the ones that could not be closed (their descriptors
    /// stay open).
    static let closes = Mutex<[Int: (freed: Int, leftOpen: Int)]>([:])
    /// For tests: whether a start probes its address before anything else
    /// (off, a taken port fails at `bind`, as when it is taken between the
    /// probe and the bind).
    static let probesBeforeStart = Atomic<Bool>(true)
    /// The port `bind` was asked for (0: any).
    private var requestedPort = -1

    private var opaqueSelf: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    /// The address to listen on: a name ("localhost") or a numeric IPv4/IPv6
    /// address, its first IPv4 address if it has one (clients that say
    /// 127.0.0.1 should reach a server told "localhost"), else its first.
    private static func listenAddress(host: String, port: Int) throws -> sockaddr_storage {
        var storage = sockaddr_storage()
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE
        var found: UnsafeMutablePointer<addrinfo>?
        let rc0 = getaddrinfo(host, String(port), &hints, &found)
        guard rc0 == 0, let first = found else {
            throw ServerError("bad listen address \(host): \(String(cString: gai_strerror(rc0)))")
        }
        var chosen = first
        var next: UnsafeMutablePointer<addrinfo>? = first
        while let a = next {
            if a.pointee.ai_family == AF_INET { chosen = a; break }
            next = a.pointee.ai_next
        }
        withUnsafeMutableBytes(of: &storage) {
            $0.copyMemory(from: UnsafeRawBufferPointer(start: chosen.pointee.ai_addr, count: Int(chosen.pointee.ai_addrlen)))
        }
        freeaddrinfo(found)
        return storage
    }

    /// Checks, before anything is written, that the server could listen
    /// there: resolves the address, binds and listens on a socket of its
    /// own (SO_REUSEADDR, as libuv does), and closes it. Throws the message
    /// `bind` would.
    static func probeListenAddress(host: String, port: Int) throws {
        var storage = try listenAddress(host: host, port: port)
        let fd = socket(Int32(storage.ss_family), Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return }   // (No socket to try with: the real bind will say.)
        defer { Glibc.close(fd) }
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        let length = socklen_t(storage.ss_family == sa_family_t(AF_INET6) ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &storage) {
            Glibc.bind(fd, UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self), length)
        }
        // (libuv's codes are the negated errno values on Linux.)
        if bound != 0 || Glibc.listen(fd, 1) != 0 {
            throw ServerError("cannot listen on \(host):\(port): \(uvError(-errno))")
        }
    }

    /// Binds and listens; returns the bound port. Throws a readable message.
    func bind(host: String, port: Int, handleSignals: Bool) throws -> Int {
        requestedPort = port
        uv_tcp_init(loop, listener)
        listener.pointee.data = opaqueSelf
        var storage = try Self.listenAddress(host: host, port: port)
        let rc1 = withUnsafePointer(to: &storage) {
            uv_tcp_bind(listener, UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self), 0)
        }
        if rc1 != 0 { throw ServerError("cannot bind \(host):\(port): \(uvError(rc1))") }
        let rc2 = uv_listen(UnsafeMutablePointer(OpaquePointer(listener)), 4096, loopAccepted)
        if rc2 != 0 { throw ServerError("cannot listen on \(host):\(port): \(uvError(rc2))") }
        var name = sockaddr_storage()
        var len = Int32(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &name) {
            _ = uv_tcp_getsockname(listener, UnsafeMutableRawPointer($0).assumingMemoryBound(to: sockaddr.self), &len)
        }
        let family = name.ss_family
        boundPort = withUnsafePointer(to: &name) { p -> Int in
            let raw = UnsafeRawPointer(p)
            if family == sa_family_t(AF_INET6) {
                return Int(UInt16(bigEndian: raw.assumingMemoryBound(to: sockaddr_in6.self).pointee.sin6_port))
            }
            return Int(UInt16(bigEndian: raw.assumingMemoryBound(to: sockaddr_in.self).pointee.sin_port))
        }

        uv_async_init(loop, progressAsync, loopProgress)
        progressAsync.pointee.data = opaqueSelf
        uv_async_init(loop, stopAsync, loopStopRequested)
        stopAsync.pointee.data = opaqueSelf
        uv_timer_init(loop, timer)
        timer.pointee.data = opaqueSelf
        uv_timer_start(timer, loopTick, 100, 100)
        uv_check_init(loop, check)
        check.pointee.data = opaqueSelf
        uv_check_start(check, loopCheck)
        uv_idle_init(loop, batchIdle)
        batchIdle.pointee.data = opaqueSelf
        uv_idle_init(loop, pollIdle)
        pollIdle.pointee.data = opaqueSelf
        uv_idle_init(loop, recoveryIdle)
        recoveryIdle.pointee.data = opaqueSelf
        handlesSignals = handleSignals
        if handleSignals {
            // A blocked signal mask survives exec, and some parents start
            // their children with these blocked (Foundation.Process does):
            // blocked in every thread, a SIGTERM would stay pending for good
            // and never stop the server (review finding, helper-91). The
            // threads started after this inherit the mask.
            var handled = sigset_t()
            sigemptyset(&handled)
            for signum in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&handled, signum) }
            pthread_sigmask(SIG_UNBLOCK, &handled, nil)
        }
        for (s, signum) in zip(signals, [SIGINT, SIGTERM, SIGHUP]) {
            uv_signal_init(loop, s)
            s.pointee.data = opaqueSelf
            if handleSignals { uv_signal_start(s, signum == SIGHUP ? loopHangup : loopSignal, signum) }
        }
        return boundPort
    }

    /// Runs until the server has stopped.
    func run() {
        // A peer that closes while replies are owed makes the next write
        // fail with EPIPE; without this the default SIGPIPE action would
        // kill the whole server instead (as Redis does, ignore it).
        signal(SIGPIPE, SIG_IGN)
        uv_run(loop, UV_RUN_DEFAULT)
    }

    /// The thread-safe handles other threads use to wake this loop.
    var waker: EventLoopWaker { EventLoopWaker(progress: progressAsync, stop: stopAsync) }

    // MARK: connections

    func accepted(status: Int32) {
        guard status == 0 else {
            // (Out of descriptors, say: libuv closes the pending connection
            // unanswered. Said at most every 10 s.)
            let now = MonotonicClock.nowMillis()
            if now >= nextAcceptWarning {
                nextAcceptWarning = now + 10_000
                Log.warning("cannot accept a connection: \(String(cString: uv_strerror(status))) (connections: \(connections.count))")
            }
            return
        }
        let tcp = UnsafeMutablePointer<uv_tcp_t>.allocate(capacity: 1)
        uv_tcp_init(loop, tcp)
        guard uv_accept(UnsafeMutablePointer(OpaquePointer(listener)), UnsafeMutablePointer(OpaquePointer(tcp))) == 0 else {
            tcp.pointee.data = nil
            uv_close(UnsafeMutablePointer(OpaquePointer(tcp)), freeBareHandle)
            return
        }
        uv_tcp_nodelay(tcp, 1)
        let c = Connection(loop: self, handle: tcp)
        tcp.pointee.data = Unmanaged.passRetained(c).toOpaque()
        connections[ObjectIdentifier(c)] = c
        handler.stats.connectionsTotal += 1
        handler.stats.connections = connections.count
        if stopping {
            c.fail(ProtocolError(.shuttingDown, "the server is stopping", fatal: true), requestID: 0, linger: false)
        } else if connections.count - lingering > limits.maxConnections {
            handler.stats.connectionsRejected += 1
            c.fail(ProtocolError(.busy, "too many connections (limit \(limits.maxConnections))", fatal: true), requestID: 0,
                   linger: false)
        } else {
            c.startReading()
        }
    }

    /// Connections lingering after a fatal error (not counted against
    /// `max_connections`: they only drop input until the peer closes).
    var lingering = 0
    /// What connections' receive buffers hold beyond the size an idle one
    /// keeps (bounded by `limits.max_inbox_bytes`: Connection.processFrames).
    var largeInboxBytes = 0

    func connectionClosed(_ c: Connection) {
        if c.isLingering { lingering -= 1 }
        connections[ObjectIdentifier(c)] = nil
        parked.remove(ObjectIdentifier(c))
        handler.connectionGone(ObjectIdentifier(c))
        expectedBack.removeAll { $0 === c }
        handler.stats.connections = connections.count
        if stopping { finishStopIfDone() }
    }

    /// The learner applied more: resume connections waiting on it.
    func learnerProgressed() {
        // (A SIGHUP's reload that waited for the learner runs first, so the
        // FEEDBACK that waited with it is learned by the new scorers.)
        _ = handler.runWaitingHangup()
        guard !parked.isEmpty else { return }
        let applied = handler.model.appliedSeq
        let now = MonotonicClock.nowMillis()
        for id in parked {
            connections[id]?.resumeIfReady(appliedSeq: applied, now: now)
        }
        if stopping { finishStopIfDone() }
    }

    /// A connection has RECOMMENDs in (or waits for room in) this turn's batch.
    func joinBatch(_ c: Connection) {
        if batchMembers.isEmpty { uv_idle_start(batchIdle, loopIdle) }
        batchMembers.append(c)
        if c.answeredAtNs != 0 {
            // How soon this client sends again after a reply (3/4 old, 1/4 new).
            let sample = uv_hrtime() &- c.answeredAtNs
            c.returnNs = c.returnNs == .max ? sample : (3 * c.returnNs + sample) / 4
            c.answeredAtNs = 0
        }
    }

    /// Whether this turn's batch should wait a little for more RECOMMENDs.
    /// A client in a closed loop (or refilling a pipeline) sends its next
    /// request soon after a reply, but the clients a batch answered do not
    /// all send inside one turn of the loop: answering at once splits them
    /// over two batches, and a request that just missed one waits for it
    /// and then for its own. So the batch is held while a connection the
    /// previous batch answered has not sent again and, by its usual return
    /// time (a moving average per connection), should arrive before the
    /// hold's deadline: at most `server.recommend_batch_wait_us` after the
    /// hold began, and never longer than half the previous batch's
    /// computing time. A connection already overdue by more than that is
    /// not waited for. The hold is a busy poll (the idle handle keeps poll
    /// from blocking), checked at the end of each loop turn. The adaptive
    /// batching of serving systems (e.g. TF Serving's batch_timeout_micros),
    /// waiting only for arrivals it predicts and ended by them. It costs
    /// the held requests latency (and a freshness reader too); it pays
    /// where many clients send back to back (docs/quality.md, "Speed").
    private func waitForReturningConnections() -> Bool {
        let limitNs = min(UInt64(handler.config.recommendBatchWaitMicros) * 1000, lastBatchNs / 2)
        guard limitNs > 0, !expectedBack.isEmpty, !stopping, handler.deferredCount > 0,
              handler.deferredCount < handler.config.recommendBatch else { return false }
        let now = uv_hrtime()
        let deadline = (gatherStartNs == 0 ? now : gatherStartNs) + limitNs
        guard now < deadline else { return false }
        let awaited = expectedBack.contains { c in
            c.answeredAtNs != 0 && !c.closing && c.expectedAtNs <= deadline && c.expectedAtNs &+ limitNs >= now
        }
        guard awaited else { return false }
        if gatherStartNs == 0 {
            gatherStartNs = now
            handler.stats.recommendBatchWaits += 1
        }
        return true
    }

    /// End of a loop iteration: the RECOMMENDs read in it are answered
    /// together (one pass over the catalogue), and the connections that
    /// waited on them go on; what they read next may form another batch.
    func answerBatch() {
        if waitForReturningConnections() { return }
        gatherStartNs = 0
        while !batchMembers.isEmpty {
            let members = batchMembers
            if handler.hasDeferred {
                let start = uv_hrtime()
                handler.answerDeferred(isOpen: { connections[$0]?.closing == false }) { id, write in
                    connections[id]?.appendReply(write)
                }
                let now = uv_hrtime()
                lastBatchNs = now - start
                // The next batch may wait for those that usually come back
                // within a batch's computing time (whether they are waited
                // for depends on the hold's deadline: waitForReturningConnections).
                let expectWithin = max(lastBatchNs, UInt64(handler.config.recommendBatchWaitMicros) * 1000)
                expectedBack.removeAll(keepingCapacity: true)
                for c in members {
                    c.answeredAtNs = now
                    if c.returnNs <= expectWithin {
                        c.expectedAtNs = now &+ c.returnNs
                        expectedBack.append(c)
                    }
                }
            }
            batchMembers.removeAll(keepingCapacity: true)
            for c in members { c.batchAnswered() }
        }
        uv_idle_stop(batchIdle)
        // Stopping: connections that waited on the batch finish now too.
        if stopping { finishStopIfDone() }
    }

    /// End of a loop iteration: whether to poll or to sleep until the next
    /// event (`server.busy_poll_us`). A request that finds the loop asleep
    /// first wakes its thread, which on a virtual machine costs tens of
    /// microseconds of CPU and as much latency (a PING from one connection
    /// took 26 µs of server CPU against 6.6 µs each from 50). So for a
    /// while after it last read from a connection, the loop keeps polling
    /// (an active idle handle makes libuv's poll return at once), as
    /// Linux's busy_poll does for a socket. Not while the learner has work:
    /// on a machine whose cores are all busy the polling thread would take
    /// the learner's CPU, and a waking thread preempts a running one anyway.
    func busyPollTurn() {
        let pollNs = UInt64(handler.config.busyPollMicros) * 1000
        guard pollNs > 0 else {
            uv_idle_stop(pollIdle)
            return
        }
        let now = uv_hrtime()
        if handler.stats.bytesIn != pollSeenBytes {
            pollSeenBytes = handler.stats.bytesIn
            pollUntilNs = now &+ pollNs
        }
        if now < pollUntilNs && !stopping && handler.model.learnerIdle {
            uv_idle_start(pollIdle, loopIdle)
        } else {
            uv_idle_stop(pollIdle)
        }
    }

    /// End of a loop iteration: one fsync for every acknowledgement written
    /// in it, then those replies go out.
    func commitAwaitingSync() {
        guard !awaitingSync.isEmpty else { return }
        let ok = handler.syncLogIfNeeded()
        let waiting = awaitingSync
        awaitingSync.removeAll()
        for id in waiting { connections[id]?.logSynced(ok: ok) }
    }

    /// After the turn's replies went out, and only when no batch is being
    /// held for returning clients: an automatic snapshot's serialisation
    /// then delays no RECOMMEND already read. FEEDBACK parked while the
    /// learner caught up for it goes on right after.
    func snapshotTurn() {
        guard !stopping, batchMembers.isEmpty, handler.recovery == nil else { return }
        guard handler.snapshots.turn() else { return }
        learnerProgressed()
        // What they sent is acknowledged in this turn (under `always`, after its fsync).
        commitAwaitingSync()
    }

    func tick() {
        if handler.recovery != nil && !stopping && !recoveryHeld() { uv_idle_start(recoveryIdle, loopRecover) }
        learnerProgressed()
        // Forgotten items leave users' histories a slice at a time (0.4-1
        // ms for 8,192 users at a million items; 1.6-2.8 ms for two passes
        // after an expiry sweep of thousands): InteractionHistory.
        handler.model.history.sweep(users: 8_192)
        let now = MonotonicClock.nowMillis()
        for c in connections.values {
            c.sweep(now: now, idleMs: limits.idleTimeoutMs, frameMs: limits.frameTimeoutMs)
        }
        if stopping {
            if now >= stopDeadline {
                if !waitsAbandoned {
                    // Requests still waiting on the learner get their reply,
                    // and their connections the usual lingering close.
                    waitsAbandoned = true
                    for c in connections.values { c.abandonWait() }
                    stopDeadline = now + Connection.lingerMs
                } else {
                    for c in connections.values { c.close() }
                }
            }
            finishStopIfDone()
        }
    }

    // MARK: recovery

    /// Starts replaying the log a slice per turn (`handler.recovery`).
    func startRecovery() { uv_idle_start(recoveryIdle, loopRecover) }

    /// For tests (`Server.replayHeld`): while it says so, the replay waits
    /// and the loop goes on serving; the timer's tick resumes it.
    var recoveryHeld: () -> Bool = { false }

    /// One slice of the replay, in the idle phase, before the turn's poll
    /// reads requests: about 1 ms on a quiet server (a read that arrives
    /// meanwhile waits that long), and as long as the rest of the last turn
    /// took on a busy one, so reads cannot starve the replay: it gets about
    /// half the loop's time at least, and reads wait about as long again as
    /// they do for each other. (Capped at 10 ms, a turn of 57 ms of reads
    /// left it 11%: helper-66.) A RECOMMEND waiting for `min_applied_seq`
    /// is answered as soon as the replay passes it.
    func recoveryTurn() {
        guard let recovery = handler.recovery, !stopping, !recoveryHeld() else {
            uv_idle_stop(recoveryIdle)
            return
        }
        let now = MonotonicClock.nowNanos()
        let serving = recovery.lastSliceEndNs == 0 ? 0 : now &- recovery.lastSliceEndNs
        let budget = min(max(serving, 1_000_000), 1_000_000_000)
        defer { recovery.lastSliceEndNs = MonotonicClock.nowNanos() }
        do {
            if try recovery.step(budgetNanos: budget) {
                uv_idle_stop(recoveryIdle)
                try recovery.finish(recovery)
                handler.snapshots.countReplayedChanges()
                handler.recovery = nil
            }
        } catch {
            uv_idle_stop(recoveryIdle)
            Log.error("replaying the log failed: \(error); stopping (nothing was written: the log is as it was)")
            recovery.failed(error)
            handler.recoveryFailed = true
            handler.recovery = nil
            beginShutdown()
            return
        }
        learnerProgressed()
    }

    // MARK: stopping

    /// Graceful stop: no new connections, answer what was read, flush, close.
    func beginShutdown() {
        guard !stopping else { return }
        stopping = true
        // No automatic snapshot now (the stop leaves one); FEEDBACK parked
        // for one is answered, and a waiting SNAPSHOT request takes its
        // snapshot on the loop.
        handler.snapshots.cancelDraining()
        handler.snapshots.onLoop = true
        stopDeadline = MonotonicClock.nowMillis() + 5_000
        Log.info("stopping: answering what was read, then closing \(connections.count) connection(s)")
        uv_close(UnsafeMutablePointer(OpaquePointer(listener)), nil)
        // The replay of the log ends here: what waits for it (a write, a
        // read's min_applied_seq) is answered SHUTTING_DOWN now rather than
        // after its wait (helper-65: a parked FEEDBACK held the stop 5 s).
        if handler.recovery != nil || handler.recoveryFailed {
            for c in connections.values where c.parked != nil { c.abandonWait() }
        }
        for c in connections.values where c.parked == nil {
            c.stopServing()
        }
        // (Resumes FEEDBACK parked for the snapshot; finishes the stop if done.)
        learnerProgressed()
        finishStopIfDone()
    }

    private func finishStopIfDone() {
        guard stopping, !handlesClosed else { return }
        // Connections still waiting on the learner finish as it catches up.
        for c in connections.values where c.parked == nil { c.stopServing() }
        guard connections.isEmpty else { return }
        handlesClosed = true
        // Already stopping: a further SIGINT/SIGTERM must not kill the
        // process while it drains the learner and syncs the log. (Closing a
        // uv_signal handle restores the default action, so ignore the
        // signals right after closing them.)
        for s in signals { uv_close(UnsafeMutablePointer(OpaquePointer(s)), nil) }
        if handlesSignals {
            signal(SIGINT, SIG_IGN)
            signal(SIGTERM, SIG_IGN)
            signal(SIGHUP, SIG_IGN)
        }
        handler.learner.stop()
        // A graceful stop leaves a snapshot, so the next start-up is quick.
        handler.snapshots.finishInFlight()
        // (A SIGHUP still waiting for the learner is carried out first.)
        _ = handler.runWaitingHangup(stopping: true)
        // (Not in the middle of a replay: the log is whole, and the next
        // start replays it again; nor after a replay failed.)
        if handler.recovery == nil && !handler.recoveryFailed
            && (handler.model.lastSeq > handler.snapshots.lastSnapshotSeq || handler.snapshots.reloadUnsnapshotted
                || handler.snapshots.changedSinceSnapshot) { _ = try? handler.snapshots.take() }
        // So are the sessions (a restart for a deploy keeps every visitor's).
        handler.saveSessions()
        uv_close(UnsafeMutablePointer(OpaquePointer(progressAsync)), nil)
        uv_close(UnsafeMutablePointer(OpaquePointer(stopAsync)), nil)
        uv_close(UnsafeMutablePointer(OpaquePointer(timer)), nil)
        uv_close(UnsafeMutablePointer(OpaquePointer(check)), nil)
        uv_close(UnsafeMutablePointer(OpaquePointer(batchIdle)), nil)
        uv_close(UnsafeMutablePointer(OpaquePointer(pollIdle)), nil)
        uv_close(UnsafeMutablePointer(OpaquePointer(recoveryIdle)), nil)
    }
}

/// The thread-safe way into the loop from other threads: `uv_async_send` is
/// the one libuv call documented as safe from any thread. The loop closes
/// the async handles only after the threads that call `progressed` have
/// ended their part (the learner is stopped; every snapshot thread is waited
/// for, even once its outcome was collected). Their memory, and the loop's
/// wake-up descriptor `uv_async_send` writes to, stay valid until the
/// EventLoop's `deinit`, and `Server.run` keeps the EventLoop alive
/// (`withExtendedLifetime`) until it has marked itself stopped and dropped
/// the wakers (under the locks `requestStop` takes), so a stop requested
/// from another thread late in shutdown never reaches freed memory.
struct EventLoopWaker: @unchecked Sendable {
    let progress: UnsafeMutablePointer<uv_async_t>
    let stop: UnsafeMutablePointer<uv_async_t>
    func progressed() { uv_async_send(progress) }
    func requestStop() { uv_async_send(stop) }
}

struct ServerError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

func uvError(_ rc: Int32) -> String { String(cString: uv_strerror(rc)) }

// MARK: libuv callbacks

@inline(__always)
private func eventLoop(_ data: UnsafeMutableRawPointer?) -> EventLoop {
    Unmanaged<EventLoop>.fromOpaque(data!).takeUnretainedValue()
}

private let loopAccepted: uv_connection_cb = { server, status in
    eventLoop(server?.pointee.data).accepted(status: status)
}

private let loopProgress: uv_async_cb = { handle in
    eventLoop(handle?.pointee.data).learnerProgressed()
}

private let loopStopRequested: uv_async_cb = { handle in
    eventLoop(handle?.pointee.data).beginShutdown()
}

private let loopCheck: uv_check_cb = { handle in
    let loop = eventLoop(handle?.pointee.data)
    loop.answerBatch()
    loop.commitAwaitingSync()
    loop.snapshotTurn()
    loop.busyPollTurn()
}

private let loopRecover: uv_idle_cb = { handle in
    eventLoop(handle?.pointee.data).recoveryTurn()
}

/// Does nothing: an active idle handle only keeps poll from blocking (while
/// a batch waits for the check phase, and while the loop busy-polls).
private let loopIdle: uv_idle_cb = { _ in }

private let loopTick: uv_timer_cb = { handle in
    eventLoop(handle?.pointee.data).tick()
}

private let loopSignal: uv_signal_cb = { handle, signum in
    Log.info("received signal \(signum)")
    eventLoop(handle?.pointee.data).beginShutdown()
}

private let loopHangup: uv_signal_cb = { handle, _ in
    eventLoop(handle?.pointee.data).handler.hangup()
}

private let freeBareHandle: uv_close_cb = { handle in
    handle?.deallocate()
}
