// The sessions a graceful stop leaves (`<data_dir>/sessions.bin`), so a
// restart for a deploy does not forget every visitor's session. Sessions are
// not logged (RECOMMEND's items are not feedback): a crash still forgets
// them, and the file is removed once read, so a later crash never brings
// back sessions older than the ones it lost.
//
// Layout (little-endian): "PKSESS01" · u64 wall-clock ms at the stop ·
// u32 n · n × (str16 key · u64 idle seconds as a Double's bits · u32 count ·
// count × u64 item) · u32 CRC-32C of everything before it.

import Foundation
import PerennialCore
import PerennialProtocol

enum SessionFile {
    static let magic = Array("PKSESS01".utf8)

    static func path(dataDir: String) -> String { (dataDir as NSString).appendingPathComponent("sessions.bin") }

    /// Writes the store's live sessions (temporary file, then rename).
    static func save(_ store: SessionStore, now: Double, to path: String) throws {
        var out = magic
        out.put(UInt64(max(0, Date().timeIntervalSince1970 * 1000)))
        let live = store.live(now: now)
        out.put(UInt32(live.count))
        for s in live {
            out.putStr16(s.key)
            out.put(s.idle.bitPattern)
            out.put(UInt32(s.items.count))
            for i in s.items { out.put(i) }
        }
        out.put(CRC32C.checksum(out))
        let temp = path + ".tmp"
        try Data(out).write(to: URL(fileURLWithPath: temp))
        guard rename(temp, path) == 0 else { throw ServerError("cannot rename \(temp): \(String(cString: strerror(errno)))") }
    }

    /// Puts the saved sessions back, counting the time the server was down
    /// as idle time, and removes the file; returns how many were kept. A
    /// damaged file is reported and removed (the sessions start afresh, as
    /// after a crash).
    static func restore(into store: SessionStore, now: Double, from path: String) -> Int {
        guard let data = FileManager.default.contents(atPath: path) else { return 0 }
        defer { unlink(path) }
        let bytes = [UInt8](data)
        guard bytes.count >= magic.count + 16, Array(bytes.prefix(magic.count)) == magic,
              CRC32C.checksum(Array(bytes.dropLast(4))) == bytes.suffix(4).withUnsafeBytes({ $0.loadUnaligned(as: UInt32.self) }) else {
            Log.warning("\(path) is damaged (not a sessions file, or its checksum fails): sessions start afresh")
            return 0
        }
        do {
            return try bytes.withUnsafeBytes { raw throws(ProtocolError) in
                var r = ByteReader(UnsafeRawBufferPointer(rebasing: raw[magic.count..<(raw.count - 4)]))
                let savedAt = Double(try r.u64("saved at")) / 1000
                let down = max(0, Date().timeIntervalSince1970 - savedAt)
                for _ in 0..<Int(try r.u32("sessions")) {
                    let key = try r.str16("key")
                    let idle = Double(bitPattern: try r.u64("idle"))
                    var items: [UInt64] = []
                    for _ in 0..<Int(try r.u32("items")) { items.append(try r.u64("item")) }
                    guard idle.isFinite else { continue }
                    store.restore(key, items: items, idle: idle + down, now: now)
                }
                return store.count
            }
        } catch {
            Log.warning("\(path) does not parse (\(error)): sessions start afresh")
            return 0
        }
    }
}
