// E5 — candidate generation (EVALUATION.md): E1's test phase with the online
// variant, but every evaluated event asks the generator for 100 candidates
// instead of a top 10. Recall@100 is the share of evaluated events whose
// target is among them; coverage the distinct items that appeared in any
// candidate set over the whole test phase, divided by the distinct items in
// the ratings.

import Foundation
import PerennialCore

public struct E5Result: Sendable {
    public var scorer: String
    public var hits = 0
    public var count = 0
    public var covered = 0
    public var catalogue = 0
    public var seconds = 0.0
    public var recall: Double { count == 0 ? 0 : Double(hits) / Double(count) }
    public var coverage: Double { catalogue == 0 ? 0 : Double(covered) / Double(catalogue) }
    public var json: [String: Any] {
        ["recall100": rounded(recall), "coverage": rounded(coverage), "count": count, "seconds": rounded(seconds)]
    }
}

public struct E5: Sendable {
    public let data: MovieLensData
    public let setup: EvalSetup
    public var positiveThreshold: Float = 4
    public var candidates = 100

    public init(data: MovieLensData, setup: EvalSetup) {
        self.data = data
        self.setup = setup
    }

    /// `scorer` is a scorer's name or a route's.
    public func run(scorer: String, model makeModel: () throws -> Model) throws -> E5Result {
        let t0 = Date()
        let model = try makeModel()
        let n = data.ratings.count, warmup = n / 2
        var scratch: [LearnEvent] = []
        for r in data.ratings[0..<warmup] { model.feed(r, learn: true, scratch: &scratch) }
        var result = E5Result(scorer: scorer)
        var seen = Set<UInt64>()
        // Evaluated as E1 decides it, from the stream (a user and an item
        // seen before), whatever the model's id settings: an item the model
        // does not hold is a miss (review finding, helper-53).
        var users = Set(data.ratings[0..<warmup].map(\.user)), items = Set(data.ratings[0..<warmup].map(\.item))
        for r in data.ratings[warmup..<n] {
            if r.rating >= positiveThreshold, users.contains(r.user), items.contains(r.item) {
                let recs = try model.recommend(user: r.user, k: candidates, scorer: scorer)
                result.count += 1
                if recs.contains(where: { $0.item == r.item }) { result.hits += 1 }
                for c in recs { seen.insert(c.item) }
            }
            users.insert(r.user)
            items.insert(r.item)
            model.feed(r, learn: true, scratch: &scratch)
        }
        result.covered = seen.count
        result.catalogue = Set(data.ratings.map(\.item)).count
        result.seconds = Date().timeIntervalSince(t0)
        return result
    }
}
