// Settings of the text encoder scorer, `[scorers.text-cnn]`.

import PerennialCore

public struct TextCNNSettings: ScorerSettings, Equatable {
    /// Hash buckets for words and character trigrams (rows of token embeddings).
    public var buckets = 32_768
    /// Width of a token embedding.
    public var tokenDimension = 32
    /// Filters per convolution width (widths 1, 2 and 3 words).
    public var filters = 32
    /// Words of an item's text the encoder reads (titles, genres and tags come first).
    public var maxWords = 64
    /// Width of the encoder's item space (one more slot holds a learned item bias).
    public var dimension = 64
    /// Adam step size, and positive events per minibatch step.
    public var learningRate: Float = 0.003
    public var batch = 128
    /// Ratings at or above this are positives (implicit kinds always are).
    public var positiveThreshold: Float = 4
    /// Passes over a bulk training set.
    public var epochs = 2
    /// Encoder steps after which the cached item encodings are refreshed,
    /// a generation at a time (EncodingCache).
    public var refreshSteps = 20
    public var seed: UInt64 = 7

    public init() {}

    static func read(_ r: ScorerSettingsReader) throws(ConfigError) -> TextCNNSettings {
        var s = TextCNNSettings()
        s.buckets = try r.int("buckets", default: s.buckets, in: 16...(1 << 24))
        s.tokenDimension = try r.int("token_dimension", default: s.tokenDimension, in: 1...512)
        s.filters = try r.int("filters", default: s.filters, in: 1...1024)
        s.maxWords = try r.int("max_words", default: s.maxWords, in: 1...10_000)
        s.dimension = try r.int("dimension", default: s.dimension, in: 1...1024)
        s.learningRate = Float(try r.double("learning_rate", default: Double(s.learningRate), in: 0...1))
        s.batch = try r.int("batch", default: s.batch, in: 1...100_000)
        s.positiveThreshold = Float(try r.double("positive_threshold", default: Double(s.positiveThreshold), in: 0...10))
        s.epochs = try r.int("epochs", default: s.epochs, in: 1...100)
        s.refreshSteps = try r.int("refresh_steps", default: s.refreshSteps, in: 1...1_000_000)
        s.seed = UInt64(try r.int("seed", default: Int(s.seed), in: 0...Int.max))
        return s
    }
}
