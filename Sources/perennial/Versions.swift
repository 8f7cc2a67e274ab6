// `perennial versions`: the model versions a data directory holds (every
// snapshot is one), and their figures on the stream that followed them.

import ArgumentParser
import Foundation
import PerennialCore
import PerennialEval
import PerennialPlugins

struct Versions: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the model versions of a data directory, or evaluate one.",
        discussion: """
            Every snapshot is a version, named v<seq> after the log position it
            holds. The list shows when each was taken, its scorers, what it was
            rolled back from, and its figures once evaluated. --evaluate ID
            restores that version and scores the log's later events before
            learning each (E1's prequential top-10 rule on the real stream),
            and records the figures with the version. Start a server from a
            version (a rollback) with `perennial serve --from-version ID`.
            Safe while a server runs on the directory.
            """
    )

    @Option(help: "The server's data directory.")
    var dataDir = "data"
    @Option(help: "Config whose scorers the versions were saved with (default: the bundled one).")
    var config: String?
    @Option(help: "Evaluate this version on the events the log holds after it.")
    var evaluate: String?
    @Option(help: "With --evaluate: the scorer to rank with (default: the config's default).")
    var scorer = ""
    @Option(parsing: .unconditional, help: "With --evaluate: at most this many later events.")
    var events = Int.max
    @Flag(help: "With --evaluate: go ahead when the config's settings differ from the version's (say, after a RELOAD changed a blend weight); the figure records the differences.")
    var allowChangedSettings = false
    @Flag(help: "Print the list as JSON.")
    var json = false
    @Flag(help: "Read each version whole, check its framing and checksum, and restore it under --config (the bundled one by default; scorers it does not load are skipped), checking every count and index: a damaged one cannot be started from (slow for a large model). One saved under other settings than the config's is named as such, not as damaged.")
    var verify = false

    func validate() throws {
        if evaluate == nil && (!scorer.isEmpty || events != Int.max || allowChangedSettings) {
            throw ValidationError("--scorer, --events and --allow-changed-settings go with --evaluate VERSION")
        }
        guard events >= 1 else { throw ValidationError("--events must be at least 1, not \(events)") }
        // (--evaluate prints one figure and keeps it in the version's
        // description, which the listing's --json then shows: helper-76.)
        if evaluate != nil && json { throw ValidationError("--json lists the versions; --evaluate prints one figure and keeps it in the version's description (list them with --json afterwards)") }
    }

    /// Refuses a config that would not evaluate the version as it was
    /// learned: the evaluation goes on learning, and scorers share the
    /// table (session-rnn steps its rows), so a scorer left out or added
    /// changes the figure (review findings, helper-46 and -47: such a
    /// figure replaced the right one silently), and so does a setting.
    /// Settings may differ on purpose (`--allow-changed-settings`: a RELOAD
    /// that changes only per-query settings, such as cf's blend weights,
    /// takes no snapshot, so the running config differs from every earlier
    /// version's; helper-48): returns those differences.
    private func settingsDiffering(_ cfg: PerennialConfig, from description: [String: Any], version id: String) throws -> [String] {
        let which = config.map { "the config \($0)" } ?? "the bundled config (no --config given)"
        let advice = "pass --config with the config the server ran (`perennial versions --json` shows the version's scorers and settings)"
        if let saved = description["scorers"] as? [String] {
            let loaded = cfg.scorers.map(\.name)
            let missing = saved.filter { !loaded.contains($0) }, extra = loaded.filter { !saved.contains($0) }
            if !missing.isEmpty {
                throw CommandError("\(which) does not load \(missing.joined(separator: ", ")), which version \(id) learned (its scorers: \(saved.joined(separator: ", "))): \(advice)")
            }
            if !saved.isEmpty && !extra.isEmpty {
                throw CommandError("\(which) loads \(extra.joined(separator: ", ")), which version \(id) did not have (its scorers: \(saved.joined(separator: ", "))): \(advice)")
            }
        }
        guard let savedSettings = description["settings"] as? [String: String] else { return [] }
        let differing = PerennialConfig.changedSettingValues(was: savedSettings, now: cfg.modelSettingValues)
        guard !differing.isEmpty else { return [] }
        if !allowChangedSettings {
            throw CommandError("\(which) differs from the settings version \(id) was learned with (\(differing.joined(separator: "; "))): to evaluate the version as it was, pass a config with its values (`perennial versions --json` shows them); to evaluate it under these settings, add --allow-changed-settings (the figure records the differences)")
        }
        print("note: evaluating under settings that differ from the version's: \(differing.joined(separator: "; "))")
        return differing
    }

    /// The --config file's settings, or the bundled ones.
    private func loadConfig() throws -> PerennialConfig {
        try config.map { try PerennialConfig.load(file: $0, registry: .builtin) } ?? PerennialConfig.defaults(registry: .builtin)
    }

    func run() throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dataDir, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CommandError("no data directory at \(dataDir)")
        }
        let store = SnapshotStore(directory: (dataDir as NSString).appendingPathComponent("snapshots"))
        let files = store.files()
        if let id = evaluate {
            guard let file = store.file(ofVersion: id) else {
                throw CommandError("there is no version \(id) in \(store.directory); versions: \(files.map(\.id).joined(separator: ", "))")
            }
            let cfg = try loadConfig()
            let description = store.metadata(of: file)
            let savedScorers = description["scorers"] as? [String]
            let differing = try settingsDiffering(cfg, from: description, version: id)
            var (info, reader) = try store.read(file.path)
            let model = Model(config: cfg, registry: .builtin)
            try model.restore(from: &reader, unloaded: .dropAny)  // (read only: nothing is written back)
            let saved = savedScorers ?? model.scorerNames
            let ranking = scorer.isEmpty ? model.defaultScorer : scorer
            // A scorer the version learned, or a route between two such.
            let learned = saved.contains(ranking)
                || model.routes[ranking].map { saved.contains($0.candidates) && saved.contains($0.rerank) } ?? false
            guard model.canServe(ranking), learned else {
                throw CommandError("version \(id) has no learned scorer \(ranking) (its scorers: \(saved.joined(separator: ", "))): nothing evaluated")
            }
            let figures = try VersionEvaluation.run(model: model, logDirectory: (dataDir as NSString).appendingPathComponent("log"),
                                                    fromSegment: info.firstLogSegment, scorer: scorer, limit: events)
            guard figures.events > 0 else {
                throw CommandError("the log holds no events after version \(file.id): nothing to evaluate (a version is scored on the events that followed it)")
            }
            // Kept per scorer, so evaluating another scorer does not replace
            // the figure of the first; `e1` is the latest, whichever it was.
            // (Read, changed and written under the versions lock: another
            // evaluation of this version keeps its figure too.)
            let kept = try store.updateMetadata(of: file) { meta in
                var byScorer = meta["e1_by_scorer"] as? [String: Any] ?? [:]
                if byScorer.isEmpty, let earlier = meta["e1"] as? [String: Any], let name = earlier["scorer"] as? String {
                    byScorer[name] = earlier
                }
                // (Which config's settings the figure was taken under.)
                var json = figures.json
                json["config"] = config.map { URL(fileURLWithPath: $0).standardizedFileURL.path } ?? "bundled"
                if !differing.isEmpty { json["settings_differing"] = differing }
                byScorer[figures.scorer] = json
                meta["e1_by_scorer"] = byScorer
                meta["e1"] = json
            }
            print(String(format: "version %@ (%@): HR@10 %.4f  NDCG@10 %.4f  over %d evaluated of %d later events (%.1f s)",
                         file.id, figures.scorer, figures.total.hr, figures.total.ndcg, figures.total.count, figures.events, figures.seconds))
            guard kept else {
                throw CommandError("version \(file.id) was removed (the server keeps [snapshot] keep versions) while it was evaluated: its figures were not recorded")
            }
            return
        }
        var damaged = 0
        // (A checksum says the bytes are the ones written, not that they
        // make a model: restoring checks every count and index too.)
        let verifyConfig = verify ? try loadConfig() : nil
        let rows = files.map { f -> [String: Any] in
            var m = store.metadata(of: f)
            m["id"] = f.id
            m["seq"] = f.seq
            m["path"] = f.path
            if verify {
                do {
                    var (_, reader) = try store.read(f.path)
                    try Model(config: verifyConfig!, registry: .builtin).restore(from: &reader, unloaded: .dropAny)
                    m["verified"] = true
                } catch let other as SnapshotSettingsMismatch {
                    // Whole, but saved under other settings than this
                    // config's (helper-54: a 32-dimension server's versions
                    // were called damaged under the bundled config).
                    m["verified"] = false
                    m["other_settings"] = "\(other); pass --config with the server's config"
                } catch {
                    m["verified"] = false
                    m["damage"] = "\(error)"
                    damaged += 1
                }
            }
            return m
        }
        let unchecked = rows.filter { $0["other_settings"] != nil }.count
        // (A damaged version fails --verify, as a damaged log fails `log
        // check`: helper-76, it exited 0. Declared first, so it runs last,
        // after the summary below is printed.)
        defer { if verify && damaged > 0 { Foundation.exit(1) } }
        defer {
            if verify && !json {
                print(damaged > 0 ? "\(damaged) version(s) damaged: a server cannot start from them"
                      : unchecked > 0 ? "no damage found; \(unchecked) version(s) saved under other settings than the config's were not checked (pass --config)"
                      : "every version verified")
            }
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        if rows.isEmpty { print("no versions in \(store.directory)"); return }
        // Columns as wide as their widest cell (a version id with a rollback
        // suffix, a long scorer list).
        let cells: [[String]] = rows.map { m in
            // (Versions evaluated before figures were kept per scorer have `e1` only.)
            let evaluated = (m["e1_by_scorer"] as? [String: Any]).map { d in d.keys.sorted().compactMap { d[$0] as? [String: Any] } }
                ?? [m["e1"] as? [String: Any]].compactMap { $0 }
            var e1 = evaluated.isEmpty ? "not evaluated" : evaluated.map { e in
                String(format: "HR@10 %.4f (%d, %@)", (e["hr10"] as? Double) ?? 0, (e["count"] as? Int) ?? 0, (e["scorer"] as? String) ?? "?")
            }.joined(separator: "; ")
            if let from = m["rolled_back_from"] as? String { e1 += "  (rollback to \(from))" }
            if let dropped = m["dropped_scorers"] as? [String] { e1 += "  (dropped \(dropped.joined(separator: ",")))" }
            // (A RELOAD's own version goes at the next one: not a place to roll back to.)
            if SnapshotStore.isReloadOnly(m) { e1 += "  (a RELOAD's own: replaced by the next version)" }
            if let kept = m["kept"] as? String { e1 += "  (kept: \(kept))" }
            if let damage = m["damage"] as? String { e1 += "  DAMAGED: \(damage)" }
            if let other = m["other_settings"] as? String { e1 += "  NOT CHECKED (saved under other settings): \(other)" }
            return [m["id"] as! String, "\(m["seq"]!)", (m["created"] as? String) ?? "?",
                    (m["scorers"] as? [String])?.joined(separator: ",") ?? "?", e1]
        }
        let header = ["version", "log position", "created", "scorers", "E1 (later events)"]
        let widths = (0..<4).map { c in max(header[c].count, cells.map { $0[c].count }.max() ?? 0) + 2 }
        for row in [header] + cells {
            print((0..<4).map { pad(row[$0], widths[$0]) }.joined() + row[4])
        }
    }
}
