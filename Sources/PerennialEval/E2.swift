// E2 — leave-last-out top-10 (EVALUATION.md): for each user the target is
// their latest positive event in stream order; train on every other event;
// rank among all items that occur in training, excluding the user's
// training items; a target absent from training is a miss.

import Foundation
import PerennialCore

public struct E2: Sendable {
    public let data: MovieLensData
    public let setup: EvalSetup
    public var positiveThreshold: Float = 4

    public init(data: MovieLensData, setup: EvalSetup) {
        self.data = data
        self.setup = setup
    }

    public func run(scorer: String) throws -> TopKRunResult {
        let t0 = Date()
        var target: [UInt64: Int] = [:]
        for (idx, r) in data.ratings.enumerated() where r.rating >= positiveThreshold { target[r.user] = idx }
        let held = Set(target.values)
        let model = try setup.makeModel(scorer: scorer)
        try model.fit(data.ratings.indices.lazy.filter { !held.contains($0) }.map { data.ratings[$0] }, scorer: scorer)
        var result = TopKRunResult(scorer: scorer)
        for (user, idx) in target.sorted(by: { $0.key < $1.key }) {
            let item = data.ratings[idx].item
            guard model.items.index(of: item) != nil else {
                result.total.record(rank: nil)
                continue
            }
            result.total.record(rank: model.rankOf(item, user: user))
        }
        result.seconds = Date().timeIntervalSince(t0)
        return result
    }
}
