// The server as a value users and tests hold: build it from a config, run it
// on the calling thread (`perennial serve`) or on a thread of its own
// (tests), stop it from anywhere.

import CLibUV
import Foundation
import PerennialCore
import PerennialPlugins
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public final class Server: Sendable {
    public let config: PerennialConfig
    /// Start from this model version (`v<seq>`) rather than the newest.
    public let startVersion: String?
    /// Scorers whose learned state start-up may drop when the config no
    /// longer loads them (`serve --drop-scorer`); others are refused.
    public let dropScorers: Set<String>
    private let reloadConfig: (@Sendable () throws -> PerennialConfig)?
    private let state: Mutex<State>
    private let started = DispatchSemaphore(value: 0)
    private let ended = DispatchSemaphore(value: 0)
    /// Signalled once the log is replayed (at once when there was none to
    /// replay before listening), or when the server ends before that.
    private let recovered = DispatchSemaphore(value: 0)
    /// For tests: while true, a replay while serving waits where it is (the
    /// loop goes on serving), so a test sees the server mid-replay however
    /// fast or slow the machine is.
    let replayHeld = Atomic<Bool>(false)

    struct State {
        var port = 0
        var waker: EventLoopWaker?
        var running = false
        var startError: String?
        /// A replay while serving that failed: the server stopped, and
        /// `run` throws this.
        var recoveryError: String?
        /// What replaying the log at start-up cost (ns, events): the
        /// learner's first estimate of its cost, before it measures its own.
        var replayCost: (nanos: UInt64, events: UInt64)?
    }

    /// `reloadConfig` reads the config anew for RELOAD and SIGHUP (nil: the
    /// server has no file to reload).
    public init(config: PerennialConfig, startVersion: String? = nil, dropScorers: Set<String> = [],
                reloadConfig: (@Sendable () throws -> PerennialConfig)? = nil) {
        self.config = config
        self.startVersion = startVersion
        self.dropScorers = dropScorers
        self.reloadConfig = reloadConfig
        state = Mutex(State())
    }

    /// Runs the server on the calling thread until it stops (SIGINT/SIGTERM,
    /// SHUTDOWN or `stop()`). `onListening` gets the bound port.
    public func run(handleSignals: Bool = true, onListening: (Int) -> Void = { _ in }) throws {
        raiseOpenFileLimit(for: config.limits.maxConnections)
        // Large buffers (snapshots, reply buffers of busy connections) are
        // mmapped and so returned to the OS when freed. glibc otherwise
        // raises this threshold as such buffers come and go, and keeps their
        // memory in the heap, so resident memory creeps up over a long run.
        _ = mallopt(-3 /* M_MMAP_THRESHOLD */, 1 << 20)
        // Every way out of here signals `started` and `ended` (a caller of
        // `start()` waits on them) after the data directory's lock is
        // released, so a server started on the same directory as soon as
        // `stop()` returns can take it.
        let dataLock: Int32
        do {
            // The address first, so a mistyped port or address fails the
            // start before the data directory is made (review finding,
            // helper-76: it left ./data behind; deleting it afterwards, the
            // first fix, could delete another server's directory: helper-80,
            // helper-82). A port taken between this probe and the bind still
            // fails the start later, leaving the directory, as before.
            if EventLoop.probesBeforeStart.load(ordering: .relaxed) {
                try EventLoop.probeListenAddress(host: config.host, port: config.port)
            }
            dataLock = try prepareDataDirectory()
        } catch {
            throw failedStart(error)
        }
        let log = FeedbackLog(directory: (config.dataDir as NSString).appendingPathComponent("log"),
                              policy: config.fsync, segmentBytes: config.logSegmentBytes)
        let snapshots = SnapshotStore(directory: (config.dataDir as NSString).appendingPathComponent("snapshots"))
        snapshots.removeTemporaryFiles()
        let model: Model
        var recoveredSnapshotSeq: UInt64 = 0
        var rollback: [String: Any]?
        // The log to replay once the port is open (server.serve_while_recovering).
        var pending: PendingReplay?
        // (A rollback, or a scorer dropped as asked, writes a new version
        // before the port opens: of the whole model, so it replays first.)
        let replayWhileServing = config.serveWhileRecovering && dropScorers.isEmpty
        do {
            let (recovered, firstSegment, snapshotSeq): (Model, Int, UInt64)
            if let startVersion, let done = rollbackAlreadyTaken(to: startVersion, snapshots: snapshots) {
                // (A flag left in a service unit must not throw away, on every
                // start, what was learned since the rollback.)
                Log.warning("--from-version \(startVersion): version \(done) already records that rollback, so this start recovers the newest version with everything learned since; remove --from-version (to roll back to the same model again: --from-version \(done))")
                (recovered, firstSegment, snapshotSeq, pending) = try recover(log: log, snapshots: snapshots, whileServing: replayWhileServing)
            } else if let startVersion {
                (recovered, firstSegment, snapshotSeq, rollback) = try rollBack(to: startVersion, log: log, snapshots: snapshots)
            } else {
                (recovered, firstSegment, snapshotSeq, pending) = try recover(log: log, snapshots: snapshots, whileServing: replayWhileServing)
            }
            model = recovered
            recoveredSnapshotSeq = snapshotSeq
            // (With a replay to come, FEEDBACK accepted meanwhile is
            // numbered after the log's last event, the replay's target.)
            try log.openForAppend(lastSeq: pending?.lastSeq ?? model.lastSeq, atLeastSegment: firstSegment)
        } catch {
            Glibc.close(dataLock)
            throw failedStart(error)
        }
        // The learner reports progress through the loop's async handle, which
        // exists only once the loop is bound; until then it has nothing to report.
        let wakerBox = Mutex<EventLoopWaker?>(nil)
        let learner = Learner(model: model, capacity: config.learnerQueueCapacity) { _ in
            wakerBox.withLock { $0 }?.progressed()
        }
        let handler = RequestHandler(config: config, model: model, learner: learner, log: log, snapshots: snapshots,
                                     lastSnapshotSeq: recoveredSnapshotSeq, reloadConfig: reloadConfig)
        let loop = EventLoop(handler: handler)
        let port: Int
        do {
            // A rollback is made permanent at once: a new version holding
            // the old model at the log's end, so a restart starts from it.
            // So is a scorer dropped as asked (--drop-scorer): without a new
            // version the newest would still hold it, and the next start
            // without the flag would be refused again.
            var note = rollback ?? [:]
            if !model.droppedAtRestore.isEmpty { note["dropped_scorers"] = model.droppedAtRestore }
            for name in dropScorers.sorted() where !model.droppedAtRestore.contains(name) {
                Log.warning("--drop-scorer \(name): nothing to drop (the snapshot holds no state of \(name) that this config leaves out); remove the flag, or a later config that leaves \(name) out would drop its state without asking")
            }
            if !note.isEmpty { _ = try handler.snapshots.take(note: note, distinct: true) }
            // (On this thread, which then serves, before the learner starts.)
            model.warmUp()
            port = try loop.bind(host: config.host, port: config.port, handleSignals: handleSignals)
            // (Once listening: a start that fails before this leaves the
            // sessions a graceful stop saved for the next try; helper-75.)
            handler.restoreSessions()
        } catch {
            log.close()
            Glibc.close(dataLock)
            throw failedStart(error)
        }
        wakerBox.withLock { $0 = loop.waker }
        // (A snapshot's thread wakes the loop up to its last step; the loop
        // closes its handles only after waiting for that thread to end, in
        // `SnapshotScheduler.finishInFlight`, collected or not.)
        handler.wakeLoop = { [waker = loop.waker] in waker.progressed() }
        // What follows the replay of the log: the reads' view of the log
        // still to come dropped, the learner started with the replay's
        // cost as its first estimate.
        let config = config
        let goLive: (_ replayed: (nanos: UInt64, events: Int)?) throws -> Void = { [self] replayed in
            if let replayed {
                model.unreplayed = nil
                state.withLock { $0.replayCost = (replayed.nanos, UInt64(replayed.events)) }
            }
            // (Replay ran the same code as the learner: its cost is the first
            // estimate, so the queue allowance and the recovery estimate are
            // right from the start rather than after the first chunk.)
            if let cost = state.withLock({ $0.replayCost }) { learner.seedCost(nanos: cost.nanos, events: cost.events) }
            // Forgetting items (DELETE_ITEMS, expiry) hands the scorers'
            // table purges to the learner from now on, rather than hold
            // every connection while they run (review finding: 0.19-0.33 s
            // at a million items). During the replay they ran at once.
            // (Weak: the learner holds the model.)
            model.learnerJobs = { [weak learner] job in
                if let learner { learner.enqueue(job) } else { job.run() }
            }
            learner.start()
            // Recovery replays the log whatever the bounds; a lowered bound
            // only stops new ids from now on.
            for full in model.boundsReached(maxUserIDs: config.limits.maxUserIDs, maxItemIDs: config.limits.maxItemIDs) {
                Log.warning(full)
            }
            recovered.signal()
        }
        state.withLock {
            $0.port = port
            $0.waker = loop.waker
            $0.running = true
        }
        Log.info("perennial \(PerennialVersion.string) listening on \(config.host):\(port) (scorers: \(model.scorerNames.joined(separator: ", ")); default \(model.defaultScorer); config \(config.source))")
        if let pending {
            Log.info("replaying \(pending.events) events (\(pending.records) records) from the log while serving: reads are answered from the model as the replay catches up, FEEDBACK is accepted and replayed after the log, other writes wait for the end (up to limits.wait_ms, then RECOVERING) (server.serve_while_recovering)")
            handler.recovery = LogRecovery(model: model, reader: pending.reader, targetSeq: pending.lastSeq,
                                           records: pending.records, totalEvents: pending.events, ids: pending.ids) { r in
                // (What this throws reaches `failed` below, and stops the server.)
                try goLive((r.replayingNanos, r.replayedEvents))
                Log.info(String(format: "recovered: %llu events in all, %ld records (%ld events) replayed from %ld log segment(s) and %ld events accepted meanwhile, in %.2f s while serving (%.2f s of it replaying)",
                                model.lastSeq, r.report.records, r.replayedEvents - (r.totalEvents - pending.events), r.report.segments,
                                r.totalEvents - pending.events,
                                Double(r.elapsedNanos) / 1e9, Double(r.replayingNanos) / 1e9))
            } failed: { [self] error in
                state.withLock { $0.recoveryError = "\(error)" }
            }
            loop.recoveryHeld = { [self] in replayHeld.load(ordering: .relaxed) }
            loop.startRecovery()
        } else {
            do { try goLive(nil) } catch {
                // (Nothing there throws without a replay to finish.)
                Log.error("\(error)")
            }
        }
        onListening(port)
        started.signal()
        loop.run()
        recovered.signal()
        // The learner was stopped (and drained) before the loop's handles closed.
        log.close()
        Glibc.close(dataLock)
        state.withLock {
            $0.running = false
            $0.waker = nil
        }
        wakerBox.withLock { $0 = nil }
        // The loop's handles (and the loop, which `deinit` closes) must
        // outlive the wakers other threads can still reach until the two
        // lines above: Swift may end a local's lifetime after its last use.
        withExtendedLifetime(loop) {}
        Log.info("stopped after \(handler.stats.requestsTotal) requests; \(model.appliedSeq) events applied")
        let recoveryError = state.withLock { $0.recoveryError }
        ended.signal()
        if let recoveryError { throw ServerError("replaying the log failed, so the server stopped: \(recoveryError)") }
    }

    /// Starts the server on a new thread and returns its port once it
    /// listens and, with `waitForRecovery`, once it has replayed its log
    /// (with server.serve_while_recovering it listens before that).
    public func start(waitForRecovery: Bool = true) throws -> Int {
        let t = Thread { [self] in
            do { try run(handleSignals: false) } catch { Log.error("\(error)") }
        }
        t.name = "perennial-loop"
        t.start()
        started.wait()
        if let e = state.withLock({ $0.startError }) { throw ServerError(e) }
        if waitForRecovery { recovered.wait(); recovered.signal() }
        return state.withLock { $0.port }
    }


    /// Asks the server to stop gracefully and waits until it has.
    public func stop() {
        let shouldWait = state.withLock { s -> Bool in
            guard s.running, let w = s.waker else { return false }
            w.requestStop()
            return true
        }
        if shouldWait { ended.wait(); ended.signal() }
    }

    public var port: Int { state.withLock { $0.port } }

    /// Creates the data directory and takes its lock, so two servers never
    /// append to one log. Returns the lock's descriptor (held until exit).
    private func prepareDataDirectory() throws -> Int32 {
        do {
            try FileManager.default.createDirectory(atPath: config.dataDir, withIntermediateDirectories: true)
        } catch {
            throw ServerError("cannot create the data directory \(config.dataDir): \(error.localizedDescription)")
        }
        do {
            return try DataDirectoryLock.take(config.dataDir)
        } catch {
            throw ServerError("\(error)")
        }
    }

    /// A start that failed: says why to a caller of `start()` and wakes
    /// everything that waits on the start (after the lock is released);
    /// returns the error to throw.
    private func failedStart(_ error: any Error) -> any Error {
        state.withLock { $0.startError = "\(error)" }
        started.signal()
        recovered.signal()
        ended.signal()
        return error
    }

    /// Start-up: the newest valid snapshot (an older one if the newest is
    /// damaged), then the write-ahead log after it, replayed through the
    /// model in order with a progress line; a torn tail of the log is cut,
    /// damage elsewhere stops start-up. Returns the model and the first log
    /// segment it needed; `whileServing`, the log checked but not yet
    /// replayed (nil when it holds nothing after the snapshot).
    private func recover(log: FeedbackLog, snapshots: SnapshotStore,
                         whileServing: Bool) throws -> (Model, Int, UInt64, PendingReplay?) {
        let t0 = MonotonicClock.nowNanos()
        var model = Model(config: config, registry: .builtin)
        var firstSegment = 1
        var snapshotSeq: UInt64 = 0
        var firstSkip: String?
        // Skipped for the file itself (damaged, another format, unreadable),
        // or as read into the model (which a changed setting can cause).
        var unreadable = 0, unrestorable = 0
        var loaded: SnapshotFile?
        for file in snapshots.files() {
            // Refused before anything else can fail: a snapshot skipped for
            // another fault (a reshaped scorer, say) must not lead to an older
            // one that lacks the scorer (added since by a RELOAD).
            let unloaded = unloadedScorers(in: file, snapshots: snapshots)
            if !unloaded.isEmpty { throw ServerError("\(file.path): \(UnloadedScorerError(names: unloaded))") }
            var read: (SnapshotInfo, SnapshotReader)
            do { read = try snapshots.read(file.path) } catch {
                Log.warning("skipping snapshot \(file.path): \(error)")
                if firstSkip == nil { firstSkip = "\(error)" }
                unreadable += 1
                continue
            }
            do {
                var (info, reader) = read
                let candidate = Model(config: config, registry: .builtin)
                try candidate.restore(from: &reader, unloaded: .refuseExcept(dropScorers))
                model = candidate
                firstSegment = info.firstLogSegment
                snapshotSeq = info.seq
                loaded = file
                Log.info(String(format: "loaded the snapshot at sequence %llu (%@) in %.2f s", info.seq, file.path,
                                Double(MonotonicClock.nowNanos() - t0) / 1e9))
                // The log after it is learned under this config: a setting
                // that differs (a default an upgrade changed, say) makes the
                // model differ from the one served before (helper-92).
                let differing = settingsDiffering(from: file, snapshots: snapshots)
                if !differing.isEmpty {
                    Log.warning("settings differ from those snapshot \(file.id) was written with: \(differing.joined(separator: ", ")); the log after it is learned under the new ones, so the model will not be exactly the one served before this start (put the old values in the config to get that one back)")
                }
                break
            } catch let error as UnloadedScorerError {
                // (A snapshot whose description does not list its scorers.)
                // Not damage: an older snapshot is no way round it.
                throw ServerError("\(file.path): \(error)")
            } catch {
                let changed = changedSettings(since: file, snapshots: snapshots)
                Log.warning("skipping snapshot \(file.path): \(error)\(changed.isEmpty ? "" : " (settings that differ from those it was written with: " + changed.joined(separator: ", ") + ")")")
                if firstSkip == nil { firstSkip = "\(error)" }
                unrestorable += 1
            }
        }
        let logStart = try FeedbackLog.segments(in: log.directory).first ?? 1
        if firstSegment == 1 && !snapshots.files().isEmpty && logStart > 1 {
            let changed = snapshots.files().first.map { changedSettings(since: $0, snapshots: snapshots) } ?? []
            // (Files that failed as files are not a setting: say so rather
            // than guess; helper-59, helper-62.)
            let cause = unreadable > 0 && unrestorable == 0
                ? "No snapshot file could be used as a file (damaged, unreadable, or in a format this build does not read: see the warning for each above): restore one from a copy"
                : changed.isEmpty
                ? "Most likely the config changes a setting that shapes the stored model ([table] dimension, or a scorer's size such as cf neighbours or rating_factors), which cannot change on an existing data directory: put the old value back"
                : "Settings that differ from those the newest snapshot was written with: \(changed.joined(separator: ", ")). If one of them shapes the stored model ([table], or a scorer's size), it cannot change on an existing data directory: put the old value back"
            throw LogError("no usable snapshot (the newest: \(firstSkip ?? "unreadable")), and the log no longer starts at the beginning: the model cannot be rebuilt. \(cause), or serve from a new data directory and send it the events again. Otherwise restore a snapshot.")
        }
        if let warning = try FeedbackLog.checkSegmentsPresent(directory: log.directory, firstNeeded: firstSegment,
                                                              fromSnapshot: loaded.map { "snapshot \($0.id) (\($0.path))" }) {
            Log.warning(warning)
        }
        if whileServing {
            // The log is read whole before the port opens (checksums, the
            // torn tail cut, sequence numbers continuing from the
            // snapshot's): what would stop start-up still stops it here.
            // The replay itself comes after, a slice per loop turn.
            var last = model.lastSeq
            // (Each user's events still to come, for the reads meanwhile.)
            let unreplayed = UnreplayedHistory(limitPerUser: model.history.limit, after: model.lastSeq)
            // (And the ids it will add, for FEEDBACK accepted meanwhile.)
            var ids = IdsAhead(model: model)
            let report = try FeedbackLog.scan(directory: log.directory, fromSegment: firstSegment, cutTornTail: true) { record in
                unreplayed.note(record)
                ids.note(record, model: model)
                guard case .feedback(let first, let events) = record else { return }
                guard first == last + 1 else {
                    throw LogError("the log jumps from sequence \(last) to \(first): records are missing")
                }
                last = first + UInt64(events.count) - 1
            }
            warnTornTail(report)
            guard report.records == 0 else {
                let reader = try LogReader(directory: log.directory, fromSegment: firstSegment, cutTornTail: false)
                let pending = PendingReplay(reader: reader, lastSeq: last, records: report.records, events: report.events, ids: ids)
                model.unreplayed = unreplayed
                return (model, firstSegment, snapshotSeq, pending)
            }
            return (model, firstSegment, snapshotSeq, nil)
        }
        var scratch: [LearnEvent] = []
        var lastReport = t0
        let report = try FeedbackLog.scan(directory: log.directory, fromSegment: firstSegment, cutTornTail: true) { record in
            try model.replay(record, scratch: &scratch)
            let now = MonotonicClock.nowNanos()
            if now - lastReport > 1_000_000_000 {
                lastReport = now
                Log.info("recovering: at sequence \(model.lastSeq) of the log")
            }
        }
        warnTornTail(report)
        if report.records > 0 {
            let elapsed = MonotonicClock.nowNanos() - t0
            state.withLock { $0.replayCost = (elapsed, UInt64(report.events)) }
            let secs = Double(elapsed) / 1e9
            Log.info(String(format: "recovered: %llu events in all, %ld records (%ld events) replayed from %ld log segment(s), in %.2f s",
                            model.lastSeq, report.records, report.events, report.segments, secs))
        }
        return (model, firstSegment, snapshotSeq, nil)
    }

    private func warnTornTail(_ report: LogScanReport) {
        if let torn = report.tornTail {
            Log.warning("log: a torn tail of \(torn.bytes) bytes at byte \(torn.offset) of \(torn.file) was cut (a write interrupted by a crash: never acknowledged under fsync always; under everysec or no, a power loss can also cut events acknowledged in the last second or so)")
        }
    }
}

/// The log after the snapshot, read and checked whole before the port
/// opened, to be replayed while serving (`LogRecovery`).
struct PendingReplay {
    var reader: LogReader
    /// The sequence of the log's last event.
    var lastSeq: UInt64
    var records: Int
    var events: Int
    /// The ids the model will hold once the log is replayed.
    var ids: IdsAhead
}

extension Server {
    /// `changedSettings`, and the settings of the snapshot's scorers that
    /// it does not record (added to them by a later build).
    func settingsDiffering(from file: SnapshotFile, snapshots: SnapshotStore) -> [String] {
        guard let saved = snapshots.metadata(of: file)["settings"] as? [String: String] else { return [] }
        let now = config.modelSettingValues
        // ("scorers.cf" of "scorers.cf.pair_window".)
        func section(_ key: String) -> String? { key.lastIndex(of: ".").map { String(key[..<$0]) } }
        let sections = Set(saved.keys.compactMap(section))
        let unrecorded = now.keys.sorted().filter { key in
            saved[key] == nil && section(key).map(sections.contains) == true
        }
        return PerennialConfig.changedSettingValues(was: saved, now: now) + unrecorded.map { "\($0) (not recorded) -> \(now[$0]!)" }
    }

    /// The model settings (`modelSettingValues`) that differ between a
    /// snapshot's description and this config, as "key was -> now"
    /// (none for snapshots written before descriptions recorded them).
    func changedSettings(since file: SnapshotFile, snapshots: SnapshotStore) -> [String] {
        guard let saved = snapshots.metadata(of: file)["settings"] as? [String: String] else { return [] }
        return PerennialConfig.changedSettingValues(was: saved, now: config.modelSettingValues)
    }

    /// The scorers a snapshot's description says it holds that this config
    /// does not load and the start was not asked to drop (none when the
    /// description does not list them: `Model.restore` refuses those).
    func unloadedScorers(in file: SnapshotFile, snapshots: SnapshotStore) -> [String] {
        guard let saved = snapshots.metadata(of: file)["scorers"] as? [String] else { return [] }
        return saved.filter { name in !config.scorers.contains { $0.name == name } && !dropScorers.contains(name) }
    }

    /// The version that records an earlier rollback to `id` (each rollback
    /// adds one, noted `rolled_back_from`), if any.
    func rollbackAlreadyTaken(to id: String, snapshots: SnapshotStore) -> String? {
        let wanted = SnapshotStore.versionID(id)
        return snapshots.files().sorted { ($0.seq, $0.serial) < ($1.seq, $1.serial) }
            .first { (snapshots.metadata(of: $0)["rolled_back_from"] as? String) == wanted }?.id
    }

    /// Start-up from a named version: that snapshot exactly, with the log's
    /// later events left in the log but not learned (a rollback). Returns
    /// what `recover` does and the note for the version that records it.
    func rollBack(to id: String, log: FeedbackLog, snapshots: SnapshotStore) throws -> (Model, Int, UInt64, [String: Any]) {
        let available = snapshots.files().map(\.id)
        guard let file = snapshots.file(ofVersion: id) else {
            throw ServerError("there is no version \(id) in \(snapshots.directory); versions: \(available.isEmpty ? "none" : available.joined(separator: ", "))")
        }
        let unloaded = unloadedScorers(in: file, snapshots: snapshots)
        if !unloaded.isEmpty { throw ServerError("version \(id): \(UnloadedScorerError(names: unloaded))") }
        var (info, reader) = try snapshots.read(file.path)
        let model = Model(config: config, registry: .builtin)
        do {
            try model.restore(from: &reader, unloaded: .refuseExcept(dropScorers))
        } catch {
            let changed = changedSettings(since: file, snapshots: snapshots)
            throw ServerError("version \(id) cannot be loaded with this config: \(error)\(changed.isEmpty ? "" : " (settings that differ from those it was written with: " + changed.joined(separator: ", ") + ")")")
        }
        // Numbering continues after the log's last event. The newest
        // readable snapshot bounds every event in the segments it covers, so
        // only the log after it is read: damage in a covered segment (which
        // start-up never reads either) does not stop a rollback.
        var last = model.lastSeq
        var from = info.firstLogSegment
        if let newest = snapshots.newestReadable()?.info, newest.firstLogSegment > from {
            from = newest.firstLogSegment
            last = max(last, newest.seq)
        }
        try FeedbackLog.scan(directory: log.directory, fromSegment: from, cutTornTail: true) { record in
            if case .feedback(let first, let events) = record { last = max(last, first + UInt64(events.count) - 1) }
        }
        // What was learned goes back; the catalogue and erasures do not.
        // Deleted ids stay deleted (a discontinued product, an erased user
        // must not return with the version), and items upserted since stay
        // in the catalogue with their texts (a rollback for a bad model must
        // not empty a news feed of today's articles): both are carried over
        // in log order. The segments after a kept version are kept, so
        // they are all there.
        // With each item deletion, the ids it names that the live server
        // held although the older model may not: those named by an event
        // or an upsert since the version, before the deletion. They are
        // remembered as deleted as the live server did, so a late event
        // does not bring one back (review finding, helper-61), and ids it
        // never held are not (helper-62: they could push real ones out).
        var carried: [(record: LogRecord, heldSince: [UInt64])] = []
        var deletions = 0, upserts = 0
        var namedSince = Set<UInt64>()
        do {
            try FeedbackLog.scan(directory: log.directory, fromSegment: info.firstLogSegment, cutTornTail: false) { record in
                switch record {
                case .deleteItems(let ids):
                    carried.append((record, ids.filter(namedSince.contains)))
                    deletions += 1
                case .deleteUsers: carried.append((record, [])); deletions += 1
                case .deleteItemsUnremembered(let ids):
                    // (An older build's deletion: its ids are neither held
                    // nor remembered after it, until named again: helper-64.)
                    carried.append((record, []))
                    namedSince.subtract(ids)
                    deletions += 1
                case .upsert(let item, _, _): carried.append((record, [])); namedSince.insert(item); upserts += 1
                case .feedback(let first, let events) where first > info.seq:
                    for e in events { namedSince.insert(e.item) }
                case .feedback: break
                }
            }
        } catch {
            Log.warning("rollback: the log after version \(file.id) cannot be read whole (\(error)): deletions and item upserts recorded after the damage are not carried over")
        }
        var scratch: [LearnEvent] = []
        for (record, heldSince) in carried {
            try model.replay(record, scratch: &scratch)
            model.rememberDeleted(items: heldSince)
        }
        // (Upserts are carried without the expiry that made room for them
        // in the live server: say so when they overfill the bound.)
        let bound = config.limits.maxItemIDs
        if upserts > 0 && bound > 0 && model.clientItemIDs > bound {
            Log.warning("rollback: the \(upserts) item upsert(s) carried over leave \(model.clientItemIDs) item ids, above limits.max_item_ids (\(bound)): new items are refused (CAPACITY) until deletions or item expiry make room")
        }
        // The model rolled back from is the newest version and the log after
        // it. A version a RELOAD took for itself would go when the
        // rollback's own version is written (SnapshotStore.prune), and with
        // it that model (review finding, helper-71): it is kept like any other.
        if let newest = snapshots.files().first, newest.id != file.id, SnapshotStore.isReloadOnly(snapshots.metadata(of: newest)) {
            do {
                try snapshots.keep(newest, because: "the model a rollback to \(file.id) started from")
            } catch {
                Log.warning("rollback: cannot note version \(newest.id), the model rolled back from, as kept (\(error)): the rollback's version will prune it")
            }
        }
        let skipped = last - model.lastSeq
        model.skip(to: last)
        Log.info("rolled back to version \(file.id): \(skipped) later events stay in the log, not learned; numbering continues at \(last + 1)"
                 + (deletions == 0 ? "" : "; \(deletions) deletion(s) made since are carried over")
                 + (upserts == 0 ? "" : "; \(upserts) item upsert(s) made since are carried over"))
        return (model, info.firstLogSegment, info.seq, ["rolled_back_from": file.id, "events_not_learned": skipped,
                                                        "deletions_carried_over": deletions, "upserts_carried_over": upserts])
    }
}

/// Many concurrent connections need many descriptors: lift the soft limit to
/// the hard one, and say so at start when even that is below
/// `max_connections` (past it, connections are closed unanswered).
private func raiseOpenFileLimit(for maxConnections: Int) {
    var rl = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0 else { return }
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
        _ = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
    }
    // (About 64 descriptors go to the log, snapshots, libuv and the runtime.)
    if rl.rlim_cur < rlim_t(Int.max), Int(rl.rlim_cur) < maxConnections + 64 {
        Log.warning("the open-file limit (\(rl.rlim_cur)) is below limits.max_connections (\(maxConnections)) + 64: connections past about \(max(0, Int(rl.rlim_cur) - 64)) are closed without a reply (raise `ulimit -n`, or lower max_connections)")
    }
}
