// E1 — prequential top-10 (EVALUATION.md): warm up on the first half of the
// stream, then for every later event, in order: if it is evaluated (positive,
// user and item seen before) ask for the user's top 10 among all items seen
// before minus the user's earlier items, record hit and NDCG; then reveal it.
// Variants: online (learns every revealed event), frozen (trained on the
// warm-up only), retrained (refit from scratch on everything so far at the
// start of each tenth of the test phase).
//
// Frozen and retrained are read as EVALUATION.md writes them: the model
// knows only what it was trained on, the exclusion list still grows (the
// revealed events are passed as the request's exclusions), and a user it
// never learned falls back to the popularity counts of its training data
// (cf answers a user with no row and no history so). The `-history`
// variants are the reading used before (review finding, helper-53): the
// weights stay as trained, but the revealed events join the users'
// histories, which cf's context vectors and item neighbourhood read at
// query time, so a user first seen after training is scored from their
// revealed events rather than by popularity. Which events are evaluated
// is decided from the stream (a user and an item seen before), whatever
// a model's id settings, so every variant counts the same events; an
// event whose item a model does not hold is a miss.

import Foundation
import PerennialCore

public enum E1Variant: String, CaseIterable, Sendable {
    case online, onlinePlain = "online-plain", onlinePlainStart = "online-plain-start", frozen, retrained
    case frozenHistory = "frozen-history", retrainedHistory = "retrained-history"

    /// The lifelong-learning settings this variant runs with.
    func lifelong(_ configured: LifelongConfig) -> LifelongConfig {
        var c = configured
        switch self {
        case .onlinePlain:
            c.replay = 0
            c.anchorStrength = 0
        case .onlinePlainStart:
            c.metaStart = false
        default: break
        }
        return c
    }

    var learnsOnline: Bool { self == .online || self == .onlinePlain || self == .onlinePlainStart }
    /// Revealed events are not given to the model at all (only excluded).
    public var strict: Bool { self == .frozen || self == .retrained }
    public var refits: Bool { self == .retrained || self == .retrainedHistory }
}

/// Evaluated events whose user had at most this many earlier events: the
/// new users a meta-learned start is for.
public let e1NewUserEvents = 5

public struct E1Result: Sendable {
    public var scorer: String
    public var variant: E1Variant
    public var total = TopKTally()
    public var tenths = [TopKTally](repeating: TopKTally(), count: 10)
    /// Per tenth, each user's evaluated events (for comparing variants user
    /// by user: PairedComparison).
    public var tenthUsers = [[UInt64: TopKTally]](repeating: [:], count: 10)
    /// Evaluated events whose user had at most `e1NewUserEvents` earlier
    /// events, in all and per user.
    public var newUsers = TopKTally()
    public var newUsersByUser: [UInt64: TopKTally] = [:]
    /// Evaluated events whose user the model had never learned from: in
    /// frozen and retrained, the events answered by the popularity fallback;
    /// in the other variants, events scored from the user's revealed
    /// history alone.
    public var coldUserEvents = 0
    public var rmse = ErrorTally()
    public var predictsRatings = false
    public var seconds = 0.0

    public var json: [String: Any] {
        var j = total.json
        j["tenths"] = zip(tenths, tenthUsers).map { t, users in
            var tj = t.json
            tj["users"] = users.count
            return tj
        }
        j["cold_user_events"] = coldUserEvents
        j["new_users"] = newUsers.json
        j["seconds"] = rounded(seconds)
        if predictsRatings {
            j["rmse"] = rounded(rmse.rmse)
            j["rmse_count"] = rmse.count
        }
        return j
    }
}

public struct E1: Sendable {
    public let data: MovieLensData
    public let setup: EvalSetup
    public var positiveThreshold: Float = 4

    public init(data: MovieLensData, setup: EvalSetup) {
        self.data = data
        self.setup = setup
    }

    public var warmup: Int { data.ratings.count / 2 }
    public var tenthLength: Int { max(1, (data.ratings.count - warmup) / 10) }

    /// A model trained on events[0..<end] from scratch (a bulk fit: the
    /// scorer's `epochs` passes). The online variant's warm-up is one pass,
    /// exactly what a server fed the same events learns.
    func fit(scorer: String, upTo end: Int, setup: EvalSetup) throws -> (Model, Set<UInt64>) {
        let model = try setup.makeModel(scorer: scorer)
        try model.fit(data.ratings[0..<end], scorer: scorer)
        return (model, Set(data.ratings[0..<end].map(\.user)))
    }

    func onePass(scorer: String, upTo end: Int, setup: EvalSetup) throws -> (Model, Set<UInt64>) {
        let model = try setup.makeModel(scorer: scorer)
        var scratch: [LearnEvent] = []
        for r in data.ratings[0..<end] { model.feed(r, learn: true, scratch: &scratch) }
        return (model, Set(data.ratings[0..<end].map(\.user)))
    }

    public func run(scorer: String, variant: E1Variant, progress: (@Sendable (Int) -> Void)? = nil) throws -> E1Result {
        let t0 = Date()
        var result = E1Result(scorer: scorer, variant: variant)
        let n = data.ratings.count
        var setup = self.setup
        setup.config.lifelong = variant.lifelong(setup.config.lifelong)
        var (model, learnedUsers) = variant.learnsOnline ? try onePass(scorer: scorer, upTo: warmup, setup: setup)
            : try fit(scorer: scorer, upTo: warmup, setup: setup)
        // Events per user so far (every event counts, positive or not).
        var earlier: [UInt64: Int] = [:]
        var seenItems = Set<UInt64>()
        for r in data.ratings[0..<warmup] { earlier[r.user, default: 0] += 1; seenItems.insert(r.item) }
        // frozen and retrained: each user's earlier items, from the stream,
        // excluded from their requests (the model's own history would miss
        // a user its id settings let go during training: helper-54).
        var revealed: [UInt64: [UInt64]] = [:]
        if variant.strict { for r in data.ratings[0..<warmup] { revealed[r.user, default: []].append(r.item) } }
        var scratch: [LearnEvent] = []
        // A route predicts ratings (if at all) with its re-ranking scorer.
        let ratingName = setup.routes.first { $0.name == scorer }?.rerank ?? scorer
        var ratingScorer = try model.scorer(named: ratingName)
        for idx in warmup..<n {
            let offset = idx - warmup
            let tenth = min(9, offset / tenthLength)
            if variant.refits && offset > 0 && offset % tenthLength == 0 && offset / tenthLength < 10 {
                (model, learnedUsers) = try fit(scorer: scorer, upTo: idx, setup: setup)
                ratingScorer = try model.scorer(named: ratingName)
            }
            let r = data.ratings[idx]
            let userSeen = earlier[r.user, default: 0] > 0, itemSeen = seenItems.contains(r.item)
            let u = model.users.index(of: r.user), i = model.items.index(of: r.item)
            // (A user or item the model does not hold is predicted as the
            // scorer predicts unknown ones: the mean, or the known side's bias.)
            if userSeen && itemSeen, let predicted = ratingScorer.predictRating(user: u, item: i) {
                result.predictsRatings = true
                result.rmse.record(predicted: predicted, actual: r.rating)
            }
            if r.rating >= positiveThreshold && userSeen && itemSeen {
                let rank = i == nil ? nil
                    : variant.strict ? model.rankOf(r.item, user: r.user, scorer: scorer, exclude: revealed[r.user, default: []])
                    : model.rankOf(r.item, user: r.user, scorer: scorer)
                result.total.record(rank: rank)
                result.tenths[tenth].record(rank: rank)
                result.tenthUsers[tenth][r.user, default: TopKTally()].record(rank: rank)
                if earlier[r.user, default: 0] <= e1NewUserEvents {
                    result.newUsers.record(rank: rank)
                    result.newUsersByUser[r.user, default: TopKTally()].record(rank: rank)
                }
                if !learnedUsers.contains(r.user) { result.coldUserEvents += 1 }
            }
            let learn = variant.learnsOnline
            earlier[r.user, default: 0] += 1
            seenItems.insert(r.item)
            if variant.strict {
                revealed[r.user, default: []].append(r.item)
            } else {
                model.feed(r, learn: learn, scratch: &scratch)
            }
            if learn { learnedUsers.insert(r.user) }
            if offset % 1000 == 0 { progress?(1000) }
        }
        result.seconds = Date().timeIntervalSince(t0)
        return result
    }
}
