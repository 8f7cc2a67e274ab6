// The frame header of protocol v1 and the incremental frame decoder.
//
//   u32 length (bytes after this field) · u8 version · u8 opcode · u16 flags ·
//   u32 request id · payload
//
// The decoder is a pure function over the bytes received so far: it answers
// "need more", "here is a frame" or "fatal error" (SwiftNIO's
// ByteToMessageDecoder shape), so it is tested with byte arrays and fuzzed
// without a socket.

public enum Opcode: UInt8, Sendable, CaseIterable {
    case hello = 0x01
    case ping = 0x02
    case recommend = 0x03
    case score = 0x04
    case feedback = 0x05
    case upsertItem = 0x06
    case stats = 0x07
    case deleteItems = 0x08
    case deleteUsers = 0x09
    case reload = 0x10
    case snapshot = 0x11
    case shutdown = 0x12
    case error = 0x7F

    public var name: String {
        switch self {
        case .hello: "HELLO"
        case .ping: "PING"
        case .recommend: "RECOMMEND"
        case .score: "SCORE"
        case .feedback: "FEEDBACK"
        case .upsertItem: "UPSERT_ITEM"
        case .stats: "STATS"
        case .deleteItems: "DELETE_ITEMS"
        case .deleteUsers: "DELETE_USERS"
        case .reload: "RELOAD"
        case .snapshot: "SNAPSHOT"
        case .shutdown: "SHUTDOWN"
        case .error: "ERROR"
        }
    }

    public init?(name: String) {
        guard let o = Opcode.allCases.first(where: { $0.name == name }) else { return nil }
        self = o
    }
}

public enum FrameFlags {
    /// Set on every server → client frame.
    public static let reply: UInt16 = 0x0001
    public static let reserved: UInt16 = ~reply
}

public struct FrameHeader: Sendable, Equatable {
    /// Length prefix + version + opcode + flags + request id.
    public static let size = 12
    public static let version: UInt8 = 1

    public var length: UInt32
    public var version: UInt8
    public var opcode: UInt8
    public var flags: UInt16
    public var requestID: UInt32

    public init(length: UInt32, version: UInt8, opcode: UInt8, flags: UInt16, requestID: UInt32) {
        self.length = length
        self.version = version
        self.opcode = opcode
        self.flags = flags
        self.requestID = requestID
    }

    public var isReply: Bool { flags & FrameFlags.reply != 0 }
    public var payloadLength: Int { Int(length) - 8 }
    public var frameLength: Int { Int(length) + 4 }
}

/// Limits a decoder enforces (PROTOCOL.md, "Limits"). The defaults are the
/// protocol's; a server takes its own from the config.
public struct ProtocolLimits: Sendable, Equatable {
    public var maxFrameBytes: Int = 4 * 1024 * 1024
    public var maxItems: Int = 1000
    public var maxEvents: Int = 10_000

    public init(maxFrameBytes: Int = 4 * 1024 * 1024, maxItems: Int = 1000, maxEvents: Int = 10_000) {
        self.maxFrameBytes = maxFrameBytes
        self.maxItems = maxItems
        self.maxEvents = maxEvents
    }
}

public enum FrameDecodeResult: Equatable {
    /// Fewer bytes than a whole frame; read more.
    case needMore
    /// A whole frame: its header and where its payload lies in the input.
    /// `header.frameLength` bytes are consumed.
    case frame(FrameHeader)
    /// The stream cannot be trusted any more: send the error, close.
    /// `requestID` is the header's id when it could be read, else 0.
    case fatal(ProtocolError, requestID: UInt32)
}

public enum FrameDecoder {
    /// Looks at the start of `bytes` for one frame. Checks the length and the
    /// version as soon as the 12 header bytes are present, before any payload
    /// arrives, so an oversized frame is refused without buffering it.
    public static func decode(_ bytes: UnsafeRawBufferPointer, limits: ProtocolLimits) -> FrameDecodeResult {
        guard bytes.count >= FrameHeader.size else { return .needMore }
        let header = FrameHeader(
            length: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)),
            version: bytes[4],
            opcode: bytes[5],
            flags: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 6, as: UInt16.self)),
            requestID: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        )
        if header.length < 8 {
            return .fatal(ProtocolError(.malformedFrame, "frame length \(header.length) is below the 8-byte header", fatal: true),
                          requestID: header.requestID)
        }
        if Int(header.length) > limits.maxFrameBytes {
            return .fatal(
                ProtocolError(.frameTooLarge, "frame length \(header.length) exceeds the limit of \(limits.maxFrameBytes) bytes", fatal: true),
                requestID: header.requestID)
        }
        if header.version != FrameHeader.version {
            return .fatal(
                ProtocolError(.unsupportedVersion, "protocol version \(header.version) is not supported (this server speaks 1)", fatal: true),
                requestID: header.requestID)
        }
        guard bytes.count >= header.frameLength else { return .needMore }
        return .frame(header)
    }

    /// Checks made after a whole frame is in hand that do not break framing:
    /// reserved flags and the opcode. Returns the opcode or a non-fatal error.
    public static func opcode(of header: FrameHeader) throws(ProtocolError) -> Opcode {
        if header.flags & FrameFlags.reserved != 0 {
            throw ProtocolError(.malformedPayload, "reserved flag bits set: 0x\(String(header.flags, radix: 16))")
        }
        guard let op = Opcode(rawValue: header.opcode) else {
            throw ProtocolError(.unknownOpcode, "unknown opcode 0x\(String(header.opcode, radix: 16))")
        }
        if op == .error && !header.isReply {
            throw ProtocolError(.unknownOpcode, "ERROR is a reply-only opcode")
        }
        return op
    }
}

extension Array where Element == UInt8 {
    /// Starts a frame: writes the header with a placeholder length and
    /// returns the offset to pass to `endFrame`.
    @inline(__always)
    public mutating func beginFrame(opcode: UInt8, flags: UInt16, requestID: UInt32) -> Int {
        let start = count
        // The 12 header bytes in one append (one capacity check, not seven).
        var header: (UInt32, UInt8, UInt8, UInt16, UInt32) = (0, FrameHeader.version, opcode, flags.littleEndian,
                                                             requestID.littleEndian)
        Swift.withUnsafeBytes(of: &header) { append(contentsOf: $0) }
        return start
    }

    /// Fills in the length of the frame begun at `start`.
    @inline(__always)
    public mutating func endFrame(_ start: Int) {
        patch(UInt32(count - start - 4), at: start)
    }
}
