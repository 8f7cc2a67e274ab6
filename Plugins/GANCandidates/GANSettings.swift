// Settings of the adversarial candidate generator, `[scorers.gan]`.

import PerennialCore

public struct GANSettings: ScorerSettings, Equatable {
    /// Width of the generator's and the discriminator's own vectors.
    public var dimension = 32
    /// Recent items of a user that form the user's vector (with their own row).
    public var contextItems = 20
    /// Items the generator samples per event for the policy-gradient step.
    public var samples = 8
    /// Up to this many items, those samples come from the exact softmax
    /// over the catalogue (a pass over every item per event); above, from
    /// `softmaxProposals` items drawn uniformly and resampled by their
    /// softmax weights, at a cost that does not grow with the catalogue.
    public var exactSoftmaxItems = 20_000
    public var softmaxProposals = 4_096
    /// Adagrad steps: generator and discriminator.
    public var generatorLearningRate: Float = 0.2
    public var discriminatorLearningRate: Float = 0.05
    /// Weight of the maximum-likelihood term (log p(observed item | user))
    /// beside the adversarial reward in the generator's objective.
    public var likelihoodWeight: Float = 1
    /// Weight of the adversarial (policy-gradient) term; 0 leaves a plain
    /// likelihood-trained softmax generator, for comparison.
    public var rewardWeight: Float = 1
    /// Softmax temperature when candidates are sampled for a request:
    /// higher spreads candidates over more of the catalogue.
    public var temperature: Float = 1
    /// Share of the candidates taken as the generator's most likely items;
    /// the rest are sampled (without replacement) from its distribution.
    public var greedyShare: Float = 0.8
    /// Ratings at or above this are positives (implicit kinds always are).
    public var positiveThreshold: Float = 4
    public var epochs = 5
    public var seed: UInt64 = 23

    public init() {}

    static func read(_ r: ScorerSettingsReader) throws(ConfigError) -> GANSettings {
        var s = GANSettings()
        s.dimension = try r.int("dimension", default: s.dimension, in: 1...1024)
        s.contextItems = try r.int("context_items", default: s.contextItems, in: 0...1000)
        s.samples = try r.int("samples", default: s.samples, in: 1...1000)
        s.exactSoftmaxItems = try r.int("exact_softmax_items", default: s.exactSoftmaxItems, in: 0...Int(Int32.max))
        s.softmaxProposals = try r.int("softmax_proposals", default: s.softmaxProposals, in: 1...1_000_000)
        s.generatorLearningRate = Float(try r.double("generator_learning_rate", default: Double(s.generatorLearningRate), in: 0...10))
        s.discriminatorLearningRate = Float(try r.double("discriminator_learning_rate", default: Double(s.discriminatorLearningRate), in: 0...10))
        s.likelihoodWeight = Float(try r.double("likelihood_weight", default: Double(s.likelihoodWeight), in: 0...100))
        s.rewardWeight = Float(try r.double("reward_weight", default: Double(s.rewardWeight), in: 0...100))
        s.temperature = Float(try r.double("temperature", default: Double(s.temperature), in: 0.01...100))
        s.greedyShare = Float(try r.double("greedy_share", default: Double(s.greedyShare), in: 0...1))
        s.positiveThreshold = Float(try r.double("positive_threshold", default: Double(s.positiveThreshold), in: 0...10))
        s.epochs = try r.int("epochs", default: s.epochs, in: 1...100)
        s.seed = UInt64(try r.int("seed", default: Int(s.seed), in: 0...Int.max))
        return s
    }
}
