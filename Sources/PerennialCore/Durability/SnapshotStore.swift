// Snapshot files in `<data_dir>/snapshots`: the whole model at one log
// position, so start-up loads it and replays only the log after it, and log
// segments it covers can be removed.
//
// A file is `snapshot-<seq>.bin`: the magic "PRNSNAP1", u32 format version,
// u64 seq (the last event it contains), u64 the first log segment it does
// not cover, u64 payload length, the payload (Model.save), u32 CRC-32C of
// the payload. It is written to a temporary file, fsynced, renamed into
// place and the directory fsynced, so a crash leaves either the old set of
// snapshots or the new one, never a half-written file under a real name.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct SnapshotInfo: Sendable {
    public var seq: UInt64
    public var firstLogSegment: Int
    public var path: String
}

public struct SnapshotStore: Sendable {
    public let directory: String
    public static let magic = Array("PRNSNAP1".utf8)
    public static let version: UInt32 = 1

    public init(directory: String) { self.directory = directory }

    /// Snapshot files present, newest first.
    public func files() -> [(seq: UInt64, path: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.compactMap { name -> (UInt64, String)? in
            guard name.hasPrefix("snapshot-"), name.hasSuffix(".bin"),
                  let seq = UInt64(name.dropFirst(9).dropLast(4)) else { return nil }
            return (seq, (directory as NSString).appendingPathComponent(name))
        }.sorted { $0.0 > $1.0 }
    }

    /// Writes a snapshot durably; returns its path.
    @discardableResult
    public func write(seq: UInt64, firstLogSegment: Int, payload: [UInt8]) throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var bytes = SnapshotStore.magic
        bytes.appendLE(SnapshotStore.version)
        bytes.appendLE(seq)
        bytes.appendLE(UInt64(firstLogSegment))
        bytes.appendLE(UInt64(payload.count))
        bytes.append(contentsOf: payload)
        bytes.appendLE(CRC32C.checksum(payload))
        let final = (directory as NSString).appendingPathComponent("snapshot-\(seq).bin")
        let temp = final + ".tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw LogError("cannot create \(temp): \(String(cString: strerror(errno)))") }
        var done = 0
        let ok = bytes.withUnsafeBytes { raw -> Bool in
            while done < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 { if errno == EINTR { continue }; return false }
                done += n
            }
            return fsync(fd) == 0
        }
        let why = String(cString: strerror(errno))
        Glibc.close(fd)
        guard ok else {
            unlink(temp)
            throw LogError("cannot write the snapshot \(temp): \(why)")
        }
        guard rename(temp, final) == 0 else { throw LogError("cannot rename \(temp): \(String(cString: strerror(errno)))") }
        let dir = open(directory, O_RDONLY | O_DIRECTORY)
        if dir >= 0 { fsync(dir); Glibc.close(dir) }
        return final
    }

    /// Reads a snapshot and checks its framing and checksum; returns the
    /// header and a reader positioned at the payload.
    public func read(_ path: String) throws -> (SnapshotInfo, SnapshotReader) {
        guard let data = FileManager.default.contents(atPath: path) else { throw LogError("cannot read \(path)") }
        let bytes = [UInt8](data)
        var r = SnapshotReader(bytes: bytes)
        let head = 8 + 4 + 8 + 8 + 8
        guard bytes.count >= head + 4, Array(bytes[0..<8]) == SnapshotStore.magic else {
            throw LogError("\(path) is not a Perennial snapshot")
        }
        _ = try r.u64()  // magic
        let version = try r.u32()
        guard version == SnapshotStore.version else { throw LogError("\(path): snapshot format \(version) is not supported") }
        let seq = try r.u64(), segment = try r.u64(), length = try r.u64()
        guard let segmentNumber = Int(exactly: segment), let size = Int(exactly: length),
              size == bytes.count - head - 4 else { throw LogError("\(path) is truncated or its header is damaged") }
        let crc = bytes.withUnsafeBytes { raw in
            (CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[head..<(head + size)])),
             UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: head + size, as: UInt32.self)))
        }
        guard crc.0 == crc.1 else { throw LogError("\(path): checksum mismatch") }
        return (SnapshotInfo(seq: seq, firstLogSegment: segmentNumber, path: path), r)
    }

    /// Removes all but the newest `keep` snapshots; returns the oldest kept
    /// snapshot's first log segment (segments before it can go).
    public func prune(keep: Int) -> Int? {
        let all = files()
        for old in all.dropFirst(keep) { unlink(old.path) }
        guard let oldest = all.prefix(keep).last, let info = try? read(oldest.path).0 else { return nil }
        return info.firstLogSegment
    }
}
