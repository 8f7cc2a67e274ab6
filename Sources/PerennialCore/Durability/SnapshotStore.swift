// Snapshot files in `<data_dir>/snapshots`: the whole model at one log
// position, so start-up loads it and replays only the log after it, and log
// segments it covers can be removed.
//
// A file is `snapshot-<seq>.bin`: the magic "PRNSNAP1", u32 format version,
// u64 seq (the last event it contains), u64 the first log segment it does
// not cover, u64 payload length, the payload (Model.save), u32 CRC-32C of
// the header and the payload (of the payload alone before format 7). It is written to a temporary file, fsynced, renamed into
// place and the directory fsynced, so a crash leaves either the old set of
// snapshots or the new one, never a half-written file under a real name.
//
// Every snapshot is also a model version: its id is `v<seq>` (the log
// position it holds; `v<seq>.<n>` for a distinct model saved later at the
// same position, after a rollback or a reload, in `snapshot-<seq>.<n>.bin`),
// and a small JSON file beside it (same name, `.json`)
// describes it (when it was taken, the scorers, the config, what it was
// rolled back from, and its evaluation figures once `perennial versions
// --evaluate` has computed them).

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A snapshot file: the log position it holds and its serial among
/// snapshots at that position (0 for the first).
public struct SnapshotFile: Sendable, Equatable {
    public var seq: UInt64
    public var serial: Int
    public var path: String
    public init(seq: UInt64, serial: Int, path: String) {
        self.seq = seq
        self.serial = serial
        self.path = path
    }
    /// The version id: `v<seq>`, or `v<seq>.<serial>`.
    public var id: String { serial == 0 ? "v\(seq)" : "v\(seq).\(serial)" }
    var metadataPath: String { String(path.dropLast(4)) + ".json" }
}

public struct SnapshotInfo: Sendable {
    public var seq: UInt64
    public var firstLogSegment: Int
    public var path: String
}

public struct SnapshotStore: Sendable {
    public let directory: String
    public static let magic = Array("PRNSNAP1".utf8)
    /// 2: lifelong-learning state (replay, anchors, meta start, id lifecycle);
    /// 3: item expiry; 4: item admission (`item_min_occurrences`);
    /// 5: the admission sketches' aging (`admission_window`); 6: the items
    /// of user ids waiting for a row (PendingUserItems); 7: the deleted
    /// item ids remembered (DeletedItemIds).
    public static let version: UInt32 = 7
    /// Formats this build reads: 2 lacks item expiry's state (read as no
    /// item ever expired), 3 item admission's (counting starts afresh), 4
    /// the sketches' place in their aging window (read as its start), 5 the
    /// pending users' items (read as none), 6 the deleted items remembered
    /// (read as none: a late event can bring back an item deleted before
    /// the upgrade), so a data directory whose log before its snapshot is
    /// pruned still starts after an upgrade.
    public static let readable: ClosedRange<UInt32> = 2...7

    public init(directory: String) { self.directory = directory }

    /// Snapshot files present, newest first.
    public func files() -> [SnapshotFile] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.compactMap { name -> SnapshotFile? in
            guard name.hasPrefix("snapshot-"), name.hasSuffix(".bin") else { return nil }
            let parts = name.dropFirst(9).dropLast(4).split(separator: ".", omittingEmptySubsequences: false)
            guard let seq = UInt64(parts[0]), parts.count <= 2 else { return nil }
            let serial = parts.count == 2 ? Int(parts[1]) : 0
            guard let serial, serial >= 0 else { return nil }
            return SnapshotFile(seq: seq, serial: serial, path: (directory as NSString).appendingPathComponent(name))
        }.sorted { ($0.seq, $0.serial) > ($1.seq, $1.serial) }
    }

    /// Removes the half-written file of a snapshot at `seq` whose writer
    /// ended without finishing (killed), while the server runs: a restart
    /// would remove it too, but until then it holds the model's size of
    /// disk, which the next snapshot's room check counts.
    public func removeTemporaryFiles(seq: UInt64) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        let prefix = "snapshot-\(seq)."
        for name in names where name.hasPrefix(prefix) && name.hasSuffix(".bin.tmp") {
            unlink((directory as NSString).appendingPathComponent(name))
        }
    }

    /// Removes what an interrupted snapshot write left (`*.bin.tmp`: a crash
    /// or a failed rename between writing and renaming); start-up calls it.
    /// A description's `.json.tmp` only once it is an hour old:
    /// `perennial versions --evaluate` may be writing one while a server
    /// starts (a crash-torture review found them left for good).
    /// Also a description whose snapshot never made it into place (it is
    /// written first), so a later snapshot at that position does not take
    /// its notes.
    public func removeTemporaryFiles() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let present = Set(names)
        for name in names where name.hasPrefix("snapshot-") {
            let path = (directory as NSString).appendingPathComponent(name)
            let orphan = name.hasSuffix(".json") && !present.contains(String(name.dropLast(5)) + ".bin")
            var staleDescription = false
            if name.hasSuffix(".json.tmp"), let modified = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date {
                staleDescription = Date().timeIntervalSince(modified) > 3600
            }
            if name.hasSuffix(".bin.tmp") || orphan || staleDescription { unlink(path) }
        }
    }

    /// The newest snapshot whose framing and checksum hold, with its header
    /// (where start-up begins, if it loads with the config).
    public func newestReadable() -> (file: SnapshotFile, info: SnapshotInfo)? {
        for f in files() {
            if let (info, _) = try? read(f.path) { return (f, info) }
        }
        return nil
    }

    /// The file of version `id` (`v<seq>`, `v<seq>.<n>`, or without the v).
    public func file(ofVersion id: String) -> SnapshotFile? {
        let wanted = Self.versionID(id)
        return files().first { $0.id == wanted }
    }

    /// A version id as listed (`v<seq>` or `v<seq>.<serial>`), whether or
    /// not it was given with its `v`.
    public static func versionID(_ id: String) -> String { id.hasPrefix("v") ? id : "v" + id }

    /// Writes a snapshot durably; returns its file. A snapshot at a position
    /// that already has one replaces it (the same events learned give the
    /// same model), unless `distinct` (the model differs: a rollback or a
    /// reload), which adds a new version at that position.
    /// `describe` gives the version's description, which is written before
    /// the snapshot is renamed into place, so a crash never leaves a version
    /// without one (a description without its snapshot is never listed).
    @discardableResult
    public func write(seq: UInt64, firstLogSegment: Int, payload: [UInt8], distinct: Bool = false,
                      describe: ((SnapshotFile) -> [String: Any])? = nil) throws -> SnapshotFile {
        try write(seq: seq, firstLogSegment: firstLogSegment, payloadSize: payload.count, distinct: distinct,
                  describe: describe) { put in payload.withUnsafeBytes { put($0) } }
    }

    /// The same, with the payload produced in pieces: `payload` hands them,
    /// in order, to the function it is given (which returns false once a
    /// write failed) and returns false if it could not produce them all;
    /// they must add up to `payloadSize`, which the header holds.
    @discardableResult
    public func write(seq: UInt64, firstLogSegment: Int, payloadSize: Int, distinct: Bool = false,
                      describe: ((SnapshotFile) -> [String: Any])? = nil,
                      payload: ((UnsafeRawBufferPointer) -> Bool) -> Bool) throws -> SnapshotFile {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // Header, payload and checksum are written in turn (the payload is
        // tens of megabytes: not copied into one buffer).
        var head = SnapshotStore.magic
        head.appendLE(SnapshotStore.version)
        head.appendLE(seq)
        head.appendLE(UInt64(firstLogSegment))
        head.appendLE(UInt64(payloadSize))
        // A plain snapshot replaces the newest one at its position (never an
        // older version there); a distinct one adds the next serial.
        var serial = 0
        if let newest = files().first(where: { $0.seq == seq }) { serial = distinct ? newest.serial + 1 : newest.serial }
        let final = (directory as NSString).appendingPathComponent(serial == 0 ? "snapshot-\(seq).bin" : "snapshot-\(seq).\(serial).bin")
        let temp = final + ".tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw LogError("cannot create \(temp): \(String(cString: strerror(errno)))") }
        func writeAll(_ raw: UnsafeRawBufferPointer) -> Bool {
            var done = 0
            while done < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 { if errno == EINTR { continue }; return false }
                done += n
            }
            return true
        }
        // (The checksum runs over the header, then the payload as it goes:
        // the same as `checksum(header:payload:format:)` over the whole.)
        var crc = SnapshotStore.checksum(header: head, payload: UnsafeRawBufferPointer(start: nil, count: 0), format: SnapshotStore.version)
        var given = 0
        var ok = head.withUnsafeBytes { writeAll($0) }
        if ok {
            ok = payload { piece in
                crc = CRC32C.checksum(piece, seed: crc)
                given += piece.count
                return writeAll(piece)
            }
        }
        var why = String(cString: strerror(errno))
        if ok && given != payloadSize {
            ok = false
            why = "the payload came to \(given) bytes, not the \(payloadSize) measured"
        }
        if ok {
            var tail: [UInt8] = []
            tail.appendLE(crc)
            ok = tail.withUnsafeBytes { writeAll($0) } && fsync(fd) == 0
            why = String(cString: strerror(errno))
        }
        Glibc.close(fd)
        guard ok else {
            unlink(temp)
            throw LogError("cannot write the snapshot \(temp): \(why)")
        }
        let file = SnapshotFile(seq: seq, serial: serial, path: final)
        // Under the versions lock: `describe` may read the description of
        // the snapshot this one replaces, which an evaluation may be adding
        // figures to.
        try withVersionsLock {
            // (A snapshot at the same position replaces the file there: its
            // description is put back if the rename fails, and the
            // temporary file goes, so a failed write changes nothing;
            // review finding, helper-51.)
            let previous = FileManager.default.contents(atPath: file.metadataPath)
            if let describe {
                do { try writeMetadata(of: file, describe(file)) } catch { Log.warning("snapshot \(file.id): its description was not written: \(error)") }
            }
            guard rename(temp, final) == 0 else {
                let why = String(cString: strerror(errno))
                unlink(temp)
                if let previous {
                    if !FileManager.default.createFile(atPath: file.metadataPath, contents: previous) {
                        Log.warning("snapshot \(file.id): its previous description could not be put back")
                    }
                } else {
                    unlink(file.metadataPath)
                }
                throw LogError("cannot rename \(temp): \(why)")
            }
        }
        let dir = open(directory, O_RDONLY | O_DIRECTORY)
        if dir >= 0 { fsync(dir); Glibc.close(dir) }
        return file
    }

    /// Reads a snapshot and checks its framing and checksum; returns the
    /// header and a reader positioned at the payload. The checks read the
    /// file with pread, in pieces, so a read error (EIO from a bad block)
    /// is an error like any damage, and start-up falls back to an older
    /// version; only then is the file mapped for the reader, its pages by
    /// then in the page cache (a page that fails to read again reads as
    /// zeros, and the reader throws at its next number: SnapshotBytes).
    public func read(_ path: String) throws -> (SnapshotInfo, SnapshotReader) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LogError("cannot read \(path): \(String(cString: strerror(errno)))") }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw LogError("cannot read \(path): \(String(cString: strerror(errno)))") }
        let fileSize = Int(st.st_size)
        func readAll(_ into: UnsafeMutableRawBufferPointer, at offset: Int) throws {
            var done = 0
            while done < into.count {
                let n = pread(fd, into.baseAddress! + done, into.count - done, off_t(offset + done))
                if n < 0 && errno == EINTR { continue }
                guard n >= 0 else { throw LogError("cannot read \(path): \(String(cString: strerror(errno)))") }
                guard n > 0 else { throw LogError("\(path) is truncated or its header is damaged") }
                done += n
            }
        }
        let head = 8 + 4 + 8 + 8 + 8
        var header = [UInt8](repeating: 0, count: head)
        guard fileSize >= head + 4 else { throw LogError("\(path) is not a Perennial snapshot") }
        try header.withUnsafeMutableBytes { try readAll($0, at: 0) }
        guard Array(header[0..<8]) == SnapshotStore.magic else { throw LogError("\(path) is not a Perennial snapshot") }
        var h = SnapshotReader(bytes: header, offset: 8)
        let version = try h.u32()
        guard SnapshotStore.readable.contains(version) else {
            throw LogError("\(path): snapshot format \(version) is not one this build reads (\(SnapshotStore.readable.lowerBound)-\(SnapshotStore.version)); it was written by another version of perennial, so start-up rebuilds from the log instead")
        }
        let seq = try h.u64(), segment = try h.u64(), length = try h.u64()
        guard let segmentNumber = Int(exactly: segment), let size = Int(exactly: length),
              size == fileSize - head - 4 else { throw LogError("\(path) is truncated or its header is damaged") }
        // (The same as `checksum(header:payload:format:)` over the whole.)
        var crc = SnapshotStore.checksum(header: header, payload: UnsafeRawBufferPointer(start: nil, count: 0), format: version)
        var piece = [UInt8](repeating: 0, count: min(size, 8 << 20))
        var offset = head
        while offset < head + size {
            let n = min(piece.count, head + size - offset)
            try piece.withUnsafeMutableBytes { raw in
                try readAll(UnsafeMutableRawBufferPointer(rebasing: raw[0..<n]), at: offset)
                crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[0..<n]), seed: crc)
            }
            offset += n
        }
        var tail = [UInt8](repeating: 0, count: 4)
        try tail.withUnsafeMutableBytes { try readAll($0, at: head + size) }
        guard crc == tail.withUnsafeBytes({ UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }) else {
            throw LogError("\(path): checksum mismatch")
        }
        let storage = try SnapshotBytes(mapping: path)
        guard storage.count == fileSize else { throw LogError("\(path) changed while it was read") }
        var r = SnapshotReader(storage: storage, offset: head)
        r.format = version
        return (SnapshotInfo(seq: seq, firstLogSegment: segmentNumber, path: path), r)
    }

    /// The file's checksum: from format 7 on it covers the header too (the
    /// log position and first log segment), so a damaged header fails it
    /// rather than point start-up or pruning at the wrong place (review
    /// finding, helper-59); before, the payload alone.
    static func checksum(header: [UInt8], payload: UnsafeRawBufferPointer, format: UInt32) -> UInt32 {
        guard format >= 7 else { return CRC32C.checksum(payload) }
        return CRC32C.checksum(payload, seed: CRC32C.checksum(header))
    }

    // MARK: versions

    /// The description kept beside a snapshot (empty if none).
    public func metadata(of file: SnapshotFile) -> [String: Any] {
        guard let data = FileManager.default.contents(atPath: file.metadataPath),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return [:] }
        return object
    }

    /// Replaces the description of a snapshot (written to a temporary file
    /// and renamed, so a reader sees the old or the new one).
    public func writeMetadata(of file: SnapshotFile, _ fields: [String: Any]) throws {
        var all = fields
        all["id"] = file.id
        all["seq"] = file.seq
        let data = try JSONSerialization.data(withJSONObject: all, options: [.prettyPrinted, .sortedKeys])
        let temp = file.metadataPath + ".tmp"
        try data.write(to: URL(fileURLWithPath: temp))
        guard rename(temp, file.metadataPath) == 0 else { throw LogError("cannot rename \(temp): \(String(cString: strerror(errno)))") }
    }

    /// Changes a version's description: read, `change`, written back, all
    /// under the versions lock, so two processes adding figures to one
    /// version (two `perennial versions --evaluate` runs, or one and a
    /// server replacing the snapshot) both keep theirs. Returns false, and
    /// writes nothing, if the snapshot is gone (pruned meanwhile).
    @discardableResult
    public func updateMetadata(of file: SnapshotFile, _ change: (inout [String: Any]) throws -> Void) throws -> Bool {
        try withVersionsLock {
            guard access(file.path, F_OK) == 0 else { return false }
            var fields = metadata(of: file)
            try change(&fields)
            try writeMetadata(of: file, fields)
            return true
        }
    }

    /// Runs `body` holding an exclusive lock (flock) on
    /// `<directory>/versions.lock`, which every read-modify-write of the
    /// descriptions and every removal of a version takes. flock locks
    /// belong to an open file, so two threads of one process exclude each
    /// other as two processes do; the OS drops the lock if the holder dies.
    func withVersionsLock<T>(_ body: () throws -> T) throws -> T {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = (directory as NSString).appendingPathComponent("versions.lock")
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw LogError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { Glibc.close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw LogError("cannot lock \(path): \(String(cString: strerror(errno)))") }
        }
        return try body()
    }

    /// Whether a version is one a RELOAD took for itself, which `prune`
    /// drops once a newer version exists: a snapshot a RELOAD took (its
    /// description notes "reload") ties the new scorer set to a log position
    /// for recovery and has done its work when a newer one is taken. Unless
    /// a SNAPSHOT request was answered with it (noted "requested") or a
    /// rollback started from it ("kept", `keep(_:because:)`): then it is a
    /// version someone may roll back to, kept like any other.
    public static func isReloadOnly(_ meta: [String: Any]) -> Bool {
        meta["reload"] != nil && meta["requested"] == nil && meta["kept"] == nil
    }

    /// Notes a version as one to keep like any other (not `isReloadOnly`),
    /// with the reason in its description.
    public func keep(_ file: SnapshotFile, because reason: String) throws {
        try updateMetadata(of: file) { $0["kept"] = reason }
    }

    /// Removes all but the newest `keep` snapshots; returns the oldest kept
    /// snapshot's first log segment (segments before it can go). A version
    /// a RELOAD took for itself (`isReloadOnly`) takes none of the `keep`
    /// places, even while it is the newest (kept beside them), and goes once
    /// a newer snapshot exists: reloads never push out the versions one may
    /// want to roll back to.
    public func prune(keep: Int) -> Int? {
        var kept: [SnapshotFile] = []
        var places = 0
        // (Under the versions lock, so an evaluation finishing now never
        // writes figures for a version as it goes, leaving a stray description.)
        let locked: Void? = try? withVersionsLock {
            for (i, file) in files().enumerated() {
                let byReload = Self.isReloadOnly(metadata(of: file))
                if i == 0 && byReload {
                    kept.append(file)
                } else if !byReload && places < keep {
                    kept.append(file)
                    places += 1
                } else {
                    unlink(file.path)
                    unlink(file.metadataPath)
                }
            }
        }
        guard locked != nil, !kept.isEmpty else { return nil }
        // The first segment any kept version needs (each version's own
        // header; the oldest by position needs the earliest, unless one
        // was copied in from elsewhere: helper-59). A header that cannot
        // be read keeps every segment.
        var first = Int.max
        for file in kept {
            guard let segment = firstLogSegment(of: file.path) else { return nil }
            first = min(first, segment)
        }
        return first
    }

    /// The first log segment a snapshot file's header names (its header
    /// alone, not the checksum of the whole file), or nil when unreadable.
    func firstLogSegment(of path: String) -> Int? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var head = [UInt8](repeating: 0, count: 8 + 4 + 8 + 8)
        guard head.withUnsafeMutableBytes({ Glibc.read(fd, $0.baseAddress, $0.count) }) == head.count,
              Array(head[0..<8]) == SnapshotStore.magic else { return nil }
        let segment = head.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 20, as: UInt64.self)) }
        return Int(exactly: segment)
    }
}
