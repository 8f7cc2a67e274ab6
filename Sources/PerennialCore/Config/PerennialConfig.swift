// The server's configuration, read from the bundled TOML file format
// (config/perennial.toml documents every key). Defaults here and in that
// file are the same; a test holds them together.

import Foundation

public struct LimitsConfig: Sendable, Equatable {
    public var maxFrameBytes = 4 * 1024 * 1024
    public var maxItems = 1000
    public var maxEvents = 10_000
    public var maxTextBytes = 65_536
    /// Most bytes of an UPSERT_ITEM's attributes (keys and values summed):
    /// kept in memory, the log and every snapshot, so bounded as the text
    /// is; more is refused whole, not cut (a cut attribute is wrong data).
    public var maxAttributeBytes = 65_536
    public var maxConnections = 4096
    public var idleTimeoutMs = 300_000
    public var frameTimeoutMs = 10_000
    public var waitMs = 5_000
    public var maxPendingBytes = 1024 * 1024
    /// Most memory all connections together may hold for frames still
    /// being received, beyond the 64 KiB each may keep: past it a
    /// frame that needs a larger buffer is refused BUSY, so many clients
    /// each sending the start of a large frame cannot take the memory of
    /// max_connections × max_frame_bytes.
    public var maxInboxBytes = 512 * 1024 * 1024
    /// Most of the learner queue one connection's unapplied feedback may
    /// hold, as a fraction, so one fast feeder cannot crowd out the others.
    public var feedbackQueueShare = 0.5
    /// How far an event's timestamp may be ahead of the server's clock.
    /// Timestamps drive id expiry, so one event from the far future must not
    /// make every user look idle (and a client sending milliseconds gets a
    /// clear error instead).
    public var maxFutureSeconds = 86_400
    /// Most user ids and item ids the model holds rows for (0 = no bound).
    /// A FEEDBACK or UPSERT_ITEM that would need a row beyond one is refused
    /// with CAPACITY, so a stream of ever-new ids cannot grow the model until
    /// the process runs out of memory (and then again on every restart, as
    /// recovery replays the log). Known ids keep learning.
    public var maxUserIDs = 5_000_000
    public var maxItemIDs = 1_000_000
    public init() {}
}

/// A two-stage route, `[routes.<name>]`: a candidate source proposes `count`
/// items and a second scorer re-ranks them. Requests name the route where
/// they would name a scorer.
public struct RouteConfig: Sendable, Equatable {
    public var name: String
    public var candidates: String
    public var count: Int
    public var rerank: String
    public init(name: String, candidates: String, count: Int, rerank: String) {
        self.name = name
        self.candidates = candidates
        self.count = count
        self.rerank = rerank
    }
}

/// Lifelong learning, `[lifelong]`: the mechanisms that keep a model good
/// over months of stream (docs/lifelong.md).
public struct LifelongConfig: Sendable, Equatable {
    /// Experience replay: after each learned event, this many past events
    /// drawn from a reservoir sample of `replayBuffer` events are learned
    /// again by every scorer that supports replay.
    public var replay = 1
    public var replayBuffer = 100_000
    /// Anchored learning: every step on a shared-table row also pulls it
    /// toward its anchor copy with this L2 strength (0 = off); the anchor
    /// follows the row as an exponential moving average at `anchorRate` per
    /// update, so it holds what the row meant some hundreds of updates ago.
    public var anchorStrength: Float = 0.01
    public var anchorRate: Float = 0.001
    /// Meta-learned start (Reptile): a new user's row starts at a vector
    /// learned across users, with per-dimension step sizes; a user's row
    /// after `metaEvents` events moves the start by `metaRate`.
    public var metaStart = true
    public var metaEvents = 5
    public var metaRate: Float = 0.01
    /// Id lifecycle (IdLifecycle): events a user id needs before it gets its
    /// own row (1 = at once); the most user ids holding rows (0 = no bound);
    /// and expiry of users unseen this long in event time (0 = never).
    public var minOccurrences = 1
    public var maxUsers = 0
    public var expireAfterSeconds = 0
    /// Expiry of item ids unseen this long in event time (ItemLifecycle; 0 = never).
    public var itemExpireAfterSeconds = 0
    /// Events an item id needs before it gets its own row (1 = at once; an
    /// UPSERT_ITEM gives it one at once). Until then its events train one
    /// shared fallback item, never recommended (ItemLifecycle).
    public var itemMinOccurrences = 1
    /// Sightings of ids without a row (users and items counted apart)
    /// between two halvings of the admission counts (CountMinSketch): an id
    /// must reach its count within about this many. Sizes each sketch at
    /// 16 bytes per sighting of the window.
    public var admissionWindow = 65_536
    /// How many of the latest deleted item ids are remembered, so a late
    /// event naming one does not bring it back (DeletedItemIds; 0 = none).
    public var deletedItemsRemembered = 100_000
    /// Seed of replay's draws: learning is reproducible from the log.
    public var seed: UInt64 = 99
    public init() {}

    /// Everything off: online learning as the scorers do it alone.
    public static var plain: LifelongConfig {
        var c = LifelongConfig()
        c.replay = 0
        c.anchorStrength = 0
        c.metaStart = false
        return c
    }
}

/// One loaded scorer: its registered name and the settings it read.
public struct ScorerConfig: Sendable {
    public var name: String
    public var settings: ScorerSettings
}

public struct PerennialConfig: Sendable {
    public var host = "127.0.0.1"
    public var port = 7878
    public var dataDir = "data"
    public var allowShutdown = false
    /// Most RECOMMENDs answered together: those read in one turn of the
    /// event loop share one pass over the catalogue (1 = each on its own).
    public var recommendBatch = 16
    /// How long (µs) a batch may wait for the connections the previous
    /// batch answered to send their next RECOMMEND (0 = never wait); never
    /// longer than half the previous batch's own computing time. 300 µs
    /// covers how far a closed-loop client's return time varies from batch
    /// to batch on a 2-core machine (100 left batches of 16 at 14.4-15.5).
    public var recommendBatchWaitMicros = 300
    /// How long (µs) the event loop keeps polling after it last read from
    /// a connection before it sleeps, while the learner is idle (0 = sleep
    /// at once). See EventLoop.busyPollTurn; 50 µs covers a client's own
    /// turnaround on loopback (a PING round trip is about 20 µs when the
    /// loop is awake) without polling long after a client has gone quiet.
    public var busyPollMicros = 50
    /// After a restart with log to replay: listen as soon as the snapshot
    /// is loaded and answer reads from the model while the replay catches
    /// up (writes are refused RECOVERING until it has); false keeps the
    /// port closed until the replay is done.
    public var serveWhileRecovering = true
    public var limits = LimitsConfig()
    public var learnerQueueCapacity = 65_536
    /// The queue also holds at most this many seconds of the learner's
    /// recent work (0 = only the capacity; never less than a batch of
    /// max_events), so accepted feedback is learned within about this long.
    public var learnerMaxLagSeconds: Double = 2
    public var historyPerUser = 10_000
    /// The kinds of event whose items RECOMMEND leaves out of the user's
    /// answers (a KindMask; `[history] exclude_kinds`): all by default.
    public var historyExcludedKinds = KindMask.all
    /// Sessions remembered for RECOMMEND's session_id: how many, how many
    /// recent items each, and how long an unused one lives.
    public var maxSessions = 100_000
    public var sessionItems = 50
    public var sessionIdleSeconds = 1800
    /// Client and admin tokens (nil = not required), read from files: each
    /// file's lines, any of which is accepted (two while a token is
    /// rotated: the new one added, clients moved to it, the old removed).
    public var clientTokens: [String]?
    public var adminTokens: [String]?
    /// Snapshots: every this many events (0 = not by count), keeping the
    /// newest `snapshotKeep`.
    public var snapshotEveryEvents = 1_000_000
    /// Also a snapshot when replaying the log after the newest one would
    /// take longer than this (seconds; 0 = off), estimated from the
    /// learner's own cost per event: a crash's recovery stays about this
    /// short whatever the scorers cost.
    public var snapshotRecoverySeconds: Double = 30
    /// Also a snapshot once this long (seconds; 0 = off) has passed since
    /// the last one, if anything changed since: a quiet server still has
    /// versions to roll back to.
    public var snapshotEverySeconds = 86_400
    public var snapshotKeep = 5
    /// Whether a snapshot taken off the loop is serialised and written by a
    /// forked child process (new events admitted meanwhile) rather than a
    /// thread (new events wait for the serialisation).
    public var snapshotFork = true
    /// A snapshot's writer process asleep this long without using the CPU
    /// (a lock held at the fork that no thread will release) is killed.
    public var snapshotWriterStallSeconds = 60
    /// Write-ahead log: fsync policy and segment size.
    public var fsync: FsyncPolicy = .everysec
    public var logSegmentBytes = 64 << 20
    /// The shared embedding table's row width and initialisation seed.
    public var tableDimension = 64
    public var tableSeed = 0x5EED
    /// Scorers to load, in order; the first is the default unless
    /// `defaultScorer` names another.
    public var scorers: [ScorerConfig] = []
    public var defaultScorer = "cf"
    /// Candidate → re-rank routes.
    public var routes: [RouteConfig] = []
    public var lifelong = LifelongConfig()
    /// How much each kind of implicit feedback teaches (`[feedback]`).
    public var feedbackWeights = FeedbackWeights()
    /// Where this config came from, for messages.
    public var source = "<defaults>"

    public init() {}

    /// The built-in defaults (what runs without --config).
    public static func defaults(registry: ScorerRegistry) throws(ConfigError) -> PerennialConfig {
        try load(ConfigDocument(), registry: registry)
    }

    /// The file at `path`, with `overrides` (command-line options) on top.
    /// The file is checked on its own first (`checkFileAlone`), so a wrong
    /// value is caught even where an option hides it; a program that
    /// supplies overrides of its own (eval loading every scorer) skips that.
    public static func load(file path: String, registry: ScorerRegistry, overrides: [String: ConfigValue] = [:],
                            checkFileAlone: Bool = true) throws(ConfigError) -> PerennialConfig {
        let text = try readConfigText(path)
        var doc = try ConfigDocument(text: text, file: path)
        // The file must be right on its own, even where an option overrides
        // it: a wrong value would bite the first run without the option.
        // (Its mistakes and the command line's are reported together.)
        var fileAlone: ConfigError?
        if checkFileAlone && !overrides.isEmpty {
            do { _ = try load(doc, registry: registry) } catch { fileAlone = error }
        }
        for (k, v) in overrides { doc.set(k, v) }
        do throws(ConfigError) {
            let config = try load(doc, registry: registry)
            if let fileAlone { throw fileAlone }
            return config
        } catch {
            throw ConfigError.combined([fileAlone, error].compactMap { $0 }) ?? error
        }
    }

    /// The config file's text; a clear error for a file that cannot be read
    /// (saying why: missing, a directory, no permission) or is not UTF-8
    /// (saying on which line).
    static func readConfigText(_ path: String) throws(ConfigError) -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConfigError(file: path, line: nil, message: "cannot read the config file: no such file")
        }
        if isDirectory.boolValue { throw ConfigError(file: path, line: nil, message: "cannot read the config file: it is a directory") }
        guard access(path, R_OK) == 0, let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(file: path, line: nil, message: "cannot read the config file: \(String(cString: strerror(errno)).lowercased())")
        }
        let bytes = [UInt8](data)
        if let text = String(validating: bytes, as: UTF8.self) { return text }
        // The first byte that breaks UTF-8: decode growing prefixes by line.
        var line = 1, start = 0
        for (i, b) in bytes.enumerated() where b == 0x0A {
            if String(validating: bytes[start...i], as: UTF8.self) == nil { break }
            line += 1
            start = i + 1
        }
        throw ConfigError(file: path, line: line, message: "the file is not UTF-8 text (save it as UTF-8)")
    }

    /// Tokens a token file may list, and the longest token: a HELLO is
    /// compared with every token of a file before anyone is authenticated.
    static let maxTokensPerFile = 64, maxTokenBytes = 4_096

    /// The tokens a token file's text lists, with their line numbers (from
    /// 1): one a line, any line end ("\r\n" is one Character, not a "\n"),
    /// surrounding whitespace and empty lines ignored. The server's reading,
    /// and the tools' (`--token-file`).
    public static func tokenLines(_ text: String) -> [(line: Int, token: String)] {
        text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated().compactMap { n, raw in
            let token = raw.trimmingCharacters(in: .whitespaces)
            return token.isEmpty ? nil : (n + 1, token)
        }
    }

    /// The tokens listed in the file named by `key`, one per line (surrounding
    /// whitespace, empty lines and repeats ignored; any line end), or nil
    /// when the key is unset or empty.
    static func readTokens(_ r: ConfigReader, _ key: String) throws(ConfigError) -> [String]? {
        let path = try r.string(key, default: "")
        if path.isEmpty { return nil }
        let line = r.document.entries[key]?.line
        func refuse(_ why: String) -> [String]? {
            r.note(ConfigError(file: r.document.file, line: line, message: "'\(key)': \(why)"), keys: [key])
            return nil
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return refuse("cannot read \(path)") }
        var tokens: [String] = []
        for (line, token) in tokenLines(text) where !tokens.contains(token) {
            if token.count < 8 { return refuse("the token on line \(line) of \(path) is shorter than 8 characters") }
            if token.utf8.count > maxTokenBytes { return refuse("the token on line \(line) of \(path) is longer than \(maxTokenBytes) bytes") }
            if tokens.count == maxTokensPerFile { return refuse("\(path) lists more than \(maxTokensPerFile) tokens") }
            tokens.append(token)
        }
        return tokens.isEmpty ? refuse("\(path) holds no token") : tokens
    }

    /// Every mistake in the file at once: wrong values and unknown keys
    /// together, and those found before a check that cannot go on (one
    /// error, each mistake on a line of its own, by line).
    public static func load(_ doc: ConfigDocument, registry: ScorerRegistry) throws(ConfigError) -> PerennialConfig {
        let r = ConfigReader(doc)
        do {
            return try read(doc, with: r, registry: registry)
        } catch {
            throw r.including(error)
        }
    }

    private static func read(_ doc: ConfigDocument, with r: ConfigReader, registry: ScorerRegistry) throws(ConfigError) -> PerennialConfig {
        var c = PerennialConfig()
        c.source = doc.file
        c.host = try r.string("server.host", default: c.host)
        c.port = try r.int("server.port", default: c.port, in: 0...65535)
        c.dataDir = try r.string("server.data_dir", default: c.dataDir)
        if c.dataDir.trimmingCharacters(in: .whitespaces).isEmpty {
            r.note(r.fail("server.data_dir", "'server.data_dir' must name a directory, found an empty string"))
        }
        c.allowShutdown = try r.bool("server.allow_shutdown", default: c.allowShutdown)
        c.recommendBatch = try r.int("server.recommend_batch", default: c.recommendBatch, in: 1...256)
        c.recommendBatchWaitMicros = try r.int("server.recommend_batch_wait_us", default: c.recommendBatchWaitMicros, in: 0...100_000)
        c.busyPollMicros = try r.int("server.busy_poll_us", default: c.busyPollMicros, in: 0...100_000)
        c.serveWhileRecovering = try r.bool("server.serve_while_recovering", default: c.serveWhileRecovering)

        var l = LimitsConfig()
        // (At least 64 KiB: the server's own replies, STATS with every
        // scorer's counters, must fit in the frame size it advertises.)
        l.maxFrameBytes = try r.int("limits.max_frame_bytes", default: l.maxFrameBytes, in: 65_536...(1 << 30))
        l.maxItems = try r.int("limits.max_items", default: l.maxItems, in: 1...65535)
        l.maxEvents = try r.int("limits.max_events", default: l.maxEvents, in: 1...1_000_000)
        l.maxTextBytes = try r.int("limits.max_text_bytes", default: l.maxTextBytes, in: 0...(1 << 26))
        l.maxAttributeBytes = try r.int("limits.max_attribute_bytes", default: l.maxAttributeBytes, in: 0...(1 << 26))
        l.maxConnections = try r.int("limits.max_connections", default: l.maxConnections, in: 1...1_000_000)
        l.idleTimeoutMs = try r.int("limits.idle_timeout_ms", default: l.idleTimeoutMs, in: 0...(1 << 40))
        l.frameTimeoutMs = try r.int("limits.frame_timeout_ms", default: l.frameTimeoutMs, in: 0...(1 << 40))
        l.waitMs = try r.int("limits.wait_ms", default: l.waitMs, in: 0...(1 << 40))
        l.maxPendingBytes = try r.int("limits.max_pending_bytes", default: l.maxPendingBytes, in: 4096...(1 << 34))
        l.maxInboxBytes = try r.int("limits.max_inbox_bytes", default: l.maxInboxBytes, in: 65_536...(1 << 40))
        l.feedbackQueueShare = try r.double("limits.feedback_queue_share", default: l.feedbackQueueShare, in: 0.01...1)
        l.maxFutureSeconds = try r.int("limits.max_future_seconds", default: l.maxFutureSeconds, in: 0...(1 << 40))
        l.maxUserIDs = try r.int("limits.max_user_ids", default: l.maxUserIDs, in: 0...Int(Int32.max))
        l.maxItemIDs = try r.int("limits.max_item_ids", default: l.maxItemIDs, in: 0...Int(Int32.max))
        c.limits = l
        // A FEEDBACK of max_events events (29 bytes each, after a 16-byte
        // header and count) must fit in a frame, or clients that batch by
        // max_events (as the bundled ones do) could never send a full batch.
        // (Checks across keys are skipped when one of their keys was
        // already wrong: they would only judge its default.)
        let fullBatch = 16 + 29 * l.maxEvents
        if fullBatch > l.maxFrameBytes && !r.isWrong("limits.max_frame_bytes", "limits.max_events") {
            r.note(ConfigError(file: doc.file, line: doc.entries["limits.max_frame_bytes"]?.line ?? doc.entries["limits.max_events"]?.line,
                               message: "'limits.max_frame_bytes' (\(l.maxFrameBytes)) is too small for a FEEDBACK of 'limits.max_events' (\(l.maxEvents)) events: it needs \(fullBatch) bytes"),
                   keys: [])
        }
        // A request carrying max_items ids, and its reply, must fit too: a
        // RECOMMEND with session items, exclusions and candidates, each
        // max_items ids of 8 bytes, a RECOMMEND reply of max_items (id,
        // score) pairs (review findings: max_frame_bytes = 2048 with the
        // default max_items was accepted, and STATS replies outgrew the
        // advertised frame size; then a rule of 16 bytes an id let a full
        // RECOMMEND outgrow it).
        let fullList = 4096 + 24 * l.maxItems
        if fullList > l.maxFrameBytes && !r.isWrong("limits.max_frame_bytes", "limits.max_items") {
            r.note(ConfigError(file: doc.file, line: doc.entries["limits.max_frame_bytes"]?.line ?? doc.entries["limits.max_items"]?.line,
                               message: "'limits.max_frame_bytes' (\(l.maxFrameBytes)) is too small for requests and replies of 'limits.max_items' (\(l.maxItems)) ids: it needs \(fullList) bytes"),
                   keys: [])
        }
        // One largest frame must fit in the receive-buffer budget (a buffer
        // grows by doubling, so up to twice the frame), or a lone client's
        // legal frame would be refused BUSY forever (review finding).
        let largestBuffer = max(65_536, 2 * l.maxFrameBytes)
        if l.maxInboxBytes < largestBuffer && !r.isWrong("limits.max_inbox_bytes", "limits.max_frame_bytes") {
            r.note(ConfigError(file: doc.file, line: doc.entries["limits.max_inbox_bytes"]?.line ?? doc.entries["limits.max_frame_bytes"]?.line,
                               message: "'limits.max_inbox_bytes' (\(l.maxInboxBytes)) is too small for one frame of 'limits.max_frame_bytes' (\(l.maxFrameBytes)): its buffer may take \(largestBuffer) bytes"),
                   keys: [])
        }
        // A FEEDBACK batch must fit in the learner queue, or it could never be accepted.
        c.learnerQueueCapacity = try r.int("learner.queue_capacity", default: c.learnerQueueCapacity, in: 16...(1 << 26))
        if c.learnerQueueCapacity < l.maxEvents && !r.isWrong("learner.queue_capacity", "limits.max_events") {
            r.note(ConfigError(file: doc.file, line: doc.entries["learner.queue_capacity"]?.line ?? doc.entries["limits.max_events"]?.line,
                               message: "'learner.queue_capacity' (\(c.learnerQueueCapacity)) must be at least 'limits.max_events' (\(l.maxEvents))"),
                   keys: [])
        }
        c.learnerMaxLagSeconds = try r.double("learner.max_lag_seconds", default: c.learnerMaxLagSeconds, in: 0...1e6)
        c.historyPerUser = try r.int("history.max_items_per_user", default: c.historyPerUser, in: 0...1_000_000)
        var excluded: UInt8 = 0
        for name in try r.strings("history.exclude_kinds", default: FeedbackKind.allCases.map(\.name)) {
            guard let kind = FeedbackKind.allCases.first(where: { $0.name == name }) else {
                r.note(ConfigError(file: doc.file, line: doc.entries["history.exclude_kinds"]?.line,
                                   message: "'history.exclude_kinds' names unknown kind \"\(name)\"; kinds: \(FeedbackKind.allCases.map(\.name).joined(separator: ", "))"),
                       keys: ["history.exclude_kinds"])
                continue
            }
            excluded |= KindMask.of(kind)
        }
        c.historyExcludedKinds = excluded
        c.maxSessions = try r.int("sessions.max_sessions", default: c.maxSessions, in: 0...100_000_000)
        c.sessionItems = try r.int("sessions.max_items", default: c.sessionItems, in: 1...10_000)
        c.sessionIdleSeconds = try r.int("sessions.idle_seconds", default: c.sessionIdleSeconds, in: 1...(1 << 31))
        c.clientTokens = try readTokens(r, "auth.token_file")
        c.adminTokens = try readTokens(r, "auth.admin_token_file")
        c.fsync = FsyncPolicy(rawValue: try r.string("log.fsync", default: c.fsync.rawValue, oneOf: FsyncPolicy.allCases.map(\.rawValue)))!
        c.logSegmentBytes = try r.int("log.segment_bytes", default: c.logSegmentBytes, in: 4096...(1 << 40))
        c.snapshotEveryEvents = try r.int("snapshot.every_events", default: c.snapshotEveryEvents, in: 0...Int.max)
        c.snapshotKeep = try r.int("snapshot.keep", default: c.snapshotKeep, in: 1...1000)
        c.snapshotFork = try r.bool("snapshot.fork", default: c.snapshotFork)
        c.snapshotWriterStallSeconds = try r.int("snapshot.writer_stall_seconds", default: c.snapshotWriterStallSeconds, in: 1...86_400)
        // (`every_events = 0` alone keeps its older meaning, snapshots only
        // when asked and at a stop: the time budget then needs setting.)
        let recoveryDefault = r.has("snapshot.every_events") && c.snapshotEveryEvents == 0 ? 0 : c.snapshotRecoverySeconds
        c.snapshotRecoverySeconds = try r.double("snapshot.recovery_seconds", default: recoveryDefault, in: 0...1e9)
        c.snapshotEverySeconds = try r.int("snapshot.every_seconds", default: recoveryDefault == 0 ? 0 : c.snapshotEverySeconds,
                                           in: 0...(1 << 40))
        c.tableDimension = try r.int("table.dimension", default: c.tableDimension, in: 1...1024)
        c.tableSeed = try r.int("table.seed", default: c.tableSeed, in: 0...Int.max)

        var fw = FeedbackWeights()
        fw.viewWeight = Float(try r.double("feedback.view_weight", default: Double(fw.viewWeight), in: 0...1000))
        fw.clickWeight = Float(try r.double("feedback.click_weight", default: Double(fw.clickWeight), in: 0...1000))
        fw.purchaseWeight = Float(try r.double("feedback.purchase_weight", default: Double(fw.purchaseWeight), in: 0...1000))
        fw.maxWeight = Float(try r.double("feedback.max_weight", default: Double(fw.maxWeight), in: 0.001...1000))
        c.feedbackWeights = fw

        var ll = LifelongConfig()
        ll.replay = try r.int("lifelong.replay", default: ll.replay, in: 0...64)
        ll.replayBuffer = try r.int("lifelong.replay_buffer", default: ll.replayBuffer, in: 1...100_000_000)
        ll.anchorStrength = Float(try r.double("lifelong.anchor_strength", default: Double(ll.anchorStrength), in: 0...10))
        ll.anchorRate = Float(try r.double("lifelong.anchor_rate", default: Double(ll.anchorRate), in: 1e-6...1))
        ll.metaStart = try r.bool("lifelong.meta_start", default: ll.metaStart)
        ll.metaEvents = try r.int("lifelong.meta_events", default: ll.metaEvents, in: 1...10_000)
        ll.metaRate = Float(try r.double("lifelong.meta_rate", default: Double(ll.metaRate), in: 1e-6...1))
        ll.minOccurrences = try r.int("lifelong.min_occurrences", default: ll.minOccurrences, in: 1...255)
        ll.maxUsers = try r.int("lifelong.max_users", default: ll.maxUsers, in: 0...100_000_000)
        ll.expireAfterSeconds = try r.int("lifelong.expire_after_seconds", default: ll.expireAfterSeconds, in: 0...(1 << 40))
        ll.itemExpireAfterSeconds = try r.int("lifelong.item_expire_after_seconds", default: ll.itemExpireAfterSeconds, in: 0...(1 << 40))
        ll.itemMinOccurrences = try r.int("lifelong.item_min_occurrences", default: ll.itemMinOccurrences, in: 1...255)
        ll.admissionWindow = try r.int("lifelong.admission_window", default: ll.admissionWindow, in: 1024...(1 << 24))
        ll.deletedItemsRemembered = try r.int("lifelong.deleted_items_remembered", default: ll.deletedItemsRemembered, in: 0...100_000_000)
        ll.seed = UInt64(try r.int("lifelong.seed", default: Int(ll.seed), in: 0...Int.max))
        c.lifelong = ll

        var names = try r.strings("scorers.load", default: ["cf", "popularity"])
        let loadLine = doc.entries["scorers.load"]?.line
        if names.isEmpty {
            r.note(ConfigError(file: doc.file, line: loadLine, message: "'scorers.load' must name at least one scorer"), keys: ["scorers.load"])
        }
        for name in names where registry.factory(named: name) == nil {
            r.note(ConfigError(file: doc.file, line: loadLine,
                               message: "'scorers.load' names unknown scorer \"\(name)\"; known: \(registry.names.joined(separator: ", "))"))
        }
        if Set(names).count != names.count {
            r.note(ConfigError(file: doc.file, line: loadLine, message: "'scorers.load' names a scorer twice"))
        }
        // (Reading goes on with the scorers that can load, which the checks
        // below judge the rest against, or the defaults when none can.)
        var known = Set<String>()
        names = names.filter { registry.factory(named: $0) != nil && known.insert($0).inserted }
        if names.isEmpty { names = ["cf", "popularity"] }
        c.defaultScorer = try r.string("scorers.default", default: names[0])
        if !names.contains(c.defaultScorer) && !r.isWrong("scorers.load", "scorers.default") {
            r.note(ConfigError(file: doc.file, line: doc.entries["scorers.default"]?.line,
                               message: "'scorers.default' = \"\(c.defaultScorer)\" is not in 'scorers.load' (\(names.joined(separator: ", ")))"),
                   keys: [])
        }
        // Every scorer section present is validated, loaded or not, so a typo
        // in a section for a scorer switched off still surfaces.
        for (section, line) in r.subsections(of: "scorers") where registry.factory(named: section) == nil {
            r.note(ConfigError(file: doc.file, line: line,
                               message: "section '[scorers.\(section)]' names unknown scorer \"\(section)\"; known: \(registry.names.joined(separator: ", "))"))
            r.acknowledge(prefix: "scorers.\(section).")
        }
        for factory in registry.factories {
            let settings = try factory.readSettings(ScorerSettingsReader(reader: r, prefix: "scorers." + factory.name))
            if names.contains(factory.name) {
                c.scorers.append(ScorerConfig(name: factory.name, settings: settings))
            }
        }
        c.scorers.sort { names.firstIndex(of: $0.name)! < names.firstIndex(of: $1.name)! }
        for (route, line) in r.subsections(of: "routes") {
            let key = "routes." + route
            // A typo in a route's keys is reported as one (not as a missing value).
            let fields = ["candidates", "count", "rerank"]
            // (A missing key that a typo in the route was most likely meant
            // to be is not reported again as missing.)
            var meant = Set<String>()
            for k in doc.order where k.hasPrefix(key + ".") && !fields.contains(String(k.dropFirst(key.count + 1))) {
                let near = ConfigReader.closest(to: k, among: fields.map { key + "." + $0 })
                r.note(ConfigError(file: doc.file, line: doc.entries[k]?.line,
                                   message: "unknown key '\(k)'" + (near.map { " (did you mean '\($0)'?)" } ?? " (a route has candidates, count and rerank)")))
                r.acknowledge(prefix: k)
                if let near { meant.insert(near) }
            }
            for needed in ["candidates", "rerank"] where doc.entries[key + "." + needed] == nil && !meant.contains(key + "." + needed) {
                r.note(ConfigError(file: doc.file, line: line, message: "route '\(route)' needs '\(key).\(needed)' (the scorer that \(needed == "rerank" ? "re-ranks the candidates" : "proposes candidates"))"))
            }
            let rc = RouteConfig(name: route, candidates: try r.string(key + ".candidates", default: ""),
                                 count: try r.int(key + ".count", default: 300, in: 1...65535),
                                 rerank: try r.string(key + ".rerank", default: ""))
            if registry.factory(named: route) != nil {
                r.note(ConfigError(file: doc.file, line: line, message: "route '\(route)' has the name of a scorer; routes and scorers share one namespace"))
            }
            for (what, name) in [("candidates", rc.candidates), ("rerank", rc.rerank)]
            where doc.entries[key + "." + what] != nil && !names.contains(name) && !r.isWrong("scorers.load", key + "." + what) {
                r.note(ConfigError(file: doc.file, line: doc.entries[key + "." + what]?.line ?? line,
                                   message: "'\(key).\(what)' = \"\(name)\" is not a loaded scorer (\(names.joined(separator: ", ")))"))
            }
            c.routes.append(rc)
        }
        try r.finish()
        return c
    }
}
