// What restoring a snapshot does with a scorer the snapshot holds but the
// config does not load. Left out, its learned state is gone from the next
// snapshot on, and the log that could rebuild it is trimmed once snapshots
// cover it: the usual cause is starting with the wrong config (forgetting
// --config and getting the bundled one). So the server refuses unless the
// drop is asked for by name (`serve --drop-scorer NAME`); a RELOAD that
// removes a scorer is already such a request. Read-only uses (evaluating a
// stored version) may leave any scorer out.

public enum UnloadedScorers: Sendable, Equatable {
    /// Refuse, unless the scorer is one of these (dropped with a warning).
    case refuseExcept(Set<String>)
    /// Leave any such scorer out (nothing is written afterwards).
    case dropAny

    public static let refuse = UnloadedScorers.refuseExcept([])
}

/// A snapshot holds learned state of scorers the config does not load.
public struct UnloadedScorerError: Error, CustomStringConvertible, Sendable {
    /// The scorers' names, in the snapshot's order.
    public var names: [String]
    public init(names: [String]) { self.names = names }

    public var description: String {
        let list = names.joined(separator: ", ")
        let pronoun = names.count == 1 ? "it" : "them"
        let flags = names.map { "--drop-scorer \($0)" }.joined(separator: " ")
        return "the snapshot holds the learned state of \(names.count == 1 ? "scorer" : "scorers") \(list), which this config does not load ([scorers] load); starting would drop \(pronoun) for good. Start with the config that loads \(pronoun) (serve --config FILE), or, to drop \(pronoun) on purpose, add \(flags)"
    }
}
