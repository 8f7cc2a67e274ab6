// Top-10 metrics as EVALUATION.md defines them: HR@10 is the share of
// evaluated events whose target is in the returned 10; NDCG@10 the mean of
// 1/log2(rank + 1) over hits (rank from 1), 0 otherwise.

import Foundation

public struct TopKTally: Sendable, Codable, Equatable {
    public var hits = 0
    public var ndcgSum = 0.0
    public var count = 0

    public init() {}

    /// Records one evaluated event whose target was at `rank` (1-based) or
    /// missed (nil).
    public mutating func record(rank: Int?) {
        count += 1
        if let rank {
            hits += 1
            ndcgSum += 1 / log2(Double(rank) + 1)
        }
    }

    public var hr: Double { count == 0 ? 0 : Double(hits) / Double(count) }
    public var ndcg: Double { count == 0 ? 0 : ndcgSum / Double(count) }

    public var json: [String: Any] { ["hr10": rounded(hr), "ndcg10": rounded(ndcg), "count": count] }
}

/// One scorer's (or baseline's) result in a static top-10 protocol (E2, E3, E4).
public struct TopKRunResult: Sendable {
    public var scorer: String
    public var total = TopKTally()
    public var seconds = 0.0
    public init(scorer: String) { self.scorer = scorer }
    public var json: [String: Any] { var j = total.json; j["seconds"] = rounded(seconds); return j }
}

/// Squared-error tally for prequential RMSE.
public struct ErrorTally: Sendable, Equatable {
    public var sum = 0.0
    public var count = 0
    public init() {}
    public mutating func record(predicted: Float, actual: Float) {
        let e = Double(predicted) - Double(actual)
        sum += e * e
        count += 1
    }
    public var rmse: Double { count == 0 ? .nan : (sum / Double(count)).squareRoot() }
}

func rounded(_ x: Double) -> Double { (x * 1_000_000).rounded() / 1_000_000 }
