// What the write-ahead log holds: accepted feedback batches (with their
// sequence numbers and the timestamps the server resolved) and item upserts,
// in acceptance order. Replaying the records in order through the model
// rebuilds it exactly, because the learner is deterministic in log order.
//
// On disk, a segment file is a header, then records:
//   u32 payload length · u32 CRC-32C of the payload, seeded · payload.
// Format 2 (written now): the header is the 8-byte magic "PRNLOG02" and a
// u64 salt drawn at random when the segment is created; every record's
// CRC-32C starts from the salt's low 32 bits. Clients never see the salt, so
// bytes they send (an item's text) can never form a record that checks out:
// recovery can tell a crash's torn tail from records that follow damage.
// Format 1 ("PRNLOG01", no salt, CRC seeded with 0) is still read.
// Payload: u8 type, then
//   type 1 (feedback): u64 first_seq · u32 n · n × (u64 user · u64 item ·
//                      u8 kind · f32 value · i64 timestamp)
//   type 2 (upsert):   u64 item · u32 text bytes · text · u16 n ·
//                      n × (u16 key bytes · key · u16 value bytes · value)
//   type 5 (delete items): u32 n · n × u64 item   (DELETE_ITEMS)
//   type 4 (delete users): u32 n · n × u64 user   (DELETE_USERS)
//                      (forgotten at this position, after every event
//                      before it is learned)
//   type 3 (delete items, written by builds before the deleted ids were
//           remembered; read only): as type 5, replayed as those builds
//           applied it, without remembering the ids, so a log they wrote
//           rebuilds the model they served (review finding, helper-63).
// All integers little-endian.

public enum LogRecord: Equatable, Sendable {
    case feedback(firstSeq: UInt64, events: [IncomingEvent])
    case upsert(item: UInt64, text: String, attributes: [LogAttribute])
    case deleteItems(items: [UInt64])
    case deleteUsers(users: [UInt64])
    /// A deletion an older build logged (type 3): its ids are not
    /// remembered as deleted (Model.deleteItems(_:remember:)). This build
    /// never logs one; it encodes one only for tests standing in for an
    /// older build's log.
    case deleteItemsUnremembered(items: [UInt64])

    public static let magic: [UInt8] = Array("PRNLOG02".utf8)
    /// Format 1's magic: segments written before the salt (read only).
    public static let magicV1: [UInt8] = Array("PRNLOG01".utf8)
    /// A format-2 segment's header: magic and salt.
    public static let segmentHeaderSize = 16
    public static let headerSize = 8

    /// Appends length · crc · payload to `out`, the CRC seeded with `seed`
    /// (the segment's salt; 0 in format 1).
    public func encode(into out: inout [UInt8], seed: UInt32 = 0) {
        var p: [UInt8] = []
        switch self {
        case .feedback(let first, let events):
            p.reserveCapacity(13 + events.count * 29)
            p.append(1)
            p.appendLE(first)
            p.appendLE(UInt32(events.count))
            for e in events {
                p.appendLE(e.user)
                p.appendLE(e.item)
                p.append(e.kind.rawValue)
                p.appendLE(e.value.bitPattern)
                p.appendLE(UInt64(bitPattern: e.timestamp))
            }
        case .upsert(let item, let text, let attributes):
            p.append(2)
            p.appendLE(item)
            p.appendLE(UInt32(text.utf8.count))
            p.append(contentsOf: text.utf8)
            p.appendLE(UInt16(attributes.count))
            for a in attributes {
                p.appendLE(UInt16(a.key.utf8.count))
                p.append(contentsOf: a.key.utf8)
                p.appendLE(UInt16(a.value.utf8.count))
                p.append(contentsOf: a.value.utf8)
            }
        case .deleteItems(let ids), .deleteUsers(let ids), .deleteItemsUnremembered(let ids):
            p.reserveCapacity(5 + ids.count * 8)
            switch self {
            case .deleteItems: p.append(5)
            case .deleteUsers: p.append(4)
            default: p.append(3)
            }
            p.appendLE(UInt32(ids.count))
            for i in ids { p.appendLE(i) }
        }
        out.appendLE(UInt32(p.count))
        out.appendLE(p.withUnsafeBytes { CRC32C.checksum($0, seed: seed) })
        out.append(contentsOf: p)
    }

    /// Decodes a payload whose checksum has been verified; nil if it does
    /// not parse (which a matching checksum makes a bug, not a torn write).
    public static func decode(payload: UnsafeRawBufferPointer) -> LogRecord? {
        var r = LEReader(bytes: payload)
        guard let type = r.u8() else { return nil }
        switch type {
        case 1:
            guard let first = r.u64(), let n = r.u32(), Int(n) * 29 == r.remaining else { return nil }
            var events: [IncomingEvent] = []
            events.reserveCapacity(Int(n))
            for _ in 0..<n {
                guard let u = r.u64(), let i = r.u64(), let k = r.u8(), let kind = FeedbackKind(rawValue: k),
                      let v = r.u32(), let t = r.u64() else { return nil }
                events.append(IncomingEvent(user: u, item: i, kind: kind, value: Float(bitPattern: v), timestamp: Int64(bitPattern: t)))
            }
            return .feedback(firstSeq: first, events: events)
        case 2:
            guard let item = r.u64(), let tn = r.u32(), let text = r.string(Int(tn)), let n = r.u16() else { return nil }
            var attributes: [LogAttribute] = []
            for _ in 0..<n {
                guard let kn = r.u16(), let k = r.string(Int(kn)), let vn = r.u16(), let v = r.string(Int(vn)) else { return nil }
                attributes.append(LogAttribute(key: k, value: v))
            }
            guard r.remaining == 0 else { return nil }
            return .upsert(item: item, text: text, attributes: attributes)
        case 3, 4, 5:
            guard let n = r.u32(), Int(n) * 8 == r.remaining else { return nil }
            var ids: [UInt64] = []
            ids.reserveCapacity(Int(n))
            for _ in 0..<n {
                guard let i = r.u64() else { return nil }
                ids.append(i)
            }
            switch type {
            case 5: return .deleteItems(items: ids)
            case 4: return .deleteUsers(users: ids)
            default: return .deleteItemsUnremembered(items: ids)
            }
        default:
            return nil
        }
    }
}

public struct LogAttribute: Equatable, Sendable {
    public var key: String
    public var value: String
    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }
}

extension Array where Element == UInt8 {
    @inline(__always) mutating func appendLE<T: FixedWidthInteger>(_ v: T) {
        Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) }
    }
}

struct LEReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0
    var remaining: Int { bytes.count - offset }

    mutating func take<T: FixedWidthInteger>(_: T.Type) -> T? {
        let n = MemoryLayout<T>.size
        guard remaining >= n else { return nil }
        defer { offset += n }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
    mutating func u8() -> UInt8? { take(UInt8.self) }
    mutating func u16() -> UInt16? { take(UInt16.self) }
    mutating func u32() -> UInt32? { take(UInt32.self) }
    mutating func u64() -> UInt64? { take(UInt64.self) }
    mutating func string(_ n: Int) -> String? {
        guard remaining >= n else { return nil }
        defer { offset += n }
        return String(validating: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n]).bindMemory(to: UInt8.self), as: UTF8.self)
    }
}
