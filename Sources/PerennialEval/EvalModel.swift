// Building a model for an evaluation: the given config with exactly one
// scorer loaded and an unbounded history (the protocols exclude every
// earlier item of the user, not a bounded recent set).

import PerennialCore
import PerennialPlugins

public struct EvalSetup: Sendable {
    public var config: PerennialConfig
    public var registry: ScorerRegistry

    public init(config: PerennialConfig, registry: ScorerRegistry = .builtin) {
        self.config = config
        self.registry = registry
    }

    /// A fresh model holding only `scorer`, with its settings from the config
    /// (or its defaults when the config does not load it).
    public func makeModel(scorer: String) throws -> Model {
        if let route = routes.first(where: { $0.name == scorer }) {
            return try makeModel(scorers: [route.rerank, route.candidates], routes: [route])
        }
        return try makeModel(scorers: [scorer], routes: [])
    }

    /// Routes an evaluation may name as its scorer (e.g. "gan+cf").
    public var routes: [RouteConfig] = []

    /// A fresh model holding `scorers` (the first is the default) and `routes`.
    public func makeModel(scorers names: [String], routes: [RouteConfig]) throws -> Model {
        var c = config
        c.historyPerUser = 1_000_000
        c.scorers = []
        for scorer in names {
            if let loaded = config.scorers.first(where: { $0.name == scorer }) {
                c.scorers.append(loaded)
            } else {
                guard registry.factory(named: scorer) != nil else { throw CommandError("unknown scorer \"\(scorer)\"; known: \(registry.names.joined(separator: ", "))") }
                var doc = ConfigDocument(file: "<eval>")
                doc.set("scorers.load", .array([.string(scorer)]))
                c.scorers += try PerennialConfig.load(doc, registry: registry).scorers
            }
        }
        c.defaultScorer = names[0]
        c.routes = routes
        return Model(config: c, registry: registry)
    }

}

extension Model {
    /// Admits and (when `learn`) applies one rating event, as a server would.
    @inline(__always)
    func feed(_ r: Rating, learn: Bool, scratch: inout [LearnEvent]) {
        scratch.removeAll(keepingCapacity: true)
        admit(CollectionOfOne(IncomingEvent(user: r.user, item: r.item, kind: .rating, value: r.rating, timestamp: r.timestamp)),
              now: r.timestamp, into: &scratch)
        if learn {
            for e in scratch { self.learn(e) }
        } else {
            // A frozen model learns nothing, but is done with the event (id
            // expiry waits for the learner to be done with a user's events).
            applied.store(lastSeq, ordering: .releasing)
        }
    }

    /// Admits and learns `ratings` from scratch as one bulk fit, making the
    /// scorer's preferred number of passes (the first admits; the later ones
    /// re-learn the same events in the same order).
    func fit(_ ratings: some Collection<Rating>, scorer name: String) throws {
        var admitted: [(event: LearnEvent, user: UInt64, item: UInt64)] = []
        admitted.reserveCapacity(ratings.count)
        var scratch: [LearnEvent] = []
        for r in ratings {
            feed(r, learn: true, scratch: &scratch)
            for e in scratch { admitted.append((e, r.user, r.item)) }
        }
        // The later passes learn the events whose ids still hold the
        // indices they had: id expiry (users or items) may have given an
        // index to another id since, and its events must not train the new
        // holder. Indices vacant now are vacant for those passes.
        itemVacancy.position = lastSeq &+ 1
        // (An id that expired and came back may hold the same index again:
        // its first life's events are not its own, hence the generation and
        // the position the item took its index at.)
        let all = admitted.filter { a in
            let user = a.event.sharedUser
                || (users.id(at: a.event.user) == a.user && lifecycle.currentGeneration(of: a.event.user) == a.event.userGeneration)
            // (An event of a rare item, learned as the shared fallback item,
            // names the fallback's id: review finding.)
            let item = items.id(at: a.event.item) == a.item
                || (a.event.item == fallbackItem && items.id(at: a.event.item) == ItemLifecycle.fallbackItemID)
            return user && item && a.event.seq > itemVacancy.heldSince(a.event.item)
        }.map(\.event)
        // A route's scorers each make their own passes.
        let names = routes[name].map { [$0.candidates, $0.rerank] } ?? [name]
        for n in names {
            let scorer = try self.scorer(named: n)
            let epochs = scorer.preferredEpochs
            if epochs > 1 {
                for _ in 2...epochs {
                    scorer.beginRepeatedEpoch()
                    for e in all { scorer.learn(e) }
                }
            }
        }
    }

    /// Rank (1-based) of `target` in the top 10 for `user`, or nil.
    func rankOf(_ target: UInt64, user: UInt64, k: Int = 10, scorer: String = "", exclude: [UInt64] = []) -> Int? {
        guard let recs = try? recommend(user: user, k: k, scorer: scorer, exclude: exclude) else { return nil }
        return recs.firstIndex { $0.item == target }.map { $0 + 1 }
    }
}
