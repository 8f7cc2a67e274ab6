// The scorers this build of the server can load, by registered name. Adding a
// plugin: a target under Plugins/<Name>, a dependency in Package.swift, and
// one line here.

import PerennialCore
import Popularity

extension ScorerRegistry {
    public static let builtin = ScorerRegistry([
        PopularityScorer.factory,
    ])
}
