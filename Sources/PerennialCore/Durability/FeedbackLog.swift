// The write-ahead log of accepted feedback and item upserts: segment files
// `NNNNNNNN.log` in `<data_dir>/log`, records with length and CRC-32C
// (LogRecord.swift), appended in acceptance order before an event reaches
// the learner. A restart replays the log through the model; because learning
// is deterministic in log order, the recovered model is the one that stopped.
//
// fsync policies (what an acknowledgement promises; cf. Redis' appendfsync):
//   always   — the log is fdatasync'ed before any reply acknowledging it is
//              sent: an acknowledged event survives a crash of the process
//              or of the machine.
//   everysec — records are written to the OS at once and fdatasync'ed by a
//              background thread about once a second: a process crash loses
//              nothing acknowledged, a machine crash or power loss can lose
//              the last second or so. Acks carry the durable point reached.
//   no       — written to the OS, flushed when the OS decides: a process
//              crash loses nothing, a machine crash can lose more.
//
// Threading (why `@unchecked Sendable`): `append` and `sync` run on the
// serving thread; the everysec thread only runs `everySecond`; the file
// descriptor and sequence counters are guarded by `lock`, which the
// everysec thread does not hold across its fdatasync (so an append, and
// the event loop with it, never waits for the disk).

import Foundation
import Synchronization

public enum FsyncPolicy: String, Sendable, CaseIterable {
    case always, everysec, no
}

public struct LogError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ d: String) { description = d }
}

/// What a scan of the log found.
public struct LogScanReport: Sendable {
    public var segments = 0
    public var records = 0
    public var events = 0
    public var bytes = 0
    /// A torn or corrupt tail: where it started and how many bytes it held.
    public var tornTail: (file: String, offset: Int, bytes: Int)?
}

public final class FeedbackLog: @unchecked Sendable {
    public let directory: String
    public let policy: FsyncPolicy
    public let segmentBytes: Int
    /// (A condition too: a sync on the serving thread waits for the
    /// everysec thread's sync in flight, `backgroundSyncing`.)
    private let lock = NSCondition()
    private var fd: Int32 = -1
    private var segmentNumber = 0
    private var segmentSize = 0
    /// The open segment's checksum seed (its salt; 0 in format 1).
    private var seed: UInt32 = 0
    private var written: UInt64 = 0
    /// Records were written since the last fdatasync. (Not `written >
    /// durable`: upserts and deletions are logged without a new sequence
    /// number, and must be synced all the same; review finding.)
    private var unsynced = false
    /// Records appended so far: the everysec thread's fdatasync covers the
    /// records appended before it began, and clears `unsynced` only if no
    /// other came meanwhile.
    private var appends: UInt64 = 0
    /// The everysec thread is in an fdatasync, without the lock. Any other
    /// sync waits for its outcome first: a write-back error is reported to
    /// one fdatasync of the file only, so a sync that ran beside a failing
    /// one could succeed and publish as durable what was not (review
    /// finding, helper-80).
    private var backgroundSyncing = false
    private let durable = Atomic<UInt64>(0)
    private var stopping = false
    private var syncer: Thread?
    private let syncerDone = DispatchSemaphore(value: 0)
    private var encoded: [UInt8] = []
    /// Set when a write or fsync failed; feedback is refused until restart.
    private var failure: String? { didSet { failedFlag.store(failure != nil, ordering: .relaxed) } }
    /// `failure != nil`, readable without the lock (which the everysec
    /// thread holds across a slow fdatasync: STATS must not wait for it).
    private let failedFlag = Atomic<Bool>(false)

    public init(directory: String, policy: FsyncPolicy, segmentBytes: Int = 64 << 20) {
        self.directory = directory
        self.policy = policy
        self.segmentBytes = segmentBytes
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    // MARK: reading

    public static func segmentName(_ n: Int) -> String { String(format: "%08d.log", n) }

    /// Segment numbers present, in order: files named as `segmentName`
    /// names them (eight digits, `.log`), so a stray copy such as `9.log`
    /// is not taken for segment 9 (review finding, helper-59: `log repair`
    /// then removed the real one). A directory that does not exist holds
    /// none; one that cannot be listed throws, rather than read as an
    /// empty log (helper-59: the server then numbered new events from its
    /// snapshot again, on top of the log it could not see).
    public static func segments(in directory: String) throws -> [Int] {
        guard let dir = opendir(directory) else {
            if errno == ENOENT { return [] }
            throw LogError("cannot list the log directory \(directory): \(String(cString: strerror(errno)))")
        }
        defer { closedir(dir) }
        var found: [Int] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let n = segmentNumber(name) { found.append(n) }
        }
        return found.sorted()
    }

    /// The segment a file name names, if it is one (`segmentName`'s form).
    static func segmentNumber(_ name: String) -> Int? {
        let digits = name.utf8.prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        guard digits.count >= 8, name.utf8.count == digits.count + 4, name.hasSuffix(".log"),
              let n = Int(name.dropLast(4)), segmentName(n) == name else { return nil }
        return n
    }

    /// Checks that the segments start-up reads are all there: from
    /// `firstNeeded` (a snapshot's first uncovered segment; with no snapshot,
    /// the log's start, segment 1) on, numbered without a gap. A snapshot
    /// whose segment is missing while older segments remain means the log
    /// after it was removed, or the snapshot came from another data
    /// directory: either way, starting would silently lose or mix events
    /// (review finding: a copied-in snapshot was adopted, and the
    /// directory's own log then pruned). Throws naming what is missing;
    /// returns a warning when there is no log at all beside a snapshot (a
    /// directory seeded from a copied snapshot, or one whose log was lost).
    public static func checkSegmentsPresent(directory: String, firstNeeded: Int, fromSnapshot: String?) throws -> String? {
        let all = try segments(in: directory)
        let needed = all.filter { $0 >= firstNeeded }
        let dir = directory
        if let snapshot = fromSnapshot {
            if all.isEmpty {
                return "the log (\(dir)) holds no segment: starting from \(snapshot) alone; any events acknowledged after it are not in this directory"
            }
            guard let first = needed.first else {
                throw MissingLogSegments(repairable: false, message: "\(dir)/\(segmentName(firstNeeded)), the log segment that follows \(snapshot), is missing, and the log ends before it (at \(segmentName(all.last!))): the log after the snapshot was removed, or the snapshot comes from another data directory. Start-up stops rather than lose or mix events: put the segment back; if the snapshot came from elsewhere, remove it; to start from the snapshot alone (losing what was logged after it), move the log directory out")
            }
            if first != firstNeeded {
                throw MissingLogSegments(repairable: false, message: "\(dir)/\(segmentName(firstNeeded)), the log segment that follows \(snapshot), is missing (the log after it starts at \(segmentName(first))): the events in it, and so every later one, cannot be replayed. Put it back; or, to start from the snapshot alone (losing everything logged after it), move the log directory out")
            }
        } else if let first = all.first, first > 1 {
            throw MissingLogSegments(repairable: false, message: "the log (\(dir)) starts at \(segmentName(first)) and no snapshot covers the segments before it: they are missing, so the model cannot be rebuilt. Restore them or a snapshot")
        }
        for (a, b) in zip(needed, needed.dropFirst()) where b != a + 1 {
            let missing = b == a + 2 ? segmentName(a + 1) : "\(segmentName(a + 1)) to \(segmentName(b - 1))"
            throw MissingLogSegments(repairable: true, message: "\(dir): log segment(s) \(missing) are missing between \(segmentName(a)) and \(segmentName(b)): the events in them would be lost. Put them back; or cut the log before the gap with `perennial log repair` (losing every event after it)")
        }
        return nil
    }

    /// What `checkSegmentsPresent` found missing; `repairable` when
    /// `perennial log repair` can make the log startable (a gap: the
    /// segments after it go).
    public struct MissingLogSegments: Error, CustomStringConvertible {
        public var repairable: Bool
        public var message: String
        public var description: String { message }
        public init(repairable: Bool, message: String) {
            self.repairable = repairable
            self.message = message
        }
    }

    /// Reads every record in order, calling `visit` for each (`LogReader`
    /// says what is cut as a torn tail and what throws as damage). An error
    /// `visit` throws as a `LogError` is prefixed with where the record is.
    @discardableResult
    public static func scan(directory: String, fromSegment: Int = 0, cutTornTail: Bool,
                            visit: (LogRecord) throws -> Void) throws -> LogScanReport {
        var reader = try LogReader(directory: directory, fromSegment: fromSegment, cutTornTail: cutTornTail)
        while let record = try reader.next() {
            do { try visit(record) } catch let e as LogError {
                // (Where in the log: e.g. a jump in sequence numbers.)
                throw LogError("\(reader.position): \(e.description)")
            }
        }
        return reader.report
    }

    /// Whether records follow damage at `offset` of the last segment, so
    /// cutting there would lose acknowledged events: any record after it
    /// that checks out (a damaged length field must not make the records
    /// after it look torn). Only the server writes records that check out
    /// (format 2 seeds every checksum with the segment's secret salt), so
    /// bytes a client sent, in the torn record or anywhere, never count.
    static func recordsFollow(in raw: UnsafeRawBufferPointer, damageAt offset: Int, seed: UInt32) -> Bool {
        var probe = offset + 1
        while probe + 8 <= raw.count {
            if case .valid = record(in: raw, at: probe, seed: seed) { return true }
            probe += 1
        }
        return false
    }

    /// Whether a bad record at `offset`, the last segment's first, with no
    /// valid record after it, can be what a crash leaves: a write cut short
    /// (the record's length runs to or past the end, or not even its
    /// length is whole) or, after a power loss, pages the file system
    /// extended the file by but never wrote: zeros from somewhere inside
    /// the bad record (a page boundary) to the end (helper-61). A whole
    /// record followed by other bytes cannot be: that is damage, e.g. to
    /// the segment's salt, which fails every record's checksum (review
    /// finding, helper-59: the whole segment was cut as a "torn tail",
    /// acknowledged events with it).
    static func couldBeTorn(_ raw: UnsafeRawBufferPointer, at offset: Int) -> Bool {
        guard raw.count - offset >= 8 else { return true }
        let length = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
        let end = offset + 8 + length
        if end >= raw.count { return true }
        // Where the trailing zeros start.
        var zeros = raw.count
        while zeros > offset && raw[zeros - 1] == 0 { zeros -= 1 }
        return zeros <= end
    }

    /// Where the first damaged record of a segment file starts (0 for a bad
    /// magic), or nil when every record is whole. For `perennial log repair`.
    public static func firstDamage(inSegment path: String) throws -> Int? {
        let bytes = try FileBytes.read(path)
        return bytes.withUnsafeBytes { raw -> Int? in
            guard case .format(let format) = readHeader(raw) else { return 0 }
            var offset = format.recordsStart
            while offset < raw.count {
                guard case .valid(_, let end) = record(in: raw, at: offset, seed: format.seed) else { return offset }
                offset = end
            }
            return nil
        }
    }

    /// Where, in segments `numbers` (whole ones, in order), the first
    /// FEEDBACK record whose sequence does not continue from `after` (the
    /// snapshot's) starts: records are missing before it (a segment cut at
    /// a record boundary). Nil when the sequence continues. For `perennial
    /// log repair`, after it has cut any damage.
    public static func firstSequenceJump(directory: String, segments numbers: [Int], after seq: UInt64) throws -> (segment: Int, offset: Int)? {
        var next = seq + 1
        for n in numbers {
            let path = (directory as NSString).appendingPathComponent(segmentName(n))
            let found: Int? = try FileBytes.read(path).withUnsafeBytes { raw in
                guard case .format(let format) = readHeader(raw) else { return nil }
                var offset = format.recordsStart
                while offset < raw.count, case .valid(let payload, let end) = record(in: raw, at: offset, seed: format.seed) {
                    if case .feedback(let first, let events)? = LogRecord.decode(payload: payload) {
                        if first != next { return offset }
                        next = first + UInt64(events.count)
                    }
                    offset = end
                }
                return nil
            }
            if let found { return (n, found) }
        }
        return nil
    }

    /// The path of segment `n`.
    public func segmentPath(_ n: Int) -> String { (directory as NSString).appendingPathComponent(FeedbackLog.segmentName(n)) }

    /// Where a segment's records start and the seed of their checksums.
    struct SegmentFormat {
        var recordsStart: Int
        var seed: UInt32
    }

    enum HeaderRead {
        case format(SegmentFormat)
        /// Shorter than a header, and what is there is the start of one.
        case torn
        case bad
    }

    /// A segment's header: format 2 (magic, salt) or format 1 (magic alone).
    static func readHeader(_ raw: UnsafeRawBufferPointer) -> HeaderRead {
        let m = LogRecord.magic.count
        if raw.count >= m && raw.prefix(m).elementsEqual(LogRecord.magicV1) {
            return .format(SegmentFormat(recordsStart: m, seed: 0))
        }
        if raw.count >= LogRecord.segmentHeaderSize && raw.prefix(m).elementsEqual(LogRecord.magic) {
            let salt = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: m, as: UInt64.self))
            return .format(SegmentFormat(recordsStart: LogRecord.segmentHeaderSize, seed: UInt32(truncatingIfNeeded: salt)))
        }
        if raw.count < LogRecord.segmentHeaderSize && raw.prefix(m).elementsEqual(LogRecord.magic.prefix(min(m, raw.count))) {
            return .torn
        }
        return .bad
    }

    enum RecordRead {
        case valid(UnsafeRawBufferPointer, end: Int)
        case bad
    }

    static func record(in raw: UnsafeRawBufferPointer, at offset: Int, seed: UInt32) -> RecordRead {
        guard raw.count - offset >= 8 else { return .bad }
        let length = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
        let crc = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
        let end = offset + 8 + length
        guard length > 0, end <= raw.count else { return .bad }
        let payload = UnsafeRawBufferPointer(rebasing: raw[(offset + 8)..<end])
        guard CRC32C.checksum(payload, seed: seed) == crc else { return .bad }
        return .valid(payload, end: end)
    }

    /// (The caller reports the cut: the scan's `tornTail`.)
    static func truncate(_ path: String, to size: Int) throws {
        guard Glibc.truncate(path, off_t(size)) == 0 else {
            throw LogError("cannot truncate \(path): \(String(cString: strerror(errno)))")
        }
    }

    // MARK: writing

    /// Opens the newest segment for appending (creating the first), with
    /// `lastSeq` as the sequence already in the log; starts the everysec
    /// thread when that is the policy.
    public func openForAppend(lastSeq: UInt64, atLeastSegment: Int = 1) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let existing = try FeedbackLog.segments(in: directory)
        var first = max(existing.last ?? 1, atLeastSegment)
        // New records go into a salted (format 2) segment: a format-1 one
        // from an older build is left as it is.
        if let last = existing.last, first == last, FeedbackLog.isFormat1(segmentPath(last)) { first += 1 }
        try openSegment(first)
        written = lastSeq
        durable.store(lastSeq, ordering: .releasing)
        if policy == .everysec {
            let t = Thread { [self] in everySecond() }
            t.name = "perennial-fsync"
            syncer = t
            t.start()
        }
    }

    private func openSegment(_ n: Int) throws {
        // The old segment is made durable before the new one exists, so a
        // torn record can only ever be in the last segment.
        waitForBackgroundSync()
        if let failure { throw LogError(failure) }
        // (Not again when the everysec thread's sync, just waited for, or
        // another, covered every record: `unsynced` is false only then.)
        if fd >= 0 && unsynced && fdatasync(fd) != 0 {
            failure = "fdatasync failed (\(String(cString: strerror(errno)))); restart the server"
            throw LogError(failure!)
        }
        let path = (directory as NSString).appendingPathComponent(FeedbackLog.segmentName(n))
        let existed = access(path, F_OK) == 0
        let f = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard f >= 0 else { throw LogError("cannot open \(path): \(String(cString: strerror(errno)))") }
        var st = stat()
        fstat(f, &st)
        segmentSize = Int(st.st_size)
        if segmentSize == 0 {
            // A new segment's salt: never leaves the server.
            let salt = UInt64.random(in: 1...UInt64.max)
            var header = LogRecord.magic
            withUnsafeBytes(of: salt.littleEndian) { header.append(contentsOf: $0) }
            guard writeAll(f, header) else {
                let why = String(cString: strerror(errno))
                // (One this call created is not left behind empty: on a
                // full disk, a graceful stop's snapshot left a 0-byte
                // segment that the next start could not write a header into
                // either: helper-59. One that was there already, maybe named
                // by a snapshot, stays: helper-62.)
                Glibc.close(f)
                if !existed { unlink(path) }
                throw LogError("cannot write \(path): \(why)")
            }
            seed = UInt32(truncatingIfNeeded: salt)
            segmentSize = header.count
            // Make the new file's directory entry durable too.
            let dir = open(directory, O_RDONLY | O_DIRECTORY)
            if dir >= 0 { fsync(dir); Glibc.close(dir) }
        } else {
            var header = [UInt8](repeating: 0, count: LogRecord.segmentHeaderSize)
            let got = header.withUnsafeMutableBytes { pread(f, $0.baseAddress, $0.count, 0) }
            guard got > 0, case .format(let format) = header.prefix(max(got, 0)).withUnsafeBytes({ FeedbackLog.readHeader($0) }) else {
                Glibc.close(f)
                throw LogError("\(path): not a Perennial log segment (bad magic)")
            }
            seed = format.seed
        }
        if fd >= 0 { Glibc.close(fd) }
        fd = f
        segmentNumber = n
    }

    /// Whether the segment at `path` is in format 1 (no salt).
    static func isFormat1(_ path: String) -> Bool {
        guard let f = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? f.close() }
        let head = (try? f.read(upToCount: LogRecord.magicV1.count)) ?? Data()
        return [UInt8](head) == LogRecord.magicV1
    }

    private func writeAll(_ f: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        return bytes.withUnsafeBytes { raw in
            while done < raw.count {
                let n = write(f, raw.baseAddress! + done, raw.count - done)
                if n < 0 { if errno == EINTR { continue }; return false }
                done += n
            }
            return true
        }
    }

    /// Writes one record covering sequences up to `lastSeq`. On failure (a
    /// full disk) the partial record is cut off again and the error thrown;
    /// the caller refuses the feedback.
    public func append(_ record: LogRecord, lastSeq: UInt64) throws {
        lock.lock()
        defer { lock.unlock() }
        if let failure { throw LogError(failure) }
        if segmentSize >= segmentBytes { try openSegment(segmentNumber + 1) }
        encoded.removeAll(keepingCapacity: true)
        record.encode(into: &encoded, seed: seed)
        guard writeAll(fd, encoded) else {
            let why = String(cString: strerror(errno))
            // Remove whatever part of the record reached the file.
            if ftruncate(fd, off_t(segmentSize)) != 0 {
                failure = "the log could not be written or repaired (\(why)); restart the server"
            }
            throw LogError("cannot write the log: \(why)")
        }
        segmentSize += encoded.count
        written = lastSeq
        unsynced = true
        appends &+= 1
    }

    /// Starts a new segment: records appended from now on go there. Returns
    /// its number (a snapshot taken now covers every earlier segment).
    public func rollSegment() throws -> Int {
        lock.lock()
        defer { lock.unlock() }
        try syncLocked()
        // A segment that holds no record yet already starts where asked
        // (snapshots retried after a failure, with nothing logged between,
        // must not leave a trail of empty segments).
        if fd >= 0 && segmentSize == LogRecord.segmentHeaderSize { return segmentNumber }
        try openSegment(segmentNumber + 1)
        return segmentNumber
    }

    /// Deletes segments numbered below `segment` (covered by a snapshot).
    /// (A directory that cannot be listed removes nothing.)
    public func removeSegments(before segment: Int) {
        for n in (try? FeedbackLog.segments(in: directory)) ?? [] where n < segment {
            unlink((directory as NSString).appendingPathComponent(FeedbackLog.segmentName(n)))
        }
    }

    /// Makes everything written durable (fdatasync). Under `always` the
    /// server calls this before sending acknowledgements.
    public func sync() throws {
        lock.lock()
        defer { lock.unlock() }
        try syncLocked()
    }

    /// Waits (the lock held, released while waiting) until the everysec
    /// thread's fdatasync in flight, if any, has published its outcome.
    private func waitForBackgroundSync() {
        while backgroundSyncing { lock.wait() }
    }

    private func syncLocked() throws {
        waitForBackgroundSync()
        // Once an fsync failed, a later one may report success for pages the
        // kernel dropped: never trust the log again until a restart.
        if let failure { throw LogError(failure) }
        let target = written
        guard unsynced else { return }
        if fdatasync(fd) != 0 {
            let why = String(cString: strerror(errno))
            failure = "fdatasync failed (\(why)); acknowledged events may not be durable; restart the server"
            // (Once: from now on every append is refused with this reason,
            // and those refusals are logged by the server, rate-limited.)
            Log.error("the log: \(failure!)")
            throw LogError(failure!)
        }
        durable.store(target, ordering: .releasing)
        unsynced = false
    }

    /// The highest sequence known to be on stable storage.
    public var durableSeq: UInt64 { durable.load(ordering: .acquiring) }

    /// Whether the log refuses every append until a restart (an fsync
    /// failed, or a failed write could not be cut off again).
    public var failed: Bool { failedFlag.load(ordering: .relaxed) }

    /// Whether records were written that are not yet fsynced.
    public var hasUnsynced: Bool {
        lock.lock()
        defer { lock.unlock() }
        return unsynced
    }

    private func everySecond() {
        while true {
            lock.lock()
            let stop = stopping
            // What this sync covers is taken under the lock; the fdatasync
            // runs without it, so an append never waits behind the disk: it
            // held the event loop for the whole fdatasync, reads included
            // (review finding, helper-79). Another sync (a segment roll, a
            // snapshot's, the close) waits for it (backgroundSyncing), and
            // so does the only place that closes the descriptor, a roll.
            var job: (fd: Int32, target: UInt64, appends: UInt64)?
            if !stop && unsynced && failure == nil && fd >= 0 && !backgroundSyncing {
                job = (fd, written, appends)
                backgroundSyncing = true
            }
            lock.unlock()
            if stop { break }
            if let job {
                let ok = fdatasync(job.fd) == 0
                let why = String(cString: strerror(errno))
                lock.lock()
                if !ok {
                    // (As in syncLocked: never trust the log again until a restart.)
                    if failure == nil {
                        failure = "fdatasync failed (\(why)); acknowledged events may not be durable; restart the server"
                        Log.error("the log: \(failure!)")
                    }
                } else {
                    // (Monotonic whatever the order: no other sync ran meanwhile.)
                    if job.target > durable.load(ordering: .relaxed) { durable.store(job.target, ordering: .releasing) }
                    if appends == job.appends { unsynced = false }
                }
                backgroundSyncing = false
                lock.broadcast()
                lock.unlock()
            }
            usleep(1_000_000)
        }
        syncerDone.signal()
    }

    /// Syncs what is written and stops the everysec thread.
    public func close() {
        lock.lock()
        stopping = true
        try? syncLocked()
        lock.unlock()
        if syncer != nil { syncerDone.wait(); syncer = nil }
    }
}

#if canImport(Glibc)
import Glibc
#endif
