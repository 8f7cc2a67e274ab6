import CKernels
import Foundation
import ScratchDirectory
import Testing
@testable import PerennialCore
import Popularity

@Suite struct FeedbackLogTests {
    func tempDir() -> String {
        let d = ScratchDirectory.path("log")
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    func events(_ n: Int, from start: Int = 0) -> [IncomingEvent] {
        var out: [IncomingEvent] = []
        for k in start..<(start + n) {
            let user = UInt64(k % 7 + 1), item = UInt64(k % 11 + 1)
            let value = Float(k % 5) + 0.5, timestamp = Int64(1000 + k)
            out.append(IncomingEvent(user: user, item: item, kind: .rating, value: value, timestamp: timestamp))
        }
        return out
    }

    @Test func crc32cKnownAnswer() {
        // The standard check value of CRC-32C (RFC 3720, appendix B.4).
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(pk_crc32c_plain(0, Array("123456789".utf8), 9) == 0xE306_9283)
        // The crc32-instruction path equals the table, for every tail length
        // and with seeds (a log segment's salt seeds its records' checksums).
        var rng = SplitMix64(seed: 11)
        let data = (0..<1500).map { _ in UInt8(truncatingIfNeeded: rng.below(256)) }
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 1500] {
            for seed: UInt32 in [0, 0xDEAD_BEEF] {
                #expect(pk_crc32c(seed, data, n) == pk_crc32c_plain(seed, data, n), "n \(n)")
            }
        }
        // Continuing from a checksum equals checksumming the whole.
        let whole = pk_crc32c(0, data, 1500)
        #expect(data.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[700...]), seed: pk_crc32c(0, data, 700)) } == whole)
    }

    /// Upserts and deletions are logged at the sequence of the events
    /// before them: they must be synced all the same (review finding: under
    /// `always` they were acknowledged without an fdatasync).
    @Test func recordsWithoutANewSequenceAreSynced() throws {
        let log = FeedbackLog(directory: tempDir(), policy: .always, segmentBytes: 1 << 20)
        try log.openForAppend(lastSeq: 0)
        try log.append(.feedback(firstSeq: 1, events: events(5, from: 0)), lastSeq: 5)
        try log.sync()
        #expect(!log.hasUnsynced && log.durableSeq == 5)
        for record in [LogRecord.upsert(item: 3, text: "t", attributes: []), .deleteItems(items: [3]), .deleteUsers(users: [1])] {
            try log.append(record, lastSeq: 5)
            #expect(log.hasUnsynced)
            try log.sync()
            #expect(!log.hasUnsynced)
        }
        log.close()
    }

    @Test func recordsRoundTripAcrossSegments() throws {
        let dir = tempDir()
        let log = FeedbackLog(directory: dir, policy: .always, segmentBytes: 4096)
        try log.openForAppend(lastSeq: 0)
        var written: [LogRecord] = []
        var seq: UInt64 = 0
        for b in 0..<40 {
            let batch = events(10, from: b * 10)
            let r = LogRecord.feedback(firstSeq: seq + 1, events: batch)
            try log.append(r, lastSeq: seq + 10)
            seq += 10
            written.append(r)
            if b == 5 {
                let u = LogRecord.upsert(item: 9, text: "héllo", attributes: [LogAttribute(key: "k", value: "v")])
                try log.append(u, lastSeq: seq)
                written.append(u)
            }
            if b == 7 {
                for d in [LogRecord.deleteItems(items: [9, 1 << 40, 3]), .deleteUsers(users: [4])] {
                    try log.append(d, lastSeq: seq)
                    written.append(d)
                }
            }
        }
        try log.sync()
        #expect(log.durableSeq == 400)
        log.close()
        #expect(try FeedbackLog.segments(in: dir).count > 1)
        var read: [LogRecord] = []
        let report = try FeedbackLog.scan(directory: dir, cutTornTail: false) { read.append($0) }
        #expect(read == written)
        #expect(report.events == 400 && report.tornTail == nil)
    }

    /// A log of three feedback records: its folder, its one segment's path
    /// and that segment's bytes.
    let h = LogRecord.segmentHeaderSize

    func threeRecordLog() throws -> (String, String, Data) {
        let dir = tempDir()
        let log = FeedbackLog(directory: dir, policy: .no)
        try log.openForAppend(lastSeq: 0)
        for b in 0..<3 { try log.append(.feedback(firstSeq: UInt64(b * 5 + 1), events: events(5, from: b * 5)), lastSeq: UInt64(b * 5 + 5)) }
        log.close()
        let path = (dir as NSString).appendingPathComponent("00000001.log")
        return (dir, path, try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// A segment from before the salt (format 1: magic "PRNLOG01", checksums
    /// seeded with 0) is still read; new records go into a new, salted
    /// segment, and both are replayed in order.
    @Test func formatOneSegmentsAreReadAndLeftAsTheyAre() throws {
        let dir = tempDir()
        var old = LogRecord.magicV1
        LogRecord.feedback(firstSeq: 1, events: events(5)).encode(into: &old)
        LogRecord.upsert(item: 3, text: "old text", attributes: []).encode(into: &old)
        let path1 = (dir as NSString).appendingPathComponent("00000001.log")
        try Data(old).write(to: URL(fileURLWithPath: path1))
        var seen: [LogRecord] = []
        try FeedbackLog.scan(directory: dir, cutTornTail: true) { seen.append($0) }
        #expect(seen.count == 2)
        let log = FeedbackLog(directory: dir, policy: .no)
        try log.openForAppend(lastSeq: 5)
        try log.append(.feedback(firstSeq: 6, events: events(2, from: 5)), lastSeq: 7)
        log.close()
        #expect(try FeedbackLog.segments(in: dir) == [1, 2])
        #expect(try Data(contentsOf: URL(fileURLWithPath: path1)) == Data(old))
        let path2 = (dir as NSString).appendingPathComponent("00000002.log")
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path2)).prefix(8)) == LogRecord.magic)
        seen.removeAll()
        let report = try FeedbackLog.scan(directory: dir, cutTornTail: true) { seen.append($0) }
        #expect(seen.count == 3 && report.events == 7 && report.tornTail == nil)
    }

    /// Rolling to a new segment when the current one holds no record yet
    /// keeps it: snapshots retried after failures, with nothing logged in
    /// between, leave no trail of empty segments.
    @Test func rollingAnEmptySegmentKeepsIt() throws {
        let dir = tempDir()
        let log = FeedbackLog(directory: dir, policy: .no)
        try log.openForAppend(lastSeq: 0)
        try log.append(.feedback(firstSeq: 1, events: events(2, from: 0)), lastSeq: 2)
        let rolled = try log.rollSegment()
        #expect(try log.rollSegment() == rolled && log.rollSegment() == rolled)
        try log.append(.feedback(firstSeq: 3, events: events(1, from: 2)), lastSeq: 3)
        #expect(try log.rollSegment() == rolled + 1)
        log.close()
        #expect(try FeedbackLog.segments(in: dir) == [1, 2, 3])
        var n = 0
        _ = try FeedbackLog.scan(directory: dir, cutTornTail: true) { _ in n += 1 }
        #expect(n == 2)
    }

    @Test func tornTailIsCutAndMiddleCorruptionStops() throws {
        let (dir, path, good) = try threeRecordLog()
        // A torn write: half a record at the end.
        var torn = good
        torn.append(contentsOf: good[h..<(h + 40)])
        try torn.write(to: URL(fileURLWithPath: path))
        var n = 0
        let report = try FeedbackLog.scan(directory: dir, cutTornTail: true) { _ in n += 1 }
        #expect(n == 3 && report.tornTail?.bytes == 40)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == good)
        // A flipped byte inside the first record, with valid records after it.
        var bad = good
        bad[h + 8 + 20] ^= 0xFF
        try bad.write(to: URL(fileURLWithPath: path))
        #expect(throws: LogError.self) { try FeedbackLog.scan(directory: dir, cutTornTail: true) { _ in } }
        // Nothing was cut: the damage is left for `perennial log repair`.
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == bad)
    }

    /// A crash mid-append whose partial record holds the bytes of a whole
    /// record (an item text that is a log record, as a client could send)
    /// is still a torn tail: the segment's secret salt seeds every real
    /// record's checksum, so the client's never checks out; cut, and
    /// start-up goes on. A damaged length field that runs past EOF, with
    /// real records after it, still stops start-up.
    @Test func aRecordInsideATornWriteDoesNotStopStartUp() throws {
        let (dir, path, good) = try threeRecordLog()
        // A whole upsert record all of whose bytes are ASCII, so it can sit
        // in a text: vary its own text until the checksum's bytes are ASCII.
        var inner: [UInt8] = []
        for attempt in 0... {
            inner.removeAll()
            LogRecord.upsert(item: 0x4141_4141_4141_4141, text: "a fake record \(attempt)", attributes: []).encode(into: &inner)
            if inner.allSatisfy({ $0 < 0x80 }) { break }
        }
        var hostile: [UInt8] = []
        LogRecord.upsert(item: 9, text: String(decoding: inner, as: UTF8.self) + String(repeating: "x", count: 200), attributes: [])
            .encode(into: &hostile)
        var torn = good
        torn.append(contentsOf: hostile[0..<(hostile.count - 100)])
        try torn.write(to: URL(fileURLWithPath: path))
        var n = 0
        let report = try FeedbackLog.scan(directory: dir, cutTornTail: true) { _ in n += 1 }
        #expect(n == 3 && report.tornTail?.bytes == hostile.count - 100)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == good)
        // The first record's length now says it runs past EOF; two real records follow.
        var bad = good
        bad[h] = 0xFF
        bad[h + 1] = 0xFF
        bad[h + 2] = 0xFF
        try bad.write(to: URL(fileURLWithPath: path))
        #expect(throws: LogError.self) { try FeedbackLog.scan(directory: dir, cutTornTail: true) { _ in } }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == bad)
    }

    /// Damage a crash cannot leave stops start-up instead of being cut as
    /// a torn tail (helper-59): a flipped byte in the last segment's salt
    /// fails every record's checksum, and the segment was cut whole, its
    /// acknowledged events with it. A tail of zeros (a file system that
    /// extended the file without writing it, after a power loss) is torn.
    @Test func damageACrashCannotLeaveIsNotATornTail() throws {
        let (dir, path, good) = try threeRecordLog()
        var salted = good
        salted[LogRecord.magic.count + 2] ^= 0x10
        try salted.write(to: URL(fileURLWithPath: path))
        #expect(throws: LogError.self) { try FeedbackLog.scan(directory: dir, cutTornTail: true) { _ in } }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == salted)
        // A flipped byte in the last record is still taken for a torn tail:
        // a record that ends the file cannot be told from one a power loss
        // left half written (a known limit, in docs/durability.md).
        var last = good
        last[good.count - 20] ^= 0x01
        try last.write(to: URL(fileURLWithPath: path))
        var n = 0
        let report = try FeedbackLog.scan(directory: dir, cutTornTail: false) { _ in n += 1 }
        #expect(n == 2 && report.tornTail != nil)
        var zeros = good
        zeros.append(contentsOf: [UInt8](repeating: 0, count: 4096))
        try zeros.write(to: URL(fileURLWithPath: path))
        n = 0
        let cut = try FeedbackLog.scan(directory: dir, cutTornTail: true) { _ in n += 1 }
        #expect(n == 3 && cut.tornTail?.bytes == 4096)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == good)
        // Zeros from inside the second record to the end (a page boundary:
        // the pages after it never written, helper-61) are torn too, though
        // the second record's length says it ends before the file does.
        let recordBytes = (good.count - h) / 3
        var paged = good
        for k in (h + recordBytes + recordBytes / 2)..<good.count { paged[k] = 0 }
        try paged.write(to: URL(fileURLWithPath: path))
        n = 0
        let pagedCut = try FeedbackLog.scan(directory: dir, cutTornTail: true) { _ in n += 1 }
        #expect(n == 1 && pagedCut.tornTail?.offset == h + recordBytes)
    }

    /// Only names of the form the log writes are segments (a stray copy
    /// `9.log` beside `00000009.log` was taken for it: helper-59); a log
    /// directory that cannot be listed is an error, not an empty log.
    @Test func onlyRealSegmentNamesCountAndAnUnlistableDirectoryThrows() throws {
        let (dir, path, good) = try threeRecordLog()
        for stray in ["1.log", "+0000001.log", "00000001.log.tmp", "0000001.log", "x00000001.log"] {
            try good.write(to: URL(fileURLWithPath: (dir as NSString).appendingPathComponent(stray)))
        }
        #expect(try FeedbackLog.segments(in: dir) == [1])
        #expect(try FeedbackLog.segments(in: dir + "/missing").isEmpty)
        #expect(throws: LogError.self) { try FeedbackLog.segments(in: path) }   // a file: ENOTDIR
    }

    /// From format 7 a snapshot's checksum covers its header: a flipped
    /// log position or first segment is a damaged file (start-up falls
    /// back to an older one) instead of pointing recovery or pruning at the
    /// wrong place (helper-59). Pruning keeps from the earliest first
    /// segment any kept version names.
    @Test func aSnapshotsHeaderIsCheckedAndPruningKeepsWhatAnyVersionNeeds() throws {
        let store = SnapshotStore(directory: tempDir())
        let f = try store.write(seq: 500, firstLogSegment: 4, payload: [1, 2, 3, 4])
        #expect(try store.read(f.path).0.firstLogSegment == 4)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: f.path))
        for offset in [12, 20] {           // seq, first segment
            var damaged = bytes
            damaged[offset] ^= 0x01
            try damaged.write(to: URL(fileURLWithPath: f.path))
            #expect(throws: LogError.self) { try store.read(f.path) }
        }
        try bytes.write(to: URL(fileURLWithPath: f.path))
        // A version copied in from elsewhere names a later first segment
        // than an older kept version: the older one's segments are kept.
        try store.write(seq: 900, firstLogSegment: 7, payload: [5])
        try store.write(seq: 700, firstLogSegment: 16, payload: [6])
        #expect(store.prune(keep: 5) == 4)
    }

    /// Pruning keeps the newest `keep` versions; a snapshot a RELOAD took
    /// takes none of the places, even while it is the newest (recovery
    /// needs it, so it stays beside them), and goes once a newer one exists:
    /// reloads never push out older versions.
    @Test func reloadSnapshotsDoNotCrowdOutVersions() throws {
        let store = SnapshotStore(directory: tempDir())
        func snapshot(_ n: Int, reload: Bool) throws {
            let f = try store.write(seq: UInt64(n), firstLogSegment: n, payload: [1, 2, 3])
            try store.writeMetadata(of: f, reload ? ["reload": ["cf re-configured"]] : [:])
        }
        for (n, reload) in [(10, false), (20, false), (30, true), (40, true), (50, false), (60, true), (70, true)] {
            try snapshot(n, reload: reload)
        }
        #expect(store.prune(keep: 3) == 10)
        // The newest (a reload's) stays beside three others; 60, 40 and 30 go.
        #expect(store.files().map(\.seq) == [70, 50, 20, 10])
        #expect(store.prune(keep: 2) == 20)
        #expect(store.files().map(\.seq) == [70, 50, 20])
        // The next plain snapshot supersedes the reload's: still two places
        // for plain versions, none lost to the reload.
        try snapshot(80, reload: false)
        #expect(store.prune(keep: 2) == 50)
        #expect(store.files().map(\.seq) == [80, 50])
    }

    /// A version's description is written before its snapshot is renamed
    /// into place, so a crash never leaves a listed version without one; a
    /// description whose snapshot never arrived is removed at start-up.
    @Test func descriptionsArriveBeforeTheirSnapshots() throws {
        let store = SnapshotStore(directory: tempDir())
        var sawTempOnly = false
        let f = try store.write(seq: 5, firstLogSegment: 1, payload: [9]) { file in
            // Called before the rename: the snapshot is not listed yet.
            sawTempOnly = store.files().isEmpty && FileManager.default.fileExists(atPath: file.path + ".tmp")
            return ["note": "first"]
        }
        #expect(sawTempOnly && store.metadata(of: f)["note"] as? String == "first")
        // A crash between the two: a description without its snapshot.
        let orphan = SnapshotFile(seq: 9, serial: 0, path: store.directory + "/snapshot-9.bin")
        try store.writeMetadata(of: orphan, ["reload": ["cf re-configured"]])
        // A description being written (by `versions --evaluate`) stays; one
        // a crash left an hour ago goes.
        let fresh = f.path.dropLast(4) + ".json.tmp", stale = store.directory + "/snapshot-3.json.tmp"
        #expect(FileManager.default.createFile(atPath: String(fresh), contents: Data("{}".utf8)))
        #expect(FileManager.default.createFile(atPath: stale, contents: Data("{}".utf8),
                                               attributes: [.modificationDate: Date(timeIntervalSinceNow: -7200)]))
        store.removeTemporaryFiles()
        #expect(store.metadata(of: orphan).isEmpty && store.metadata(of: f)["note"] as? String == "first")
        #expect(FileManager.default.fileExists(atPath: String(fresh)) && !FileManager.default.fileExists(atPath: stale))
    }

    /// Descriptions change under the versions lock: writers on several
    /// threads (as two `versions --evaluate` processes would be) each keep
    /// their figure, and a version pruned meanwhile gets no stray description.
    @Test func concurrentDescriptionChangesAreAllKept() throws {
        let store = SnapshotStore(directory: tempDir())
        let f = try store.write(seq: 5, firstLogSegment: 1, payload: [9]) { _ in ["note": "first"] }
        DispatchQueue.concurrentPerform(iterations: 4) { writer in
            for n in 0..<25 {
                _ = try? store.updateMetadata(of: f) { meta in
                    var figures = meta["figures"] as? [String: Any] ?? [:]
                    figures["\(writer)-\(n)"] = n
                    meta["figures"] = figures
                }
            }
        }
        let figures = try #require(store.metadata(of: f)["figures"] as? [String: Any])
        #expect(figures.count == 100 && store.metadata(of: f)["note"] as? String == "first")
        // Pruned, then changed: nothing is written.
        _ = try store.write(seq: 9, firstLogSegment: 2, payload: [9])
        _ = store.prune(keep: 1)
        #expect(try store.updateMetadata(of: f) { $0["late"] = 1 } == false)
        #expect(!FileManager.default.fileExists(atPath: f.metadataPath))
    }

    @Test func replayRebuildsTheSameModel() throws {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array([.string("popularity")]))
        let config = try PerennialConfig.load(doc, registry: ScorerRegistry([PopularityScorer.factory]))
        let original = Model(config: config, registry: ScorerRegistry([PopularityScorer.factory]))
        var out: [LearnEvent] = []
        let batch = events(50)
        original.admit(batch, now: 0, into: &out)
        for e in out { original.learn(e) }
        let copy = Model(config: config, registry: ScorerRegistry([PopularityScorer.factory]))
        var scratch: [LearnEvent] = []
        try copy.replay(.feedback(firstSeq: 1, events: batch), scratch: &scratch)
        #expect(copy.appliedSeq == 50)
        #expect(try copy.recommend(user: 99, k: 5) == original.recommend(user: 99, k: 5))
        #expect(throws: LogError.self) { try copy.replay(.feedback(firstSeq: 70, events: batch), scratch: &scratch) }
    }
}
