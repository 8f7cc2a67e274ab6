// A snapshot being written off the loop thread. The loop serialises the
// model (it must not change meanwhile, and only the loop admits events), then
// a thread of this snapshot's own checksums, writes its description, writes
// and fsyncs the file, gives the buffer's pages back and prunes old
// snapshots; the loop collects the outcome later (`finished`, polled once
// per loop turn) and only then removes the log segments the new snapshot
// covers. So serving pauses for the serialisation only, not for the disk.
//
// Threading invariant (why this is `@unchecked Sendable`): `outcome` is a
// Mutex; `payload` is touched only by the writing thread after `init`
// returns; everything else is immutable.

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
        do {
            file = try store.write(seq: seq, firstLogSegment: firstLogSegment, payload: payload, distinct: distinct) { [store, description] file in
                // A snapshot that replaces one at the same position keeps
                // that version's notes (a rollback, a reload), not its figures.
                var previous = store.metadata(of: file)
                previous.removeValue(forKey: "e1")
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
        return SnapshotWritten(file: file, keepLogFrom: store.prune(keep: keep))
    }
}

final class SnapshotInFlight: @unchecked Sendable {
    let seq: UInt64
    let bytes: Int
    /// When the snapshot began (the loop's pause started) and how long the
    /// loop paused to serialise, for the log line.
    let startedNs: UInt64
    let pauseMs: Double
    private let outcome = Mutex<Result<SnapshotWritten, any Error>?>(nil)
    private let done = DispatchSemaphore(value: 0)
    private var payload: [UInt8]

    init(job: SnapshotJob, payload: [UInt8], startedNs: UInt64, pauseMs: Double) {
        seq = job.seq
        bytes = payload.count
        self.startedNs = startedNs
        self.pauseMs = pauseMs
        self.payload = payload
        let t = Thread { [self] in
            let result = Result { try job.write(&self.payload) }
            outcome.withLock { $0 = result }
            done.signal()
        }
        t.name = "perennial-snapshot"
        t.start()
    }

    /// The outcome once the write has finished, else nil (never blocks).
    var finished: Result<SnapshotWritten, any Error>? { outcome.withLock { $0 } }

    /// Blocks until the write has finished; returns its outcome.
    func wait() -> Result<SnapshotWritten, any Error> {
        done.wait()
        done.signal()
        return outcome.withLock { $0 }!
    }
}
