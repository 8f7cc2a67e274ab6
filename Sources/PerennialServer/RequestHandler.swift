// Routing one decoded frame to its work and writing the reply. No libuv here:
// the connection hands over the frame's bytes and its per-connection state,
// and gets back what to do next.

import Foundation
import PerennialCore
import PerennialProtocol

/// What a connection does after a frame.
enum FrameOutcome {
    /// The reply is written; go on with the next frame.
    case done
    /// Leave the frame unconsumed and stop reading until the learner has
    /// applied `seq` (read-your-writes), or until `deadline` (then TIMEOUT).
    case waitForApplied(seq: UInt64, deadline: UInt64)
    /// Leave the frame unconsumed until the learner queue has room.
    case waitForQueueRoom
    /// The frame is consumed; its reply (at most `replyBytes`) comes when
    /// the loop answers the batch of RECOMMENDs it joined (at the end of
    /// this turn, or of a later one while the batch is held)
    /// (`RequestHandler.answerDeferred`).
    case deferred(replyBytes: Int)
    /// Leave the frame unconsumed until the batch's RECOMMENDs are answered:
    /// the batch is full, or the connection has replies owed by it and this
    /// frame's reply must not overtake them.
    case waitForBatch
    /// The frame is consumed and answered with a fatal error: the
    /// connection sends it and closes (a HELLO in a protocol version this
    /// server does not speak).
    case fatal(ProtocolError)
    /// The reply is written; then the server stops.
    case shutdownAfterReply
}

/// Per-connection protocol state.
struct ConnectionState {
    /// What a HELLO proved: nothing yet, the client token, or the admin token.
    enum Role: Comparable { case anonymous, client, admin }
    var role: Role = .anonymous
    /// The token that proved `role`, and the token lists' generation it was
    /// checked against: a RELOAD that changes the lists checks it again at
    /// the connection's next request, so a removed token stops working on
    /// connections already open (a leaked token is revoked by removing it).
    var provedWith = ""
    var provedAt = 0
    /// Highest sequence this connection's FEEDBACK was acknowledged with;
    /// its later reads wait for it (read-your-writes on one connection).
    var lastFeedbackSeq: UInt64 = 0
    /// When a wait on this frame started (0 = not waiting), so a re-run of
    /// the same frame keeps its first deadline.
    var waitDeadline: UInt64 = 0
    /// This connection's accepted batches the learner has not applied yet
    /// (last sequence, size), for its share of the learner queue.
    var unapplied: [(last: UInt64, count: Int)] = []
    /// The ticket of this connection's SNAPSHOT request waiting for its
    /// snapshot (0 = none).
    var snapshotTicket: UInt64 = 0
    /// A RELOAD of this connection that changed scorers, applied and
    /// waiting for its snapshot (the snapshot failures counted when it
    /// applied), or nil.
    var reloadWaitingSince: UInt64?
    /// When this connection's writes stop waiting for the replay of the log
    /// after a restart (0: none waited yet). One deadline for all of them,
    /// so a pipeline of writes is refused from one point on rather than
    /// each waiting anew, which let a later one in after an earlier one
    /// was refused (helper-65).
    var recoveryWaitDeadline: UInt64 = 0

    /// Events of this connection still waiting for the learner.
    mutating func unappliedEvents(applied: UInt64) -> Int {
        while let first = unapplied.first, first.last <= applied { unapplied.removeFirst() }
        return unapplied.reduce(0) { $0 + $1.count }
    }
}

final class RequestHandler {
    private(set) var config: PerennialConfig {
        didSet {
            tokensRequired = config.clientTokens != nil || config.adminTokens != nil
            if config.clientTokens != oldValue.clientTokens || config.adminTokens != oldValue.adminTokens { tokensGeneration += 1 }
            snapshots.config = config
        }
    }
    /// Counts changes of the token lists (ConnectionState.provedAt).
    private var tokensGeneration = 0
    /// Whether any token is configured (most servers have none: then only
    /// HELLO needs looking at, and every other request passes at once).
    private var tokensRequired: Bool
    /// Reads the config anew for RELOAD / SIGHUP (nil: started without a file).
    let reloadConfig: (@Sendable () throws -> PerennialConfig)?
    let model: Model
    let learner: Learner
    let log: FeedbackLog
    /// When snapshots are taken (automatic, requested, a RELOAD's, a stop's).
    let snapshots: SnapshotScheduler
    /// The log being replayed while serving (nil once it is all replayed,
    /// or when there was none): writes are refused RECOVERING meanwhile.
    var recovery: LogRecovery?
    /// The replay failed: the server is stopping, and refuses writes.
    var recoveryFailed = false
    /// Records were written under `always` and must be fsynced before the
    /// replies acknowledging them leave.
    private(set) var needsSync = false
    private(set) var protocolLimits: ProtocolLimits
    let startedAt = MonotonicClock.nowMillis()
    var stats = ServerStats()
    private var admitted: [LearnEvent] = []
    let sessions: SessionStore
    let shadows = ShadowTracker()
    /// The loop's connections' buffer memory (set by the loop, for STATS).
    var connectionBufferBytes: () -> Int = { 0 }
    private var incoming: [IncomingEvent] = []
    /// RECOMMENDs read since the last batch was answered, in the order read,
    /// answered together at the end of a turn (one pass over the catalogue
    /// for all of them; EventLoop.answerBatch).
    private var deferred: [DeferredRecommend] = []
    var hasDeferred: Bool { !deferred.isEmpty }
    var deferredCount: Int { deferred.count }

    struct DeferredRecommend {
        /// The connection owed the reply.
        let owner: ObjectIdentifier
        let requestID: UInt32
        let question: RecommendQuestion
    }

    init(config: PerennialConfig, model: Model, learner: Learner, log: FeedbackLog, snapshots: SnapshotStore,
         lastSnapshotSeq: UInt64, reloadConfig: (@Sendable () throws -> PerennialConfig)?) {
        self.config = config
        tokensRequired = config.clientTokens != nil || config.adminTokens != nil
        self.reloadConfig = reloadConfig
        self.model = model
        self.learner = learner
        self.log = log
        self.snapshots = SnapshotScheduler(model: model, learner: learner, log: log, store: snapshots, config: config,
                                           lastSnapshotSeq: lastSnapshotSeq)
        sessions = SessionStore(maxSessions: config.maxSessions, maxItems: config.sessionItems,
                                idleSeconds: Double(config.sessionIdleSeconds))
        protocolLimits = ProtocolLimits(maxFrameBytes: config.limits.maxFrameBytes,
                                        maxItems: config.limits.maxItems, maxEvents: config.limits.maxEvents)
    }

    /// Handles one whole frame, appending the reply (or ERROR) to `out`.
    /// `owner` identifies the connection; `ordered` says it has RECOMMENDs
    /// deferred to the end of this turn, so only another RECOMMEND that can
    /// join them may be taken now (replies keep the order of requests).
    func handle(_ header: FrameHeader, payload: UnsafeRawBufferPointer, state: inout ConnectionState,
                out: inout [UInt8], owner: ObjectIdentifier, ordered: Bool) -> FrameOutcome {
        let id = header.requestID
        do throws(ProtocolError) {
            let opcode = try FrameDecoder.opcode(of: header)
            if header.isReply {
                throw ProtocolError(.unknownOpcode, "a client may not send reply frames (REPLY flag set)")
            }
            let request = try Request.decode(opcode: opcode, payload: payload, limits: protocolLimits)
            if ordered && !joinsBatch(request) { return .waitForBatch }
            // A RELOAD takes effect after the RECOMMENDs read before it are
            // answered (with the scorers they were read under).
            if case .reload = request, hasDeferred { return .waitForBatch }
            let outcome = try perform(request, state: &state, requestID: id, out: &out, owner: owner)
            switch outcome {
            case .done, .deferred: stats.requestsTotal += 1; state.waitDeadline = 0
            case .shutdownAfterReply: stats.requestsTotal += 1
            default: break
            }
            return outcome
        } catch {
            // An error must not overtake the replies the batch owes.
            if ordered { return .waitForBatch }
            // (A FEEDBACK waiting in line for the queue that now fails, say
            // against a RELOAD's lower max_events, no longer holds its place;
            // nor does a parked RELOAD that now fails, say its authorisation
            // after another RELOAD turned tokens on.)
            releaseWaits(owner)
            stats.requestsTotal += 1
            // (Counted, and its error written, by the connection as it closes.)
            if error.fatal { return .fatal(error) }
            stats.errorsTotal += 1
            if error.code == .timeout { stats.timeouts += 1 }
            state.waitDeadline = 0
            // (A SNAPSHOT that waited and then failed must not leave its
            // ticket for the connection's next one, nor a RELOAD its wait.)
            state.snapshotTicket = 0
            state.reloadWaitingSince = nil
            Reply.encodeError(error, requestID: id, into: &out)
            return .done
        }
    }

    private func isReload(_ request: Request) -> Bool {
        if case .reload = request { return true }
        return false
    }

    /// Whether the request is a RECOMMEND answered with the turn's batch.
    /// A shadow comparison records both answers at once, and an unknown
    /// scorer is refused at once: those are answered alone.
    private func joinsBatch(_ request: Request) -> Bool {
        guard config.recommendBatch > 1, case .recommend(let q) = request else { return false }
        return q.shadowScorer.isEmpty && model.canServe(q.scorer)
    }

    /// Answers the RECOMMENDs deferred in this turn, together
    /// (`Model.recommend(batch:)`); `deliver` appends each reply to its
    /// connection's output, in the order the requests were read.
    func answerDeferred(isOpen: (ObjectIdentifier) -> Bool, deliver: (ObjectIdentifier, (inout [UInt8]) -> Void) -> Void) {
        // (A connection that closed since gets nothing: not worth scoring.)
        let batch = deferred.filter { isOpen($0.owner) }
        deferred.removeAll(keepingCapacity: true)
        guard !batch.isEmpty else { return }
        let answers = model.recommend(batch: batch.map(\.question))
        stats.recommendBatches += 1
        stats.recommendsBatched += UInt64(batch.count)
        let applied = model.appliedSeq
        for (d, answer) in zip(batch, answers) {
            deliver(d.owner) { out in
                switch answer {
                case .success(let recs):
                    Reply.recommend(RecommendReply(appliedSeq: applied, items: recs.map { RankedItem(item: $0.item, score: $0.score) }))
                        .encode(into: &out, requestID: d.requestID)
                case .failure(let error):
                    // (A RELOAD in the same turn removed the scorer.)
                    stats.errorsTotal += 1
                    Reply.encodeError(ProtocolError(.unknownScorer, error.description), requestID: d.requestID, into: &out)
                }
            }
        }
    }

    private func perform(_ request: Request, state: inout ConnectionState, requestID: UInt32,
                         out: inout [UInt8], owner: ObjectIdentifier) throws(ProtocolError) -> FrameOutcome {
        // (A RELOAD waiting for its snapshot was authorised when it applied;
        // the config it applied may have changed the tokens since: review
        // finding, an applied RELOAD answered UNAUTHORIZED.)
        if state.reloadWaitingSince == nil || !isReload(request) { try authorize(request, state: &state) }
        if let r = recovery, case .feedback(let events) = request {
            return try acceptDuringReplay(events, recovery: r, state: &state, requestID: requestID, out: &out)
        }
        if recovery != nil || recoveryFailed, request.changesState {
            // A write other than FEEDBACK waits (its connection parked, the
            // frame unread) for the replay to end, up to limits.wait_ms,
            // then is refused: it must be applied after every event in the log.
            guard let r = recovery else { throw recoveringError() }
            return try holdForReplay(until: r.targetSeq, state: &state)
        }
        switch request {
        case .ping:
            Reply.ping.encode(into: &out, requestID: requestID)
        case .hello:
            // (Its protocol version was checked with its token, in authorize.)
            Reply.hello(HelloReply(protocolVersion: 1, maxFrameBytes: UInt32(config.limits.maxFrameBytes),
                                   maxItems: UInt32(config.limits.maxItems), maxEvents: UInt32(config.limits.maxEvents),
                                   serverName: "perennial \(PerennialVersion.string)"))
                .encode(into: &out, requestID: requestID)
        case .stats:
            Reply.stats(counters()).encode(into: &out, requestID: requestID)
        case .feedback(let events):
            return try performFeedback(events, state: &state, requestID: requestID, out: &out, owner: owner)
        case .recommend(let q):
            return try performRecommend(q, request: request, state: &state, requestID: requestID, out: &out, owner: owner)
        case .score(let s):
            if let wait = try readYourWrites(0, state: &state) { return wait }
            do {
                let scores = try model.score(user: s.user, items: s.items, scorer: s.scorer, session: s.sessionItems)
                Reply.score(scores.map { ItemScore(score: $0.score, known: $0.known) }).encode(into: &out, requestID: requestID)
            } catch {
                throw ProtocolError(.unknownScorer, error.description)
            }
        case .upsertItem(let u):
            return try performUpsert(u, requestID: requestID, out: &out)
        case .deleteItems(let ids):
            let held = model.holdsAnyItem(of: ids)
            if let wait = try delete(.deleteItems(items: ids), held: held, owner: owner) { return wait }
            let deleted = snapshots.applyLoggedChange(logged: held) { model.deleteItems(ids) }
            stats.itemsDeleted += UInt64(deleted)
            Reply.deleteItems(deleted: UInt16(deleted)).encode(into: &out, requestID: requestID)
        case .deleteUsers(let ids):
            let held = model.holdsAnyUser(of: ids)
            if let wait = try delete(.deleteUsers(users: ids), held: held, owner: owner) { return wait }
            let deleted = snapshots.applyLoggedChange(logged: held) { model.deleteUsers(ids) }
            for id in ids { shadows.forget(id) }
            stats.usersDeleted += UInt64(deleted)
            Reply.deleteUsers(deleted: UInt16(deleted)).encode(into: &out, requestID: requestID)
        case .reload:
            return try performReload(state: &state, requestID: requestID, out: &out, owner: owner)
        case .snapshot:
            // (Answered once a snapshot taken after the request is durable:
            // SnapshotScheduler.answer.)
            guard let outcome = snapshots.answer(ticket: &state.snapshotTicket) else { return .waitForQueueRoom }
            state.snapshotTicket = 0
            switch outcome {
            case .success(let version): Reply.snapshot(seq: version.seq, version: version.id).encode(into: &out, requestID: requestID)
            case .failure(let why): throw ProtocolError(.storage, "snapshot failed: \(why)")
            }
        case .shutdown:
            guard config.adminTokens != nil || config.allowShutdown else {
                throw ProtocolError(.unauthorized, "SHUTDOWN needs an admin token (auth.admin_token_file) or server.allow_shutdown = true")
            }
            Reply.shutdown.encode(into: &out, requestID: requestID)
            return .shutdownAfterReply
        }
        return .done
    }

    /// FEEDBACK: admitted in turn, logged, queued for the learner, acknowledged.
    private func performFeedback(_ events: [WireEvent], state: inout ConnectionState, requestID: UInt32,
                                 out: inout [UInt8], owner: ObjectIdentifier) throws(ProtocolError) -> FrameOutcome {
        // Room in the queue, and within this connection's share of it
        // (a batch is always admitted when the connection has nothing queued).
        let allowance = queueAllowance
        let share = Int(Double(allowance) * config.limits.feedbackQueueShare)
        // (While an automatic snapshot waits for the learner, the room
        // tapers to nothing: admissionRoom.)
        let room = snapshots.admissionRoom(allowance)
        let mine = state.unappliedEvents(applied: model.appliedSeq)
        // (While a snapshot that stopped new events waits for the
        // learner to catch up, and while its thread serialises the
        // model, new events wait; RECOMMENDs go on.)
        guard !snapshots.draining, !snapshots.serialising, idleWaiters.isEmpty, !hangupWaiting else { return .waitForQueueRoom }
        // Batches that found the queue full go in the order they came:
        // a large one is never passed over, turn after turn, by smaller
        // ones that fit in the room it waits for. (A batch over its own
        // connection's share waits for its own events, out of line.)
        let inLine = roomLine.first.map { $0 == owner } ?? true
        guard inLine, learner.hasRoom(for: events.count, within: room) else {
            if !roomLine.contains(owner) { roomLine.append(owner) }
            stats.queueFullPauses += 1
            return .waitForQueueRoom
        }
        guard mine == 0 || mine + events.count <= share else {
            leaveRoomLine(owner)
            stats.queueFullPauses += 1
            return .waitForQueueRoom
        }
        leaveRoomLine(owner)
        let now = try resolveIncoming(events)
        if sweepMustWait(incoming) { return .waitForQueueRoom }
        if let b = model.firstBreach(of: incoming, maxUserIDs: config.limits.maxUserIDs, maxItemIDs: config.limits.maxItemIDs) {
            stats.capacityRefusals += 1
            throw Self.capacityError(b)
        }
        // The log first: an event the log refused is not accepted.
        try logIncoming(firstSeq: model.lastSeq + 1)
        admitted.removeAll(keepingCapacity: true)
        model.admit(incoming, now: now, into: &admitted)
        let queued = learner.tryEnqueue(admitted)
        precondition(queued, "learner queue refused a batch after reporting room")
        acknowledgeIncoming(firstSeq: admitted[0].seq, state: &state, requestID: requestID, out: &out)
        return .done
    }

    /// RECOMMEND: after this connection's writes (read-your-writes), joined to the turn's batch or answered alone.
    private func performRecommend(_ q: RecommendRequest, request: Request, state: inout ConnectionState, requestID: UInt32,
                                 out: inout [UInt8], owner: ObjectIdentifier) throws(ProtocolError) -> FrameOutcome {
        if let wait = try readYourWrites(q.minAppliedSeq, state: &state) { return wait }
        let batched = joinsBatch(request)
        if batched && deferred.count >= config.recommendBatch { return .waitForBatch }
        stats.recommends += 1
        var session = q.sessionItems
        if !q.shadowScorer.isEmpty && !model.canServe(q.shadowScorer) {
            throw ProtocolError(.unknownScorer, "the shadow scorer \"\(q.shadowScorer)\" is not loaded; loaded: \((model.scorerNames + model.routes.keys.sorted()).joined(separator: ", "))")
        }
        if !q.sessionID.isEmpty && model.canServe(q.scorer) {
            // (A request the model will refuse leaves the session alone.
            // Its session_id's length is the codec's to check.)
            // The request's items join the remembered session.
            session = sessions.update(q.sessionID, appending: q.sessionItems,
                                      now: Double(MonotonicClock.nowMillis()) / 1000)
        }
        if batched {
            deferred.append(DeferredRecommend(owner: owner, requestID: requestID,
                                              question: RecommendQuestion(user: q.user, k: Int(q.k), scorer: q.scorer, session: session,
                                                                          exclude: q.exclude, candidates: q.candidates)))
            return .deferred(replyBytes: FrameHeader.size + 10 + 12 * Int(q.k))
        }
        do {
            let recs = try model.recommend(user: q.user, k: Int(q.k), scorer: q.scorer, session: session,
                                           exclude: q.exclude, candidates: q.candidates)
            if !q.shadowScorer.isEmpty {
                // The same question to the shadow scorer, remembered, not returned.
                let other = try model.recommend(user: q.user, k: Int(q.k), scorer: q.shadowScorer, session: session,
                                                exclude: q.exclude, candidates: q.candidates)
                shadows.record(user: q.user, shadow: q.shadowScorer, served: recs.map(\.item), other: other.map(\.item))
            }
            Reply.recommend(RecommendReply(appliedSeq: model.appliedSeq,
                                           items: recs.map { RankedItem(item: $0.item, score: $0.score) }))
                .encode(into: &out, requestID: requestID)
        } catch {
            throw ProtocolError(.unknownScorer, error.description)
        }
        return .done
    }

    /// UPSERT_ITEM: bounded, logged, applied.
    private func performUpsert(_ u: UpsertItem, requestID: UInt32, out: inout [UInt8]) throws(ProtocolError) -> FrameOutcome {
        // (Not while a snapshot's thread serialises the model.)
        if snapshots.serialising { return .waitForQueueRoom }
        // (Bounded as the text is, but refused rather than cut: review
        // finding, helper-78, a frame's worth of attributes per item.)
        let attributeBytes = u.attributes.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count }
        if attributeBytes > config.limits.maxAttributeBytes {
            throw ProtocolError(.invalidArgument, "the item's attributes take \(attributeBytes) bytes (keys and values); limits.max_attribute_bytes allows \(config.limits.maxAttributeBytes): nothing was stored")
        }
        if let b = model.upsertBreach(item: u.item, maxItemIDs: config.limits.maxItemIDs) {
            stats.capacityRefusals += 1
            throw Self.capacityError(b, upsert: true)
        }
        do {
            try log.append(.upsert(item: u.item, text: model.cutText(u.text),
                                   attributes: u.attributes.map { LogAttribute(key: $0.key, value: $0.value) }),
                           lastSeq: model.lastSeq)
        } catch {
            stats.storageRefusals.note("UPSERT_ITEM refused with STORAGE: \(error); STATS storage_refusals counts them")
            throw ProtocolError(.storage, "item not stored: \(error)")
        }
        if log.policy == .always { needsSync = true }
        let r = snapshots.applyLoggedChange { model.upsertItem(id: u.item, text: u.text, attributes: u.attributes.map { ($0.key, $0.value) }) }
        Reply.upsertItem(UpsertReply(created: r.created, truncated: r.truncated)).encode(into: &out, requestID: requestID)
        return .done
    }

    /// RELOAD: applied with the learner idle; answered once its snapshot, if it needs one, is durable.
    private func performReload(state: inout ConnectionState, requestID: UInt32,
                                 out: inout [UInt8], owner: ObjectIdentifier) throws(ProtocolError) -> FrameOutcome {
        // Applied already: the reply waits until the RELOAD's snapshot
        // is durable, so an acknowledged RELOAD survives a crash. (Before
        // it, recovery would replay the events since the previous
        // version under the new settings, unlike the live server, which
        // learned them under the old: review finding, helper-35.)
        if let failuresBefore = state.reloadWaitingSince {
            guard let saved = snapshots.reloadSaved(failuresBefore: failuresBefore) else { return .waitForQueueRoom }
            state.reloadWaitingSince = nil
            if case .failure(let why) = saved {
                throw ProtocolError(.storage, "the new config is applied, but its snapshot failed (\(why)): until a snapshot succeeds (tried again by itself), a crash would replay the events since the previous version under the new settings")
            }
            Reply.reload.encode(into: &out, requestID: requestID)
            return .done
        }
        do {
            // Refused at once when it cannot apply (nothing to wait for).
            let next = try checkedReloadConfig()
            // Scorers are swapped with the learner idle and no snapshot
            // thread reading the model. Until then this connection waits
            // (parked, the frame unread) and new events wait with it;
            // the loop goes on serving reads.
            if let wait = parkUntilLearnerIdle(owner) { return wait }
            let failuresBefore = snapshots.reloadSaveFailures, generation = snapshots.reloadGeneration
            _ = try applyReload(next)
            // (Only a RELOAD that changed scorers waits: one that changed
            // limits alone has nothing to save, even while an earlier
            // RELOAD's snapshot is still to be retried.)
            if snapshots.reloadGeneration != generation && snapshots.reloadUnsnapshotted {
                state.reloadWaitingSince = failuresBefore
                return .waitForQueueRoom
            }
        } catch let e as ProtocolError {
            Log.error("RELOAD: \(e.message)")
            throw e
        } catch {
            Log.error("RELOAD: the new config was refused; the old one stays: \(error)")
            throw ProtocolError(.invalidArgument, "the new config was refused; the old one stays: \(error)")
        }
        Reply.reload.encode(into: &out, requestID: requestID)
        return .done
    }
    /// A RELOAD or a deletion runs with the learner idle (it has applied
    /// everything accepted) and no snapshot thread reading the model: nil
    /// when that holds now, else how the connection waits (parked, the frame
    /// unread; in `idleWaiters` while the learner catches up, so new
    /// FEEDBACK waits too).
    private func parkUntilLearnerIdle(_ owner: ObjectIdentifier) -> FrameOutcome? {
        if snapshots.serialising { return .waitForQueueRoom }
        if !model.learnerIdle {
            // (Also while a purge a deletion handed the learner still runs:
            // the learner's progress wakes the connection when it ends.)
            idleWaiters.insert(owner)
            return .waitForApplied(seq: model.lastSeq, deadline: .max)
        }
        releaseWaits(owner)
        return nil
    }

    /// Readies a DELETE_ITEMS or DELETE_USERS: nil once `record` is logged
    /// and the model may forget (or when it holds none of the ids, and
    /// nothing is logged), else how the connection waits. Forgetting visits
    /// every history and scorer table, so it runs with the learner idle
    /// and no snapshot thread reading the model, at a log position a
    /// replay reaches with the learner idle too. Until then the connection
    /// waits parked (the frame unread) and new FEEDBACK waits with it, as
    /// for a RELOAD (a stream of it could keep the learner busy for good);
    /// reads go on, and may still see what is being deleted.
    private func delete(_ record: LogRecord, held: Bool, owner: ObjectIdentifier) throws(ProtocolError) -> FrameOutcome? {
        guard held else {
            if snapshots.serialising { return .waitForQueueRoom }
            releaseWaits(owner)
            return nil
        }
        if let wait = parkUntilLearnerIdle(owner) { return wait }
        // The log first: a deletion the log refused did not happen.
        do {
            try log.append(record, lastSeq: model.lastSeq)
        } catch {
            stats.storageRefusals.note("a deletion refused with STORAGE: \(error); STATS storage_refusals counts them")
            throw ProtocolError(.storage, "nothing deleted: \(error)")
        }
        if log.policy == .always { needsSync = true }
        return nil
    }

    /// An item expiry sweep's batch waiting for the learner to drain: the
    /// sweep it runs (its scheduled time) and until when it waits (ms).
    private var sweepWait: (sweep: Int64, until: UInt64, needed: Bool)?

    /// Whether a FEEDBACK batch must wait (parked, like one that finds the
    /// queue full) for an item expiry sweep. The batch that runs a sweep
    /// needs the learner idle: rather than hold the loop while the learner
    /// drains, it waits, and RECOMMENDs go on meanwhile. Other batches wait
    /// with it, or a stream of them (back-dated ones run no sweep) could
    /// keep the learner busy and overtake it for good (review finding). At
    /// most `limits.wait_ms` (should its connection go, the others wait no
    /// longer): then it goes, and the sweep waits for the learner itself,
    /// holding the loop, as before.
    private func sweepMustWait(_ batch: [IncomingEvent]) -> Bool {
        guard let next = model.nextItemSweep, let first = batch.first else { return false }
        let now = MonotonicClock.nowMillis()
        if first.timestamp >= next {
            guard !model.learnerIdle else { return false }
            if sweepWait?.sweep != next {
                // (A sweep that will forget nothing does not wait.)
                let needed = model.itemSweepWouldForget(at: first.timestamp)
                sweepWait = (next, now + UInt64(config.limits.waitMs), needed)
                if needed { stats.sweepWaits += 1 }
            }
            return sweepWait!.needed && now < sweepWait!.until
        }
        // Another batch, while a sweep's batch waits (until it has run).
        if let w = sweepWait, w.sweep == next, w.needed, now < w.until { return true }
        return false
    }

    /// The CAPACITY refusal of a FEEDBACK batch, or of an item upsert.
    private static func capacityError(_ b: IdBoundBreach, upsert: Bool = false) -> ProtocolError {
        let (what, key) = b.kind == .user ? ("user", "limits.max_user_ids") : ("item", "limits.max_item_ids")
        let bound = "\(what) id \(b.id) would be new, and the model holds its most \(what) ids, \(b.limit) (\(key))"
        let rest = "raise the limit to admit more (RELOAD applies it)"
        return upsert
            ? ProtocolError(.capacity, "\(bound); the item was not stored. Known items can still be updated; \(rest)")
            : ProtocolError(.capacity, "event \(b.index): \(bound); no event of this batch was accepted. A batch whose events name only known ids is still accepted (send the others apart); \(rest)",
                            detail: UInt32(b.index))
    }

    /// How far ahead of the server's clock an event may be stamped, and the
    /// rule that says so. Id expiry takes an event's timestamp as the time,
    /// so with `expire_after_seconds` (or `item_expire_after_seconds`) on,
    /// an event stamped s seconds ahead expires ids idle for the limit
    /// minus s: a tenth of the limit at most keeps every id for 90% of its
    /// idle time.
    private var allowedFutureSeconds: (Int, String) {
        var allowed = (config.limits.maxFutureSeconds, "limits.max_future_seconds")
        for (key, expiry) in [("expire_after_seconds", config.lifelong.expireAfterSeconds),
                              ("item_expire_after_seconds", config.lifelong.itemExpireAfterSeconds)]
        where expiry > 0 && expiry / 10 < allowed.0 {
            allowed = (Int(expiry / 10), "a tenth of lifelong.\(key) = \(expiry)")
        }
        return allowed
    }

    /// Checks tokens: with `auth.token_file` set, everything but HELLO needs
    /// a HELLO with the client (or admin) token first; with
    /// `auth.admin_token_file` set, RELOAD/SNAPSHOT/SHUTDOWN need the admin
    /// token. HELLO itself records what its token proves.
    private func authorize(_ request: Request, state: inout ConnectionState) throws(ProtocolError) {
        if case .hello(let h) = request {
            // (A HELLO naming another protocol version never gets here: its
            // decoding refuses it, fatal, so it proves nothing: helper-78.)
            // (Whatever an earlier HELLO proved goes: a refused one leaves
            // the connection with nothing.)
            state.provedAt = tokensGeneration
            state.provedWith = ""
            state.role = .anonymous
            if let role = role(proved: h.token) {
                state.role = role
                state.provedWith = h.token
            } else if config.clientTokens != nil || (!h.token.isEmpty && config.adminTokens != nil) {
                // (A HELLO with no token is a client that has none, as a
                // request without HELLO is, not a guess: the Swift client
                // greets at connect. Only a wrong token counts.)
                if !h.token.isEmpty { stats.authFailures += 1 }
                throw ProtocolError(.unauthorized, h.token.isEmpty ? "this server needs a token (HELLO sent none)" : "wrong token")
            }
            return
        }
        if state.provedAt != tokensGeneration {
            // The token lists changed since this connection's HELLO.
            state.provedAt = tokensGeneration
            if !state.provedWith.isEmpty { state.role = role(proved: state.provedWith) ?? .anonymous }
        }
        guard tokensRequired else { return }
        // (A connection whose token a RELOAD removed is told so.)
        let removed = "the token this connection's HELLO sent was removed from the server's token files: send HELLO with one they list"
        let isAdminOp: Bool
        switch request {
        case .reload, .snapshot, .shutdown: isAdminOp = true
        default: isAdminOp = false
        }
        if isAdminOp, config.adminTokens != nil, state.role != .admin {
            throw ProtocolError(.unauthorized, state.provedWith.isEmpty || state.role == .client
                ? "admin operations need HELLO with the admin token" : removed)
        }
        if config.clientTokens != nil, state.role == .anonymous {
            throw ProtocolError(.unauthorized, state.provedWith.isEmpty ? "this server requires a token: send HELLO with it first" : removed)
        }
    }

    /// SIGHUP: a RELOAD without a connection. It re-reads the config and
    /// swaps scorers and limits for new requests without touching
    /// connections or the shared table; settings that shape storage or the
    /// listening socket need a restart, and a config that changes them, or
    /// fails to parse, is refused (said in the log) and the old one stays.
    /// Scorers are swapped with the learner idle and no snapshot thread
    /// reading the model, and (like a RELOAD request) after the RECOMMENDs
    /// read before it are answered: until then it waits like a parked
    /// RELOAD request (`hangupWaiting`: new FEEDBACK waits with it, reads
    /// are served, still under the old config) and `runWaitingHangup`
    /// carries it out, with the config read again.
    func hangup() {
        // (A file that cannot apply is refused at once: nothing to wait for.)
        do { _ = try checkedReloadConfig() } catch { return logHangupRefused(error) }
        hangupWaiting = true
        _ = runWaitingHangup()
    }

    /// A SIGHUP's reload waits for the learner (see `hangup`).
    private(set) var hangupWaiting = false

    /// Carries out a waiting SIGHUP's reload once the learner is idle;
    /// true when it ran (then the FEEDBACK that waited may go on).
    /// `stopping`: the stop has closed every connection (no batch is owed
    /// any more) and stopped the learner; the reload runs before the stop's
    /// snapshot, which then holds its scorer set.
    func runWaitingHangup(stopping: Bool = false) -> Bool {
        // (learnerIdle: also no purge a deletion handed the learner still
        // running, or reconfiguring would swap the scorers under it; review
        // finding, helper-96: a SIGHUP then stopped the server.)
        guard hangupWaiting, recovery == nil, !recoveryFailed, !snapshots.serialising, model.learnerIdle,
              stopping || !hasDeferred else { return false }
        hangupWaiting = false
        do {
            _ = try applyReload(try checkedReloadConfig())
        } catch {
            logHangupRefused(error)
        }
        return true
    }

    private func logHangupRefused(_ error: any Error) {
        Log.error("SIGHUP: the new config was refused; the old one stays: \(error)")
    }

    /// The config file read again, and refused when it changes what only a
    /// restart can (or nothing at all can) change.
    func checkedReloadConfig() throws -> PerennialConfig {
        guard let reloadConfig else {
            throw ProtocolError(.notSupported, "the server was started without --config: there is no file to reload")
        }
        let next = try reloadConfig()
        var fixed: [String] = []
        if next.host != config.host || next.port != config.port { fixed.append("server.host/port") }
        if next.dataDir != config.dataDir { fixed.append("server.data_dir") }
        var table: [String] = []
        if next.tableDimension != config.tableDimension { table.append("table.dimension \(config.tableDimension) -> \(next.tableDimension)") }
        if next.tableSeed != config.tableSeed { table.append("table.seed \(config.tableSeed) -> \(next.tableSeed)") }
        if !table.isEmpty {
            throw ProtocolError(.invalidArgument, "the new config changes \(table.joined(separator: ", ")), which shapes the stored model: it cannot change on this data directory, not even by a restart (keep the old value, or serve from a new data directory and send it the events again); nothing was changed")
        }
        // Removing a scorer drops its learned state from the served model;
        // a kept version holding it lets an operator who did so by mistake
        // roll back. With none (no snapshot since the scorer came), the
        // state would be lost for good, which a restart refuses too
        // (review finding, helper-60): a snapshot first keeps it.
        let removing = model.scorerNames.filter { name in !next.scorers.contains { $0.name == name } }
        if !removing.isEmpty && model.lastSeq > 0 {
            if newestVersionHolding(removing) == nil {
                throw ProtocolError(.invalidArgument, "the new config removes \(removing.joined(separator: ", ")), whose learned state no kept version holds (none since it was loaded but a RELOAD's own, which the next version replaces): the RELOAD would lose it for good; nothing was changed. Take a snapshot first (perennial admin snapshot), which keeps it in a version you can roll back to, then RELOAD again")
            }
        }
        if next.fsync != config.fsync || next.logSegmentBytes != config.logSegmentBytes { fixed.append("[log]") }
        if next.learnerQueueCapacity != config.learnerQueueCapacity { fixed.append("learner.queue_capacity") }
        if next.historyPerUser != config.historyPerUser { fixed.append("history.max_items_per_user") }
        if next.maxSessions != config.maxSessions || next.sessionItems != config.sessionItems
            || next.sessionIdleSeconds != config.sessionIdleSeconds { fixed.append("[sessions]") }
        if next.limits.maxTextBytes != config.limits.maxTextBytes { fixed.append("limits.max_text_bytes") }
        if next.lifelong != config.lifelong { fixed.append("[lifelong]") }
        if next.feedbackWeights != config.feedbackWeights { fixed.append("[feedback]") }
        if !fixed.isEmpty {
            throw ProtocolError(.invalidArgument, "the new config changes \(fixed.joined(separator: ", ")), which need a restart; nothing was changed")
        }
        return next
    }

    /// The newest kept version whose description lists every one of these
    /// scorers (it holds their learned state). Not a version a RELOAD took
    /// for itself: the RELOAD that removes them takes a newer one, which
    /// prunes it (review finding, helper-71: the log line named such a
    /// version, gone 8 ms later, and the state was lost for good).
    private func newestVersionHolding(_ scorers: [String]) -> SnapshotFile? {
        snapshots.store.files().first { file in
            let meta = snapshots.store.metadata(of: file)
            guard !SnapshotStore.isReloadOnly(meta) else { return false }
            return (meta["scorers"] as? [String]).map { s in scorers.allSatisfy(s.contains) } ?? false
        }
    }

    /// Takes a checked config (the learner idle, no snapshot thread
    /// reading the model); returns what changed.
    private func applyReload(_ next: PerennialConfig) throws -> [String] {
        assert(model.learnerIdle && !snapshots.serialising)
        let reconfigured = try model.reconfigure(next)
        let changes = reconfigured.changes
        // What else changed, for the log line (operators read it to confirm).
        var also: [String] = []
        if next.routes != config.routes { also.append("[routes]") }
        if next.limits != config.limits {
            // A lowered bound applies to new ids only: say so when it is already reached.
            also += ["[limits]"] + model.boundsReached(maxUserIDs: next.limits.maxUserIDs, maxItemIDs: next.limits.maxItemIDs)
        }
        for (key, was, now, off, on) in [
            ("auth.token_file", config.clientTokens, next.clientTokens, "clients need no token", "clients need HELLO with one of its tokens"),
            ("auth.admin_token_file", config.adminTokens, next.adminTokens, "admin requests need no token", "admin requests need HELLO with one of its tokens"),
        ] where was != now {
            also.append("\(key) " + (was == nil ? "on: \(on)" : now == nil ? "off: \(off)" : tokenChange(was!, now!)))
        }
        if next.allowShutdown != config.allowShutdown { also.append("server.allow_shutdown = \(next.allowShutdown)") }
        if next.recommendBatch != config.recommendBatch || next.recommendBatchWaitMicros != config.recommendBatchWaitMicros {
            also.append("[server] recommend batching")
        }
        if next.busyPollMicros != config.busyPollMicros { also.append("server.busy_poll_us = \(next.busyPollMicros)") }
        if next.serveWhileRecovering != config.serveWhileRecovering {
            also.append("server.serve_while_recovering = \(next.serveWhileRecovering) (from the next start)")
        }
        if next.historyExcludedKinds != config.historyExcludedKinds {
            let kinds = FeedbackKind.allCases.filter { next.historyExcludedKinds & KindMask.of($0) != 0 }.map(\.name)
            also.append("history.exclude_kinds = [\(kinds.joined(separator: ", "))]")
        }
        if next.learnerMaxLagSeconds != config.learnerMaxLagSeconds { also.append("learner.max_lag_seconds = \(next.learnerMaxLagSeconds)") }
        if next.snapshotEveryEvents != config.snapshotEveryEvents || next.snapshotKeep != config.snapshotKeep
            || next.snapshotRecoverySeconds != config.snapshotRecoverySeconds
            || next.snapshotEverySeconds != config.snapshotEverySeconds { also.append("[snapshot]") }
        config = next
        protocolLimits = ProtocolLimits(maxFrameBytes: next.limits.maxFrameBytes, maxItems: next.limits.maxItems,
                                        maxEvents: next.limits.maxEvents)
        stats.reloads += 1
        // A snapshot soon ties the new scorer set to a log position, so a
        // restart with this config never needs state from before it. The
        // loop starts it at the end of this turn, or once one still being
        // written is done (never waiting for it here), and it is written
        // off the loop like an automatic one. (An adjustment in place or a
        // new default changes no saved state: no snapshot, no version.)
        if reconfigured.scorerSetChanged {
            // (What an event costs the learner changed: its queue allowance
            // starts again from one batch until the new cost is measured.)
            learner.forgetCost()
            snapshots.reloadChangedScorers(changes)
        }
        // A removed scorer's learned state is not carried on: say where it
        // still is (an operator who removed it by mistake can roll back).
        let removed = reconfigured.removed
        if !removed.isEmpty {
            let kept = newestVersionHolding(removed)
            also.append("the learned state of \(removed.joined(separator: ", ")) is dropped from the served model; "
                + (kept.map { "version \($0.id) still holds it (serve --from-version \($0.id) while it is kept)" } ?? "no kept version holds it"))
        }
        let said = changes + also
        Log.info("config reloaded from \(next.source): " + (said.isEmpty ? "nothing changed" : said.joined(separator: "; ")))
        return changes
    }

    /// A graceful stop saves the live sessions (SessionFile); the next
    /// start puts them back (`restoreSessions`).
    func saveSessions() {
        guard sessions.count > 0 else { return }
        let path = SessionFile.path(dataDir: config.dataDir)
        do {
            try SessionFile.save(sessions, now: Double(MonotonicClock.nowMillis()) / 1000, to: path)
        } catch {
            Log.warning("the \(sessions.count) sessions are not saved (\(error)): the next start begins them afresh")
        }
    }

    func restoreSessions() {
        // (No file this config could have written is larger than its bounds allow.)
        let most = 16 + max(config.maxSessions, 1) * (2 + RecommendRequest.maxSessionIDBytes + 12 + 8 * config.sessionItems) + 4
        let kept = SessionFile.restore(into: sessions, now: Double(MonotonicClock.nowMillis()) / 1000,
                                       from: SessionFile.path(dataDir: config.dataDir), maxBytes: max(most, 1 << 20))
        if kept > 0 { Log.info("\(kept) sessions kept from the last graceful stop") }
    }

    /// Wakes the loop from another thread (set by the loop once bound):
    /// a snapshot's thread once it has serialised the model, and the last
    /// parked RELOAD going, so the FEEDBACK that waited goes on.
    var wakeLoop: @Sendable () -> Void = {} {
        didSet { snapshots.wakeLoop = wakeLoop }
    }

    /// Connections whose FEEDBACK found the learner queue full, oldest
    /// first: the first is let in before any other batch.
    private var roomLine: [ObjectIdentifier] = []

    /// A connection is no longer waiting in line (let in, refused, gone).
    func leaveRoomLine(_ owner: ObjectIdentifier) {
        if let i = roomLine.firstIndex(of: owner) { roomLine.remove(at: i) }
    }

    /// Connections whose RELOAD, DELETE_ITEMS or DELETE_USERS waits for the learner to
    /// apply what was accepted: FEEDBACK waits until none is left.
    private var idleWaiters: Set<ObjectIdentifier> = []

    /// A connection closed: it holds no place in line and no RELOAD or
    /// deletion waits for it. (A parked connection reads nothing, so this is
    /// the server closing it, at a stop say; a client that hangs up behind
    /// its parked request is seen once the request has run.)
    func connectionGone(_ owner: ObjectIdentifier) { releaseWaits(owner) }

    /// The connection no longer waits for queue room or with a RELOAD or
    /// deletion (when the last such request goes, parked FEEDBACK is tried
    /// again).
    private func releaseWaits(_ owner: ObjectIdentifier) {
        leaveRoomLine(owner)
        if idleWaiters.remove(owner) != nil && idleWaiters.isEmpty { wakeLoop() }
    }

    /// The events the learner queue may hold: its capacity, or fewer when
    /// the learner is slow, at most `learner.max_lag_seconds` of its recent
    /// work (never less than one batch of max_events, which must fit). So
    /// accepted feedback is learned within about that long; a read waiting
    /// for its own connection's feedback, and FEEDBACK while a SNAPSHOT
    /// request lets the learner catch up, wait at most about as long (an
    /// automatic snapshot tapers the room instead: SnapshotScheduler.SnapshotTaper, which
    /// puts the snapshot off by up to twice that). Until the learner's cost
    /// is known (its first chunk), one batch.
    var queueAllowance: Int { allowance(nanosPerEvent: learner.nanosPerEvent) }

    /// Events the learner may be given ahead of what it has learned: the
    /// queue's capacity, or learner.max_lag_seconds of work at its cost
    /// per event (never less than one batch).
    private func allowance(nanosPerEvent ns: Double?) -> Int {
        guard config.learnerMaxLagSeconds > 0 else { return learner.capacity }
        guard let ns else { return min(learner.capacity, config.limits.maxEvents) }
        let byLag = Int(min(Double(learner.capacity), config.learnerMaxLagSeconds * 1e9 / max(ns, 1)))
        return min(learner.capacity, max(config.limits.maxEvents, byLag))
    }

    /// Events FEEDBACK may add to a replay while serving, all told: what
    /// the learner's queue would allow at the replay's own pace.
    private func replayBudget(_ r: LogRecovery) -> Int { allowance(nanosPerEvent: r.nanosPerEvent) }

    /// Under `always`: fsyncs the log before acknowledgements leave. False
    /// when that failed (the caller must not send them).
    func syncLogIfNeeded() -> Bool {
        guard needsSync else { return true }
        do {
            try log.sync()
            needsSync = false
            return true
        } catch {
            // The connections holding this iteration's acks are closed by the
            // caller; later appends fail (the log's failure is sticky), so
            // reads keep being served without waiting on a sync. (The log
            // logged the failure.)
            needsSync = false
            return false
        }
    }

    /// The last sequence accepted: during a replay the log's last, though
    /// the model has not admitted it yet.
    private var acceptedSeq: UInt64 { recovery?.targetSeq ?? model.lastSeq }

    /// The server's clock (Unix seconds, for timestamps of 0), after
    /// refusing a batch with a timestamp too far ahead of it.
    private func checkedClock(for events: [WireEvent]) throws(ProtocolError) -> Int64 {
        let now = MonotonicClock.unixSeconds()
        let (ahead, rule) = allowedFutureSeconds
        if let i = events.firstIndex(where: { $0.timestamp > now + Int64(ahead) }) {
            throw ProtocolError(.invalidEvent, "event \(i): timestamp \(events[i].timestamp) is \(events[i].timestamp - now) s ahead of the server's clock (at most \(ahead) s: \(rule); timestamps are Unix seconds, 0 = now); no event of this batch was accepted", detail: UInt32(i))
        }
        return now
    }

    /// FEEDBACK while the log replays (LogRecovery): numbered after the
    /// log's last event, logged, acknowledged, and replayed after the rest
    /// of the log. Up to `replayBudget` events in all are accepted during
    /// one replay, so it always ends however fast clients send; past that,
    /// and when an id bound might be passed (checked against the ids the
    /// model will hold once the replay ends: IdsAhead), FEEDBACK waits for
    /// the end like the other writes (the connection parked, then
    /// RECOVERING). (Once the budget is used up, a held batch waits for the
    /// end, not for room, so no other connection's later batch can keep
    /// passing it, helper-69.)
    private func acceptDuringReplay(_ events: [WireEvent], recovery r: LogRecovery, state: inout ConnectionState,
                                    requestID: UInt32, out: inout [UInt8]) throws(ProtocolError) -> FrameOutcome {
        // (While a connection's write waits, the connection is not read:
        // this is that write. Once one was refused, every later write of
        // the connection is refused for the rest of the replay, so its
        // batches stay in order.)
        if state.recoveryWaitDeadline != 0 && MonotonicClock.nowMillis() >= state.recoveryWaitDeadline {
            // (Said first: the general message's "FEEDBACK accepted
            // meanwhile" read as if this one should have been: review
            // finding, helper-94.)
            throw recoveringError(because: "this connection had a write refused RECOVERING during this replay, so its later writes, this FEEDBACK too, are refused until the replay ends (they stay in order after it)")
        }
        try resolveIncoming(events)
        let roomy = r.acceptedTotal + events.count <= replayBudget(r)
        let projected = r.ids.projected(with: events, model: model)
        let fits = model.boundsAdmit(users: projected.users, items: projected.items,
                                     maxUserIDs: config.limits.maxUserIDs, maxItemIDs: config.limits.maxItemIDs)
        guard roomy && fits else {
            // (Before the replay has a pace its budget is one batch: tried
            // again once it has one, helper-70; else at the end.)
            let paced = r.startSeq + LogRecovery.eventsForAPace
            return try holdForReplay(until: r.nanosPerEvent == nil && fits ? min(r.targetSeq, paced) : r.targetSeq, state: &state)
        }
        state.recoveryWaitDeadline = 0
        let first = r.targetSeq + 1
        try logIncoming(firstSeq: first)
        r.accept(.feedback(firstSeq: first, events: incoming))
        acknowledgeIncoming(firstSeq: first, state: &state, requestID: requestID, out: &out)
        return .done
    }

    /// A write during the replay waits (its connection parked, the frame
    /// unread) until `seq` is applied, up to limits.wait_ms from the first
    /// time the connection waited, and is then refused RECOVERING.
    private func holdForReplay(until seq: UInt64, state: inout ConnectionState) throws(ProtocolError) -> FrameOutcome {
        let now = MonotonicClock.nowMillis()
        if state.recoveryWaitDeadline == 0 { state.recoveryWaitDeadline = now + UInt64(config.limits.waitMs) }
        guard now < state.recoveryWaitDeadline else { throw recoveringError() }
        return .waitForApplied(seq: seq, deadline: state.recoveryWaitDeadline)
    }

    /// A FEEDBACK's events as they are logged, into `incoming`: timestamps
    /// of 0 become the server's clock (so a replay is exact), after a batch
    /// with one too far ahead of it is refused. Returns the clock.
    @discardableResult
    private func resolveIncoming(_ events: [WireEvent]) throws(ProtocolError) -> Int64 {
        let now = try checkedClock(for: events)
        incoming.removeAll(keepingCapacity: true)
        for e in events {
            incoming.append(IncomingEvent(user: e.user, item: e.item, kind: FeedbackKind(rawValue: e.kind.rawValue)!,
                                          value: e.value, timestamp: e.timestamp == 0 ? now : e.timestamp))
        }
        return now
    }

    /// Appends `incoming` to the log, numbered from `firstSeq`; a batch the
    /// log refused is not accepted (STORAGE).
    private func logIncoming(firstSeq: UInt64) throws(ProtocolError) {
        do {
            try log.append(.feedback(firstSeq: firstSeq, events: incoming), lastSeq: firstSeq + UInt64(incoming.count) - 1)
        } catch {
            stats.storageRefusals.note("FEEDBACK refused with STORAGE: \(error); STATS storage_refusals counts them")
            throw ProtocolError(.storage, "feedback not accepted: \(error)")
        }
        if log.policy == .always { needsSync = true }
    }

    /// The acknowledgement of `incoming`, accepted from `firstSeq` on (and
    /// what shadow comparisons and read-your-writes keep of it).
    private func acknowledgeIncoming(firstSeq: UInt64, state: inout ConnectionState, requestID: UInt32, out: inout [UInt8]) {
        if !shadows.isEmpty {
            for e in incoming { shadows.observe(user: e.user, item: e.item, kind: e.kind, value: e.value, weights: model.feedbackWeights) }
        }
        stats.feedbackBatches += 1
        let last = firstSeq + UInt64(incoming.count) - 1
        state.lastFeedbackSeq = last
        state.unapplied.append((last, incoming.count))
        // Under `always` the log is fsynced before this reply is sent.
        let durable = log.policy == .always ? last : log.durableSeq
        Reply.feedback(FeedbackAck(firstSeq: firstSeq, lastSeq: last, durableSeq: durable, appliedSeq: model.appliedSeq))
            .encode(into: &out, requestID: requestID)
    }

    /// The refusal of a write while the log is replayed; `detail` is the
    /// replay's estimated milliseconds left (0: not known yet).
    private func recoveringError(because reason: String? = nil) -> ProtocolError {
        guard let r = recovery else {
            return ProtocolError(.recovering, "replaying the log failed and the server is stopping (see its log); nothing of this request was accepted")
        }
        let left = r.estimatedMillisLeft
        let done = r.totalEvents == 0 ? 100 : 100 * r.replayedEvents / r.totalEvents
        return ProtocolError(.recovering, "\(reason.map { "\($0). " } ?? "")the server is replaying its log after a restart (at sequence \(model.appliedSeq) of \(r.targetSeq), \(done)% done\(left.map { ", about \($0) ms left" } ?? "")); reads are answered and FEEDBACK accepted meanwhile, up to \(replayBudget(r)) events in all (what the learner's queue would hold: learner.queue_capacity, max_lag_seconds) and within the id bounds; other writes, and FEEDBACK past that, wait for the end: a connection's first up to limits.wait_ms = \(config.limits.waitMs) ms, later ones not. This one was not accepted: send it again (STATS recovering = 0 once the replay is done)",
                             detail: UInt32(min(left ?? 0, UInt64(UInt32.max))))
    }

    /// Decides whether a read must wait for the learner: until the later of
    /// the request's `min_applied_seq` and this connection's last feedback.
    private func readYourWrites(_ minApplied: UInt64, state: inout ConnectionState) throws(ProtocolError) -> FrameOutcome? {
        // (While the log is replayed, its last sequence was accepted
        // before the restart, or during the replay: a read asking for it
        // waits like any other.)
        let accepted = acceptedSeq
        if minApplied > accepted {
            throw ProtocolError(.invalidArgument,
                                "min_applied_seq \(minApplied) is above the highest accepted sequence \(accepted)")
        }
        // During the replay a read does not wait for its connection's own
        // FEEDBACK (replayed after the rest of the log, maybe many seconds
        // on): its events are already excluded and read as the user's
        // latest items (Model.unreplayed). min_applied_seq still waits.
        let needed = recovery == nil ? max(minApplied, state.lastFeedbackSeq) : minApplied
        guard model.appliedSeq < needed else { return nil }
        let now = MonotonicClock.nowMillis()
        if state.waitDeadline == 0 { state.waitDeadline = now + UInt64(config.limits.waitMs) }
        if now >= state.waitDeadline {
            let whose = needed == minApplied ? "min_applied_seq \(needed)" : "sequence \(needed) (this connection's last acknowledged FEEDBACK, which a read on the same connection always waits for)"
            let learner = recovery == nil ? "the learner" : "the replay of the log after a restart"
            throw ProtocolError(.timeout, "\(learner) did not apply \(whose) within limits.wait_ms = \(config.limits.waitMs) ms: it has applied \(model.appliedSeq), \(needed - model.appliedSeq) behind; a read on another connection answers at once from what is learned so far (unless it asks for min_applied_seq)")
        }
        return .waitForApplied(seq: needed, deadline: state.waitDeadline)
    }

    func counters() -> [StatCounter] {
        var c: [StatCounter] = [
            StatCounter("connections", UInt64(stats.connections)),
            StatCounter("connections_total", stats.connectionsTotal),
            StatCounter("connection_buffer_bytes", UInt64(connectionBufferBytes())),
            StatCounter("connections_rejected", stats.connectionsRejected),
            StatCounter("requests_total", stats.requestsTotal),
            StatCounter("errors_total", stats.errorsTotal),
            StatCounter("fatal_errors", stats.fatalErrors),
            StatCounter("timeouts", stats.timeouts),
            StatCounter("auth_failures", stats.authFailures),
            StatCounter("snapshots", snapshots.completed),
            StatCounter("snapshot_failures", snapshots.failures),
            StatCounter("snapshots_put_off", snapshots.putOff.count),
            StatCounter("storage_refusals", stats.storageRefusals.count),
            StatCounter("log_failed", log.failed ? 1 : 0),
            StatCounter("disk_free_bytes", snapshots.freeBytes() ?? 0),
            StatCounter("reloads", stats.reloads),
            StatCounter("last_snapshot_seq", snapshots.lastSnapshotSeq),
            StatCounter("bytes_in", stats.bytesIn),
            StatCounter("bytes_out", stats.bytesOut),
            StatCounter("recommends", stats.recommends),
            StatCounter("recommend_batches", stats.recommendBatches),
            StatCounter("recommend_batch_waits", stats.recommendBatchWaits),
            StatCounter("recommends_batched", stats.recommendsBatched),
            StatCounter("feedback_batches", stats.feedbackBatches),
            StatCounter("events_accepted", acceptedSeq),
            StatCounter("events_durable", log.durableSeq),
            StatCounter("events_applied", model.appliedSeq),
            StatCounter("learner_queue", UInt64(learner.queued)),
            StatCounter("learner_jobs_pending", UInt64(model.learnerJobsPending)),
            StatCounter("learner_ns_per_event", UInt64(learner.nanosPerEvent ?? 0)),
            StatCounter("recovery_estimate_ms", UInt64(snapshots.recoveryEstimateNanos / 1e6)),
            StatCounter("learner_queue_capacity", UInt64(learner.capacity)),
            StatCounter("learner_queue_allowance", UInt64(queueAllowance)),
            StatCounter("backpressure_pauses", stats.backpressurePauses),
            StatCounter("inbox_budget_refusals", stats.inboxBudgetRefusals),
            StatCounter("queue_full_pauses", stats.queueFullPauses),
            StatCounter("snapshot_tapers", snapshots.tapers),
            StatCounter("item_sweep_waits", stats.sweepWaits),
            StatCounter("items_deleted", stats.itemsDeleted),
            StatCounter("users_deleted", stats.usersDeleted),
            StatCounter("capacity_refusals", stats.capacityRefusals),
            StatCounter("uptime_ms", MonotonicClock.nowMillis() - startedAt),
            StatCounter("recovering", recovery != nil ? 1 : 0),
            StatCounter("recovery_events_left", recovery.map { UInt64(max(0, $0.totalEvents - $0.replayedEvents)) } ?? 0),
            StatCounter("sessions", UInt64(sessions.count)),
            StatCounter("session_items", UInt64(sessions.storedItems)),
            StatCounter("sessions_evicted", sessions.evicted),
            StatCounter("sessions_expired", sessions.expired),
        ]
        for (name, v) in model.counters { c.append(StatCounter(name, v)) }
        for (name, v) in shadows.counters { c.append(StatCounter(name, v)) }
        return c
    }
}

extension RequestHandler {
    /// What `token` proves under the current token files (nil: nothing).
    func role(proved token: String) -> ConnectionState.Role? {
        if let admin = config.adminTokens, anyEqual(token, admin) { return .admin }
        if let client = config.clientTokens, anyEqual(token, client) { return .client }
        return nil
    }
}

/// Whether `token` (from a HELLO) is one of `tokens` (a token file's). Every
/// token of the list is compared, each in time that depends only on its own
/// length, not on where the two first differ nor on the HELLO's length (up
/// to 65,535 bytes, sent before any authentication): the time says nothing
/// of which token of the list matched, and a long HELLO costs no more than
/// a short one.
func anyEqual(_ token: String, _ tokens: [String]) -> Bool {
    let x = Array(token.utf8)
    var hit = false
    for t in tokens {
        var diff = UInt8(0)
        var n = 0
        for b in t.utf8 {
            diff |= (n < x.count ? x[n] : 0) ^ b
            n += 1
        }
        hit = (diff == 0 && x.count == n) || hit
    }
    return hit
}

/// A RELOAD's note on a token file's new list: how many tokens were added
/// and removed (connections that sent a removed one lose their access).
func tokenChange(_ old: [String], _ new: [String]) -> String {
    let before = Set(old), after = Set(new)
    let added = after.subtracting(before).count, removed = before.subtracting(after).count
    var parts: [String] = []
    if added > 0 { parts.append("\(added) token\(added == 1 ? "" : "s") added") }
    if removed > 0 { parts.append("\(removed) removed (connections that sent \(removed == 1 ? "it" : "them") lose their access at their next request)") }
    return parts.isEmpty ? "the same tokens, reordered" : parts.joined(separator: ", ")
}

public enum PerennialVersion {
    public static let string = "0.1.0"
}

/// glibc's malloc_trim(3): returns free heap pages to the OS. Not exported
/// by the Glibc module, so declared here by its C name.
@_silgen_name("malloc_trim")
func malloc_trim(_ pad: Int) -> Int32

/// glibc's mallopt(3), declared by its C name for the same reason.
@_silgen_name("mallopt")
func mallopt(_ parameter: Int32, _ value: Int32) -> Int32
