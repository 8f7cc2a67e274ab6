// Settings of the collaborative-filtering scorer, `[scorers.cf]`.

import PerennialCore

public struct CFSettings: ScorerSettings, Equatable {
    /// Adagrad base step for the ranking loss.
    public var learningRate: Float = 0.1
    /// L2 pull toward zero on every updated row, per step.
    public var regularization: Float = 0.0001
    /// Sampled negatives per positive event (BPR).
    public var negatives: Int = 16
    /// How negatives are drawn: "popularity" (an item of a recent event, so
    /// popular items are drawn as often as they occur) or "uniform".
    public var negativeSampling: String = "uniform"
    /// Recent events the popularity sampler draws from.
    public var samplerWindow: Int = 100_000
    /// Recent items of a user that form their context vector.
    public var contextItems: Int = 20
    /// Weight of the k-th most recent context item: decay^k.
    public var contextDecay: Float = 0.8
    /// Ratings below this are learned with `lowRatingWeight`.
    public var positiveThreshold: Float = 4
    public var lowRatingWeight: Float = 0.5
    /// Weight of the item-neighbourhood score in the blend, and of the
    /// factor score (standardised over the catalogue).
    public var neighbourhoodWeight: Float = 1
    public var factorWeight: Float = 0.3
    /// The factor part's weight grows with the evidence about the user:
    /// factorWeight · n / (n + factorShrinkage) for a user with n events, so
    /// a user known from a handful of events is served mostly by the
    /// neighbourhood, a long-known one mostly by the factors.
    public var factorShrinkage: Float = 0
    /// Neighbour slots kept per item (rounded up to a power of two).
    public var neighbours: Int = 256
    /// Co-occurrences are counted between an event and the user's previous
    /// `pairWindow` items. Short, as the neighbourhood is read (the user's
    /// latest few items): pairs far apart in a user's sequence say less
    /// about what comes next (config/perennial.toml gives the figures).
    public var pairWindow: Int = 8
    /// The user's latest items whose neighbours are scored, and their decay.
    public var neighbourhoodItems: Int = 5
    public var neighbourhoodDecay: Float = 0.7
    /// Neighbour counts are divided by (count of the neighbour + 1)^damping,
    /// so very popular items do not win by volume alone.
    public var popularityDamping: Float = 0.25
    /// Passes over a bulk training set (evaluation's warm-up and refits).
    public var epochs: Int = 10
    /// Whether the rating head (biased MF for explicit ratings) is trained.
    public var ratingHead: Bool = true
    public var ratingFactors: Int = 16
    public var ratingLearningRate: Float = 0.08
    public var ratingRegularization: Float = 0.1
    public var seed: UInt64 = 42

    public init() {}

    static func read(_ r: ScorerSettingsReader) throws(ConfigError) -> CFSettings {
        var s = CFSettings()
        s.learningRate = Float(try r.double("learning_rate", default: Double(s.learningRate), in: 1e-6...10))
        s.regularization = Float(try r.double("regularization", default: Double(s.regularization), in: 0...1))
        s.negatives = try r.int("negatives", default: s.negatives, in: 1...256)
        s.negativeSampling = try r.string("negative_sampling", default: s.negativeSampling, oneOf: ["popularity", "uniform"])
        s.samplerWindow = try r.int("sampler_window", default: s.samplerWindow, in: 1...100_000_000)
        s.contextItems = try r.int("context_items", default: s.contextItems, in: 0...10_000)
        s.contextDecay = Float(try r.double("context_decay", default: Double(s.contextDecay), in: 0...1))
        s.positiveThreshold = Float(try r.double("positive_threshold", default: Double(s.positiveThreshold), in: 0...10))
        s.lowRatingWeight = Float(try r.double("low_rating_weight", default: Double(s.lowRatingWeight), in: 0...1))
        s.neighbourhoodWeight = Float(try r.double("neighbourhood_weight", default: Double(s.neighbourhoodWeight), in: 0...100))
        s.factorWeight = Float(try r.double("factor_weight", default: Double(s.factorWeight), in: 0...100))
        s.factorShrinkage = Float(try r.double("factor_shrinkage", default: Double(s.factorShrinkage), in: 0...1_000_000))
        s.neighbours = try r.int("neighbours", default: s.neighbours, in: 8...65536)
        s.pairWindow = try r.int("pair_window", default: s.pairWindow, in: 0...10_000)
        s.neighbourhoodItems = try r.int("neighbourhood_items", default: s.neighbourhoodItems, in: 0...10_000)
        s.neighbourhoodDecay = Float(try r.double("neighbourhood_decay", default: Double(s.neighbourhoodDecay), in: 0...1))
        s.popularityDamping = Float(try r.double("popularity_damping", default: Double(s.popularityDamping), in: 0...2))
        s.epochs = try r.int("epochs", default: s.epochs, in: 1...1000)
        s.ratingHead = try r.bool("rating_head", default: s.ratingHead)
        s.ratingFactors = try r.int("rating_factors", default: s.ratingFactors, in: 1...512)
        s.ratingLearningRate = Float(try r.double("rating_learning_rate", default: Double(s.ratingLearningRate), in: 1e-6...10))
        s.ratingRegularization = Float(try r.double("rating_regularization", default: Double(s.ratingRegularization), in: 0...10))
        s.seed = UInt64(try r.int("seed", default: Int(s.seed), in: 0...Int.max))
        return s
    }
}
