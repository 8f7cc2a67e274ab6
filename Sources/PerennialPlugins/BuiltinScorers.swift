// The scorers this build can load, by registered name. Adding a plugin: a
// target under Plugins/<Name>, a dependency in Package.swift, one line here.

import CollaborativeFiltering
import GANCandidates
@_exported import PerennialCore
import Popularity
import SessionRNN
import TextCNN

extension ScorerRegistry {
    public static let builtin = ScorerRegistry([
        PopularityScorer.factory,
        CollaborativeFilteringScorer.factory,
        TextCNNScorer.factory,
        SessionRNNScorer.factory,
        GANScorer.factory,
    ])
}
