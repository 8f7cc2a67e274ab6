// Reading little-endian fields from a payload, bounds-checked. Every read that
// would run past the end throws MALFORMED_PAYLOAD, so a decoder never trusts a
// length it has not checked against the bytes it holds.

public struct ByteReader {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset: Int = 0

    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }

    @inline(__always)
    mutating func need(_ n: Int, _ what: StaticString) throws(ProtocolError) {
        if n > remaining {
            throw ProtocolError(.malformedPayload, "payload too short reading \(what)")
        }
    }

    public mutating func u8(_ what: StaticString = "u8") throws(ProtocolError) -> UInt8 {
        try need(1, what)
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func u16(_ what: StaticString = "u16") throws(ProtocolError) -> UInt16 {
        try need(2, what)
        defer { offset += 2 }
        return UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    public mutating func u32(_ what: StaticString = "u32") throws(ProtocolError) -> UInt32 {
        try need(4, what)
        defer { offset += 4 }
        return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    public mutating func u64(_ what: StaticString = "u64") throws(ProtocolError) -> UInt64 {
        try need(8, what)
        defer { offset += 8 }
        return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// A u8 that must be 0 or 1.
    public mutating func flag(_ what: StaticString) throws(ProtocolError) -> Bool {
        let v = try u8(what)
        if v > 1 { throw ProtocolError(.malformedPayload, "\(what) must be 0 or 1, got \(v)") }
        return v == 1
    }

    public mutating func i64(_ what: StaticString = "i64") throws(ProtocolError) -> Int64 {
        Int64(bitPattern: try u64(what))
    }

    public mutating func f32(_ what: StaticString = "f32") throws(ProtocolError) -> Float {
        Float(bitPattern: try u32(what))
    }

    /// A `str16`: u16 byte count then UTF-8. Invalid UTF-8 is MALFORMED_PAYLOAD.
    public mutating func str16(_ what: StaticString = "str16") throws(ProtocolError) -> String {
        let n = Int(try u16(what))
        return try utf8(n, what)
    }

    /// A `str32`: u32 byte count then UTF-8.
    public mutating func str32(_ what: StaticString = "str32") throws(ProtocolError) -> String {
        let n = Int(try u32(what))
        return try utf8(n, what)
    }

    mutating func utf8(_ n: Int, _ what: StaticString) throws(ProtocolError) -> String {
        try need(n, what)
        let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n])
        offset += n
        guard let s = String(validating: slice.bindMemory(to: UInt8.self), as: UTF8.self) else {
            throw ProtocolError(.malformedPayload, "invalid UTF-8 in \(what)")
        }
        return s
    }

    /// An `ids16` list: the count is checked against `limit` before any id is
    /// read, so a huge count never allocates.
    public mutating func ids16(_ what: StaticString, limit: Int) throws(ProtocolError) -> [UInt64] {
        let n = Int(try u16(what))
        if n > limit {
            throw ProtocolError(.invalidArgument, "\(what): \(n) ids, limit is \(limit) (the server's limits.max_items)")
        }
        try need(n * 8, what)
        var ids = [UInt64]()
        ids.reserveCapacity(n)
        for _ in 0..<n {
            let id = try u64(what)
            try ProtocolID.check(id, what)
            ids.append(id)
        }
        return ids
    }

    /// Payloads are consumed exactly: trailing bytes are an error.
    public func expectEnd() throws(ProtocolError) {
        if remaining != 0 {
            throw ProtocolError(.malformedPayload, "\(remaining) unexpected trailing bytes")
        }
    }
}

/// Valid ids are 1 … 2^63−1 so every id fits a signed 64-bit integer in
/// every client language.
public enum ProtocolID {
    public static let max: UInt64 = UInt64(Int64.max)

    @inline(__always)
    public static func isValid(_ id: UInt64) -> Bool { id != 0 && id <= max }

    static func check(_ id: UInt64, _ what: StaticString) throws(ProtocolError) {
        if !isValid(id) {
            throw ProtocolError(.invalidArgument, "\(what): id \(id) out of range 1...\(max)")
        }
    }
}
