// Kinds of implicit feedback teach by their configured weight (`[feedback]`):
// a shop's purchase must move every learned scorer differently from a view
// (review finding, helper-56: every kind and every sent weight was learned
// alike by all but popularity), and a huge sent weight is capped.

import Testing
@testable import PerennialCore
import PerennialPlugins

@Suite struct FeedbackWeightTests {
    static let scorers = ["cf", "popularity", "text-cnn", "session-rnn", "gan"]

    /// Scores of user 7 over items 1...40 by every scorer, after a planted
    /// stream of clicks, then `variant` from user 7 on item 13, then more clicks.
    func scores(after variant: IncomingEvent, settings: [String: ConfigValue] = [:]) throws -> [String: [Float]] {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array(Self.scorers.map { .string($0) }))
        for (k, v) in settings { doc.set(k, v) }
        let m = Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
        for i in 1...40 { _ = m.upsertItem(id: UInt64(i), text: "item \(i) of group \(i % 4)", attributes: []) }
        var rng = SplitMix64(seed: 5)
        var out: [LearnEvent] = []
        func send(_ e: IncomingEvent) {
            out.removeAll()
            m.admit(CollectionOfOne(e), now: 0, into: &out)
            for l in out { m.learn(l) }
        }
        for k in 0..<1000 {
            let user = UInt64(rng.below(30) + 1)
            send(IncomingEvent(user: user, item: UInt64(Int(user % 4) + 4 * rng.below(10) + 1), kind: .click, value: 0, timestamp: Int64(k + 1)))
        }
        send(variant)
        for k in 0..<100 {
            send(IncomingEvent(user: UInt64(rng.below(30) + 1), item: UInt64(rng.below(40) + 1), kind: .click, value: 0, timestamp: Int64(k + 4000)))
        }
        var result: [String: [Float]] = [:]
        for s in Self.scorers { result[s] = try m.score(user: 7, items: (1...40).map { UInt64($0) }, scorer: s).map(\.score) }
        return result
    }

    func event(_ kind: FeedbackKind, _ value: Float) -> IncomingEvent {
        IncomingEvent(user: 7, item: 13, kind: kind, value: value, timestamp: 3500)
    }

    @Test func aPurchaseTeachesEveryScorerMoreThanAView() throws {
        let view = try scores(after: event(.view, 0)), purchase = try scores(after: event(.purchase, 0))
        for s in Self.scorers { #expect(view[s] != purchase[s], "scorer \(s) learned a view and a purchase alike") }
        // Popularity counts the weights: a purchase 2, a view 0.5 (the defaults).
        let i = 12  // item 13
        #expect(purchase["popularity"]![i] - view["popularity"]![i] == 1.5)
    }

    @Test func aSentWeightScalesTheEventUpToTheCap() throws {
        // purchase (2) x 5 is the cap (10): a larger sent weight changes nothing more.
        let five = try scores(after: event(.purchase, 5)), huge = try scores(after: event(.purchase, 1000))
        let one = try scores(after: event(.purchase, 1))
        for s in Self.scorers {
            #expect(five[s] == huge[s], "scorer \(s): the capped weight differs")
            #expect(five[s] != one[s], "scorer \(s): the sent weight was ignored")
        }
    }

    @Test func configuredWeights() throws {
        var w = FeedbackWeights()
        #expect(w.learnedValue(.view, value: 0) == 0.5)
        #expect(w.learnedValue(.click, value: 3) == 3)
        #expect(w.learnedValue(.purchase, value: 1000) == 10)
        #expect(w.learnedValue(.rating, value: 4.5) == 4.5)
        w.viewWeight = 0
        #expect(!w.isPositive(.view, value: 1) && w.isPositive(.purchase, value: 0) && !w.isPositive(.rating, value: 3.5))
        var doc = ConfigDocument(file: "test")
        doc.set("feedback.view_weight", .float(-1))
        #expect { try PerennialConfig.load(doc, registry: .builtin) } throws: { "\($0)".contains("feedback.view_weight") }
    }
}
