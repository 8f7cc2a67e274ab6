// `perennial log check|repair`: inspect or repair a data directory's
// write-ahead log without starting a server.

import ArgumentParser
import Foundation
import PerennialEval
import PerennialCore

struct LogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log",
        abstract: "Check or repair the write-ahead log of a data directory.",
        discussion: """
            check   reads every record start-up would read (the log after the
                    newest readable snapshot) and verifies its checksum; reports
                    records, events, a torn tail (which start-up cuts by itself),
                    corruption in the middle (which stops start-up), and notes
                    damage in older segments that snapshot covers (harmless).
                    Exit 0 when the server would start, 1 when it would not.
            repair  cuts the log at the first damaged record start-up would
                    read, losing whatever follows it, so the server can start.
                    Refused while a server runs on the directory. Run check first.
            """
    )

    @Argument(help: "check or repair")
    var action: String
    @Option(help: "The server's data directory.")
    var dataDir = "data"

    func validate() throws {
        guard action == "check" || action == "repair" else { throw ValidationError("action must be check or repair, not '\(action)'") }
    }

    func run() throws {
        let dir = (dataDir as NSString).appendingPathComponent("log")
        // A mistyped path must not pass as an empty, healthy log.
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dataDir, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CommandError("no data directory at \(dataDir)")
        }
        guard FileManager.default.fileExists(atPath: dir) else {
            throw CommandError("no log in \(dataDir) (no \(dir)): not a server's data directory, or one that never started")
        }
        // Never repair under a running server, which appends to the last
        // segment (and may write and prune snapshots): the lock comes
        // before the snapshots are read.
        var lock: Int32 = -1
        if action == "repair" {
            do { lock = try DataDirectoryLock.take(dataDir) } catch {
                // (Only a lock held by a server means "stop it first"; a
                // lock file that cannot be opened is a permissions matter.)
                let inUse = "\(error)".contains("in use by another")
                throw CommandError("\(error)" + (inUse ? ": stop it first" : ": repair needs write access to the data directory"))
            }
        }
        defer { if lock >= 0 { close(lock) } }
        // Start-up reads only the log after the newest snapshot it can
        // load: segments before that snapshot's first are not needed.
        let store = SnapshotStore(directory: (dataDir as NSString).appendingPathComponent("snapshots"))
        let base = store.newestReadable()
        let firstNeeded = base?.info.firstLogSegment ?? 0
        let from = base.map { "the snapshot \($0.file.id) (start-up begins there when it loads with the server's config), then log segment \($0.info.firstLogSegment) on" } ?? "the log alone (no readable snapshot)"
        switch action {
        case "check":
            print("start-up would read \(from)")
            var healthy = true
            var repairable = true
            do {
                if let warning = try FeedbackLog.checkSegmentsPresent(directory: dir, firstNeeded: firstNeeded,
                                                                      fromSnapshot: base.map { "snapshot \($0.file.id)" }) {
                    print("note: \(warning)")
                }
                // Sequence numbers continue from the snapshot's, as start-up
                // checks (a segment cut at a record boundary loses records
                // that every checksum still passes: helper-59).
                var next = (base?.info.seq ?? 0) + 1
                let r = try FeedbackLog.scan(directory: dir, fromSegment: firstNeeded, cutTornTail: false) { record in
                    guard case .feedback(let first, let events) = record else { return }
                    guard first == next else {
                        throw LogError("the log jumps from sequence \(next - 1) to \(first): records are missing")
                    }
                    next = first + UInt64(events.count)
                }
                print("log \(dir), " + (base == nil ? "every segment" : "from segment \(firstNeeded)") + ": \(r.segments) segment(s), \(r.records) records, \(r.events) events, \(r.bytes) bytes")
                if let t = r.tornTail, t.bytes == 0 {
                    print("the last segment \(t.file) is empty (created just before a crash; start-up writes its header again)")
                } else if let t = r.tornTail {
                    print("torn tail: \(t.bytes) bytes at byte \(t.offset) of \(t.file) (start-up cuts it: a write interrupted by a crash, never acknowledged under fsync always; under everysec or no, a power loss can also cut events acknowledged in the last second or so)")
                }
            } catch let missing as FeedbackLog.MissingLogSegments {
                print("damaged: \(missing)")
                healthy = false
                repairable = missing.repairable
            } catch {
                print("damaged: \(error)")
                healthy = false
            }
            // Damage in segments the snapshot covers does not stop start-up.
            let covered = try FeedbackLog.segments(in: dir).filter { $0 < firstNeeded }
            let log = FeedbackLog(directory: dir, policy: .no)
            for n in covered {
                if let at = try? FeedbackLog.firstDamage(inSegment: log.segmentPath(n)) {
                    print("note: \(log.segmentPath(n)) is damaged at byte \(at), but the snapshot \(base!.file.id) covers it, so start-up does not read it (nothing to repair); a rollback to a version older than \(base!.file.id) reads it, and carries over no deletion or item upsert recorded after the damage")
                }
            }
            // The findings above are the report (stdout); the verdict that
            // fails the command goes to stderr, as every failure does.
            guard healthy else {
                throw CommandError(repairable
                      ? "start-up would stop here; `perennial log repair --data-dir \(dataDir)` cuts the log at the damage (losing what follows it)"
                      : "start-up would stop here, and `perennial log repair` cannot help: see above")
            }
            print("ok: a server would start from this data directory")
        default:  // "repair" (validate() admits only the two)
            try repair(dir, from: firstNeeded, after: base?.info.seq ?? 0)
        }
    }

    /// Cuts the log at the first record that fails its checksum in the
    /// segments start-up reads (from `first` on), and drops any later segments.
    private func repair(_ dir: String, from first: Int, after snapshotSeq: UInt64) throws {
        var numbers = try FeedbackLog.segments(in: dir).filter { $0 >= first }
        let log = FeedbackLog(directory: dir, policy: .no)
        // Segments missing in the middle: what follows the gap cannot be
        // replayed (its sequence numbers do not continue), so it goes.
        var cutAlready = false
        if let gap = numbers.indices.dropLast().first(where: { numbers[$0 + 1] != numbers[$0] + 1 }) {
            cutAlready = true
            print("segments are missing after \(log.segmentPath(numbers[gap]))")
            for later in numbers[(gap + 1)...] {
                try FileManager.default.removeItem(atPath: log.segmentPath(later))
                print("removed \(log.segmentPath(later)), which followed the missing segments")
            }
            numbers = Array(numbers[...gap])
        }
        for (index, n) in numbers.enumerated() {
            let path = log.segmentPath(n)
            guard let cut = try FeedbackLog.firstDamage(inSegment: path) else { continue }
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            guard truncate(path, off_t(cut)) == 0 else { throw CommandError("cannot truncate \(path): \(String(cString: strerror(errno)))") }
            print("cut \(path) at byte \(cut) (\(size - cut) bytes removed)")
            for later in numbers[(index + 1)...] {
                try FileManager.default.removeItem(atPath: log.segmentPath(later))
                print("removed \(log.segmentPath(later)), which followed the damage")
            }
            // (Records may also be missing before the damage: checked below,
            // so one run leaves a log that starts.)
            numbers = Array(numbers[...index])
            cutAlready = true
            break
        }
        // Records missing at a record boundary (a segment cut short): what
        // follows cannot be replayed, so it goes, as after a gap.
        if let jump = try FeedbackLog.firstSequenceJump(directory: dir, segments: numbers, after: snapshotSeq) {
            let path = log.segmentPath(jump.segment)
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            guard truncate(path, off_t(jump.offset)) == 0 else { throw CommandError("cannot truncate \(path): \(String(cString: strerror(errno)))") }
            print("records are missing before byte \(jump.offset) of \(path) (its sequence numbers do not continue): cut there (\(size - jump.offset) bytes removed)")
            for later in numbers where later > jump.segment {
                try FileManager.default.removeItem(atPath: log.segmentPath(later))
                print("removed \(log.segmentPath(later)), which followed the missing records")
            }
            return
        }
        print(cutAlready ? "the rest of the log is whole" : "nothing to repair")
    }
}
