// E1 — prequential top-10 (EVALUATION.md): warm up on the first half of the
// stream, then for every later event, in order: if it is evaluated (positive,
// user and item seen before) ask for the user's top 10 among all items seen
// before minus the user's earlier items, record hit and NDCG; then reveal it.
// Variants: online (learns every revealed event), frozen (learns nothing
// after the warm-up; histories still grow), retrained (refit from scratch on
// everything so far at the start of each tenth of the test phase).

import Foundation
import PerennialCore

public enum E1Variant: String, CaseIterable, Sendable {
    case online, onlinePlain = "online-plain", onlinePlainStart = "online-plain-start", frozen, retrained

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
    /// Evaluated events whose user the model had never learned from (they
    /// are scored from the user's history alone, or by popularity).
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
        for r in data.ratings[0..<warmup] { earlier[r.user, default: 0] += 1 }
        var scratch: [LearnEvent] = []
        // A route predicts ratings (if at all) with its re-ranking scorer.
        let ratingName = setup.routes.first { $0.name == scorer }?.rerank ?? scorer
        var ratingScorer = try model.scorer(named: ratingName)
        for idx in warmup..<n {
            let offset = idx - warmup
            let tenth = min(9, offset / tenthLength)
            if variant == .retrained && offset > 0 && offset % tenthLength == 0 && offset / tenthLength < 10 {
                (model, learnedUsers) = try fit(scorer: scorer, upTo: idx, setup: setup)
                ratingScorer = try model.scorer(named: ratingName)
            }
            let r = data.ratings[idx]
            let u = model.users.index(of: r.user), i = model.items.index(of: r.item)
            if let u, let i, let predicted = ratingScorer.predictRating(user: u, item: i) {
                result.predictsRatings = true
                result.rmse.record(predicted: predicted, actual: r.rating)
            }
            if r.rating >= positiveThreshold && u != nil && i != nil {
                let rank = model.rankOf(r.item, user: r.user, scorer: scorer)
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
            model.feed(r, learn: learn, scratch: &scratch)
            if learn { learnedUsers.insert(r.user) }
            if offset % 1000 == 0 { progress?(1000) }
        }
        result.seconds = Date().timeIntervalSince(t0)
        return result
    }
}
