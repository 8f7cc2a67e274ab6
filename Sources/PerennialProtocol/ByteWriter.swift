// Appending little-endian fields to an output byte array. Encoders write
// straight into the caller's buffer (a connection's reply buffer), so a reply
// costs no intermediate allocation.

extension Array where Element == UInt8 {
    @inline(__always) public mutating func put(_ v: UInt8) { append(v) }

    @inline(__always) public mutating func put(_ v: UInt16) {
        append(UInt8(truncatingIfNeeded: v))
        append(UInt8(truncatingIfNeeded: v >> 8))
    }

    @inline(__always) public mutating func put(_ v: UInt32) {
        Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) }
    }

    @inline(__always) public mutating func put(_ v: UInt64) {
        Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) }
    }

    @inline(__always) public mutating func put(_ v: Int64) { put(UInt64(bitPattern: v)) }

    @inline(__always) public mutating func put(_ v: Float) { put(v.bitPattern) }

    /// `str16`; the caller guarantees the UTF-8 length fits 65,535 bytes
    /// (longer strings are cut at a character boundary).
    public mutating func putStr16(_ s: String) {
        let cut = UTF8Cut.prefix(Array(s.utf8), maxBytes: Int(UInt16.max))
        put(UInt16(cut.count))
        append(contentsOf: cut)
    }

    public mutating func putStr32(_ s: String) {
        put(UInt32(s.utf8.count))
        append(contentsOf: s.utf8)
    }

    public mutating func putIDs16(_ ids: [UInt64]) {
        put(UInt16(Swift.min(ids.count, Int(UInt16.max))))
        for id in ids.prefix(Int(UInt16.max)) { put(id) }
    }

    /// Overwrites a u32 at `offset` (used to fill in a frame's length).
    @inline(__always) public mutating func patch(_ v: UInt32, at offset: Int) {
        precondition(offset >= 0 && offset + 4 <= count)
        withUnsafeMutableBytes { $0.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt32.self) }
    }
}

/// Cutting UTF-8 at the last whole character within a byte budget.
public enum UTF8Cut {
    public static func prefix(_ bytes: [UInt8], maxBytes: Int) -> [UInt8] {
        if bytes.count <= maxBytes { return bytes }
        var end = maxBytes
        // Step back over continuation bytes (10xxxxxx) to a character start.
        while end > 0 && (bytes[end] & 0xC0) == 0x80 { end -= 1 }
        return Array(bytes[0..<end])
    }
}
