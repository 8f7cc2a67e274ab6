// Settings of the session scorer, `[scorers.session-rnn]`.

import PerennialCore

public struct SessionRNNSettings: ScorerSettings, Equatable {
    /// Items of the session the GRU reads (the most recent ones), in
    /// learning and in scoring.
    public var steps = 10
    /// Uniformly sampled negatives per event for the sampled softmax.
    public var negatives = 256
    /// Adagrad base step.
    public var learningRate: Float = 0.05
    /// Scale of the gradient that flows into the shared table's item rows
    /// from the GRU's inputs (0 = the GRU never moves the inputs).
    public var tableGradientScale: Float = 1
    /// Weight of ln(1 + transitions from the session's latest items) added
    /// to the standardised GRU score (0 = the GRU alone).
    public var transitionWeight: Float = 1
    /// Each event counts a transition from each of the user's previous
    /// `transitionWindow` items, the k-th most recent weighted
    /// transitionDecay^(k-1); a session is scored from its latest
    /// `transitionWindow` items weighted the same way. 1 = first-order
    /// transitions from the last item alone.
    public var transitionWindow = 5
    public var transitionDecay: Float = 0.8
    /// Transition slots kept per item.
    public var transitionSlots = 128
    /// Passes over a bulk training set (evaluations); the server learns each event once.
    public var epochs = 6
    public var seed: UInt64 = 17

    public init() {}

    static func read(_ r: ScorerSettingsReader) throws(ConfigError) -> SessionRNNSettings {
        var s = SessionRNNSettings()
        s.steps = try r.int("steps", default: s.steps, in: 1...200)
        s.negatives = try r.int("negatives", default: s.negatives, in: 1...10_000)
        s.learningRate = Float(try r.double("learning_rate", default: Double(s.learningRate), in: 0...10))
        s.tableGradientScale = Float(try r.double("table_gradient_scale", default: Double(s.tableGradientScale), in: 0...10))
        s.transitionWeight = Float(try r.double("transition_weight", default: Double(s.transitionWeight), in: 0...100))
        s.transitionSlots = try r.int("transition_slots", default: s.transitionSlots, in: 8...65_536)
        s.transitionWindow = try r.int("transition_window", default: s.transitionWindow, in: 1...200)
        s.transitionDecay = Float(try r.double("transition_decay", default: Double(s.transitionDecay), in: 0...1))
        s.epochs = try r.int("epochs", default: s.epochs, in: 1...100)
        s.seed = UInt64(try r.int("seed", default: Int(s.seed), in: 0...Int.max))
        return s
    }
}
