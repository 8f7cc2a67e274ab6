// `perennial eval`: EVALUATION.md's protocols, in process, with a readable
// table and the JSON the protocols define.

import ArgumentParser
import Foundation
import PerennialCore
import PerennialEval
import PerennialPlugins

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run an evaluation protocol (E1–E5) on a MovieLens-shaped folder.",
        discussion: """
            E1: prequential top-10 with the variants online, frozen and retrained
            (and frozen-history, retrained-history: revealed events join the
            users' histories, which the scorer reads at query time),
            tenth by tenth, prequential RMSE for scorers that predict ratings, and
            popularity/online as the baseline. E2: leave-last-out top-10 beside
            popularity. E3: cold-start items from their text, beside TF-IDF and random.
            E4: next item from the sequence, beside cf, Markov and popularity.
            E5: candidate generation (Recall@100, coverage) beside cf and
            popularity, and E1 of gan+cf. Scorer settings come from --config
            (its [scorers.NAME] section) or the defaults. Variants run in
            parallel on the cores there are.
            """
    )

    @Option(help: "Protocol: e1, e2, e3, e4, e5, drift (the synthetic drift scenario) or churn (a synthetic news feed, item expiry off and on); drift and churn need no --data.")
    var `protocol`: String
    @Option(help: "A MovieLens-shaped folder.")
    var data: String?
    // Unconditional: a negative value (a mistake, refused below with its
    // reason) reads as the value, not as an unknown flag.
    @Option(parsing: .unconditional, help: "Keep this share of the data's users (0 < f <= 1), with all their ratings: how much a figure moves with the users sampled is what a held-out data set of the same shape would show.")
    var userFraction: Double?
    @Option(help: "The seed of --user-fraction's draw (each seed keeps other users).")
    var sampleSeed: UInt64 = 1
    @Option(help: "Config file whose scorer settings to use.")
    var config: String?
    @Option(help: "Scorer to evaluate (default: the one the protocol is for: text-cnn for e3, session-rnn for e4, gan for e5, cf otherwise).")
    var scorer: String?
    @Option(help: "E1 and drift: the variants to run (comma-separated; default: every E1 variant, and online,online-plain on drift).")
    var variants: String?
    static let allVariants = "online,online-plain,online-plain-start,frozen,retrained,frozen-history,retrained-history"
    @Option(parsing: .unconditional, help: "E5: candidates the gan+cf route takes from gan before cf re-ranks them.")
    var rerankCandidates = 300
    @Option(help: "E1 and drift: draw the HR@10 curve (per tenth of the test phase) as SVG into this file.")
    var plot: String?
    @Option(help: "Write the results as JSON here.")
    var json: String?

    func validate() throws {
        guard ["e1", "e2", "e3", "e4", "e5", "drift", "churn"].contains(self.protocol.lowercased()) else {
            throw ValidationError("unknown protocol \(self.protocol); this build runs e1, e2, e3, e4, e5, drift and churn")
        }
        let isDrift = self.protocol.lowercased() == "drift", isChurn = self.protocol.lowercased() == "churn"
        guard isDrift || isChurn || data != nil else { throw ValidationError("--data FOLDER is needed for \(self.protocol)") }
        // A flag the protocol does not read is refused, not ignored: a user
        // who passes it expects it to change the figures (review finding,
        // helper-76).
        if isDrift || isChurn, data != nil {
            throw ValidationError("--data is not read by \(self.protocol), which makes its own synthetic stream")
        }
        if let variants {
            guard ["e1", "drift"].contains(self.protocol.lowercased()) else {
                throw ValidationError("--variants applies to e1 and drift; \(self.protocol) runs its own fixed set")
            }
            guard !variants.split(separator: ",").isEmpty else {
                throw ValidationError("--variants names no variant: use some of \(E1Variant.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }
        if plot != nil, !["e1", "drift"].contains(self.protocol.lowercased()) {
            throw ValidationError("--plot draws the curve of e1 or drift; \(self.protocol) has none")
        }
        if let f = userFraction {
            guard !isDrift && !isChurn else { throw ValidationError("--user-fraction samples a --data folder's users; \(self.protocol) makes its own stream") }
            guard f > 0 && f <= 1 else { throw ValidationError("--user-fraction must be above 0 and at most 1, not \(f)") }
        }
        for v in (variants ?? "").split(separator: ",") {
            guard let variant = E1Variant(rawValue: String(v)) else {
                throw ValidationError("unknown variant \(v): use \(E1Variant.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if isDrift && (variant.refits || variant.strict) {
                throw ValidationError("variant \(v) is not run on drift (online, online-plain, online-plain-start and frozen-history are)")
            }
        }
        guard rerankCandidates >= 1 else { throw ValidationError("--rerank-candidates must be at least 1, not \(rerankCandidates)") }
        // (Checked before the evaluation runs, not after it: review finding.)
        try OutputPath.check(json, flag: "--json")
        try OutputPath.check(plot, flag: "--plot")
    }

    func run() throws {
        let scorer = self.scorer ?? ["e3": "text-cnn", "e4": "session-rnn", "e5": "gan"][self.protocol.lowercased()] ?? "cf"
        // Every scorer section of the file counts, loaded there or not: an
        // evaluation builds the models it needs itself.
        let all: ConfigValue = .array(ScorerRegistry.builtin.names.map { .string($0) })
        let cfg = try config.map { try PerennialConfig.load(file: $0, registry: .builtin, overrides: ["scorers.load": all], checkFileAlone: false) }
            ?? PerennialConfig.defaults(registry: .builtin)
        let setup = EvalSetup(config: cfg)
        let isDrift = self.protocol.lowercased() == "drift", isChurn = self.protocol.lowercased() == "churn"
        let drift = isDrift ? Drift(scenario: DriftScenario(), setup: setup) : nil
        let churn = isChurn ? Churn(scenario: ChurnScenario(), setup: setup) : nil
        let loaded = try drift?.data ?? churn?.data ?? MovieLensData.load(folder: data!)
        let ml = userFraction.map { loaded.sampledUsers(fraction: $0, seed: sampleSeed) } ?? loaded
        var results: [String: Any] = [:]
        var settings: [String: Any] = ["scorer": scorer, "config": cfg.source, "dimension": cfg.tableDimension]
        if let s = cfg.scorers.first(where: { $0.name == scorer }) { settings["scorer_settings"] = String(describing: s.settings) }
        // Every setting the figures depend on, under its config key: the
        // lifelong mechanisms' (replay, anchoring, the meta start, the id
        // lifecycle) and the baselines' too, not the scorer's alone
        // (review finding, helper-53).
        settings["model_settings"] = cfg.modelSettingValues
        if let f = userFraction { settings["user_fraction"] = f; settings["sample_seed"] = Int(sampleSeed) }
        switch self.protocol.lowercased() {
        case "e1":
            let e1 = E1(data: ml, setup: setup)
            var planned: [(String, E1Variant)] = []
            for v in (variants ?? Self.allVariants).split(separator: ",") {
                guard let variant = E1Variant(rawValue: String(v)) else { throw ValidationError("unknown variant \(v)") }
                planned.append((scorer, variant))
            }
            if scorer != "popularity" { planned.append(("popularity", .online)) }
            let jobs = planned
            let testEvents = ml.ratings.count - e1.warmup
            let bar = ProgressBar(total: testEvents * jobs.count, label: "E1")
            let done = Counter()
            let out = ResultsBox<E1Result>(count: jobs.count)
            DispatchQueue.concurrentPerform(iterations: jobs.count) { j in
                do {
                    out.set(j, try e1.run(scorer: jobs[j].0, variant: jobs[j].1) { bar.update(done.add($0)) })
                } catch {
                    out.fail("\(error)")
                }
            }
            bar.finish()
            if let e = out.error { throw CommandError(e) }
            let rs = out.values
            print("E1 on \(ml.name): \(ml.ratings.count) events, warm-up \(e1.warmup), tenths of \(e1.tenthLength) events")
            print(pad("variant", 28) + pad("HR@10", 9) + pad("NDCG@10", 9) + pad("count", 8) + pad("cold", 8) + pad("RMSE", 9)
                  + pad("new-user HR (count)", 21) + "time")
            for r in rs {
                let key = "\(r.scorer)/\(r.variant.rawValue)"
                results[key] = r.json
                print(pad(key, 28) + pad(f(r.total.hr), 9) + pad(f(r.total.ndcg), 9) + pad("\(r.total.count)", 8)
                      + pad("\(r.coldUserEvents)", 8) + pad(r.predictsRatings ? f(r.rmse.rmse) : "-", 9)
                      + pad("\(f(r.newUsers.hr)) (\(r.newUsers.count))", 21) + String(format: "%.1fs", r.seconds))
            }
            print("HR@10 by tenth of the test phase:")
            for r in rs {
                print(pad("\(r.scorer)/\(r.variant.rawValue)", 28) + r.tenths.map { String(format: "%.3f", $0.hr) }.joined(separator: " "))
            }
            // Lifelong mechanisms against none, tenth by tenth, user by user.
            if let on = rs.first(where: { $0.scorer == scorer && $0.variant == .online }),
               let plain = rs.first(where: { $0.scorer == scorer && $0.variant == .onlinePlain }) {
                let cmp = (0..<10).map { PairedComparison.compare(on.tenthUsers[$0], plain.tenthUsers[$0]) }
                results["\(scorer)/online-minus-online-plain"] = cmp.map { $0.json() }
                print("online − online-plain by tenth, with a 95% interval from a paired bootstrap over the tenth's users:")
                for (k, c) in cmp.enumerated() {
                    print(String(format: "  tenth %2d: %+.4f  [%+.4f, %+.4f]  (%d users)", k + 1, c.difference, c.low, c.high, c.users))
                }
            }
            // The meta-learned start against the plain one, on new users' events.
            if let on = rs.first(where: { $0.scorer == scorer && $0.variant == .online }),
               let plainStart = rs.first(where: { $0.scorer == scorer && $0.variant == .onlinePlainStart }) {
                let c = PairedComparison.compare(on.newUsersByUser, plainStart.newUsersByUser)
                results["\(scorer)/new-users-online-minus-online-plain-start"] = c.json()
                print(String(format: "new users, online − online-plain-start: %+.4f  [%+.4f, %+.4f]  (%d users, %d events)",
                             c.difference, c.low, c.high, c.users, on.newUsers.count))
            }
            if let plot {
                let chart = CurvePlot(title: "E1 on \(ml.name): HR@10 per tenth of the test phase", xLabel: "tenth of the test phase (stream order)",
                                      yLabel: "HR@10", series: rs.map { .init(name: "\($0.scorer)/\($0.variant.rawValue)", values: $0.tenths.map(\.hr)) })
                try chart.svg.write(toFile: plot, atomically: true, encoding: .utf8)
                print("curve written to \(plot)")
            }
        case "e2":
            let e2 = E2(data: ml, setup: setup)
            let names = scorer == "popularity" ? ["popularity"] : [scorer, "popularity"]
            let out = ResultsBox<TopKRunResult>(count: names.count)
            DispatchQueue.concurrentPerform(iterations: names.count) { j in
                do { out.set(j, try e2.run(scorer: names[j])) } catch { out.fail("\(error)") }
            }
            if let e = out.error { throw CommandError(e) }
            print("E2 on \(ml.name): leave-last-out, \(out.values.first?.total.count ?? 0) users with a target")
            print(pad("scorer", 14) + pad("HR@10", 9) + pad("NDCG@10", 9) + pad("count", 8) + "time")
            for r in out.values {
                results[r.scorer] = r.json
                print(pad(r.scorer, 14) + pad(f(r.total.hr), 9) + pad(f(r.total.ndcg), 9) + pad("\(r.total.count)", 8) + String(format: "%.1fs", r.seconds))
            }
        case "e3":
            let e3 = E3(data: ml, setup: setup)
            let scored = try e3.run(scorer: scorer)
            let rs = [scored] + e3.baselines()
            print("E3 on \(ml.name): \(e3.coldItems.count) cold items, \(scored.total.count) evaluated events")
            printTable(rs.map { ($0.scorer, $0.total, $0.seconds) }, into: &results)
        case "e4":
            let e4 = E4(data: ml, setup: setup)
            let names = scorer == "cf" ? ["cf"] : [scorer, "cf"]
            let out = ResultsBox<TopKRunResult>(count: names.count)
            DispatchQueue.concurrentPerform(iterations: names.count) { j in
                do { out.set(j, try e4.run(scorer: names[j])) } catch { out.fail("\(error)") }
            }
            if let e = out.error { throw CommandError(e) }
            let rs = out.values + e4.baselines()
            print("E4 on \(ml.name): next item, \(rs[0].total.count) users, session = \(e4.sessionLength == Int.max ? "the whole prefix" : "the last \(e4.sessionLength) prefix items")")
            printTable(rs.map { ($0.scorer, $0.total, $0.seconds) }, into: &results)
        case "e5":
            // Candidate sources side by side, and E1 of the two-stage route
            // "gan+cf" (the generator's candidates re-ranked by cf) beside cf.
            var routedSetup = setup
            routedSetup.routes = [RouteConfig(name: "gan+cf", candidates: "gan", count: rerankCandidates, rerank: "cf")]
            let routed = routedSetup
            let e5 = E5(data: ml, setup: routed)
            let e1 = E1(data: ml, setup: routed)
            let sources = scorer == "gan" ? ["gan", "cf", "popularity"] : [scorer, "cf", "popularity"]
            let jobs = sources.count + 2
            let out5 = ResultsBox<E5Result>(count: sources.count)
            let out1 = ResultsBox<E1Result>(count: 2)
            DispatchQueue.concurrentPerform(iterations: jobs) { j in
                do {
                    if j < sources.count {
                        out5.set(j, try e5.run(scorer: sources[j]) { try routed.makeModel(scorer: sources[j]) })
                    } else {
                        out1.set(j - sources.count, try e1.run(scorer: j == sources.count ? "gan+cf" : "cf", variant: .online))
                    }
                } catch { out5.fail("\(error)") }
            }
            if let e = out5.error { throw CommandError(e) }
            print("E5 on \(ml.name): \(out5.values.first?.count ?? 0) evaluated events, 100 candidates each")
            print(pad("source", 14) + pad("Recall@100", 12) + pad("coverage", 10) + "time")
            for r in out5.values {
                results[r.scorer] = r.json
                print(pad(r.scorer, 14) + pad(f(r.recall), 12) + pad(f(r.coverage), 10) + String(format: "%.1fs", r.seconds))
            }
            print("E1 (online) of the route gan+cf (\(rerankCandidates) gan candidates re-ranked by cf) beside cf alone:")
            for r in out1.values {
                results[r.scorer + (r.scorer == "cf" ? "/online" : "")] = r.json
                print(pad(r.scorer, 14) + "HR@10 " + f(r.total.hr) + "  NDCG@10 " + f(r.total.ndcg) + "  count \(r.total.count)")
            }
            settings["rerank_candidates"] = rerankCandidates
        case "drift":
            let drift = drift!
            let wanted = variants ?? "online,online-plain"
            var planned: [E1Variant] = []
            for v in wanted.split(separator: ",") {
                guard let variant = E1Variant(rawValue: String(v)), !variant.refits, !variant.strict else { throw ValidationError("variant \(v) is not run on drift") }
                planned.append(variant)
            }
            let jobs = planned
            let out = ResultsBox<DriftResult>(count: jobs.count)
            DispatchQueue.concurrentPerform(iterations: jobs.count) { j in
                do { out.set(j, try drift.run(scorer: scorer, variant: jobs[j])) } catch { out.fail("\(error)") }
            }
            if let e = out.error { throw CommandError(e) }
            let sc = drift.scenario
            print("Drift scenario: \(sc.events) events, \(sc.users) users, \(sc.groups * sc.itemsPerCluster) items; tastes change at event \(sc.changeAt) and return at \(sc.returnAt)")
            print(pad("variant", 28) + pad("HR before", 11) + pad("recovery (events)", 19) + pad("HR on return", 14) + "count")
            for r in out.values {
                results["\(scorer)/\(r.variant.rawValue)"] = r.json
                print(pad("\(scorer)/\(r.variant.rawValue)", 28) + pad(f(r.beforeChange), 11) + pad(r.recoveryEvents.map { "\($0)" } ?? "never", 19)
                      + pad(f(r.onReturn.hr), 14) + "\(r.onReturn.count)")
            }
            if let on = out.values.first(where: { $0.variant == .online }), let plain = out.values.first(where: { $0.variant == .onlinePlain }) {
                let r = PairedComparison.ratio(on.onReturnByUser, plain.onReturnByUser)
                results["\(scorer)/return-online-over-online-plain"] = r.json(name: "ratio")
                print(String(format: "on the return, online ÷ online-plain: %.2f x  [%.2f, %.2f] (95%%, paired bootstrap over %d users)",
                             r.difference, r.low, r.high, r.users))
            }
            if let plot {
                let chart = CurvePlot(title: "Drift scenario: HR@10 per \(sc.window) events (change at \(sc.changeAt / sc.window), return at \(sc.returnAt / sc.window))",
                                      xLabel: "window of \(sc.window) events", yLabel: "HR@10",
                                      series: out.values.map { .init(name: "\(scorer)/\($0.variant.rawValue)", values: $0.windows.map(\.hr)) })
                try chart.svg.write(toFile: plot, atomically: true, encoding: .utf8)
                print("curve written to \(plot)")
            }
        case "churn":
            // Item expiry off, and at a week, three days and one day.
            let churn = churn!
            let jobs = [0, 7 * 86_400, 3 * 86_400, 86_400]
            let out = ResultsBox<ChurnResult>(count: jobs.count)
            DispatchQueue.concurrentPerform(iterations: jobs.count) { j in
                do { out.set(j, try churn.run(scorer: scorer, expireAfter: jobs[j])) } catch { out.fail("\(error)") }
            }
            if let e = out.error { throw CommandError(e) }
            let sc = churn.scenario
            print("Churn scenario: \(sc.events) events over \(sc.days) days, \(sc.users) users, \(sc.articles) articles published (one per topic every \(sc.publishEverySeconds / 60) min)")
            print(pad("item expiry", 14) + pad("HR@10", 9) + pad("NDCG@10", 9) + pad("count", 8) + pad("forgotten", 11) + pad("item rows", 11)
                  + pad("table MB", 10) + pad("RECOMMEND µs", 14) + "time")
            for r in out.values {
                let name = r.expireAfter == 0 ? "off" : "\(r.expireAfter / 86_400) d"
                results["\(scorer)/expiry-\(name.replacingOccurrences(of: " ", with: ""))"] = r.json
                print(pad(name, 14) + pad(f(r.total.hr), 9) + pad(f(r.total.ndcg), 9) + pad("\(r.total.count)", 8) + pad("\(r.forgotten)", 11)
                      + pad("\(r.itemRows)", 11) + pad(String(format: "%.1f", Double(r.tableBytes) / 1e6), 10)
                      + pad(String(format: "%.0f", r.recommendMicros), 14) + String(format: "%.1fs", r.seconds))
            }
        default:
            throw ValidationError("unknown protocol \(self.protocol); this build runs e1, e2, e3, e4, e5, drift and churn")
        }
        if let json {
            let doc: [String: Any] = ["protocol": self.protocol.lowercased(), "dataset": ml.name, "events": ml.ratings.count,
                                      "settings": settings, "results": results]
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: json))
            print("wrote \(json)")
        }
    }
}

private func printTable(_ rows: [(String, TopKTally, Double)], into results: inout [String: Any]) {
    print(pad("scorer", 14) + pad("HR@10", 9) + pad("NDCG@10", 9) + pad("count", 8) + "time")
    for (name, t, seconds) in rows {
        var j = t.json
        j["seconds"] = (seconds * 1000).rounded() / 1000
        results[name] = j
        print(pad(name, 14) + pad(f(t.hr), 9) + pad(f(t.ndcg), 9) + pad("\(t.count)", 8) + String(format: "%.1fs", seconds))
    }
}


/// Results of parallel jobs by index. Invariant for @unchecked Sendable:
/// every access holds `lock`.
final class ResultsBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [T?]
    private(set) var error: String?
    init(count: Int) { slots = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ v: T) { lock.lock(); slots[i] = v; lock.unlock() }
    func fail(_ e: String) { lock.lock(); error = error ?? e; lock.unlock() }
    var values: [T] { lock.lock(); defer { lock.unlock() }; return slots.compactMap { $0 } }
}

/// A thread-safe running total (for progress across parallel jobs).
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func add(_ n: Int) -> Int { lock.lock(); defer { lock.unlock() }; value += n; return value }
}
