// The neural scorers through a snapshot: saved mid-stream, restored, and fed
// the rest of the stream, they score exactly as a model that never stopped
// (weights, optimiser state, pending minibatches and RNGs all saved).

import Foundation
import Testing
@testable import PerennialCore
import PerennialPlugins

@Suite struct NeuralSnapshotTests {
    let scorers = ["text-cnn", "session-rnn", "gan"]

    func model() throws -> Model {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array(scorers.map { .string($0) }))
        doc.set("scorers.text-cnn.batch", .integer(16))
        doc.set("scorers.session-rnn.negatives", .integer(16))
        return Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
    }

    func feed(_ m: Model, _ range: Range<Int>) {
        if range.lowerBound == 0 {
            for i in 1...90 { _ = m.upsertItem(id: UInt64(i), text: "word\(i % 7) tag\(i % 5) item \(i)", attributes: []) }
        }
        var rng = SplitMix64(seed: 91)
        var out: [LearnEvent] = []
        for k in 0..<range.upperBound {
            let e = IncomingEvent(user: UInt64(rng.below(40) + 1), item: UInt64(rng.below(90) + 1), kind: .click, value: 0, timestamp: Int64(k))
            guard range.contains(k) else { continue }
            out.removeAll()
            m.admit(CollectionOfOne(e), now: 0, into: &out)
            for l in out { m.learn(l) }
        }
    }

    @Test func restoreThenLearnEqualsNeverStopping() throws {
        let straight = try model()
        feed(straight, 0..<1200)
        let first = try model()
        feed(first, 0..<700)
        var w = SnapshotWriter()
        first.save(to: &w)
        var r = SnapshotReader(bytes: w.bytes)
        let restored = try model()
        try restored.restore(from: &r)
        feed(restored, 700..<1200)
        for user: UInt64 in [1, 9, 33] {
            for scorer in scorers {
                let a = try straight.score(user: user, items: (1...90).map { UInt64($0) }, scorer: scorer, session: [4, 5])
                let b = try restored.score(user: user, items: (1...90).map { UInt64($0) }, scorer: scorer, session: [4, 5])
                #expect(a.map(\.score) == b.map(\.score), "\(scorer) user \(user)")
                #expect(try straight.recommend(user: user, k: 10, scorer: scorer) == restored.recommend(user: user, k: 10, scorer: scorer))
            }
        }
    }
}

@Suite struct NeuralReloadTests {
    /// A reload that re-configures text-cnn keeps what it learned and the
    /// item texts (which live in the catalogue, not in its snapshot).
    @Test func reconfiguringTextCNNKeepsItsTexts() throws {
        func config(_ refresh: Int) throws -> PerennialConfig {
            var doc = ConfigDocument(file: "test")
            doc.set("scorers.load", .array([.string("text-cnn")]))
            doc.set("scorers.text-cnn.refresh_steps", .integer(refresh))
            return try PerennialConfig.load(doc, registry: .builtin)
        }
        let m = Model(config: try config(20), registry: .builtin)
        for i in 1...30 { _ = m.upsertItem(id: UInt64(i), text: "word\(i % 4) item", attributes: []) }
        var out: [LearnEvent] = []
        m.admit([IncomingEvent(user: 1, item: 3, kind: .click, value: 0, timestamp: 1)], now: 0, into: &out)
        for e in out { m.learn(e) }
        let before = try m.recommend(user: 1, k: 5, scorer: "text-cnn")
        let changes = try m.reconfigure(try config(21))
        #expect(changes.contains { $0.contains("text-cnn re-configured") })
        #expect(m.counters.first { $0.0 == "text_cnn_items_with_text" }?.1 == 30)
        #expect(try m.recommend(user: 1, k: 5, scorer: "text-cnn") == before)
    }
}
