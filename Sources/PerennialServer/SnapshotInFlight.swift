// An automatic snapshot being taken off the loop thread. The loop only
// prepares it (the learner has applied everything accepted, a new log
// segment is started, the description is built); this snapshot's own thread
// then serialises the model, and from then on needs nothing of it: it
// checksums, writes the description, writes and fsyncs the file, gives the
// buffer's pages back and prunes old snapshots. The loop collects the
// outcome later (`finished`, polled once per loop turn) and only then
// removes the log segments the new snapshot covers. So serving does not
// pause for the snapshot at all, not even for the serialisation.
//
// Threading invariant (why this is `@unchecked Sendable`, and why the
// model may be read here while the loop serves): until `serialised` is set
// the loop changes nothing `Model.save` reads. It admits no FEEDBACK and no
// UPSERT_ITEM (they wait, parked, as for a full learner queue), a RELOAD
// (request or SIGHUP) waits, parked, for the serialisation, and the learner is
// idle, having applied everything accepted; RECOMMEND, SCORE and STATS
// only read the model and write serving scratch (top-k, exclusions, the
// quantised item copies, text-cnn's cached encodings) that snapshots do not
// hold. `serialised` is stored with release ordering after the last read
// of the model, and loaded with acquire ordering by the loop before it
// admits anything again. `outcome` is a Mutex; `payload` is touched only by
// the thread; everything else is immutable.

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
        let file: SnapshotFile
        var description = description
        description["bytes"] = payload.count
        do {
            file = try store.write(seq: seq, firstLogSegment: firstLogSegment, payload: payload, distinct: distinct) { [store, description] file in
                // A snapshot that replaces one at the same position keeps
                // that version's notes (a rollback, a reload), not its figures.
                var previous = store.metadata(of: file)
                previous.removeValue(forKey: "e1")
                previous.removeValue(forKey: "e1_by_scorer")
                return description.merging(previous) { new, _ in new }
            }
        } catch {
            payload = []
            throw error
        }
        // The serialised model was one large buffer: hand its pages back to
        // the OS now rather than keep them as free heap.
        payload = []
        _ = malloc_trim(0)
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

    /// Starts the thread: `serialise` (the model's bytes), then `wake` (the
    /// loop resumes what waited for the serialisation), then the write,
    /// then `wake` again (for a SNAPSHOT request waiting for the file).
    init(job: SnapshotJob, startedNs: UInt64, pauseMs: Double,
         serialise: @escaping @Sendable () -> [UInt8], wake: @escaping @Sendable () -> Void) {
        seq = job.seq
        self.startedNs = startedNs
        self.pauseMs = pauseMs
        let t = Thread { [self] in
            let t0 = MonotonicClock.nowNanos()
            payload = serialise()
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
        t.name = "perennial-snapshot"
        t.start()
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
