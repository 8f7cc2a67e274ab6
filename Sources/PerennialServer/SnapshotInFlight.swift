// An automatic snapshot being taken off the loop thread. The loop only
// prepares it (the learner has applied everything accepted, a new log
// segment is started, the description is built); then, by default, a
// forked child process serialises the model as it was at the fork and
// writes the file (SnapshotProcess), and this process's thread only waits
// for its report; with `snapshot.fork = false`, or when fork fails, this
// snapshot's own thread serialises the model, and from then on needs
// nothing of it: it checksums, writes the description, writes and fsyncs
// the file, gives the buffer's pages back and prunes old snapshots. The
// loop collects the outcome later (`finished`, polled once per loop turn)
// and only then removes the log segments the new snapshot covers. So
// reads are served throughout, and with the child process new events are
// admitted and learned throughout too.
//
// Threading invariant of the thread path (why this is `@unchecked
// Sendable`, and why the model may be read here while the loop serves):
// until `serialised` is set the loop changes nothing `Model.save` reads. It
// admits no FEEDBACK and no UPSERT_ITEM (they wait, parked, as for a full
// learner queue), a RELOAD (request or SIGHUP) waits, parked, for the
// serialisation, and the learner is idle, having applied everything
// accepted; RECOMMEND, SCORE and STATS only read the model and write
// serving scratch (top-k, exclusions, the quantised item copies, text-cnn's
// cached encodings) that snapshots do not hold. `serialised` is stored with
// release ordering after the last read of the model, and loaded with
// acquire ordering by the loop before it admits anything again. `outcome`
// is a Mutex; `payload` is touched only by the thread; everything else is
// immutable.

import Foundation
import PerennialCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What a snapshot's write produced: its file, and the first log segment
/// the snapshots kept after pruning still need (nil: keep every segment).
struct SnapshotWritten: Sendable {
    var file: SnapshotFile
    var keepLogFrom: Int?
}

/// The parts of a snapshot the loop prepared, for whichever thread writes it.
struct SnapshotJob: @unchecked Sendable {
    let store: SnapshotStore
    let seq: UInt64
    let firstLogSegment: Int
    let distinct: Bool
    let keep: Int
    /// The description's fields (strings, numbers and arrays of them, built
    /// on the loop thread and only read after the hand-over: why the
    /// unchecked Sendable is safe).
    let description: [String: Any]

    /// Writes the payload durably, describes the version, prunes. Runs on
    /// any thread; touches only files.
    func write(_ payload: inout [UInt8]) throws -> SnapshotWritten {
        defer {
            // The serialised model was one large buffer: hand its pages back
            // to the OS now rather than keep them as free heap.
            payload = []
            _ = malloc_trim(0)
        }
        return try write(size: payload.count) { put in payload.withUnsafeBytes { put($0) } }
    }

    /// The same, serialising the model straight into the file with `save`,
    /// run twice: once to measure it, once to write it, so no second copy
    /// of the model is ever in memory. Only for a model nothing can change
    /// between the two passes: a forked child's, or the loop's own while it
    /// holds everything back (a graceful stop's snapshot).
    func write(streaming save: (inout SnapshotWriter) -> Void) throws -> (SnapshotWritten, size: Int) {
        var measured = SnapshotWriter.measuring()
        save(&measured)
        let written = try write(size: measured.size) { put in
            withoutActuallyEscaping(put) { put in
                var w = SnapshotWriter.streaming(like: measured, to: put)
                save(&w)
                return w.finish()
            }
        }
        return (written, measured.size)
    }

    private func write(size: Int, payload: ((UnsafeRawBufferPointer) -> Bool) -> Bool) throws -> SnapshotWritten {
        var description = description
        description["bytes"] = size
        let file = try store.write(seq: seq, firstLogSegment: firstLogSegment, payloadSize: size, distinct: distinct, describe: { [store, description] file in
            // A snapshot that replaces one at the same position keeps
            // that version's notes (a rollback, a reload), not its figures.
            var previous = store.metadata(of: file)
            previous.removeValue(forKey: "e1")
            previous.removeValue(forKey: "e1_by_scorer")
            return description.merging(previous) { new, _ in new }
        }, payload: payload)
        // Never past the segments this snapshot itself needs: a kept file
        // that claims a later first segment (copied in from another data
        // directory, or damaged in a format whose checksum did not cover
        // its header) would otherwise have the live log deleted (review
        // finding, helper-59: acknowledged events lost).
        var keepFrom = store.prune(keep: keep)
        if let claimed = keepFrom, claimed > firstLogSegment {
            Log.warning("snapshot \(file.id): a kept version claims log segment \(claimed) as its first, past this snapshot's \(firstLogSegment): it is not this directory's (copied in?), so no log segment after \(firstLogSegment) is removed for it; remove it from \(store.directory)")
            keepFrom = firstLogSegment
        }
        return SnapshotWritten(file: file, keepLogFrom: keepFrom)
    }
}

final class SnapshotInFlight: @unchecked Sendable {
    let seq: UInt64
    /// When the snapshot began (the learner had caught up), and how long the
    /// loop paused for its part, for the log line.
    let startedNs: UInt64
    let pauseMs: Double
    private let outcome = Mutex<Result<SnapshotWritten, any Error>?>(nil)
    private let done = DispatchSemaphore(value: 0)
    /// Set once the thread has read the model for the last time.
    private let serialisedFlag = Atomic<Bool>(false)
    /// The serialised size and the time it took (ns), once `serialised`.
    private let serialisedSize = Atomic<Int>(0)
    private let serialiseNs = Atomic<UInt64>(0)
    private var payload: [UInt8] = []

    /// How long fork() held the loop (ms), when a child process writes the
    /// snapshot (SnapshotProcess); nil when this process's thread does.
    let forkMs: Double?

    /// Starts the write: in a forked child process when `fork` is set and
    /// fork succeeds (the model is read there, streamed into the file by
    /// `save`, so `serialised` holds at once), else on a thread of this
    /// process, which serialises the model with `save` into a buffer of
    /// `capacity` bytes, then calls `wake` (the loop resumes what waited for
    /// the serialisation), then writes the buffer. Either way `wake` again
    /// once the outcome is known (a SNAPSHOT request waits for the file).
    /// A writer process asleep `stallSeconds` without using the CPU is
    /// killed (SnapshotProcess.wait).
    init(job: SnapshotJob, startedNs: UInt64, pauseMs: Double, fork: Bool, stallSeconds: Int, capacity: Int,
         save: @escaping @Sendable (inout SnapshotWriter) -> Void, wake: @escaping @Sendable () -> Void) {
        seq = job.seq
        self.startedNs = startedNs
        self.pauseMs = pauseMs
        var child: SnapshotProcess.Child?
        if fork {
            switch SnapshotProcess.start(job: job, save: save) {
            case .success(let c): child = c
            case .failure(let why):
                Log.warning("snapshot at sequence \(job.seq): cannot fork its writer process (\(why)); serialising it on a thread, which holds new events meanwhile")
            }
        }
        forkMs = child?.forkMs
        if let child {
            serialisedFlag.store(true, ordering: .releasing)
            let failed = SpawnedThread.start(name: "snapshot-wait") { [self] in
                wake()
                let report = SnapshotProcess.wait(for: child, job: job, stallSeconds: stallSeconds)
                serialisedSize.store(report.size, ordering: .relaxed)
                serialiseNs.store(report.serialiseNs, ordering: .relaxed)
                outcome.withLock { $0 = report.outcome }
                wake()
                done.signal()
            }
            if let failed {
                // (No thread to wait for it: the child goes, and the
                // snapshot fails now, to be tried again later.)
                SnapshotProcess.abandon(child, job: job)
                fail("cannot start a thread to wait for the snapshot's writer process: \(String(cString: strerror(failed)))")
            }
            return
        }
        let failed = SpawnedThread.start(name: "snapshot") { [self] in
            let t0 = MonotonicClock.nowNanos()
            var w = SnapshotWriter(capacity: capacity)
            save(&w)
            payload = w.bytes
            w = SnapshotWriter()
            serialisedSize.store(payload.count, ordering: .relaxed)
            serialiseNs.store(MonotonicClock.nowNanos() - t0, ordering: .relaxed)
            serialisedFlag.store(true, ordering: .releasing)
            wake()
            let result = Result { try job.write(&self.payload) }
            outcome.withLock { $0 = result }
            // (Again: a SNAPSHOT request waits for the file to be durable.)
            wake()
            done.signal()
        }
        if let failed { fail("cannot start a thread to write the snapshot: \(String(cString: strerror(failed)))") }
    }

    /// No thread was started: the snapshot failed before it began (the
    /// loop collects the failure on its next turn, and new events are not
    /// held for it).
    private func fail(_ why: String) {
        outcome.withLock { $0 = .failure(LogError(why)) }
        serialisedFlag.store(true, ordering: .releasing)
        done.signal()
    }

    /// Whether the thread has finished reading the model (never blocks).
    var serialised: Bool { serialisedFlag.load(ordering: .acquiring) }

    /// The serialised size (bytes) and how long serialising took (ms);
    /// valid once `serialised`.
    var size: Int { serialisedSize.load(ordering: .relaxed) }
    var serialiseMs: Double { Double(serialiseNs.load(ordering: .relaxed)) / 1e6 }

    /// The outcome once the write has finished, else nil (never blocks).
    var finished: Result<SnapshotWritten, any Error>? { outcome.withLock { $0 } }

    /// Blocks until the write has finished; returns its outcome.
    func wait() -> Result<SnapshotWritten, any Error> {
        done.wait()
        done.signal()
        return outcome.withLock { $0 }!
    }
}
