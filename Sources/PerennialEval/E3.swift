// E3 — cold-start items from their text (EVALUATION.md): items with at least
// 5 events are candidates; floor(10%) of them become cold (the smallest
// (movieId * 2654435761) mod 2^32, ties by movieId). Every event on a cold
// item is removed from training; the model sees only their text. For every
// positive event on a cold item, from any user, rank that item among all
// cold items (no exclusions). Baselines computed here: random ranking and
// the TF-IDF profile (the user's positive training items' L2-normalised
// TF-IDF vectors summed, cold items scored by cosine).

import Foundation
import PerennialCore

public struct E3: Sendable {
    public let data: MovieLensData
    public let setup: EvalSetup
    public var positiveThreshold: Float = 4

    public init(data: MovieLensData, setup: EvalSetup) {
        self.data = data
        self.setup = setup
    }

    /// The cold items, in id order.
    public var coldItems: [UInt64] {
        var counts: [UInt64: Int] = [:]
        for r in data.ratings { counts[r.item, default: 0] += 1 }
        let candidates = counts.filter { $0.value >= 5 }.map(\.key)
        let hash = { (id: UInt64) in (id &* 2_654_435_761) & 0xFFFF_FFFF }
        let cold = candidates.sorted { (hash($0), $0) < (hash($1), $1) }.prefix(candidates.count / 10)
        return cold.sorted()
    }

    struct Split {
        var cold: [UInt64]
        var train: [Rating]
        var evaluated: [Rating]
    }

    func split() -> Split {
        let cold = coldItems
        let coldSet = Set(cold)
        var s = Split(cold: cold, train: [], evaluated: [])
        for r in data.ratings {
            if !coldSet.contains(r.item) {
                s.train.append(r)
            } else if r.rating >= positiveThreshold {
                s.evaluated.append(r)
            }
        }
        return s
    }

    /// The scorer, fed every item's text first (as `perennial replay` does),
    /// then fitted on the training events; each evaluated event ranks its
    /// item among the cold items.
    public func run(scorer: String) throws -> TopKRunResult {
        let t0 = Date()
        let s = split()
        let model = try setup.makeModel(scorer: scorer)
        for (item, text) in data.itemTexts { _ = model.upsertItem(id: item, text: text, attributes: []) }
        try model.fit(s.train, scorer: scorer)
        var result = TopKRunResult(scorer: scorer)
        for r in s.evaluated {
            let recs = try model.recommend(user: r.user, k: 10, scorer: scorer, candidates: s.cold)
            result.total.record(rank: recs.firstIndex { $0.item == r.item }.map { $0 + 1 })
        }
        result.seconds = Date().timeIntervalSince(t0)
        return result
    }

    /// Random ranking (seeded, so the figure is reproducible) and the TF-IDF
    /// profile baseline.
    public func baselines() -> [TopKRunResult] {
        let t0 = Date()
        let s = split()
        var random = TopKRunResult(scorer: "random")
        var rng = SplitMix64(seed: 3)
        for r in s.evaluated {
            var order = s.cold
            for k in 0..<min(10, order.count) { order.swapAt(k, k + rng.below(order.count - k)) }
            random.total.record(rank: rank(of: r.item, in: order))
        }
        random.seconds = Date().timeIntervalSince(t0)

        let t1 = Date()
        let tfidf = TFIDF(documents: data.itemTexts)
        var profiles: [UInt64: [Int: Float]] = [:]
        for r in s.train where r.rating >= positiveThreshold {
            guard let v = tfidf.vectors[r.item] else { continue }
            profiles[r.user, default: [:]].merge(v, uniquingKeysWith: +)
        }
        let coldVectors = s.cold.map { tfidf.vectors[$0] ?? [:] }
        var profileResult = TopKRunResult(scorer: "tfidf")
        for r in s.evaluated {
            let p = profiles[r.user] ?? [:]
            // Cosine up to the profile's norm, which is the same for every
            // cold item (item vectors are unit length); ties by item id.
            let scores = coldVectors.map { v in v.reduce(Float(0)) { $0 + $1.value * (p[$1.key] ?? 0) } }
            let order = s.cold.indices.sorted { (scores[$0], s.cold[$1]) > (scores[$1], s.cold[$0]) }.map { s.cold[$0] }
            profileResult.total.record(rank: rank(of: r.item, in: order))
        }
        profileResult.seconds = Date().timeIntervalSince(t1)
        return [profileResult, random]
    }
}

/// TF-IDF vectors of item texts: lower-cased word tokens (runs of two or
/// more letters or digits), smooth idf = ln((1 + n) / (1 + df)) + 1, each
/// vector L2-normalised.
struct TFIDF {
    var vectors: [UInt64: [Int: Float]] = [:]

    static func tokens(_ text: String) -> [String] {
        var out: [String] = []
        var word = ""
        for ch in text.lowercased() {
            if ch.isLetter || ch.isNumber || ch == "_" { word.append(ch) } else {
                if word.count >= 2 { out.append(word) }
                word = ""
            }
        }
        if word.count >= 2 { out.append(word) }
        return out
    }

    init(documents: [(item: UInt64, text: String)]) {
        var vocabulary: [String: Int] = [:]
        var termCounts: [(UInt64, [Int: Int])] = []
        var df: [Int: Int] = [:]
        for (item, text) in documents {
            var tf: [Int: Int] = [:]
            for t in Self.tokens(text) {
                let id = vocabulary[t] ?? { let n = vocabulary.count; vocabulary[t] = n; return n }()
                tf[id, default: 0] += 1
            }
            for id in tf.keys { df[id, default: 0] += 1 }
            termCounts.append((item, tf))
        }
        let n = Double(documents.count)
        for (item, tf) in termCounts {
            var v: [Int: Float] = [:]
            var norm = 0.0
            for (id, c) in tf {
                let w = Double(c) * (log((1 + n) / (1 + Double(df[id]!))) + 1)
                v[id] = Float(w)
                norm += w * w
            }
            let inv = norm > 0 ? Float(1 / norm.squareRoot()) : 0
            for k in v.keys { v[k]! *= inv }
            vectors[item] = v
        }
    }
}
