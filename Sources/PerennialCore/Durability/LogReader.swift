// Reading the log one record at a time: the cursor behind `FeedbackLog.scan`
// and behind recovery, which replays a record, serves the requests that
// came in meanwhile, and goes on (so a restart answers reads while it
// catches up). One segment file is in memory at a time.
//
// What counts as damage and what as a torn tail is decided here, once:
// a torn or corrupt tail of the last segment (a crash in the middle of a
// write) is reported in `report.tornTail` and, with `cutTornTail`,
// truncated away; damage anywhere else throws, since records after it
// exist and cutting would lose them.

import Foundation

public struct LogReader {
    public let directory: String
    public let cutTornTail: Bool
    /// What was read so far (all of it once `next` returned nil).
    public private(set) var report = LogScanReport()
    private let numbers: [Int]
    private var index = -1
    private var path = ""
    private var bytes: [UInt8] = []
    private var offset = 0
    private var seed: UInt32 = 0
    /// Where the record `next` returned last starts: "<file> at byte N".
    public private(set) var position = ""

    public init(directory: String, fromSegment: Int = 0, cutTornTail: Bool) throws {
        self.directory = directory
        self.cutTornTail = cutTornTail
        numbers = try FeedbackLog.segments(in: directory).filter { $0 >= fromSegment }
    }

    /// The next record in log order, or nil at the end of the log.
    public mutating func next() throws -> LogRecord? {
        while true {
            if offset < bytes.count, let record = try recordHere() { return record }
            guard try openNextSegment() else { return nil }
        }
    }

    /// The record at `offset` of the current segment, or nil when the
    /// segment's end (or its torn tail) is reached.
    private mutating func recordHere() throws -> LogRecord? {
        let isLast = index == numbers.count - 1
        let here = offset, seed = seed, path = path
        // (The segment's bytes are only read in here; what to do next is
        // decided after, so nothing of `self` changes while they are borrowed.)
        let read: (record: LogRecord, end: Int)? = try bytes.withUnsafeBytes { raw in
            switch FeedbackLog.record(in: raw, at: here, seed: seed) {
            case .valid(let payload, let end):
                guard let record = LogRecord.decode(payload: payload) else {
                    throw LogError("\(path) at byte \(here): a record with a valid checksum does not parse")
                }
                return (record, end)
            case .bad:
                if !isLast || FeedbackLog.recordsFollow(in: raw, damageAt: here, seed: seed) {
                    throw LogError("\(path) is corrupt at byte \(here) and valid records follow (not a torn tail): a server does not start from such a log, so nothing after the damage is lost silently. Inspect with `perennial log check`, or cut the log there with `perennial log repair` (losing what follows).")
                }
                if !FeedbackLog.couldBeTorn(raw, at: here) {
                    throw LogError("\(path) is corrupt at byte \(here): the damaged record is whole and \(raw.count - here) bytes follow its start, which an interrupted write cannot leave (not a torn tail; damage to the segment's header or to a record, so the events after it may have been acknowledged): a server does not start from such a log. Inspect with `perennial log check`, or cut the log there with `perennial log repair` (losing what follows).")
                }
                return nil
            }
        }
        if let (record, end) = read {
            offset = end
            position = "\(path) at byte \(here)"
            if case .feedback(_, let events) = record { report.events += events.count }
            report.records += 1
            return record
        }
        report.tornTail = (path, here, bytes.count - here)
        if cutTornTail { try FeedbackLog.truncate(path, to: here) }
        bytes = []
        offset = 0
        return nil
    }

    /// Moves to the next segment with records; false at the end of the log.
    private mutating func openNextSegment() throws -> Bool {
        while index + 1 < numbers.count {
            index += 1
            path = (directory as NSString).appendingPathComponent(FeedbackLog.segmentName(numbers[index]))
            bytes = try FileBytes.read(path)
            let isLast = index == numbers.count - 1
            report.segments += 1
            report.bytes += bytes.count
            switch bytes.withUnsafeBytes({ FeedbackLog.readHeader($0) }) {
            case .format(let f):
                offset = f.recordsStart
                seed = f.seed
                if offset < bytes.count { return true }
            case .torn where isLast:
                // Created at the crash: its header was not even whole.
                report.tornTail = (path, 0, bytes.count)
                if cutTornTail { try FeedbackLog.truncate(path, to: 0) }
                bytes = []
            case .torn, .bad:
                throw LogError("\(path): not a Perennial log segment (bad magic)")
            }
        }
        bytes = []
        return false
    }
}
