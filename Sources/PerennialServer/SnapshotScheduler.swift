// When the model is snapshotted, and how: automatic snapshots (every
// `snapshot.every_events`, when recovery would outlast
// `snapshot.recovery_seconds`, or `snapshot.every_seconds` after the last), SNAPSHOT requests (tickets answered by the
// first snapshot that covers them), a RELOAD's snapshot of its new scorer
// set, and the blocking ones of start-up and a graceful stop. Lives on the
// loop thread; the serialisation and the write run on a snapshot's own
// thread (SnapshotInFlight). What it asks of admission (FEEDBACK waiting
// while it drains or serialises, the tapering room) RequestHandler applies.

import Foundation
import PerennialCore

final class SnapshotScheduler {
    let model: Model
    let learner: Learner
    let log: FeedbackLog
    let store: SnapshotStore
    /// The server's config (RequestHandler sets the new one on RELOAD).
    var config: PerennialConfig
    /// Sequence of the newest durable snapshot (0: none yet).
    private(set) var lastSnapshotSeq: UInt64
    /// Snapshots completed, and automatic ones that tapered FEEDBACK's
    /// room while the learner caught up (STATS `snapshots`, `snapshot_tapers`).
    private(set) var completed: UInt64 = 0
    private(set) var tapers: UInt64 = 0
    /// Snapshots that failed (STATS `snapshot_failures`), and due or
    /// requested ones not started for want of disk space, counted at most
    /// once a second and logged at most once a minute (`snapshots_put_off`).
    private(set) var failures: UInt64 = 0
    private(set) var putOff = CountedWarning(level: .warning, intervalSeconds: 60)

    init(model: Model, learner: Learner, log: FeedbackLog, store: SnapshotStore, config: PerennialConfig,
         lastSnapshotSeq: UInt64) {
        self.model = model
        self.learner = learner
        self.log = log
        self.store = store
        self.config = config
        self.lastSnapshotSeq = lastSnapshotSeq
        // (The newest snapshot's size, so the first space check after a
        // restart knows what the next one needs.)
        if let newest = store.files().first,
           let size = (try? FileManager.default.attributesOfItem(atPath: newest.path))?[.size] as? Int {
            lastSnapshotBytes = size
        }
        // (Start-up replayed deletions and upserts logged after the newest snapshot.)
        countReplayedChanges()
    }

    /// Deletions and upserts a replay of the log applied (the newest
    /// snapshot lacks them, so the server owes one): at start-up, and again
    /// when a replay while serving ends (review finding: without it a
    /// graceful stop wrote no snapshot, and every start replayed them anew).
    func countReplayedChanges() {
        loggedChanges = LoggedChanges(count: model.recordsWithoutSeqReplayed, nanos: model.recordsWithoutSeqReplayNanos)
    }

    // MARK: SNAPSHOT requests and RELOADs

    /// A SNAPSHOT request: its outcome once a snapshot taken after it is
    /// durable (the sequence it covers, or why it failed), nil while it
    /// waits. `ticket` is the connection's (0 = none yet: one is issued);
    /// the caller clears it once answered. The loop takes the snapshot like
    /// an automatic one (its own thread serialises and writes) and serves
    /// others meanwhile. With nothing accepted and nothing deleted since the last snapshot, that
    /// one holds every event and answers at once (no file rewritten, no new
    /// version).
    func answer(ticket: inout UInt64) -> Result<SnapshotVersion, SnapshotFailure>? {
        if ticket == 0 && inFlight == nil && lastSnapshotSeq > 0 && model.lastSeq == lastSnapshotSeq && !reloadUnsnapshotted
            && !changedSinceSnapshot, let version = markRequested(seq: lastSnapshotSeq) {
            return .success(version)
        }
        if ticket == 0 {
            snapshotTicketsIssued += 1
            ticket = snapshotTicketsIssued
        }
        if onLoop && snapshotOutcome(for: ticket) == nil {
            // (Stopping: no more snapshots are started by turns.)
            finishInFlight()
            if snapshotOutcome(for: ticket) == nil {
                let outcome = Result<SnapshotVersion, any Error> { try take(note: Self.requestedNote) }
                recordSnapshotOutcome(through: snapshotTicketsIssued, outcome.mapError { SnapshotFailure(description: "\($0)") })
            }
        }
        return snapshotOutcome(for: ticket)
    }

    /// A version a SNAPSHOT request was answered with is one its client may
    /// roll back to: it takes a place among `snapshot.keep` even when a
    /// RELOAD took it (SnapshotStore.prune; review finding: the snapshot
    /// asked for right after a RELOAD went at the next snapshot).
    static var requestedNote: [String: Any] { ["requested": true] }

    /// The newest version at `seq` answers a SNAPSHOT request: noted so,
    /// and returned (nil when its file is gone: a new one is taken).
    private func markRequested(seq: UInt64) -> SnapshotVersion? {
        // (The newest version at that position: after a rollback, not the
        // model rolled back from, which has the plain id.)
        guard let file = store.files().first(where: { $0.seq == seq }) else { return nil }
        Log.info("SNAPSHOT: nothing changed since version \(file.id) (sequence \(seq)): answered with it")
        if store.metadata(of: file)["requested"] == nil {
            do { try store.updateMetadata(of: file) { $0["requested"] = true } } catch { Log.warning("version \(file.id): cannot note the SNAPSHOT request in its description: \(error)") }
        }
        return SnapshotVersion(seq: seq, id: file.id)
    }

    /// A RELOAD rebuilt, added or removed scorers (`changes`): a snapshot
    /// soon ties the new scorer set to a log position.
    func reloadChangedScorers(_ changes: [String]) {
        unsnapshottedReloadChanges += changes
        reloadGeneration += 1
        reloadSnapshotWanted = true
    }

    /// What RELOADs that rebuilt, added or removed scorers changed since the
    /// newest snapshot: the model then differs from that snapshot even
    /// with no event since. Until a snapshot of it is durable, every
    /// snapshot taken is a distinct version noting these changes (so one
    /// at the same position never replaces the pre-reload version, which
    /// holds a removed scorer's state), a SNAPSHOT request is not answered
    /// from the old one, and a graceful stop takes one.
    private var unsnapshottedReloadChanges: [String] = []
    var reloadUnsnapshotted: Bool { !unsnapshottedReloadChanges.isEmpty }
    /// Counts such RELOADs: a snapshot marks them saved only if none came
    /// after it started.
    private(set) var reloadGeneration = 0
    private var inFlightReloadGeneration = 0
    /// Snapshots that failed while carrying a RELOAD's changes, and the
    /// last one's error (a RELOAD waiting for its snapshot answers with it).
    private(set) var reloadSaveFailures: UInt64 = 0
    private(set) var lastReloadSaveFailure = ""

    /// A RELOAD that changed scorers waits for its snapshot before its
    /// reply (RequestHandler): nil while it is not durable yet, else the
    /// outcome. `failuresBefore` is `reloadSaveFailures` when it applied.
    /// While stopping (no automatic snapshot starts) it takes the snapshot
    /// on the loop.
    func reloadSaved(failuresBefore: UInt64) -> Result<Void, SnapshotFailure>? {
        guard reloadUnsnapshotted else { return .success(()) }
        if reloadSaveFailures > failuresBefore { return .failure(SnapshotFailure(description: lastReloadSaveFailure)) }
        if onLoop {
            do { try take() } catch { return .failure(SnapshotFailure(description: "\(error)")) }
            return reloadUnsnapshotted ? .failure(SnapshotFailure(description: "a later RELOAD's changes are not saved yet")) : .success(())
        }
        return nil
    }

    /// The RELOAD's own snapshot is yet to be started. It is tried once;
    /// after a failure the next automatic or requested one, or the stop's,
    /// carries the changes.
    private var reloadSnapshotWanted = false

    /// Deletions and item upserts are logged without a sequence number of
    /// their own, yet change the model: until a snapshot taken after them
    /// is durable, a SNAPSHOT request is not answered from the old one, a
    /// graceful stop takes one, and the recovery estimate counts them, so
    /// the newest version holds what was deleted and upserted (review
    /// findings: SNAPSHOT answered with the old version, also after a
    /// restart that replayed the deletion from the log; 120,000 upserts
    /// with no event got no snapshot at all, and every start replayed them).
    /// Counted, with what applying them took, as measured when they were
    /// applied (a recovery replays them through the same code): an upsert
    /// costs a text encoding with text-cnn, many times an event's learning,
    /// and a server fed only upserts has no per-event cost to go by
    /// (review finding: 60,000 upserts, recovery_estimate_ms 0, no
    /// automatic snapshot, 3.5 s of replay at the next start). A snapshot
    /// saves the tally it started at.
    struct LoggedChanges {
        var count = 0
        var nanos: UInt64 = 0
    }
    private var loggedChanges = LoggedChanges()
    private var snapshotLoggedChanges = LoggedChanges()
    private var inFlightLoggedChanges = LoggedChanges()
    var changedSinceSnapshot: Bool { loggedChanges.count > snapshotLoggedChanges.count }

    /// Applies a deletion or an item upsert the log holds (`logged`: a
    /// deletion of ids nobody held is not logged), counting it and what it
    /// took.
    func applyLoggedChange<T>(logged: Bool = true, _ apply: () -> T) -> T {
        let t0 = MonotonicClock.nowNanos()
        let result = apply()
        if logged {
            loggedChanges.count += 1
            loggedChanges.nanos &+= MonotonicClock.nowNanos() &- t0
        }
        return result
    }

    /// How long replaying the log after the newest snapshot would take:
    /// its events at the learner's recent cost per event (when known),
    /// its deletions and upserts at what they took.
    var recoveryEstimateNanos: Double {
        Double(model.lastSeq - min(lastSnapshotSeq, model.lastSeq)) * (learner.nanosPerEvent ?? 0)
            + Double(loggedChanges.nanos &- min(snapshotLoggedChanges.nanos, loggedChanges.nanos))
    }

    /// The last snapshot's size (room reserved for the next one).
    private var lastSnapshotBytes = 0

    // MARK: disk space

    /// Free bytes on the file system holding the snapshots (statvfs of
    /// their directory, or of the data directory before the first one;
    /// nil when it cannot be read).
    func freeBytes() -> UInt64? {
        var s = statvfs()
        guard statvfs(store.directory, &s) == 0 || statvfs((store.directory as NSString).deletingLastPathComponent, &s) == 0 else {
            return nil
        }
        return UInt64(s.f_bavail) * UInt64(s.f_frsize)
    }

    /// Why a snapshot should not start now, or nil when the disk has room
    /// for it: the last snapshot's size and a quarter (the model grows),
    /// and 1 MiB the log may write meanwhile. The snapshot is written
    /// beside the kept ones before the oldest is pruned, so the disk must
    /// hold `keep` + 1 of them. A lack found is looked at again after a
    /// second, or at once for a SNAPSHOT request (`fresh`: this call looked).
    private func lackOfSpace(lookNow: Bool) -> (String, fresh: Bool)? {
        let now = MonotonicClock.nowNanos()
        // (Only a lack is remembered: with room, the snapshot starts now.)
        if !lookNow, let lack = spaceLack, now &- spaceCheckedNs < 1_000_000_000 { return (lack, false) }
        spaceCheckedNs = now
        spaceLack = nil
        guard let free = freeBytes() else { return nil }
        let need = UInt64(lastSnapshotBytes + lastSnapshotBytes / 4) + 1 << 20
        if free < need {
            spaceLack = "not enough free disk space for a snapshot in \(store.directory): \(free >> 20) MiB free, "
                + "\(need >> 20) MiB needed (the last snapshot's \(lastSnapshotBytes >> 20) MiB, a quarter more, and 1 MiB for the log)"
        }
        return spaceLack.map { ($0, true) }
    }
    private var spaceCheckedNs: UInt64 = 0
    private var spaceLack: String?
    /// The automatic snapshot being written off the loop thread, if any.
    private var inFlight: SnapshotInFlight?
    /// The last one collected, whose thread may still be about to wake the
    /// loop (see `finishInFlight`).
    private var retired: SnapshotInFlight?
    /// After an automatic snapshot failed: no new attempt before this
    /// sequence (a tenth of `every_events` later, doubling with every
    /// failure in a row up to `every_events`), so a full disk does not pause
    /// the loop and roll a log segment on every turn.
    private var retrySnapshotAt: UInt64 = 0
    private var snapshotFailuresInARow = 0

    /// SNAPSHOT requests: each takes the next ticket; the loop starts a
    /// snapshot covering every ticket issued when none is being taken, and
    /// a request is answered with the outcome of the first snapshot that
    /// covers its ticket.
    private var snapshotTicketsIssued: UInt64 = 0
    private var snapshotTicketsStarted: UInt64 = 0
    /// The tickets the in-flight snapshot covers (after `from`, through `to`).
    private var inFlightTickets: (from: UInt64, to: UInt64) = (0, 0)
    /// Outcomes of the latest snapshots that covered tickets (the sequence,
    /// or why it failed): (first ticket, last ticket, outcome), oldest first.
    private var snapshotOutcomes: [(from: UInt64, to: UInt64, outcome: Result<SnapshotVersion, SnapshotFailure>)] = []
    /// Set when the server stops: a SNAPSHOT request then takes its
    /// snapshot on the loop, as the loop starts no more.
    var onLoop = false

    struct SnapshotFailure: Error, CustomStringConvertible { var description: String }

    /// What a SNAPSHOT request is answered with: the log position and the
    /// version's id (`v<seq>`, or `v<seq>.<serial>` when another version was
    /// written at that position first: a rollback's, a RELOAD's).
    struct SnapshotVersion: Equatable {
        var seq: UInt64
        var id: String
    }

    private func snapshotOutcome(for ticket: UInt64) -> Result<SnapshotVersion, SnapshotFailure>? {
        // Ranges are contiguous and increasing, so the first reaching the
        // ticket is its snapshot, or (its own trimmed away) a later one,
        // which also started after the ticket was issued.
        snapshotOutcomes.first { ticket <= $0.to }?.outcome
    }

    private func recordSnapshotOutcome(through ticket: UInt64, _ outcome: Result<SnapshotVersion, SnapshotFailure>, from: UInt64? = nil) {
        let first = from ?? (snapshotOutcomes.last?.to ?? 0)
        guard ticket > first else { return }
        snapshotOutcomes.append((first, ticket, outcome))
        snapshotTicketsStarted = max(snapshotTicketsStarted, ticket)
        // (A waiting request reads its outcome within a loop turn or two.)
        if snapshotOutcomes.count > 64 { snapshotOutcomes.removeFirst(snapshotOutcomes.count - 64) }
    }

    /// True while a snapshot waits for the learner to apply what was
    /// accepted and no new event may come in (a SNAPSHOT request's or a
    /// RELOAD's snapshot, or an automatic one whose taper ran out):
    /// FEEDBACK waits (parked, like a full queue) so the learner catches
    /// up, and RECOMMENDs are served meanwhile.
    private(set) var draining = false

    /// True while an automatic snapshot's thread reads the model: nothing
    /// that changes the model is admitted (FEEDBACK, UPSERT_ITEM and the
    /// deletions wait, parked; a RELOAD waits for it), and reads are served.
    var serialising: Bool { inFlight.map { !$0.serialised } ?? false }

    /// Wakes the loop from another thread (set by the loop once bound): a
    /// snapshot's thread calls it when it has serialised the model, so
    /// what waited for that goes on.
    var wakeLoop: @Sendable () -> Void = {}

    /// Called once per loop turn (EventLoop.snapshotTurn says when): starts
    /// a snapshot when SNAPSHOT requests wait for one or `every_events` asks
    /// for one, and none is being taken; collects a finished one. The
    /// learner must first apply everything accepted (new FEEDBACK waits
    /// meanwhile, or for an automatic snapshot comes into a tapering room:
    /// SnapshotTaper; the loop never waits); then the snapshot's own thread serialises
    /// the model and writes the file (SnapshotInFlight), and the loop goes
    /// on serving reads. Returns whether parked requests should be tried
    /// again: it stopped waiting for the learner without starting a
    /// snapshot, or a snapshot finished (its SNAPSHOT requests are answered).
    /// After the serialisation `wakeLoop` resumes parked FEEDBACK.
    func turn() -> Bool {
        var collected = false
        if let f = inFlight, let outcome = f.finished {
            collect(f, outcome)
            collected = true
        }
        // (Parked FEEDBACK is tried again when a drain or a taper ends.)
        let wasHolding = draining || taper != nil
        let every = UInt64(config.snapshotEveryEvents)
        let requested = snapshotTicketsIssued > snapshotTicketsStarted
        let due = (every > 0 && model.lastSeq - lastSnapshotSeq >= every || recoveryWouldTakeTooLong || dueByTime)
            && model.lastSeq >= retrySnapshotAt
        let reloadRetry = reloadUnsnapshotted && MonotonicClock.nowNanos() >= reloadRetryAtNs
        if inFlight == nil, requested || due, !reloadSnapshotWanted, !reloadRetry,
           let (lack, fresh) = lackOfSpace(lookNow: requested) {
            // Not started: writing it would fill the disk, and while it
            // did, the log could not take FEEDBACK (review finding,
            // helper-49). A SNAPSHOT request is told why. (A RELOAD's
            // snapshot is not put off: its reply waits for the snapshot's
            // outcome, and once it hung here; review finding, helper-50.)
            if fresh {
                putOff.note("snapshot put off: \(lack); the log keeps every event meanwhile, and recovery after a crash grows (STATS snapshots_put_off, recovery_estimate_ms)")
            }
            if requested { recordSnapshotOutcome(through: snapshotTicketsIssued, .failure(SnapshotFailure(description: lack))) }
            draining = false
            taper = nil
            return wasHolding || collected || requested
        }
        guard inFlight == nil, requested || due || reloadSnapshotWanted || reloadRetry else {
            draining = false
            taper = nil
            return wasHolding || collected
        }
        guard model.appliedSeq < model.lastSeq else {
            // (Every event applied, but a purge handed to the learner still
            // runs: the snapshot starts in the loop turn after it ends,
            // which the learner's progress wakes.)
            guard model.learnerIdle else { return collected }
            draining = false
            taper = nil
            return startSnapshotInFlight() || collected
        }
        // The learner is behind. A SNAPSHOT someone waits for, or a
        // RELOAD's, stops new events at once; one that is only due tapers
        // their room first (admissionRoom), and stops them when that ran out.
        guard !requested, !reloadSnapshotWanted, !reloadRetry else {
            draining = true
            taper = nil
            return collected
        }
        let now = MonotonicClock.nowNanos()
        if taper == nil {
            taper = SnapshotTaper(startNs: now, appliedAtStart: model.appliedSeq, from: learner.queued)
            tapers += 1
        }
        // (A learner far slower than it was, or stalled: the old drain.)
        draining = Double(now &- taper!.startNs) >= max(config.learnerMaxLagSeconds, 1) * 2e9
        return collected
    }

    /// An automatic snapshot waiting for the learner to apply what was
    /// accepted, without stopping FEEDBACK: the learner queue's room for
    /// new events starts at what it held (`from`) and falls by one event
    /// for every two the learner applies, so batches keep coming in at
    /// half its rate while the queue empties, and none waits for the whole
    /// queue; the room is gone, and the queue empty, once the learner has
    /// applied twice what it held. (Tied to the learner's progress, not to
    /// an estimate of its speed: early on, with a small model, that
    /// estimate is far too low.) Stopping new events until the learner
    /// caught up, as before, made every FEEDBACK in flight wait up to
    /// `learner.max_lag_seconds` at each automatic snapshot. After
    /// 2 · max(max_lag_seconds, 1) s the old drain takes over.
    struct SnapshotTaper {
        var startNs: UInt64
        var appliedAtStart: UInt64
        var from: Int
    }
    private var taper: SnapshotTaper?

    /// The learner queue's room for new FEEDBACK: `allowance`, or less
    /// while a snapshot tapers it.
    func admissionRoom(_ allowance: Int) -> Int {
        guard let t = taper else { return allowance }
        let learned = model.appliedSeq &- t.appliedAtStart
        return min(allowance, max(0, t.from - Int(min(learned / 2, UInt64(Int.max)))))
    }

    /// Replaying the log after the newest snapshot would take longer than
    /// `snapshot.recovery_seconds`, by the learner's recent cost per event
    /// (recovery runs the same code). With text-cnn, session-rnn or gan that
    /// cost is 4-20 times cf's, so a fixed `every_events` alone would let a
    /// crash's recovery, with the port closed, run for minutes.
    /// Never sooner after the last snapshot than four times its duration:
    /// a model that takes longer to write than the budget allows would
    /// otherwise be snapshotted back to back (said once in the log).
    private var recoveryWouldTakeTooLong: Bool {
        let budget = config.snapshotRecoverySeconds
        guard budget > 0, recoveryEstimateNanos > budget * 1e9 else { return false }
        let since = MonotonicClock.nowNanos() &- lastSnapshotCompletedNs
        if lastSnapshotCompletedNs > 0 && since < 4 * lastSnapshotDurationNs {
            // (Said when the spacing alone outlasts the budget; a burst
            // that arrived while one was written just waits.)
            if !warnedRecoveryBudget && 4 * Double(lastSnapshotDurationNs) > budget * 1e9 {
                warnedRecoveryBudget = true
                Log.warning(String(format: "snapshot.recovery_seconds = %g cannot be kept: a snapshot takes %.1f s to write, and one is started at most every %.1f s, so recovery after a crash may replay more than that (raise recovery_seconds, or use fewer or cheaper scorers)",
                                   budget, Double(lastSnapshotDurationNs) / 1e9, 4 * Double(lastSnapshotDurationNs) / 1e9))
            }
            return false
        }
        return true
    }
    private var lastSnapshotCompletedNs: UInt64 = 0
    private let startedNs = MonotonicClock.nowNanos()

    /// `snapshot.every_seconds` have passed since the last snapshot (or the
    /// start) and something changed since it.
    private var dueByTime: Bool {
        guard config.snapshotEverySeconds > 0, model.lastSeq > lastSnapshotSeq || changedSinceSnapshot else { return false }
        let since = MonotonicClock.nowNanos() &- (lastSnapshotCompletedNs > 0 ? lastSnapshotCompletedNs : startedNs)
        return since / 1_000_000_000 >= UInt64(config.snapshotEverySeconds)
    }
    private var lastSnapshotDurationNs: UInt64 = 0
    private var warnedRecoveryBudget = false
    /// After a RELOAD's changes failed to be saved: when to try again (a
    /// second, doubling to a minute; events may not come to make one due).
    private var reloadRetryAtNs: UInt64 = .max

    /// Starts a snapshot on its own thread (none in flight, the learner
    /// idle); it also answers the SNAPSHOT requests waiting, which it
    /// started after. Returns true when it failed at once (the failure is
    /// recorded and the waiting requests are answered with it).
    @discardableResult
    private func startSnapshotInFlight() -> Bool {
        precondition(inFlight == nil && model.learnerIdle)
        let tickets = (from: snapshotTicketsStarted, to: snapshotTicketsIssued)
        reloadSnapshotWanted = false
        reloadRetryAtNs = .max
        do {
            let (job, t0, pauseMs) = try prepareSnapshot(note: tickets.to > tickets.from ? Self.requestedNote : [:], distinct: false)
            inFlightReloadGeneration = reloadGeneration
            inFlightLoggedChanges = loggedChanges
            // (Room for the last snapshot's size and an eighth: growing a
            // buffer of tens of megabytes by doubling copies it each time.)
            let capacity = lastSnapshotBytes + lastSnapshotBytes / 8
            inFlight = SnapshotInFlight(job: job, startedNs: t0, pauseMs: pauseMs, fork: config.snapshotFork,
                                        stallSeconds: config.snapshotWriterStallSeconds, capacity: capacity,
                                        save: { [model] w in model.save(to: &w) }, wake: wakeLoop)
            inFlightTickets = tickets
            snapshotTicketsStarted = tickets.to
            return false
        } catch {
            snapshotFailed(at: model.lastSeq, error)
            recordSnapshotOutcome(through: tickets.to, .failure(SnapshotFailure(description: "\(error)")), from: tickets.from)
            return true
        }
    }

    /// A stop: no automatic snapshot waits for the learner any more.
    func cancelDraining() {
        draining = false
        taper = nil
    }

    /// Writes a snapshot of the model at the current log position and
    /// returns when it is durable (a rollback or a dropped scorer at start-up, a graceful stop, and
    /// a SNAPSHOT request while stopping): waits for one still being written,
    /// then serialises straight into the file, describes and prunes on the
    /// loop thread, which pauses for all of it (about 0.15-0.25 s for
    /// ml-latest-small with cf: 36 MB). Returns the version written.
    @discardableResult
    func take(note: [String: Any] = [:], distinct: Bool = false) throws -> SnapshotVersion {
        finishInFlight()
        let written: SnapshotWritten, job: SnapshotJob, size: Int, t0: UInt64
        let generation = reloadGeneration, changes = loggedChanges
        reloadSnapshotWanted = false
        do {
            (job, t0, _) = try prepareSnapshot(note: note, distinct: distinct)
            // (Straight into the file, measured first: nothing changes the
            // model while the loop waits here, and no second copy of it is
            // made, which at a million items was gigabytes.)
            (written, size) = try job.write(streaming: { [model] w in model.save(to: &w) })
            lastSnapshotBytes = size
        } catch {
            Log.error("snapshot at sequence \(model.lastSeq) not taken: \(error)")
            throw error
        }
        let ms = Double(MonotonicClock.nowNanos() - t0) / 1e6
        complete(written, seq: job.seq, bytes: size, startedNs: t0, reloadGeneration: generation, loggedChanges: changes,
                 how: String(format: "serving paused %.1f ms", ms))
        return SnapshotVersion(seq: job.seq, id: written.file.id)
    }

    /// Waits for an automatic snapshot still being written, and completes it.
    /// Also waits for the thread of the last one collected to end: it wakes
    /// the loop once more after its outcome is visible, and the loop's
    /// handles must outlive that wake (this runs before they close).
    func finishInFlight() {
        if let f = inFlight { collect(f, f.wait()) }
        if let r = retired { _ = r.wait(); retired = nil }
    }

    /// The loop's part of a snapshot: waits for the learner to apply
    /// everything accepted, starts a new log segment, describes the version.
    /// Returns the job, when it started, and how long the loop spent (ms).
    private func prepareSnapshot(note: [String: Any], distinct: Bool) throws -> (SnapshotJob, UInt64, Double) {
        let t0 = MonotonicClock.nowNanos()
        while !model.learnerIdle { usleep(50) }
        // Forgotten items still pending in users' histories go now: a read
        // of a history cleans it (InteractionHistory), and a snapshot's
        // thread may read the histories while the loop serves reads.
        model.history.cleanAll()
        let seq = model.lastSeq
        let segment = try log.rollSegment()
        // The snapshot is a model version: its description (its size is
        // added when it is written).
        var meta: [String: Any] = ["created": ISO8601DateFormatter().string(from: Date()), "scorers": model.scorerNames,
                                   "default_scorer": model.defaultScorer, "config": config.source,
                                   "users": model.users.liveCount, "items": model.items.liveCount,
                                   "settings": config.modelSettingValues]
        for (k, v) in note { meta[k] = v }
        if reloadUnsnapshotted { meta["reload"] = unsnapshottedReloadChanges }
        let job = SnapshotJob(store: store, seq: seq, firstLogSegment: segment, distinct: distinct || reloadUnsnapshotted,
                              keep: config.snapshotKeep, description: meta)
        return (job, t0, Double(MonotonicClock.nowNanos() - t0) / 1e6)
    }

    /// An automatic snapshot's write finished: complete it, or note the failure.
    private func collect(_ f: SnapshotInFlight, _ outcome: Result<SnapshotWritten, any Error>) {
        inFlight = nil
        // The thread of the one collected before may not have woken the
        // loop for the last time yet (preempted after publishing its
        // outcome, while a whole later snapshot ran): wait for it before it
        // is forgotten, or a stop could free the handles it is about to
        // touch (review finding, helper-51). It has published its outcome,
        // so this wait is at most a wake.
        if let r = retired { _ = r.wait() }
        retired = f
        switch outcome {
        case .success(let written):
            lastSnapshotBytes = f.size
            complete(written, seq: f.seq, bytes: f.size, startedNs: f.startedNs, reloadGeneration: inFlightReloadGeneration,
                     loggedChanges: inFlightLoggedChanges,
                     how: f.forkMs.map { String(format: "serialised and written by a forked process in %.1f ms; new events paused %.2f ms, %.2f of them for the fork", f.serialiseMs, f.pauseMs + $0, $0) }
                        ?? String(format: "serialised off the loop in %.1f ms; serving paused %.2f ms", f.serialiseMs, f.pauseMs))
            recordSnapshotOutcome(through: inFlightTickets.to, .success(SnapshotVersion(seq: f.seq, id: written.file.id)), from: inFlightTickets.from)
        case .failure(let error):
            snapshotFailed(at: f.seq, error)
            recordSnapshotOutcome(through: inFlightTickets.to, .failure(SnapshotFailure(description: "\(error)")), from: inFlightTickets.from)
        }
        inFlightTickets = (0, 0)
    }

    private func snapshotFailed(at seq: UInt64, _ error: any Error) {
        snapshotFailuresInARow += 1
        failures += 1
        // The events between automatic snapshots: every_events, or those
        // the recovery budget allows at the learner's recent cost.
        var every = config.snapshotEveryEvents
        if config.snapshotRecoverySeconds > 0, let ns = learner.nanosPerEvent {
            let allowed = Int(min(config.snapshotRecoverySeconds * 1e9 / max(ns, 1), 1e15))
            every = every > 0 ? min(every, allowed) : allowed
        }
        let automatic = config.snapshotEveryEvents > 0 || config.snapshotRecoverySeconds > 0
        every = max(1, every > 0 ? every : 1_000_000)
        var wait = max(1, every / 10)
        for _ in 1..<min(snapshotFailuresInARow, 20) where wait < every { wait *= 2 }
        wait = min(wait, every)
        retrySnapshotAt = model.lastSeq + UInt64(wait)
        var next = automatic
            ? "next automatic attempt after sequence \(retrySnapshotAt)"
            : "snapshot.every_events = 0 and recovery_seconds = 0: the next SNAPSHOT request or a graceful stop takes one"
        if reloadUnsnapshotted {
            reloadSaveFailures += 1
            lastReloadSaveFailure = "\(error)"
            let delay = min(60, 1 << min(snapshotFailuresInARow - 1, 6))
            reloadRetryAtNs = MonotonicClock.nowNanos() + UInt64(delay) * 1_000_000_000
            next += "; the RELOAD's changes are saved by the next one, tried again in \(delay) s"
        }
        Log.error("snapshot at sequence \(seq) failed (\(next)): \(error)")
    }

    /// A snapshot is durable: it is the newest, and the log segments the
    /// kept snapshots cover can go.
    private func complete(_ written: SnapshotWritten, seq: UInt64, bytes: Int, startedNs: UInt64, reloadGeneration generation: Int,
                          loggedChanges changes: LoggedChanges,
                          how: String) {
        lastSnapshotSeq = max(lastSnapshotSeq, seq)
        if generation == reloadGeneration { unsnapshottedReloadChanges = [] }
        snapshotLoggedChanges.count = max(snapshotLoggedChanges.count, changes.count)
        snapshotLoggedChanges.nanos = max(snapshotLoggedChanges.nanos, changes.nanos)
        lastSnapshotCompletedNs = MonotonicClock.nowNanos()
        lastSnapshotDurationNs = lastSnapshotCompletedNs &- startedNs
        snapshotFailuresInARow = 0
        completed += 1
        if let keepFrom = written.keepLogFrom { log.removeSegments(before: keepFrom) }
        Log.info(String(format: "snapshot (version %@) at sequence %llu: %ld bytes in %.1f ms (%@)",
                        written.file.id, seq, bytes, Double(MonotonicClock.nowNanos() - startedNs) / 1e6, how))
    }
}
