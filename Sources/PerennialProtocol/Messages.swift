// The messages of protocol v1 as Swift values (PROTOCOL.md, "Opcodes").
// The values a client hands on (events, recommendations, scores, acks) are
// Hashable and Codable, so a service can put them in a set or a JSON reply.

public enum EventKind: UInt8, Sendable, CaseIterable, Hashable, Codable {
    case view = 1
    case click = 2
    case purchase = 3
    case rating = 4

    public var name: String {
        switch self {
        case .view: "view"
        case .click: "click"
        case .purchase: "purchase"
        case .rating: "rating"
        }
    }

    public init?(name: String) {
        guard let k = EventKind.allCases.first(where: { $0.name == name }) else { return nil }
        self = k
    }
}

/// One feedback event as it travels (29 bytes on the wire).
public struct WireEvent: Sendable, Equatable, Hashable, Codable {
    public static let wireSize = 29
    public var user: UInt64
    public var item: UInt64
    public var kind: EventKind
    /// The rating for `.rating`; a weight for the other kinds (0 means 1).
    public var value: Float
    /// Unix seconds; 0 = the server's clock at acceptance.
    public var timestamp: Int64

    public init(user: UInt64, item: UInt64, kind: EventKind, value: Float = 0, timestamp: Int64 = 0) {
        self.user = user
        self.item = item
        self.kind = kind
        self.value = value
        self.timestamp = timestamp
    }

    /// The range rule of PROTOCOL.md; returns what is wrong, or nil.
    public static func problem(kind: EventKind, value: Float) -> String? {
        if !value.isFinite { return "value \(value) is not a finite number" }
        if kind == .rating {
            return value < 0 || value > 10 ? "rating \(value) is outside 0...10" : nil
        }
        return value < 0 || value > 1000 ? "weight \(value) is outside 0...1000" : nil
    }
}

public struct Hello: Sendable, Equatable {
    public var protocolVersion: UInt16
    public var clientName: String
    public var token: String
    public init(protocolVersion: UInt16 = 1, clientName: String, token: String = "") {
        self.protocolVersion = protocolVersion
        self.clientName = clientName
        self.token = token
    }
}

public struct HelloReply: Sendable, Equatable {
    public var protocolVersion: UInt16
    public var maxFrameBytes: UInt32
    public var maxItems: UInt32
    public var maxEvents: UInt32
    public var serverName: String
    public init(protocolVersion: UInt16, maxFrameBytes: UInt32, maxItems: UInt32, maxEvents: UInt32, serverName: String) {
        self.protocolVersion = protocolVersion
        self.maxFrameBytes = maxFrameBytes
        self.maxItems = maxItems
        self.maxEvents = maxEvents
        self.serverName = serverName
    }
}

public struct RecommendRequest: Sendable, Equatable {
    public var user: UInt64
    public var k: UInt16
    /// 0 = answer now; else wait until the learner has applied this sequence.
    public var minAppliedSeq: UInt64 = 0
    /// "" = the default route's scorer.
    public var scorer: String = ""
    /// "" = none; at most `maxSessionIDBytes` bytes of UTF-8.
    public var sessionID: String = ""
    /// The longest session_id (PROTOCOL.md): longer is INVALID_ARGUMENT.
    public static let maxSessionIDBytes = 256
    /// Most recent last.
    public var sessionItems: [UInt64] = []
    public var exclude: [UInt64] = []
    /// If non-empty, rank only these.
    public var candidates: [UInt64] = []
    /// Optional: a second scorer (or route) whose answer the server computes
    /// and compares live (STATS `shadow_*`) but does not return.
    public var shadowScorer: String = ""

    public init(user: UInt64, k: UInt16, minAppliedSeq: UInt64 = 0, scorer: String = "", sessionID: String = "",
                sessionItems: [UInt64] = [], exclude: [UInt64] = [], candidates: [UInt64] = []) {
        self.user = user
        self.k = k
        self.minAppliedSeq = minAppliedSeq
        self.scorer = scorer
        self.sessionID = sessionID
        self.sessionItems = sessionItems
        self.exclude = exclude
        self.candidates = candidates
    }
}

public struct RankedItem: Sendable, Equatable, Hashable, Codable {
    public var item: UInt64
    public var score: Float
    public init(item: UInt64, score: Float) {
        self.item = item
        self.score = score
    }
}

public struct RecommendReply: Sendable, Equatable {
    public var appliedSeq: UInt64
    public var items: [RankedItem]
    public init(appliedSeq: UInt64, items: [RankedItem]) {
        self.appliedSeq = appliedSeq
        self.items = items
    }
}

public struct ScoreRequest: Sendable, Equatable {
    public var user: UInt64
    public var scorer: String
    public var sessionItems: [UInt64]
    public var items: [UInt64]
    public init(user: UInt64, scorer: String = "", sessionItems: [UInt64] = [], items: [UInt64]) {
        self.user = user
        self.scorer = scorer
        self.sessionItems = sessionItems
        self.items = items
    }
}

public struct ItemScore: Sendable, Equatable, Hashable, Codable {
    public var score: Float
    /// Whether the server has seen the item id.
    public var known: Bool
    public init(score: Float, known: Bool) {
        self.score = score
        self.known = known
    }
}

public struct FeedbackAck: Sendable, Equatable, Hashable, Codable {
    public var firstSeq: UInt64
    public var lastSeq: UInt64
    public var durableSeq: UInt64
    public var appliedSeq: UInt64
    public init(firstSeq: UInt64, lastSeq: UInt64, durableSeq: UInt64, appliedSeq: UInt64) {
        self.firstSeq = firstSeq
        self.lastSeq = lastSeq
        self.durableSeq = durableSeq
        self.appliedSeq = appliedSeq
    }
}

public struct ItemAttribute: Sendable, Equatable, Hashable, Codable {
    public var key: String
    public var value: String
    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }
}

public struct UpsertItem: Sendable, Equatable {
    public var item: UInt64
    public var text: String
    public var attributes: [ItemAttribute]
    public init(item: UInt64, text: String, attributes: [ItemAttribute] = []) {
        self.item = item
        self.text = text
        self.attributes = attributes
    }
}

public struct UpsertReply: Sendable, Equatable, Hashable, Codable {
    public var created: Bool
    public var truncated: Bool
    public init(created: Bool, truncated: Bool) {
        self.created = created
        self.truncated = truncated
    }
}

public struct StatCounter: Sendable, Equatable {
    public var name: String
    public var value: UInt64
    public init(_ name: String, _ value: UInt64) {
        self.name = name
        self.value = value
    }
}

public struct ErrorReply: Sendable, Equatable {
    /// Raw so that a client can carry a code newer than itself.
    public var rawCode: UInt16
    public var detail: UInt32
    public var message: String
    public var code: ErrorCode? { ErrorCode(rawValue: rawCode) }
    public init(code: ErrorCode, detail: UInt32 = 0, message: String) {
        self.rawCode = code.rawValue
        self.detail = detail
        self.message = message
    }
    public init(rawCode: UInt16, detail: UInt32, message: String) {
        self.rawCode = rawCode
        self.detail = detail
        self.message = message
    }
}

/// Everything a client may send.
public enum Request: Sendable, Equatable {
    case hello(Hello)
    case ping
    case recommend(RecommendRequest)
    case score(ScoreRequest)
    case feedback([WireEvent])
    case upsertItem(UpsertItem)
    case deleteItems([UInt64])
    case deleteUsers([UInt64])
    case stats
    case reload
    case snapshot
    case shutdown

    /// Whether the request writes to the log or the model's settings
    /// (refused while a restart replays the log: PROTOCOL.md, RECOVERING).
    public var changesState: Bool {
        switch self {
        case .feedback, .upsertItem, .deleteItems, .deleteUsers, .reload, .snapshot: true
        case .hello, .ping, .recommend, .score, .stats, .shutdown: false
        }
    }

    public var opcode: Opcode {
        switch self {
        case .hello: .hello
        case .ping: .ping
        case .recommend: .recommend
        case .score: .score
        case .feedback: .feedback
        case .upsertItem: .upsertItem
        case .deleteItems: .deleteItems
        case .deleteUsers: .deleteUsers
        case .stats: .stats
        case .reload: .reload
        case .snapshot: .snapshot
        case .shutdown: .shutdown
        }
    }
}

/// Everything a server may answer.
public enum Reply: Sendable, Equatable {
    case hello(HelloReply)
    case ping
    case recommend(RecommendReply)
    case score([ItemScore])
    case feedback(FeedbackAck)
    case upsertItem(UpsertReply)
    /// How many of the named items the server held (and has forgotten).
    case deleteItems(deleted: UInt16)
    /// How many of the named users the server held (and has forgotten).
    case deleteUsers(deleted: UInt16)
    case stats([StatCounter])
    case reload
    /// The log position the snapshot covers and its version's id
    /// (`v<seq>`, or `v<seq>.<serial>`; `perennial serve --from-version`).
    case snapshot(seq: UInt64, version: String)
    case shutdown
    case error(ErrorReply)

    public var opcode: Opcode {
        switch self {
        case .hello: .hello
        case .ping: .ping
        case .recommend: .recommend
        case .score: .score
        case .feedback: .feedback
        case .upsertItem: .upsertItem
        case .deleteItems: .deleteItems
        case .deleteUsers: .deleteUsers
        case .stats: .stats
        case .reload: .reload
        case .snapshot: .snapshot
        case .shutdown: .shutdown
        case .error: .error
        }
    }
}
