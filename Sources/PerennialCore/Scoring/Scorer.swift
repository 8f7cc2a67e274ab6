// The scorer plugin API: what a plugin implements, what it is given, and on
// which thread each call happens. Deliberately free of server and protocol
// types, so a plugin can later live in a separately loaded library
// (DESIGN.md, "Scorer plugins").

/// What kind of feedback an event is.
public enum FeedbackKind: UInt8, Sendable, CaseIterable {
    case view = 1
    case click = 2
    case purchase = 3
    case rating = 4

    /// As configs and clients spell it.
    public var name: String {
        switch self {
        case .view: "view"
        case .click: "click"
        case .purchase: "purchase"
        case .rating: "rating"
        }
    }
}

/// An accepted event as the learner sees it: dense row indices instead of
/// external ids, and its sequence number in the log.
public struct LearnEvent: Sendable, Equatable {
    public var seq: UInt64
    /// Dense user index (row in the user tables).
    public var user: Int32
    /// Dense item index.
    public var item: Int32
    public var kind: FeedbackKind
    /// The rating for `.rating`; for the other kinds, how much the event
    /// teaches (FeedbackWeights.learnedValue: its kind's weight times the
    /// weight the client sent, capped; 0 = learn nothing from it).
    public var value: Float
    public var timestamp: Int64
    /// The generation of the user's row index (id lifecycle: a reused index
    /// starts a new generation; the model resets it before learning).
    public var userGeneration: UInt32 = 0
    /// The event belongs to a user id not yet admitted, learned as the
    /// shared fallback user: scorers learn it as that user's preference but
    /// must not chain it with the fallback user's other events (they come
    /// from many people).
    public var sharedUser = false

    /// How strongly the event counts as positive for a scorer: a rating 1
    /// at or above `positiveThreshold`, else `belowThreshold`; an implicit
    /// event its learning weight (`value`).
    @inline(__always)
    public func positiveWeight(threshold positiveThreshold: Float, belowThreshold: Float = 0) -> Float {
        kind == .rating ? (value >= positiveThreshold ? 1 : belowThreshold) : value
    }

    /// How much the event counts as an occurrence of its item (popularity,
    /// co-occurrence and transition counts): a rating 1, whatever its
    /// value; an implicit event its learning weight (`value`).
    @inline(__always)
    public var occurrenceWeight: Float { kind == .rating ? 1 : value }

    public init(seq: UInt64, user: Int32, item: Int32, kind: FeedbackKind, value: Float, timestamp: Int64) {
        self.seq = seq
        self.user = user
        self.item = item
        self.kind = kind
        self.value = value
        self.timestamp = timestamp
    }
}

/// A question put to a scorer on the serving thread.
public struct ScoringQuery {
    /// Dense user index, or nil for a user never seen.
    public var user: Int32?
    /// Dense indices of the session's recent items that are known, most recent last.
    public var sessionItems: [Int32]
    /// Rank only these (dense indices), or every item when nil.
    public var candidates: [Int32]?
    /// Items never to return.
    public var exclusions: ExclusionSet
    /// Items 0..<itemCount exist.
    public var itemCount: Int
    /// The user's interaction history (bounded), oldest first.
    public var history: ArraySlice<Int32>

    public init(user: Int32?, sessionItems: [Int32] = [], candidates: [Int32]? = nil, exclusions: ExclusionSet,
                itemCount: Int, history: ArraySlice<Int32> = []) {
        self.user = user
        self.sessionItems = sessionItems
        self.candidates = candidates
        self.exclusions = exclusions
        self.itemCount = itemCount
        self.history = history
    }

    /// Calls `body` for every item the query may return: the candidates, or
    /// the whole catalogue, minus exclusions.
    @inline(__always)
    public func forEachEligibleItem(_ body: (Int32) -> Void) {
        if let candidates {
            for c in candidates where !exclusions.contains(c) { body(c) }
        } else {
            for i in 0..<Int32(itemCount) where !exclusions.contains(i) { body(i) }
        }
    }
}

/// A scorer plugin.
///
/// Threads: `grow` runs on the thread that admits new ids (the server's
/// loop) before any index is published; `learn` runs only on the learner
/// thread, in sequence order; `recommend`, `score` and `counters` run on the
/// serving thread, concurrently with `learn`. A plugin therefore keeps state
/// that both sides touch in `ChunkedBuffer`s (memory that never moves), and
/// tolerates reading a value the learner is writing.
public protocol Scorer: AnyObject {
    /// The registered name (`popularity`, `cf`, …).
    var name: String { get }
    /// Makes room for users 0..<users and items 0..<items.
    func grow(users: Int, items: Int)
    /// Learns from one accepted event.
    func learn(_ event: LearnEvent)
    /// Learns again from a past event that experience replay drew (learner
    /// thread, right after `learn` of a new event): the model's learning
    /// step only; counts and other statistics of the stream must not count
    /// it twice. Scorers that do not support replay ignore it.
    func replay(_ event: LearnEvent)
    /// Whether `replay` does anything (STATS reports which scorers replay).
    var replays: Bool { get }
    /// A user's id expired and its index will serve a new user: forget
    /// everything learned about the index (learner thread, before the new
    /// user's first event is learned).
    func forget(user: Int32)
    /// Item ids expired (ItemLifecycle) and their indices will serve new
    /// items: forget everything learned about those indices, and every
    /// reference to them (recent items, co-occurrences, negative samplers,
    /// caches), so a new item taking an index starts as a never-seen one.
    /// Admitting thread, with the learner idle (so the scorer's learner
    /// state may be changed here). No default: a scorer that kept a stale
    /// reference would credit a new item with an old one's history.
    /// Negative sampling must also skip the indices `ItemVacancy` says are
    /// vacant.
    func forget(items: RetiredItems)
    /// `forget(items:)` in two parts: what must be done now (here, as
    /// there), and a purge of tables that merely name the items, returned
    /// to run later on the learner thread (before any later event is
    /// learned; LearnerJob), so a large one does not hold the serving
    /// thread. The default does it all now.
    func forgetLater(items: RetiredItems) -> LearnerJob?
    /// An item's text was stored or replaced (admitting thread, after
    /// `grow` made room for the item; also for every stored text when a
    /// model is restored or a scorer is added by a reload), at log position
    /// `seq`: learning must use it for events after `seq` and the old text
    /// for events up to it, whatever the learner's progress, or a replay of
    /// the log would learn differently from the live server.
    func itemTextChanged(_ item: Int32, text: String, after seq: UInt64)
    /// Whether `settings` differ from this scorer's only in what it reads
    /// per query (a blend weight, say), so a RELOAD can `adjust` it in place
    /// instead of rebuilding it. False (the default): the scorer is rebuilt
    /// with its learned state carried over.
    func adjusts(to settings: any ScorerSettings) -> Bool
    /// Whether `settings` differ from this scorer's only in how it learns
    /// from the next event (a step size, say) and in what `adjusts` allows,
    /// shaping none of its state: a RELOAD then `adjust`s it in place too,
    /// and ties the new settings to the log with a snapshot (a replay of
    /// the log must learn the events before the RELOAD as they were
    /// learned). False (the default): the scorer is rebuilt.
    func retunes(to settings: any ScorerSettings) -> Bool
    /// Takes such settings in place (admitting thread, learner idle).
    func adjust(to settings: any ScorerSettings)
    /// Does, before the first request, what the first request would
    /// otherwise do for the whole catalogue (the serving thread, before it
    /// serves, learner not started).
    func warmUp()
    /// Pushes every eligible item with its score into `top`.
    func recommend(_ query: ScoringQuery, into top: inout TopK)
    /// Answers several queries at once: `tops[i]` gets exactly what
    /// `recommend(queries[i], into: &tops[i])` would push (the serving loop
    /// gathers the RECOMMENDs that arrive together, and an answer must not
    /// depend on which others came with it). A scorer that scans the
    /// catalogue reads it once for the whole batch; the default answers the
    /// queries one by one.
    func recommend(batch queries: [ScoringQuery], into tops: inout [TopK])
    /// Scores the given items (nil = an item id never seen) for the query's user.
    func score(_ query: ScoringQuery, items: [Int32?]) -> [Float]
    /// Named counters for STATS, prefixed with the scorer's name by the caller.
    var counters: [(String, UInt64)] { get }
    /// The predicted rating, for scorers that predict ratings (else nil).
    func predictRating(user: Int32?, item: Int32?) -> Float?
    /// A bulk fit is about to pass over the same events again (epoch 2, 3,
    /// …): a scorer resets whatever must not count an event twice.
    func beginRepeatedEpoch()
    /// How many passes a bulk fit (an evaluation's warm-up or refit) should
    /// make over its events.
    var preferredEpochs: Int { get }
    /// Writes every weight and every piece of learning state (counters,
    /// RNG state, buffers) to a snapshot, so that loading it and learning
    /// the same later events gives the same model. Called with the learner
    /// idle.
    func save(to w: inout SnapshotWriter)
    /// Restores what `save` wrote, after `grow` made room for the
    /// snapshot's users and items.
    func load(from r: inout SnapshotReader) throws
}

extension Scorer {
    public func recommend(batch queries: [ScoringQuery], into tops: inout [TopK]) {
        for i in queries.indices { recommend(queries[i], into: &tops[i]) }
    }
    public func replay(_ event: LearnEvent) {}
    public func forgetLater(items: RetiredItems) -> LearnerJob? {
        forget(items: items)
        return nil
    }
    public func adjusts(to settings: any ScorerSettings) -> Bool { false }
    public func retunes(to settings: any ScorerSettings) -> Bool { false }
    public func warmUp() {}
    /// (Never called: `adjusts` and `retunes` said no, so the model
    /// rebuilds the scorer.)
    public func adjust(to settings: any ScorerSettings) {
        preconditionFailure("adjust(to:) called on a scorer whose adjusts(to:) and retunes(to:) are false")
    }
    public var replays: Bool { false }
    public func forget(user: Int32) {}
    public func itemTextChanged(_ item: Int32, text: String, after seq: UInt64) {}
    public var counters: [(String, UInt64)] { [] }
    public func predictRating(user: Int32?, item: Int32?) -> Float? { nil }
    public func beginRepeatedEpoch() {}
    public var preferredEpochs: Int { 1 }
}

/// What the model hands a scorer it builds: the shared embedding table, and
/// which item indices are vacant (expired items') for the learner.
public struct ScorerEnvironment {
    public let table: EmbeddingTable
    public let vacancy: ItemVacancy
    public init(table: EmbeddingTable, vacancy: ItemVacancy = ItemVacancy()) {
        self.table = table
        self.vacancy = vacancy
    }
}

/// Settings a scorer read from its config section.
public protocol ScorerSettings: Sendable {
    /// Whether `other` holds the same settings (a live reload keeps a scorer
    /// whose settings did not change).
    func isEqual(to other: any ScorerSettings) -> Bool
}

extension ScorerSettings where Self: Equatable {
    public func isEqual(to other: any ScorerSettings) -> Bool {
        (other as? Self) == self
    }
}

/// Reads one scorer's section, `[scorers.<name>]`.
public struct ScorerSettingsReader {
    let reader: ConfigReader
    public let prefix: String

    public func int(_ key: String, default v: Int, in range: ClosedRange<Int>) throws(ConfigError) -> Int {
        try reader.int(prefix + "." + key, default: v, in: range)
    }
    public func double(_ key: String, default v: Double, in range: ClosedRange<Double>) throws(ConfigError) -> Double {
        try reader.double(prefix + "." + key, default: v, in: range)
    }
    public func bool(_ key: String, default v: Bool) throws(ConfigError) -> Bool {
        try reader.bool(prefix + "." + key, default: v)
    }
    public func string(_ key: String, default v: String, oneOf choices: [String]? = nil) throws(ConfigError) -> String {
        try reader.string(prefix + "." + key, default: v, oneOf: choices)
    }
}

/// How to build one kind of scorer.
public struct ScorerFactory: Sendable {
    public let name: String
    public let summary: String
    public let readSettings: @Sendable (ScorerSettingsReader) throws(ConfigError) -> any ScorerSettings
    public let make: @Sendable (any ScorerSettings, ScorerEnvironment) -> any Scorer

    public init(name: String, summary: String,
                readSettings: @escaping @Sendable (ScorerSettingsReader) throws(ConfigError) -> any ScorerSettings,
                make: @escaping @Sendable (any ScorerSettings, ScorerEnvironment) -> any Scorer) {
        self.name = name
        self.summary = summary
        self.readSettings = readSettings
        self.make = make
    }
}

/// Every scorer the server can load, by name. The server consults it when it
/// reads the config; the built-in list is assembled where the plugins are
/// linked (`Sources/PerennialPlugins/BuiltinScorers.swift`).
public struct ScorerRegistry: Sendable {
    public private(set) var factories: [ScorerFactory] = []

    public init(_ factories: [ScorerFactory] = []) {
        for f in factories { register(f) }
    }

    public mutating func register(_ factory: ScorerFactory) {
        precondition(self.factory(named: factory.name) == nil, "scorer \(factory.name) registered twice")
        factories.append(factory)
    }

    public func factory(named name: String) -> ScorerFactory? { factories.first { $0.name == name } }
    public var names: [String] { factories.map(\.name) }
}
