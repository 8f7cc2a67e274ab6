import Testing
@testable import CollaborativeFiltering
@testable import PerennialCore
import PerennialPlugins

/// A planted structure: two groups of users, each liking its own group of
/// items. After online learning, a new user who touched a few items of one
/// group is recommended that group's items.
@Suite struct CollaborativeFilteringTests {
    func plantedModel(events: Int) throws -> Model {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array([.string("cf")]))
        let config = try PerennialConfig.load(doc, registry: .builtin)
        let model = Model(config: config, registry: .builtin)
        var rng = SplitMix64(seed: 11)
        var out: [LearnEvent] = []
        for _ in 0..<events {
            let user = UInt64(rng.below(200) + 1)
            let group = user % 2
            // Items 1...50 belong to group 0, 51...100 to group 1; 10% noise.
            let own = rng.below(10) != 0
            let item = UInt64((own ? Int(group) : 1 - Int(group)) * 50 + rng.below(50) + 1)
            out.removeAll()
            model.admit(CollectionOfOne(IncomingEvent(user: user, item: item, kind: .click, value: 0, timestamp: 0)), now: 0, into: &out)
            for e in out { model.learn(e) }
        }
        return model
    }

    @Test func newUserMovesTowardThePlantedGroup() throws {
        let model = try plantedModel(events: 8000)
        var out: [LearnEvent] = []
        // User 1000 clicks three items of group 1.
        for item: UInt64 in [60, 70, 80] {
            out.removeAll()
            model.admit(CollectionOfOne(IncomingEvent(user: 1000, item: item, kind: .click, value: 0, timestamp: 0)), now: 0, into: &out)
            for e in out { model.learn(e) }
        }
        let recs = try model.recommend(user: 1000, k: 10)
        let inGroup = recs.filter { $0.item > 50 && $0.item <= 100 }.count
        #expect(recs.count == 10)
        #expect(inGroup >= 9, "only \(inGroup) of 10 from the planted group: \(recs.map(\.item))")
        #expect(!recs.contains { [60, 70, 80].contains($0.item) })
    }

    @Test func ratingHeadPredictsWithinTheSeenRange() throws {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array([.string("cf")]))
        let model = Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
        var out: [LearnEvent] = []
        for u in 1...50 {
            for i in 1...20 {
                model.admit(CollectionOfOne(IncomingEvent(user: UInt64(u), item: UInt64(i), kind: .rating,
                                                          value: i <= 10 ? 5 : 1, timestamp: 0)), now: 0, into: &out)
            }
        }
        for e in out { model.learn(e) }
        let cf = try model.scorer(named: "cf")
        let high = cf.predictRating(user: 0, item: 2)!, low = cf.predictRating(user: 0, item: 15)!
        #expect(high - low > 2, "high \(high) low \(low)")
        #expect((1...5).contains(high) && (1...5).contains(low))
    }
}
