// `perennial log check|repair`: inspect or repair a data directory's
// write-ahead log without starting a server.

import ArgumentParser
import Foundation
import PerennialCore

struct LogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log",
        abstract: "Check or repair the write-ahead log of a data directory.",
        discussion: """
            check   reads every record and verifies its checksum; reports records,
                    events, a torn tail (which start-up cuts by itself) and any
                    corruption in the middle (which stops start-up). Exit 0 when
                    the server would start, 1 when it would not.
            repair  cuts the log at the first damaged record, losing whatever
                    follows it, so the server can start. Run check first.
            """
    )

    @Argument(help: "check or repair")
    var action: String
    @Option(help: "The server's data directory.")
    var dataDir = "data"

    func run() throws {
        let dir = (dataDir as NSString).appendingPathComponent("log")
        // A mistyped path must not pass as an empty, healthy log.
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dataDir, isDirectory: &isDirectory), isDirectory.boolValue else {
            print("no data directory at \(dataDir)")
            throw ExitCode(1)
        }
        guard FileManager.default.fileExists(atPath: dir) else {
            print("no log in \(dataDir) (no \(dir)): not a server's data directory, or one that never started")
            throw ExitCode(1)
        }
        switch action {
        case "check":
            do {
                let r = try FeedbackLog.scan(directory: dir, cutTornTail: false) { _ in }
                print("log \(dir): \(r.segments) segment(s), \(r.records) records, \(r.events) events, \(r.bytes) bytes")
                if let t = r.tornTail {
                    print("torn tail: \(t.bytes) bytes at byte \(t.offset) of \(t.file) (start-up cuts it: it was never acknowledged)")
                }
                print("ok: a server would start from this log")
            } catch {
                print("damaged: \(error)")
                throw ExitCode(1)
            }
        case "repair":
            try repair(dir)
        default:
            throw ValidationError("action must be check or repair")
        }
    }

    /// Cuts the log at the first record that fails its checksum, and drops
    /// any later segments.
    private func repair(_ dir: String) throws {
        let numbers = FeedbackLog.segments(in: dir)
        let log = FeedbackLog(directory: dir, policy: .no)
        for (index, n) in numbers.enumerated() {
            let path = log.segmentPath(n)
            guard let cut = try FeedbackLog.firstDamage(inSegment: path) else { continue }
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            guard truncate(path, off_t(cut)) == 0 else { throw ValidationError("cannot truncate \(path)") }
            print("cut \(path) at byte \(cut) (\(size - cut) bytes removed)")
            for later in numbers[(index + 1)...] {
                try FileManager.default.removeItem(atPath: log.segmentPath(later))
                print("removed \(log.segmentPath(later)), which followed the damage")
            }
            return
        }
        print("nothing to repair")
    }
}
