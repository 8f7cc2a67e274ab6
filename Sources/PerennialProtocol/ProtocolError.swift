// Error codes of protocol v1 (PROTOCOL.md, "ERROR") and the error value the
// codec throws. Fatal errors close the connection after the ERROR frame.

public enum ErrorCode: UInt16, Sendable, CaseIterable {
    case malformedFrame = 1
    case frameTooLarge = 2
    case unsupportedVersion = 3
    case unknownOpcode = 4
    case malformedPayload = 5
    case invalidArgument = 6
    case invalidEvent = 7
    case unknownScorer = 8
    case unauthorized = 9
    case notSupported = 10
    case timeout = 11
    case shuttingDown = 12
    case storage = 13
    case `internal` = 14
    case busy = 15
    case capacity = 16
    case recovering = 17

    /// The name used in PROTOCOL.md and the vectors' index.
    public var name: String {
        switch self {
        case .malformedFrame: "MALFORMED_FRAME"
        case .frameTooLarge: "FRAME_TOO_LARGE"
        case .unsupportedVersion: "UNSUPPORTED_VERSION"
        case .unknownOpcode: "UNKNOWN_OPCODE"
        case .malformedPayload: "MALFORMED_PAYLOAD"
        case .invalidArgument: "INVALID_ARGUMENT"
        case .invalidEvent: "INVALID_EVENT"
        case .unknownScorer: "UNKNOWN_SCORER"
        case .unauthorized: "UNAUTHORIZED"
        case .notSupported: "NOT_SUPPORTED"
        case .timeout: "TIMEOUT"
        case .shuttingDown: "SHUTTING_DOWN"
        case .storage: "STORAGE"
        case .internal: "INTERNAL"
        case .busy: "BUSY"
        case .capacity: "CAPACITY"
        case .recovering: "RECOVERING"
        }
    }

    public init?(name: String) {
        guard let c = ErrorCode.allCases.first(where: { $0.name == name }) else { return nil }
        self = c
    }
}

public struct ProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: ErrorCode
    public var message: String
    /// Code-specific detail: the batch index for INVALID_EVENT and
    /// CAPACITY, else 0.
    public var detail: UInt32
    /// Fatal errors end the connection (framing can no longer be trusted).
    public var fatal: Bool

    public init(_ code: ErrorCode, _ message: String, detail: UInt32 = 0, fatal: Bool = false) {
        self.code = code
        self.message = message
        self.detail = detail
        self.fatal = fatal
    }

    public var description: String { "\(code.name): \(message)" }
}
