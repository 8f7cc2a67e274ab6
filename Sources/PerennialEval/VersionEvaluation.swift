// A model version's figures: E1's prequential top-10 rule applied to the
// real stream after the version. The version's model, restored from its
// snapshot, scores every later event of the write-ahead log before learning
// it, exactly as E1's online variant does with MovieLens: an event is
// evaluated when it is positive (a rating >= 4, or a view, click or purchase
// whose kind the config learns from: FeedbackWeights.isPositive) and
// its user and item were seen before; it asks for the user's top 10 among
// all known items minus the user's earlier items. Two versions evaluated on
// the same later events compare like for like.

import Foundation
import PerennialCore

public struct VersionFigures: Sendable {
    public var total = TopKTally()
    public var events = 0
    public var scorer: String
    public var seconds = 0.0

    public var json: [String: Any] {
        var j = total.json
        j["events"] = events
        j["scorer"] = scorer
        j["seconds"] = rounded(seconds)
        j["protocol"] = "E1 prequential top-10 over the log after the version"
        j["computed"] = ISO8601DateFormatter().string(from: Date())
        return j
    }
}

public enum VersionEvaluation {
    /// Scores then learns each log event after `model`'s position (at most
    /// `limit` events), from log segment `fromSegment` on.
    public static func run(model: Model, logDirectory: String, fromSegment: Int, scorer: String, limit: Int = .max) throws -> VersionFigures {
        let t0 = Date()
        var figures = VersionFigures(scorer: scorer.isEmpty ? model.defaultScorer : scorer)
        var scratch: [LearnEvent] = []
        let start = model.lastSeq
        try FeedbackLog.scan(directory: logDirectory, fromSegment: fromSegment, cutTornTail: false) { record in
            guard figures.events < limit else { return }
            switch record {
            case .feedback(let first, let events):
                // The record is the batch the server admitted: id expiry
                // runs at its start, as it did there (events are admitted
                // one by one, each scored before it is learned).
                let whole = first > start
                if whole, let e = events.first { model.beginBatch(at: e.timestamp) }
                for (k, e) in events.enumerated() where first + UInt64(k) > start && figures.events < limit {
                    if model.feedbackWeights.isPositive(e.kind, value: e.value) && model.users.index(of: e.user) != nil && model.items.index(of: e.item) != nil {
                        figures.total.record(rank: model.rankOf(e.item, user: e.user, scorer: scorer))
                    }
                    scratch.removeAll(keepingCapacity: true)
                    model.admit(CollectionOfOne(e), now: e.timestamp, into: &scratch, continuingBatch: whole)
                    for l in scratch { model.learn(l) }
                    figures.events += 1
                }
            case .upsert(let item, let text, let attributes):
                _ = model.upsertItem(id: item, text: text, attributes: attributes.map { ($0.key, $0.value) })
            case .deleteItems(let items):
                _ = model.deleteItems(items)
            case .deleteItemsUnremembered(let items):
                _ = model.deleteItems(items, remember: false)
            case .deleteUsers(let users):
                _ = model.deleteUsers(users)
            }
        }
        figures.seconds = Date().timeIntervalSince(t0)
        return figures
    }
}
