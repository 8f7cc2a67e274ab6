// How much each kind of implicit feedback teaches the learned scorers
// (`[feedback]` in the config): a purchase says more about a taste than a
// click, a click more than a view. An implicit event's learning weight is
// its kind's weight times the event's own weight (FEEDBACK's `value`, 0
// meaning 1), at most `maxWeight`: one event sent with a huge value must not
// swamp the rows it touches (under Adagrad its squared gradient would shrink
// every later step of those rows). Ratings are not weighted here: each
// scorer reads a rating against its own positive threshold.

public struct FeedbackWeights: Sendable, Equatable {
    public var viewWeight: Float = 0.5
    public var clickWeight: Float = 1
    public var purchaseWeight: Float = 2
    public var maxWeight: Float = 10
    public init() {}

    /// The configured weight of an implicit kind (1 for a rating).
    public func weight(of kind: FeedbackKind) -> Float {
        switch kind {
        case .view: viewWeight
        case .click: clickWeight
        case .purchase: purchaseWeight
        case .rating: 1
        }
    }

    /// What the learner gets as an event's `value`: the rating for a rating,
    /// the learning weight for the other kinds.
    public func learnedValue(_ kind: FeedbackKind, value: Float) -> Float {
        kind == .rating ? value : min(weight(of: kind) * (value == 0 ? 1 : value), maxWeight)
    }

    /// Whether an event counts as a hit when shadow scoring or a version's
    /// evaluation asks if a recommendation was taken up: a rating of 4 or
    /// more, or an implicit event of a kind the scorers learn from.
    public func isPositive(_ kind: FeedbackKind, value: Float) -> Bool {
        kind == .rating ? value >= 4 : weight(of: kind) > 0
    }
}
