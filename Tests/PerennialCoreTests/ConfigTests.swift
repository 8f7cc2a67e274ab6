import Foundation
import ScratchDirectory
import Testing
import TextCNN
import SessionRNN
import GANCandidates
import PerennialPlugins
@testable import PerennialCore
import Popularity
import CollaborativeFiltering

private let registry = ScorerRegistry.builtin

private func repoRoot() -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
}

private func load(_ text: String) throws(ConfigError) -> PerennialConfig {
    try PerennialConfig.load(try ConfigDocument(text: text, file: "test.toml"), registry: registry)
}

@Suite struct ConfigTests {
    @Test func bundledFileEqualsBuiltInDefaults() throws {
        let file = try PerennialConfig.load(file: repoRoot() + "/config/perennial.toml", registry: registry)
        let defaults = try PerennialConfig.defaults(registry: registry)
        #expect(file.host == defaults.host)
        #expect(file.port == defaults.port)
        #expect(file.dataDir == defaults.dataDir)
        #expect(file.limits == defaults.limits)
        #expect(file.learnerQueueCapacity == defaults.learnerQueueCapacity)
        #expect(file.historyPerUser == defaults.historyPerUser)
        #expect(file.maxSessions == defaults.maxSessions)
        #expect(file.sessionItems == defaults.sessionItems)
        #expect(file.sessionIdleSeconds == defaults.sessionIdleSeconds)
        #expect(file.lifelong == defaults.lifelong)
        #expect(file.scorers.map(\.name) == defaults.scorers.map(\.name))
        #expect(file.defaultScorer == defaults.defaultScorer)
        #expect(file.tableDimension == defaults.tableDimension && file.tableSeed == defaults.tableSeed)
        let cf = file.scorers.first { $0.name == "cf" }?.settings as? CFSettings
        #expect(cf != nil && cf == CFSettings())
        let pop = file.scorers.first { $0.name == "popularity" }?.settings as? PopularitySettings
        #expect(pop == PopularitySettings())
        // Every key in the bundled file is one the reader knows.
        let doc = try ConfigDocument(text: try String(contentsOfFile: repoRoot() + "/config/perennial.toml", encoding: .utf8), file: "x")
        #expect(doc.order.count >= 15)
        // The sections of scorers not loaded by default hold their defaults too.
        var all = doc
        all.set("scorers.load", .array([.string("text-cnn")]))
        all.set("scorers.default", .string("text-cnn"))
        let loaded = try PerennialConfig.load(all, registry: registry)
        #expect(loaded.scorers.first?.settings as? TextCNNSettings == TextCNNSettings())
        all.set("scorers.load", .array([.string("session-rnn")]))
        all.set("scorers.default", .string("session-rnn"))
        let rnn = try PerennialConfig.load(all, registry: registry)
        #expect(rnn.scorers.first?.settings as? SessionRNNSettings == SessionRNNSettings())
        all.set("scorers.load", .array([.string("gan")]))
        all.set("scorers.default", .string("gan"))
        let gan = try PerennialConfig.load(all, registry: registry)
        #expect(gan.scorers.first?.settings as? GANSettings == GANSettings())
    }

    @Test func routesNameLoadedScorers() throws {
        let ok = try load("[scorers]\nload = [\"cf\", \"gan\"]\n[routes.two]\ncandidates = \"gan\"\ncount = 200\nrerank = \"cf\"\n")
        #expect(ok.routes == [RouteConfig(name: "two", candidates: "gan", count: 200, rerank: "cf")])
        #expect(throws: ConfigError(file: "test.toml", line: 4, message: "'routes.two.candidates' = \"gann\" is not a loaded scorer (cf, gan)")) {
            try load("[scorers]\nload = [\"cf\", \"gan\"]\n[routes.two]\ncandidates = \"gann\"\nrerank = \"cf\"\n")
        }
        // A typo in a route's key, and a missing one (review finding: both read as "= \"\"").
        #expect(throws: ConfigError(file: "test.toml", line: 4, message: "unknown key 'routes.two.candidate' (did you mean 'routes.two.candidates'?)")) {
            try load("[scorers]\nload = [\"cf\", \"gan\"]\n[routes.two]\ncandidate = \"gan\"\nrerank = \"cf\"\n")
        }
        #expect(throws: ConfigError(file: "test.toml", line: 4, message: "route 'two' needs 'routes.two.rerank' (the scorer that re-ranks the candidates)")) {
            try load("[scorers]\nload = [\"cf\", \"gan\"]\n[routes.two]\ncandidates = \"gan\"\n")
        }
        // An empty route section is a route missing both keys (it was
        // accepted as nothing), and an empty section of an unknown scorer is a typo.
        let text = "[scorers]\nload = [\"cf\", \"gan\"]\n[routes.two]\n\n[scorers.cff]\n"
        var said: [String] = []
        do { _ = try load(text) } catch { said = error.description.split(separator: "\n").map(String.init) }
        #expect(said == [
            "test.toml:3: route 'two' needs 'routes.two.candidates' (the scorer that proposes candidates)",
            "test.toml:3: route 'two' needs 'routes.two.rerank' (the scorer that re-ranks the candidates)",
            "test.toml:5: section '[scorers.cff]' names unknown scorer \"cff\"; known: popularity, cf, text-cnn, session-rnn, gan",
        ])
    }

    @Test func typoNamesLineAndSuggestion() {
        #expect(throws: ConfigError(file: "test.toml", line: 3, message: "unknown key 'server.prot' (did you mean 'server.port'?)")) {
            try load("[server]\nhost = \"127.0.0.1\"\nprot = 1\n")
        }
    }

    /// Review findings, helper-71: a section written twice was read as one,
    /// `nan` and `inf` (TOML floats) were "not a value", and a key under the
    /// wrong header (or none) got no suggestion.
    @Test func repeatedSectionsNonFiniteNumbersAndMisplacedKeys() {
        let nonFinite = ["nan", "inf", "-inf", "+nan"].map { word in
            (2, "bad value for 'scorers.cf.factor_weight': \(word) is not a finite number, and no setting takes one (strings need quotes)",
             "[scorers.cf]\nfactor_weight = \(word)\n")
        }
        let cases: [(line: Int, message: String, text: String)] = nonFinite + [
            (4, "section '[server]' appears twice (first on line 1): put its keys under one header",
             "[server]\nport = 7000\n[limits]\n[server]\nhost = \"127.0.0.1\"\n"),
            (2, "bad value for 'scorers.cf.factor_weight': 1e999 is out of range for a number (it overflows to infinity)",
             "[scorers.cf]\nfactor_weight = 1e999\n"),
            (1, "unknown key 'port' (did you mean 'server.port', under [server]?)", "port = 7878\n"),
            (2, "unknown key 'server.fsync' (did you mean 'log.fsync', under [log]?)", "[server]\nfsync = \"always\"\n"),
            // (Not another scorer's setting: that would change a different scorer.)
            (2, "unknown key 'scorers.popularity.neighbours'", "[scorers.popularity]\nneighbours = 10\n"),
        ]
        for c in cases {
            #expect(throws: ConfigError(file: "test.toml", line: c.line, message: c.message)) { try load(c.text) }
        }
    }

    /// Every mistake in a file is reported at once, each with its line, in
    /// line order: wrong types, values out of range (also a scorer's),
    /// unknown keys, and those found before a check that cannot go on.
    @Test func everyMistakeIsReportedAtOnce() {
        do {
            _ = try load("[server]\nport = 99999\nbusy_pol_us = 3\nrecommend_batch = \"many\"\n[scorers.cf]\nnegatives = 0\n")
            Issue.record("a config with four mistakes loaded")
        } catch {
            #expect(error.description == """
                test.toml:2: 'server.port' = 99999 is outside 0...65535
                test.toml:3: unknown key 'server.busy_pol_us' (did you mean 'server.busy_poll_us'?)
                test.toml:4: 'server.recommend_batch' must be an integer, found a string ("many")
                test.toml:6: 'scorers.cf.negatives' = 0 is outside 1...256
                """)
            #expect(error.line == 2 && error.others.map(\.line) == [3, 4, 6])
        }
        do {
            _ = try load("[server]\nport = -1\ndata_dir = \" \"\n")
            Issue.record("a config with two mistakes loaded")
        } catch {
            #expect(error.description == """
                test.toml:2: 'server.port' = -1 is outside 0...65535
                test.toml:3: 'server.data_dir' must name a directory, found an empty string
                """)
        }
    }

    /// A check across keys is skipped when one of its keys is already
    /// wrong (it would judge the default used meanwhile), and a failed
    /// check no longer stops the reading: later mistakes and unknown keys
    /// are reported with it (helper-66).
    @Test func checksAcrossKeysNeitherInventNorHideMistakes() {
        func mistakes(_ text: String) -> [String] {
            do { _ = try load(text); return [] } catch { return error.description.split(separator: "\n").map(String.init) }
        }
        #expect(mistakes("[scorers]\nload = [\"cf\", \"session-rnn\", 3]\ndefault = \"session-rnn\"\n")
                == ["test.toml:2: 'scorers.load' must be an array of strings; 3 is an integer"])
        // (200,000 events need a frame of 5.8 MB: more than the default
        // 4 MiB used for the wrong value, which is not reported.)
        #expect(mistakes("[limits]\nmax_frame_bytes = \"8MiB\"\nmax_events = 200000\n[learner]\nqueue_capacity = 262144\n")
                == ["test.toml:2: 'limits.max_frame_bytes' must be an integer, found a string (\"8MiB\")"])
        #expect(mistakes("[routes.r1]\ncandidates = 5\nrerank = \"cf\"\n")
                == ["test.toml:2: 'routes.r1.candidates' must be a string, found an integer (5)"])
        let many = mistakes("[server]\nprot = 1\n[limits]\nmax_events = 1000000\n[scorers.nope]\nx = 1\n[scorers.cf]\nbogus = 1\nnegatives = 0\n")
        // (max_events = 1,000,000 needs a larger frame and a larger learner
        // queue than the defaults: two mistakes, both reported.)
        #expect(many.count == 6, "\(many)")
        #expect(many.first == "test.toml:2: unknown key 'server.prot' (did you mean 'server.port'?)")
        #expect(many.contains { $0.hasPrefix("test.toml:6: section '[scorers.nope]' names unknown scorer") })
        #expect(many.contains { $0.hasPrefix("test.toml:8: unknown key 'scorers.cf.bogus'") })
        #expect(many.last == "test.toml:9: 'scorers.cf.negatives' = 0 is outside 1...256")
        // One failed check does not silence another (helper-67).
        #expect(mistakes("[scorers]\nload = [\"cf\", \"bogus\"]\ndefault = \"gan\"\n").count == 2)
        #expect(mistakes("[routes.r1]\ncandidatse = \"cf\"\n").count == 2)  // the typo, and rerank missing
        #expect(mistakes("[routes.r1]\ncandidatez = \"cf\"\nrerank = \"bogus\"\ncount = 0\n").count == 3)
        // At most 50 listed, and the rest counted.
        let stray = "[limits]\nwait_ms = -1\n[extra]\n" + (1...120).map { "k\($0) = 1\n" }.joined()
        let listed = mistakes(stray)
        #expect(listed.count == 51)
        #expect(listed.last == "test.toml: ... and 71 more mistake(s) after these")
    }

    @Test func wrongTypeNamesKeyAndLine() {
        #expect(throws: ConfigError(file: "test.toml", line: 2, message: "'server.port' must be an integer, found a string (\"80\")")) {
            try load("[server]\nport = \"80\"\n")
        }
    }

    /// A command-line option does not hide a wrong value in the file, and
    /// an error in the option's own value says it came from the command line.
    @Test func overriddenKeysAreStillChecked() throws {
        let path = ScratchDirectory.path("config") + ".toml"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try "[server]\nport = \"7878\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: ConfigError(file: path, line: 2, message: "'server.port' must be an integer, found a string (\"7878\")")) {
            try PerennialConfig.load(file: path, registry: registry, overrides: ["server.port": .integer(9000)])
        }
        try "[server]\nport = 7878\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try PerennialConfig.load(file: path, registry: registry, overrides: ["server.port": .integer(9000)]).port == 9000)
        do {
            _ = try PerennialConfig.load(file: path, registry: registry, overrides: ["log.fsync": .string("sometimes")])
            Issue.record("a bad --fsync was accepted")
        } catch {
            #expect(error.description.hasPrefix("command line: 'log.fsync'"), "\(error)")
        }
    }

    @Test func outOfRangeAndSyntaxErrors() throws {
        do {
            _ = try load("[limits]\nmax_items = 0\n")
            Issue.record("accepted max_items = 0")
        } catch { #expect(error.line == 2 && error.message.contains("outside")) }
        do {
            _ = try load("[server]\nhost = 127.0.0.1\n")
            Issue.record("accepted an unquoted string")
        } catch { #expect(error.line == 2 && error.message.contains("strings need quotes")) }
        do {
            _ = try load("[server\n")
            Issue.record("accepted a broken header")
        } catch { #expect(error.line == 1) }
        do {
            _ = try load("[server]\nport = 1\nport = 2\n")
            Issue.record("accepted a duplicate")
        } catch { #expect(error.line == 3 && error.message.contains("set twice")) }
        // A frame too small for a full FEEDBACK batch.
        #expect(throws: ConfigError(file: "test.toml", line: 2, message: "'limits.max_frame_bytes' (65536) is too small for a FEEDBACK of 'limits.max_events' (10000) events: it needs 290016 bytes")) {
            try load("[limits]\nmax_frame_bytes = 65536\n")
        }
        #expect(try load("[limits]\nmax_frame_bytes = 65536\nmax_events = 2000\n").limits.maxEvents == 2000)
        // A frame too small for a request or reply of max_items ids, or for
        // the server's own STATS reply (review finding: 2048 was accepted).
        #expect(throws: ConfigError(file: "test.toml", line: 3, message: "'limits.max_frame_bytes' (300000) is too small for requests and replies of 'limits.max_items' (30000) ids: it needs 724096 bytes")) {
            try load("[limits]\nmax_items = 30000\nmax_frame_bytes = 300000\n")
        }
        #expect(throws: ConfigError.self) { try load("[limits]\nmax_frame_bytes = 2048\nmax_events = 10\n") }
        // A budget for receive buffers too small for one largest frame.
        #expect(throws: ConfigError(file: "test.toml", line: 2, message: "'limits.max_inbox_bytes' (1048576) is too small for one frame of 'limits.max_frame_bytes' (4194304): its buffer may take 8388608 bytes")) {
            try load("[limits]\nmax_inbox_bytes = 1048576\n")
        }
        // With max_users (eviction) the user-id bound is not applied, whatever its value.
        #expect(try load("[limits]\nmax_user_ids = 1000\n[lifelong]\nmax_users = 2000\n").lifelong.maxUsers == 2000)
    }

    /// Windows line ends (review finding: a CRLF file was read as one line,
    /// and a comment ending in CRLF swallowed the setting after it); a file
    /// that is not UTF-8 or not a file says so, with the line.
    @Test func crlfFilesAndUnreadableFiles() throws {
        #expect(try load("[limits]\r\n# small lists\r\nmax_items = 5\r\n").limits.maxItems == 5)
        #expect(try load("[server]\r\nport = 7959\r\n").port == 7959)
        #expect(throws: ConfigError(file: "test.toml", line: 2, message: "'server.data_dir' must name a directory, found an empty string")) {
            try load("[server]\ndata_dir = \"\"\n")
        }
        #expect(throws: ConfigError(file: "test.toml", line: 3, message: "unknown key 'server.prot' (did you mean 'server.port'?)")) {
            try load("[server]\r\n# c\r\nprot = 1\r\n")
        }
        let dir = ScratchDirectory.path("config")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let latin1 = dir + "/latin1.toml"
        #expect(FileManager.default.createFile(atPath: latin1, contents: Data("[server]\n# caf".utf8 + [0xE9] + Data("\nport = 1\n".utf8))))
        #expect(throws: ConfigError(file: latin1, line: 2, message: "the file is not UTF-8 text (save it as UTF-8)")) {
            try PerennialConfig.load(file: latin1, registry: registry)
        }
        #expect(throws: ConfigError(file: dir, line: nil, message: "cannot read the config file: it is a directory")) {
            try PerennialConfig.load(file: dir, registry: registry)
        }
        #expect(throws: ConfigError(file: dir + "/none.toml", line: nil, message: "cannot read the config file: no such file")) {
            try PerennialConfig.load(file: dir + "/none.toml", registry: registry)
        }
    }

    /// A token file lists tokens one per line, any line end, repeats and
    /// blank lines ignored, and within bounds (every token is compared with
    /// each HELLO before anyone is authenticated).
    @Test func tokenFilesListTokensWithinBounds() throws {
        let dir = ScratchDirectory.path("tokens")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func tokens(_ text: String) throws(ConfigError) -> [String]? {
            _ = FileManager.default.createFile(atPath: dir + "/t", contents: Data(text.utf8))
            return try load("[auth]\ntoken_file = \"\(dir)/t\"\n").clientTokens
        }
        #expect(try tokens("first-token\r\n\r\n  second-token \n\tfirst-token\rthird-token") == ["first-token", "second-token", "third-token"])
        let refusals: [(String, String)] = [
            ("\r\n\r\nshort\r\n", "the token on line 3 of \(dir)/t is shorter than 8 characters"),
            ("ok-token-1\n" + String(repeating: "x", count: 4_097), "the token on line 2 of \(dir)/t is longer than 4096 bytes"),
            ((0...64).map { "token-number-\($0)" }.joined(separator: "\n"), "\(dir)/t lists more than 64 tokens"),
            (" \n\n", "\(dir)/t holds no token"),
        ]
        for (text, message) in refusals {
            #expect(throws: ConfigError(file: "test.toml", line: 2, message: "'auth.token_file': \(message)")) { try tokens(text) }
        }
        #expect(try tokens((1...64).map { "token-number-\($0)" }.joined(separator: "\n"))?.count == 64)
    }

    /// Valid TOML that the reader refused or misreported (review finding,
    /// helper-46): an array over several lines, a byte-order mark; and an
    /// integer too large says so instead of "is not a value".
    @Test func multiLineArraysByteOrderMarksAndHugeIntegers() throws {
        let c = try load("""
            [scorers]
            load = [
              "cf",        # the default
              "popularity",
            ]
            default = "popularity"
            [server]
            port = 7001
            """)
        #expect(c.scorers.map(\.name) == ["cf", "popularity"] && c.defaultScorer == "popularity" && c.port == 7001)
        #expect(try load("\u{FEFF}[server]\nport = 7002\n").port == 7002)
        #expect(throws: ConfigError(file: "test.toml", line: 2, message: "bad value for 'limits.wait_ms': -99999999999999999999 is out of range for an integer (\(Int.min) to \(Int.max))")) {
            try load("[limits]\nwait_ms = -99999999999999999999\n")
        }
        for notANumber in ["-", "--5"] {
            do {
                _ = try load("[limits]\nwait_ms = \(notANumber)\n")
                Issue.record("accepted \(notANumber)")
            } catch { #expect(error.message.contains("is not a value"), "\(error)") }
        }
        // An array left open names the line it began on, whether the file
        // ends or a section starts before its ']'.
        #expect(throws: ConfigError(file: "test.toml", line: 2, message: "bad value for 'scorers.load': unterminated array (opened on this line; the file ends before its ']')")) {
            try load("[scorers]\nload = [\"cf\",\n\"popularity\"\n")
        }
        #expect(throws: ConfigError(file: "test.toml", line: 2, message: "bad value for 'scorers.load': unterminated array (opened on this line; line 3 starts a section before its ']')")) {
            try load("[scorers]\nload = [\"cf\",\n[server]\nport = 7851\n")
        }
        #expect(throws: ConfigError(file: "test.toml", line: 2, message: "bad value for 'scorers.load': unterminated array (opened on this line; line 3 starts a section before its ']')")) {
            try load("[scorers]\nload = [\"cf\",\n[ server ]\nport = 7851\n")
        }
        // A bad element of an array spread over lines names its own line.
        #expect(throws: ConfigError(file: "test.toml", line: 5, message: "bad value for 'scorers.load' (the array opened on line 2): 'popularity' is not a value (strings need quotes)")) {
            try load("[scorers]\nload = [\n  \"cf\",\n\n  popularity,\n]\n")
        }
        #expect(throws: ConfigError(file: "test.toml", line: 2, message: "bad value for 'scorers.load': 'cf' is not a value (strings need quotes)")) {
            try load("[scorers]\nload = [cf,\n  \"popularity\",\n]\n")
        }
        // An array's rows that look like headers are rows (review finding, helper-48).
        let nested = try ConfigDocument(text: "x = [\n  [1, 2],\n  [true]\n]\n", file: "t.toml")
        #expect(nested.entries["x"]?.value == .array([.array([.integer(1), .integer(2)]), .array([.bool(true)])]))
        // Arrays nested 300,000 deep overflowed the parser's stack: a
        // SIGHUP of such a file killed a running server (review finding,
        // helper-51). Refused with a short message, like any bad value.
        let deep = String(repeating: "[", count: 300_000) + "\"cf\"" + String(repeating: "]", count: 300_000)
        do {
            _ = try load("[scorers]\nload = \(deep)\n")
            Issue.record("accepted arrays nested 300,000 deep")
        } catch {
            #expect(error.line == 2 && error.message.contains("arrays nested more than 32 deep") && error.message.count < 300, "\(error.message.prefix(300))")
        }
        #expect(try ConfigDocument(text: "x = " + String(repeating: "[", count: 32) + "1" + String(repeating: "]", count: 32) + "\n", file: "t.toml").entries["x"] != nil)
        // A long array over many lines is read in one pass: each line used
        // to rescan the whole value, so 40,000 lines took 88 s, a running
        // server's loop frozen in the RELOAD (helper-54).
        let long = "x = [\n" + (1...100_000).map { "\($0)," }.joined(separator: "\n") + "\n]\n"
        guard case .array(let items)? = try ConfigDocument(text: long, file: "t.toml").entries["x"]?.value else {
            Issue.record("a 100,000-line array was not read as an array"); return
        }
        #expect(items.count == 100_000 && items.last == .integer(100_000))
        let deepLines = "[scorers]\nload = " + String(repeating: "[\n", count: 300_000) + "\"cf\"" + String(repeating: "\n]", count: 300_000) + "\n"
        do {
            _ = try load(deepLines)
            Issue.record("accepted arrays nested 300,000 deep over lines")
        } catch { #expect(error.message.contains("nested more than 32 deep"), "\(error.message.prefix(300))") }
    }

    @Test func unknownScorerIsRefused() {
        do {
            _ = try load("[scorers]\nload = [\"popularity\", \"magic\"]\n")
            Issue.record("accepted an unknown scorer")
        } catch { #expect(error.line == 2 && error.message.contains("magic")) }
        do {
            _ = try load("[scorers.magic]\nx = 1\n")
            Issue.record("accepted an unknown scorer section")
        } catch { #expect(error.line == 2 && error.message.contains("magic")) }
        do {
            _ = try load("[scorers.popularity]\nhalf_life = 10\n")
            Issue.record("accepted a typo in a scorer section")
        } catch { #expect(error.message.contains("half_life_events")) }
    }

    @Test func valuesParse() throws {
        let c = try load("""
            # comment
            [server]
            host = "::1"   # trailing comment
            port = 7_000
            [scorers]
            load = [ 'popularity' ]
            default = "popularity"
            [scorers.popularity]
            half_life_events = 500
            """)
        #expect(c.host == "::1")
        #expect(c.port == 7000)
        #expect(c.scorers.count == 1)
        #expect((c.scorers[0].settings as? PopularitySettings)?.halfLifeEvents == 500)
    }
}
