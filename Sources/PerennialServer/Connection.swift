// One client connection on the libuv loop: its socket handle, the bytes
// received and not yet framed (one inbox per connection, grown for a large
// frame and given back once empty), the replies produced by one read (sent
// with one write), and its state: parked while it waits on the learner or on
// the loop's batch of RECOMMENDs, paused by backpressure, lingering after a
// fatal error.
//
// Lifetime: the handle's `data` holds a retained Unmanaged reference to this
// object from accept until the close callback, which releases it and frees
// the handle. All of it runs on the loop thread. The object can outlive its
// handle (a batch of RECOMMENDs or the list of connections expected back
// may still hold it): from `close()` on, `closing` is set and nothing
// touches `handle` or `stream` again; every use is behind `!closing` (or
// `reading`, which closing clears).

import CLibUV
import PerennialCore
import PerennialProtocol

final class Connection {
    /// Unowned without a check (the checked kind cost an atomic per access
    /// in the PING profile): the loop holds every connection in
    /// `connections` and stops only once all of them have closed, so it
    /// always outlives them.
    unowned(unsafe) let loop: EventLoop
    let handle: UnsafeMutablePointer<uv_tcp_t>
    private let writeRequest: UnsafeMutablePointer<uv_write_t>
    private let shutdownRequest: UnsafeMutablePointer<uv_shutdown_t>

    // Received bytes: [readPos, writePos) is unframed input.
    private var inbox: UnsafeMutableRawPointer
    /// (What it holds beyond `keptBufferBytes` counts toward the loop's
    /// `largeInboxBytes`, the `limits.max_inbox_bytes` budget, until the
    /// connection closes. An idle connection keeps up to that size, which
    /// counts against nothing but max_connections: review finding, idle
    /// clients that once sent a 40 KB frame used the budget up for good.)
    private var inboxCapacity: Int {
        didSet { if !closing { loop.largeInboxBytes += Connection.budgeted(inboxCapacity) - Connection.budgeted(oldValue) } }
    }
    /// The part of an inbox of `capacity` bytes the budget counts.
    static func budgeted(_ capacity: Int) -> Int { max(0, capacity - keptBufferBytes) }
    private var readPos = 0
    private var writePos = 0

    /// Replies produced and not yet handed to libuv.
    private var out: [UInt8] = []
    /// Bytes handed to libuv in the write in flight (owned until its callback).
    private var writeBuffer: UnsafeMutableRawPointer
    private var writeCapacity: Int
    private var writeInFlight = 0

    var state = ConnectionState()
    private(set) var reading = false
    private(set) var closing = false
    private var closeAfterFlush = false
    /// The peer finished sending (EOF): answer what it sent, then close.
    private var peerDone = false
    /// After a fatal error or at a graceful stop: linger (shut our side
    /// down, drop what the peer still sends) instead of closing as soon as
    /// the last reply is written.
    private var lingerAfterFlush = false
    /// The server is stopping: frames received whole and not handled are
    /// answered SHUTTING_DOWN before the connection closes.
    private var refuseUnhandled = false
    /// Lingering until this time (0 = not lingering); bytes dropped so far.
    var isLingering: Bool { lingerUntil != 0 }
    private var lingerUntil: UInt64 = 0
    private var lingerDropped = 0
    /// When input last arrived while lingering: a peer quiet this long
    /// (`lingerQuietMs`) has nothing in flight, and closing no longer
    /// risks a reset (so a stop does not wait 2 s for every idle client).
    private var lingerLastInput: UInt64 = 0
    static let lingerMs: UInt64 = 2000
    static let lingerQuietMs: UInt64 = 200
    static let lingerMaxBytes = 64 << 20
    /// Why the connection is not processing frames now, if it is not.
    private(set) var parked: FrameOutcome?
    var lastActivity: UInt64
    /// When the first byte of the current unfinished frame arrived (0 = none).
    private var partialSince: UInt64 = 0
    /// When the frame being received first needed its buffer to grow, as
    /// the loop's ticket (0: none): the oldest such frame may always grow.
    private(set) var growingSince: UInt64 = 0
    /// Inside processFrames (flush must not start decoding again from there).
    private var processing = false
    /// RECOMMENDs of this connection wait for the end of the loop's turn,
    /// where they are answered with the others read in it: later frames
    /// wait too (unless they join the batch), so replies stay in order.
    private(set) var awaitingBatch = false

    static let initialInbox = 16 * 1024
    /// Buffers grown past this (a large frame, a long reply) go back to
    /// their initial size once empty, so an idle connection holds little.
    static let keptBufferBytes = 64 * 1024

    init(loop: EventLoop, handle: UnsafeMutablePointer<uv_tcp_t>) {
        self.loop = loop
        self.handle = handle
        writeRequest = .allocate(capacity: 1)
        shutdownRequest = .allocate(capacity: 1)
        inboxCapacity = Connection.initialInbox
        inbox = .allocate(byteCount: inboxCapacity, alignment: 16)
        writeCapacity = 16 * 1024
        writeBuffer = .allocate(byteCount: writeCapacity, alignment: 16)
        lastActivity = MonotonicClock.nowMillis()
        out.reserveCapacity(16 * 1024)
        outCapacity = out.capacity
    }

    deinit {
        inbox.deallocate()
        writeBuffer.deallocate()
        writeRequest.deallocate()
        shutdownRequest.deallocate()
    }

    private var stream: UnsafeMutablePointer<uv_stream_t> { UnsafeMutablePointer(OpaquePointer(handle)) }
    private var uvHandle: UnsafeMutablePointer<uv_handle_t> { UnsafeMutablePointer(OpaquePointer(handle)) }

    // MARK: reading

    func startReading() {
        guard !reading, !closing, !closeAfterFlush, !peerDone, parked == nil else { return }
        guard pendingBytes < loop.limits.maxPendingBytes else { return pauseForBackpressure() }
        backpressured = false
        reading = true
        // A partial frame's clock runs only while the server is reading.
        if partialSince != 0 { partialSince = MonotonicClock.nowMillis() }
        uv_read_start(stream, connectionAlloc, connectionRead)
    }

    func stopReading() {
        guard reading else { return }
        reading = false
        uv_read_stop(stream)
    }

    /// Reply bytes the peer has not taken reached the limit: read and decode
    /// nothing more until they drain (counted once per pause).
    private func pauseForBackpressure() {
        if !backpressured {
            backpressured = true
            loop.handler.stats.backpressurePauses += 1
        }
        stopReading()
    }

    /// Hands libuv the free tail of the inbox (at least 4 KiB of it, or
    /// what is left when the frame being received already fits: a buffer
    /// grown for a frame, and so counted against `limits.max_inbox_bytes`,
    /// is not doubled again for its last bytes).
    func allocate(_ suggested: Int) -> (UnsafeMutableRawPointer, Int) {
        if inboxCapacity - writePos < 4096 && !(inboxCapacity > writePos && frameInProgressFits) { makeRoom(atLeast: 4096) }
        return (inbox + writePos, inboxCapacity - writePos)
    }

    /// The unread bytes start with a frame header whose whole frame fits
    /// in the inbox from where it starts.
    private var frameInProgressFits: Bool {
        guard writePos - readPos >= FrameHeader.size else { return false }
        return readPos + frameLengthAtReadPos <= inboxCapacity
    }

    /// The whole length of the frame whose header starts the unread bytes.
    private var frameLengthAtReadPos: Int {
        Int(inbox.loadUnaligned(fromByteOffset: readPos, as: UInt32.self).littleEndian) + 4
    }

    /// The inbox's capacity once `makeRoom(atLeast: free)` has run: as it
    /// is when that fits, else what the unread bytes and `free` need (in
    /// 4 KiB pages). Not a power of two: a frame's last growth is to its
    /// own length, not up to twice it.
    private func capacityAfterMakingRoom(atLeast free: Int) -> Int {
        let unread = writePos - readPos
        if inboxCapacity - unread >= free { return inboxCapacity }
        return (unread + free + 4095) & ~4095
    }

    /// Moves unread bytes to the front, growing the inbox when a frame needs it.
    private func makeRoom(atLeast free: Int) {
        let unread = writePos - readPos
        if readPos > 0 {
            if unread > 0 { inbox.copyMemory(from: UnsafeRawPointer(inbox + readPos), byteCount: unread) }
            readPos = 0
            writePos = unread
        }
        if inboxCapacity - writePos < free {
            let cap = capacityAfterMakingRoom(atLeast: free)
            let bigger = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 16)
            bigger.copyMemory(from: inbox, byteCount: writePos)
            inbox.deallocate()
            inbox = bigger
            inboxCapacity = cap
        }
    }

    func received(_ n: Int) {
        if lingerUntil != 0 {
            // Read and dropped: only so the peer gets our error, not a reset.
            lingerDropped += n
            lingerLastInput = MonotonicClock.nowMillis()
            readPos = 0
            writePos = 0
            if lingerDropped > Connection.lingerMaxBytes { close() }
            return
        }
        writePos += n
        loop.handler.stats.bytesIn += UInt64(n)
        lastActivity = MonotonicClock.nowMillis()
        processFrames()
        flush()
    }

    /// Frames and handles everything complete in the inbox, in order, until
    /// the input runs out, a frame must wait, or the connection must close.
    func processFrames() {
        processing = true
        defer { processing = false }
        while !closing && !closeAfterFlush {
            // Backpressure: while this many reply bytes wait for the peer,
            // decode nothing more (and read nothing more) until it drains.
            if pendingBytes >= loop.limits.maxPendingBytes { return pauseForBackpressure() }
            let available = writePos - readPos
            let result = FrameDecoder.decode(UnsafeRawBufferPointer(start: inbox + readPos, count: available),
                                             limits: loop.handler.protocolLimits)
            switch result {
            case .needMore:
                if available == 0 {
                    partialSince = 0
                    if readPos == writePos { readPos = 0; writePos = 0 }
                    if inboxCapacity > Connection.keptBufferBytes {
                        inbox.deallocate()
                        inboxCapacity = Connection.initialInbox
                        inbox = .allocate(byteCount: inboxCapacity, alignment: 16)
                    }
                } else {
                    if partialSince == 0 { partialSince = MonotonicClock.nowMillis() }
                    if available >= FrameHeader.size {
                        // The header is valid: room for the frame to go on
                        // arriving. The buffer grows with what has come of
                        // the frame (room for as much again, at least
                        // 16 KiB), not to the length its header announces:
                        // a 12-byte header reserved the whole frame, rounded
                        // up to a power of two, so a few hundred bytes from
                        // one client spent max_inbox_bytes for everyone
                        // (review finding, helper-78).
                        let length = frameLengthAtReadPos
                        // (Within the 64 KiB a connection keeps outside the
                        // budget until the frame has sent a good part of it.)
                        let room = min(length - available, max(available, Connection.initialInbox))
                        if inboxCapacity - writePos < room {
                            // A larger buffer for this frame, if the budget
                            // of all connections' buffers allows it.
                            let growth = Connection.budgeted(capacityAfterMakingRoom(atLeast: room)) - Connection.budgeted(inboxCapacity)
                            // (A frame past half its length grows whatever
                            // the budget: frames growing together each held
                            // part of it, and all were refused near their
                            // end, none served (helper-80). The budget can be
                            // passed by what such frames still need: at most
                            // as much again as they hold.)
                            // So may the frame that began growing first of
                            // all, so one always gets through, however many
                            // arrive together (helper-82: 24 or more 4 MiB
                            // frames with a 16 MiB budget, none served).
                            let pastHalf = available * 2 >= length
                            if growingSince == 0 { growingSince = loop.nextGrowthTicket() }
                            if growth > 0 && loop.largeInboxBytes + growth > loop.limits.maxInboxBytes && !pastHalf
                                && !loop.isOldestGrowingFrame(self) {
                                // (As a fatal error: not before the replies a batch owes.)
                                if awaitingBatch { park(.waitForBatch); return }
                                loop.handler.stats.inboxBudgetRefusals += 1
                                let requestID = inbox.loadUnaligned(fromByteOffset: readPos + 8, as: UInt32.self).littleEndian
                                fail(ProtocolError(.busy, "the connections' receive buffers hold what limits.max_inbox_bytes (\(loop.limits.maxInboxBytes)) allows for frames being received: this \(length)-byte frame cannot be taken now; send it again later", fatal: true),
                                     requestID: requestID)
                                return
                            }
                            makeRoom(atLeast: room)
                        }
                    }
                }
                return
            case .fatal(let error, let requestID):
                // The error must not overtake replies the batch owes: it is
                // found again once they are written.
                if awaitingBatch { park(.waitForBatch); return }
                fail(error, requestID: requestID)
                return
            case .frame(let header):
                growingSince = 0
                let payload = UnsafeRawBufferPointer(start: inbox + readPos + FrameHeader.size, count: header.payloadLength)
                let outcome = loop.handler.handle(header, payload: payload, state: &state, out: &out,
                                                  owner: ObjectIdentifier(self), ordered: awaitingBatch)
                switch outcome {
                case .done:
                    readPos += header.frameLength
                    partialSince = 0
                case .deferred(let replyBytes):
                    readPos += header.frameLength
                    partialSince = 0
                    deferredReplyBytes += replyBytes
                    if !awaitingBatch {
                        awaitingBatch = true
                        loop.joinBatch(self)
                    }
                case .waitForApplied, .waitForQueueRoom:
                    park(outcome)
                    return
                case .waitForBatch:
                    park(outcome)
                    if !awaitingBatch { loop.joinBatch(self) }
                    return
                case .fatal(let error):
                    readPos += header.frameLength
                    fail(error, requestID: header.requestID)
                    return
                case .shutdownAfterReply:
                    readPos += header.frameLength
                    loop.beginShutdown()
                    return
                }
            }
        }
    }

    // MARK: waiting for the learner

    private func park(_ reason: FrameOutcome) {
        parked = reason
        stopReading()
        loop.parked.insert(ObjectIdentifier(self))
    }

    /// Called by the loop when the learner made progress or time passed.
    func resumeIfReady(appliedSeq: UInt64, now: UInt64) {
        guard let reason = parked else { return }
        switch reason {
        case .waitForApplied(let seq, let deadline):
            guard appliedSeq >= seq || now >= deadline else { return }
        case .waitForBatch:
            // Only the batch's answer resumes it (batchAnswered).
            return
        default:
            break
        }
        parked = nil
        loop.parked.remove(ObjectIdentifier(self))
        processFrames()
        flush()
        if parked == nil { startReading() }
    }

    // MARK: the loop's batch of RECOMMENDs

    /// For the loop's batch gathering (EventLoop.waitForReturningConnections):
    /// when a batch last answered this connection (0 once it has sent a
    /// RECOMMEND since), when it is expected back, and how soon after a
    /// reply it usually sends the next (a moving average; .max until known).
    var answeredAtNs: UInt64 = 0
    var expectedAtNs: UInt64 = 0
    var returnNs: UInt64 = .max

    /// Appends a reply the batch produced for this connection.
    func appendReply(_ write: (inout [UInt8]) -> Void) {
        write(&out)
    }

    /// The loop answered this turn's RECOMMENDs (this connection's among
    /// them, or it waited for room in the batch): send the replies and go
    /// on with the frames that waited.
    func batchAnswered() {
        awaitingBatch = false
        deferredReplyBytes = 0
        if case .waitForBatch = parked {
            parked = nil
            loop.parked.remove(ObjectIdentifier(self))
        }
        guard !closing else { return }
        if parked == nil { processFrames() }
        flush()
        if parked == nil { startReading() }
    }

    // MARK: writing

    /// Reply bytes owed to the peer: produced and not yet taken, and (about)
    /// those this turn's batch will produce for it.
    var pendingBytes: Int { out.count + writeInFlight + deferredReplyBytes }
    private var deferredReplyBytes = 0
    private var backpressured = false
    /// Memory the connection's buffers hold (STATS connection_buffer_bytes;
    /// `out` as of its last release: STATS may be asked while it is being
    /// written).
    var bufferBytes: Int { inboxCapacity + writeCapacity + outCapacity }
    private var outCapacity = 0

    /// Sends everything produced so far: straight to the socket when it
    /// takes it all (the common case, as redis does: no write request, no
    /// copy, no callback in the next loop iteration), otherwise what is left
    /// with one uv_write (if none is in flight).
    func flush() {
        while true {
            guard writeInFlight == 0, !closing else { return }
            if out.isEmpty {
                if !awaitingBatch && (closeAfterFlush || (peerDone && parked == nil)) {
                    if refuseUnhandled && refuseReceivedFrames() { continue }
                    if lingerAfterFlush && !peerDone { linger() } else { close() }
                }
                return
            }
            // Acknowledgements promise what the fsync policy says: under
            // `always`, nothing leaves before the log is on stable storage. The
            // sync is deferred to the end of the loop iteration, so every
            // connection that wrote to the log in it shares one fsync (group
            // commit); the loop then flushes them.
            if loop.handler.needsSync {
                loop.awaitingSync.insert(ObjectIdentifier(self))
                return
            }
            let count = out.count
            let written = out.withUnsafeMutableBytes { b -> Int32 in
                var buf = uv_buf_init(b.baseAddress!.assumingMemoryBound(to: CChar.self), UInt32(count))
                return uv_try_write(stream, &buf, 1)
            }
            if written < 0 && written != UV_EAGAIN.rawValue {
                close()
                return
            }
            let done = Int(max(written, 0))
            loop.handler.stats.bytesOut += UInt64(done)
            if done == count {
                releaseOut()
                resumeAfterWrite()
                continue
            }
            writeWithRequest(from: done)
            return
        }
    }

    /// Hands out[from...] to libuv with one uv_write; its callback is `wrote`.
    private func writeWithRequest(from start: Int) {
        let rest = out.count - start
        if writeCapacity < rest {
            writeBuffer.deallocate()
            writeCapacity = max(rest, writeCapacity * 2)
            writeBuffer = .allocate(byteCount: writeCapacity, alignment: 16)
        }
        out.withUnsafeBytes { writeBuffer.copyMemory(from: $0.baseAddress! + start, byteCount: rest) }
        writeInFlight = rest
        loop.handler.stats.bytesOut += UInt64(rest)
        releaseOut()
        var buf = uv_buf_init(writeBuffer.assumingMemoryBound(to: CChar.self), UInt32(rest))
        let rc = uv_write(writeRequest, stream, &buf, 1, connectionWrote)
        if rc != 0 {
            writeInFlight = 0
            close()
            return
        }
        // Backpressure: stop reading while the peer does not drain replies.
        if pendingBytes >= loop.limits.maxPendingBytes { pauseForBackpressure() }
    }

    /// Empties `out`, keeping its storage unless a long reply grew it.
    private func releaseOut() {
        if out.capacity > Connection.keptBufferBytes {
            out = []
            out.reserveCapacity(16 * 1024)
        } else {
            out.removeAll(keepingCapacity: true)
        }
        outCapacity = out.capacity
    }

    func wrote(status: Int32) {
        writeInFlight = 0
        if writeCapacity > Connection.keptBufferBytes {
            writeBuffer.deallocate()
            writeCapacity = 16 * 1024
            writeBuffer = .allocate(byteCount: writeCapacity, alignment: 16)
        }
        if status != 0 { close(); return }
        lastActivity = MonotonicClock.nowMillis()
        resumeAfterWrite()
        flush()
    }

    /// After a write completed (at once in `flush`, or in `wrote`): frames
    /// held back by backpressure are decoded now that it drained, and
    /// reading resumes. A connection still reading has no held-back frames;
    /// and never from inside the decoding loop itself.
    private func resumeAfterWrite() {
        guard !processing, !reading, !closing, parked == nil, !closeAfterFlush else { return }
        processFrames()
        startReading()
    }

    // MARK: errors and closing

    /// A fatal protocol error: answer with it, then close once flushed.
    /// The close lingers: closing a socket with unread input (the rest of
    /// an oversized frame the peer is still sending) makes the kernel send
    /// a reset, which destroys the error reply before the client reads it.
    /// So the server shuts its side down and reads and drops what the peer
    /// still sends, until it closes too or is quiet for 200 ms, for at most
    /// 2 s or 64 MiB (as web servers' lingering close does). A connection refused at accept
    /// (BUSY, stopping) has sent nothing yet: `linger: false` closes it at
    /// once, so refused connections never hold a slot or a descriptor.
    func fail(_ error: ProtocolError, requestID: UInt32, linger: Bool = true) {
        lingerAfterFlush = linger
        Log.debug("closing a connection after a fatal error: \(error)")
        loop.handler.stats.errorsTotal += 1
        loop.handler.stats.fatalErrors += 1
        if error.code == .timeout { loop.handler.stats.timeouts += 1 }
        Reply.encodeError(error, requestID: requestID, into: &out)
        finish()
    }

    /// A graceful stop: the connection reads nothing more, its replies owed
    /// are written, then every frame it had received whole and not handled
    /// (pipelined behind a SHUTDOWN, say) is answered SHUTTING_DOWN, so the
    /// client knows each request's fate: a FEEDBACK so answered was not
    /// accepted, and may be sent again elsewhere. The close lingers as
    /// after a fatal error: a peer still sending would otherwise get a
    /// reset, which destroys the replies it has not read yet (review
    /// finding: flooding clients lost acknowledgements of accepted events
    /// at a SIGTERM).
    func stopServing() {
        guard lingerUntil == 0, !closing else { return }
        refuseUnhandled = true
        lingerAfterFlush = true
        finish()
    }

    /// The stop's deadline passed while this connection waits on the
    /// learner: its waiting request gets its one reply before the close
    /// (review finding: it got EOF). That request had no effect, so it is
    /// answered SHUTTING_DOWN with the frames behind it, except a RELOAD
    /// applied already and waiting for its snapshot: STORAGE, as when that
    /// snapshot fails (the config stands; the stop's snapshot saves it).
    func abandonWait() {
        guard parked != nil else { return }
        loop.parked.remove(ObjectIdentifier(self))
        parked = nil
        if state.reloadWaitingSince != nil, case .frame(let header) = FrameDecoder.decode(
            UnsafeRawBufferPointer(start: inbox + readPos, count: writePos - readPos), limits: loop.handler.protocolLimits) {
            state.reloadWaitingSince = nil
            Reply.encodeError(ProtocolError(.storage, "the new config is applied, but the server is stopping before its snapshot was durable: the stop's own snapshot saves it"),
                              requestID: header.requestID, into: &out)
            readPos += header.frameLength
        }
        stopServing()
    }

    /// Answers SHUTTING_DOWN to each complete frame in the inbox (once);
    /// whether it answered any.
    private func refuseReceivedFrames() -> Bool {
        refuseUnhandled = false
        var refused = false
        while true {
            let available = writePos - readPos
            guard case .frame(let header) = FrameDecoder.decode(UnsafeRawBufferPointer(start: inbox + readPos, count: available),
                                                               limits: loop.handler.protocolLimits) else { break }
            Reply.encodeError(ProtocolError(.shuttingDown, "the server is stopping: this request was not handled"),
                              requestID: header.requestID, into: &out)
            readPos += header.frameLength
            refused = true
        }
        return refused
    }

    /// Stops reading and closes after the queued replies are written.
    func finish() {
        // Lingering already: keep reading (dropping) until the peer closes.
        guard lingerUntil == 0 else { return }
        stopReading()
        closeAfterFlush = true
        flush()
    }

    /// The error reply is written: shut our side down and drop input.
    private func linger() {
        guard lingerUntil == 0, !closing else { return }
        lingerLastInput = MonotonicClock.nowMillis()
        lingerUntil = lingerLastInput + Connection.lingerMs
        loop.lingering += 1
        readPos = 0
        writePos = 0
        if uv_shutdown(shutdownRequest, stream, connectionShutDown) != 0 { close(); return }
        reading = true
        uv_read_start(stream, connectionAlloc, connectionRead)
    }

    /// The peer finished sending (EOF): the complete frames it sent are
    /// answered (after any wait on the learner), a partial frame is
    /// discarded, then the connection closes.
    func peerFinished() {
        if lingerUntil != 0 { close(); return }
        peerDone = true
        stopReading()
        flush()
    }

    /// Called by the loop after the log was synced (or failed to sync).
    func logSynced(ok: Bool) {
        guard !closing else { return }
        if !ok {
            // Never acknowledge what might not be durable.
            out.removeAll()
            close()
            return
        }
        flush()
    }

    /// The socket failed (e.g. reset): nothing more can be sent.
    func peerClosed() {
        close()
    }

    func close() {
        guard !closing else { return }
        loop.largeInboxBytes -= Connection.budgeted(inboxCapacity)
        closing = true
        reading = false
        loop.awaitingSync.remove(ObjectIdentifier(self))
        if parked != nil { loop.parked.remove(ObjectIdentifier(self)); parked = nil }
        uv_close(uvHandle, connectionClosed)
    }

    /// Checks the per-connection timers; called by the loop's sweep.
    func sweep(now: UInt64, idleMs: Int, frameMs: Int) {
        if lingerUntil != 0 && !closing && (now >= lingerUntil || (now >= lingerLastInput && now - lingerLastInput >= Connection.lingerQuietMs)) { close() }
        // Closing after its last reply, which a peer that never reads does
        // not take: gone after the idle time too.
        if closeAfterFlush && !closing && idleMs > 0 && now >= lastActivity && now - lastActivity >= UInt64(idleMs) {
            close()
        }
        // (A connection owed batch replies gets them when the batch is answered.)
        guard !closing, !closeAfterFlush, !awaitingBatch else { return }
        // Saturating: a timestamp taken during this tick may be after `now`.
        if frameMs > 0, reading, partialSince != 0, parked == nil, now >= partialSince, now - partialSince >= UInt64(frameMs) {
            fail(ProtocolError(.timeout, "a started frame was not completed within \(frameMs) ms", fatal: true), requestID: 0)
        } else if idleMs > 0, parked == nil, now >= lastActivity, now - lastActivity >= UInt64(idleMs) {
            // Silent, or not draining its replies, for the whole idle time.
            close()
        }
    }
}

// MARK: libuv callbacks (C function pointers: no captures; state via handle.data)

@inline(__always)
private func connection(_ handle: UnsafeMutableRawPointer) -> Connection {
    let tcp = handle.assumingMemoryBound(to: uv_tcp_t.self)
    return Unmanaged<Connection>.fromOpaque(tcp.pointee.data).takeUnretainedValue()
}

private let connectionAlloc: uv_alloc_cb = { handle, suggested, buf in
    guard let handle, let buf else { return }
    let (p, n) = connection(UnsafeMutableRawPointer(handle)).allocate(suggested)
    buf.pointee = uv_buf_init(p.assumingMemoryBound(to: CChar.self), UInt32(n))
}

private let connectionRead: uv_read_cb = { stream, nread, _ in
    guard let stream else { return }
    let c = connection(UnsafeMutableRawPointer(stream))
    if nread > 0 {
        c.received(nread)
    } else if nread == Int(UV_EOF.rawValue) {
        c.peerFinished()
    } else if nread < 0 {
        c.peerClosed()
    }
}

private let connectionWrote: uv_write_cb = { req, status in
    guard let req, let stream = req.pointee.handle else { return }
    connection(UnsafeMutableRawPointer(stream)).wrote(status: status)
}

/// Our side of a lingering connection is shut down; a failure ends it.
private let connectionShutDown: uv_shutdown_cb = { req, status in
    guard let req, let stream = req.pointee.handle else { return }
    if status != 0 { connection(UnsafeMutableRawPointer(stream)).close() }
}

private let connectionClosed: uv_close_cb = { handle in
    guard let handle else { return }
    let tcp = UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_tcp_t.self)
    let unmanaged = Unmanaged<Connection>.fromOpaque(tcp.pointee.data)
    let c = unmanaged.takeUnretainedValue()
    c.loop.connectionClosed(c)
    unmanaged.release()
    tcp.deallocate()
}
