// The sessions a graceful stop leaves (`<data_dir>/sessions.bin`), so a
// restart for a deploy does not forget every visitor's session. Sessions are
// not logged (RECOMMEND's items are not feedback): a crash still forgets
// them. The next start reads the file once it listens (a start that fails
// before that leaves it for the next try) and then removes it, so a later
// crash never brings back sessions older than the ones it lost.
//
// Layout (little-endian): "PKSESS01" · u64 wall-clock ms at the stop ·
// u32 n · n × (str16 key · u64 idle seconds as a Double's bits · u32 count ·
// count × u64 item) · u32 CRC-32C of everything before it.

import Foundation
import PerennialCore
import PerennialProtocol
#if canImport(Glibc)
import Glibc
#endif

enum SessionFile {
    static let magic = Array("PKSESS01".utf8)

    static func path(dataDir: String) -> String { (dataDir as NSString).appendingPathComponent("sessions.bin") }

    /// Writes the store's live sessions: a temporary file, written a
    /// megabyte at a time and synced, then renamed over the file (and the
    /// directory synced). A failed write removes its temporary file.
    static func save(_ store: SessionStore, now: Double, to path: String) throws {
        let temp = path + ".tmp"
        unlink(temp)
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ServerError("cannot create \(temp): \(String(cString: strerror(errno)))") }
        var written = false
        defer {
            close(fd)
            if !written { unlink(temp) }
        }
        var out = magic
        var crc: UInt32 = 0
        func flush() throws {
            crc = out.withUnsafeBytes { CRC32C.checksum($0, seed: crc) }
            try writeAll(fd, out, temp)
            out.removeAll(keepingCapacity: true)
        }
        out.put(UInt64(max(0, Date().timeIntervalSince1970 * 1000)))
        let live = store.live(now: now)
        out.put(UInt32(live.count))
        for s in live {
            out.putStr16(s.key)
            out.put(s.idle.bitPattern)
            out.put(UInt32(s.items.count))
            for i in s.items { out.put(i) }
            if out.count >= 1 << 20 { try flush() }
        }
        try flush()
        out.put(crc)
        try writeAll(fd, out, temp)
        guard fsync(fd) == 0 else { throw ServerError("cannot sync \(temp): \(String(cString: strerror(errno)))") }
        guard rename(temp, path) == 0 else { throw ServerError("cannot rename \(temp): \(String(cString: strerror(errno)))") }
        written = true
        syncDirectory(of: path)
    }

    /// Syncs the directory holding `path`, so a rename or a removal in it
    /// survives a power loss.
    private static func syncDirectory(of path: String) {
        let dir = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 { fsync(dir); close(dir) }
    }

    struct Saved {
        var key: String
        var items: [UInt64]
        /// Seconds idle now: at the stop, plus the time the server was down.
        var idle: Double
    }

    /// Reads the sessions of a file's body (after the magic, before the
    /// checksum), handing each to `each`: run once to check the whole body
    /// parses, then again to restore, so no copy of the sessions is built.
    private static func parse(_ body: UnsafeRawBufferPointer, each: (Saved) -> Void) throws {
        var r = ByteReader(body)
        let savedAt = Double(try r.u64("saved at")) / 1000
        let down = max(0, Date().timeIntervalSince1970 - savedAt)
        for _ in 0..<Int(try r.u32("sessions")) {
            let key = try r.str16("key")
            let idle = Double(bitPattern: try r.u64("idle"))
            let count = Int(try r.u32("items"))
            // (A count past the body's end fails before anything is kept.)
            guard count <= r.remaining / 8 else { throw ProtocolError(.malformedPayload, "a session of \(count) items past the file's end") }
            var items: [UInt64] = []
            items.reserveCapacity(count)
            for _ in 0..<count { items.append(try r.u64("item")) }
            // (What RECOMMEND could not have made is left out.)
            guard !key.isEmpty, key.utf8.count <= RecommendRequest.maxSessionIDBytes, idle.isFinite, idle >= 0 else { continue }
            each(Saved(key: key, items: items, idle: idle + down))
        }
        if r.remaining != 0 { throw ProtocolError(.malformedPayload, "bytes after the last session") }
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], _ path: String) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ServerError("cannot write \(path): \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    /// Puts the saved sessions back, counting the time the server was down
    /// as idle time, and removes the file (and a temporary file a failed
    /// stop left); returns how many are kept. A damaged or foreign file is
    /// reported and removed, and nothing of it is restored (the sessions
    /// start afresh, as after a crash).
    static func restore(into store: SessionStore, now: Double, from path: String, maxBytes: Int) -> Int {
        unlink(path + ".tmp")
        var st = stat()
        guard stat(path, &st) == 0 else { return 0 }
        defer {
            unlink(path)
            // (So a power loss cannot bring back the file once read.)
            syncDirectory(of: path)
        }
        guard (st.st_mode & S_IFMT) == S_IFREG, Int(st.st_size) <= maxBytes else {
            Log.warning("\(path) is not a sessions file this config could have written (not a regular file, or over \(maxBytes) bytes): sessions start afresh")
            return 0
        }
        // Mapped, not read: the file may be tens of megabytes, and its
        // pages are the page cache's, dropped once unmapped, not a copy in
        // the heap on top of the sessions it restores (review finding,
        // helper-75: 130 MB above the steady state for 100,000 sessions).
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        let size = Int(st.st_size)
        let map = size > 0 ? mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED
        close(fd)
        guard let map, map != MAP_FAILED else {
            Log.warning("\(path) cannot be read (\(size == 0 ? "empty" : String(cString: strerror(errno)))): sessions start afresh")
            return 0
        }
        let bytes = UnsafeRawBufferPointer(start: map, count: size)
        // (A page that cannot be read reads as zeros, not SIGBUS: the file
        // is then damaged, as a bad checksum says: review finding, helper-87.)
        let mappingGuard = MappingGuard(bytes)
        defer { mappingGuard.end(); munmap(map, size) }
        guard size >= magic.count + 16, magic.indices.allSatisfy({ bytes[$0] == magic[$0] }),
              CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes.dropLast(4))) == bytes.loadUnaligned(fromByteOffset: size - 4, as: UInt32.self),
              !mappingGuard.readFailed else {
            Log.warning("\(path) is damaged (not a sessions file, its checksum fails, or it cannot be read): sessions start afresh")
            return 0
        }
        // (Parsed whole before any is restored: a file that fails part-way
        // restores nothing.)
        let body = UnsafeRawBufferPointer(rebasing: bytes[magic.count..<(size - 4)])
        do {
            try parse(body) { _ in }
        } catch {
            Log.warning("\(path) does not parse (\(error)): sessions start afresh")
            return 0
        }
        guard !mappingGuard.readFailed else {
            Log.warning("\(path) cannot be read: sessions start afresh")
            return 0
        }
        try? parse(body) { store.restore($0.key, items: $0.items, idle: $0.idle, now: now) }
        if mappingGuard.readFailed {
            // (Pages the two passes before read, failing on the third: the
            // sessions restored may hold zeros; they are at worst wrong.)
            Log.warning("\(path) could not be read whole while its sessions were restored: some may be wrong")
        }
        return store.count
    }
}
