import Foundation
import ScratchDirectory
import Testing
@testable import PerennialCore
@testable import PerennialEval
import PerennialPlugins

/// The lifelong-learning evaluation tools: a version's figures on the log
/// after it, the drift and churn scenarios, and the SVG curve.
@Suite struct EvaluationToolsTests {
    func model() throws -> Model {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array([.string("cf"), .string("popularity")]))
        return Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
    }

    func stream(_ n: Int) -> [IncomingEvent] {
        var rng = SplitMix64(seed: 31)
        return (0..<n).map { k in
            IncomingEvent(user: UInt64(rng.below(40) + 1), item: UInt64(rng.below(70) + 1), kind: .rating,
                          value: Float(rng.below(5) + 1), timestamp: Int64(k + 1))
        }
    }

    /// Serves `events` in batches of 100 through `live` with a real log,
    /// saving a version after batch `versionAfter`: the log's directory,
    /// the segment after the version, and the version's snapshot.
    func serveWithLog(_ events: [IncomingEvent], into live: Model, versionAfter: Int) throws -> (dir: String, segment: Int, snapshot: [UInt8]) {
        let dir = ScratchDirectory.path("versions")
        let log = FeedbackLog(directory: dir, policy: .no)
        try log.openForAppend(lastSeq: 0)
        var scratch: [LearnEvent] = []
        var snapshot: [UInt8] = []
        var segment = 0
        for (k, batch) in stride(from: 0, to: events.count, by: 100).map({ Array(events[$0..<($0 + 100)]) }).enumerated() {
            try log.append(.feedback(firstSeq: live.lastSeq + 1, events: batch), lastSeq: live.lastSeq + 100)
            scratch.removeAll()
            live.admit(batch, now: 0, into: &scratch)
            for e in scratch { live.learn(e) }
            if k == versionAfter {
                segment = try log.rollSegment()
                var w = SnapshotWriter()
                live.save(to: &w)
                snapshot = w.bytes
            }
        }
        log.close()
        return (dir, segment, snapshot)
    }

    @Test func aVersionIsScoredOnTheLogAfterIt() throws {
        let events = stream(3000)
        let live = try model()
        // The version: after 1,500 events.
        let (dir, segment, snapshot) = try serveWithLog(events, into: live, versionAfter: 14)
        var scratch: [LearnEvent] = []
        // The same figures by hand: the version's model scores, then learns,
        // each later event under E1's rule.
        func restored() throws -> Model {
            let m = try model()
            var r = SnapshotReader(bytes: snapshot)
            try m.restore(from: &r)
            return m
        }
        let byHand = try restored()
        var expected = TopKTally()
        for e in events[1500...] {
            if e.value >= 4 && byHand.users.index(of: e.user) != nil && byHand.items.index(of: e.item) != nil {
                expected.record(rank: byHand.rankOf(e.item, user: e.user, scorer: "cf"))
            }
            scratch.removeAll()
            byHand.admit(CollectionOfOne(e), now: 0, into: &scratch)
            for l in scratch { byHand.learn(l) }
        }
        let figures = try VersionEvaluation.run(model: try restored(), logDirectory: dir, fromSegment: segment, scorer: "cf")
        #expect(figures.events == 1500)
        #expect(figures.total == expected && expected.count > 300)
        let limited = try VersionEvaluation.run(model: try restored(), logDirectory: dir, fromSegment: segment, scorer: "cf", limit: 200)
        #expect(limited.events == 200)
    }

    /// With id expiry on, a version's evaluation forgets what the server
    /// forgot: expiry runs at each logged batch's start, not at each event
    /// (review finding: it admitted one event at a time), so the evaluated
    /// model ends exactly as the live one.
    @Test func aVersionsEvaluationExpiresIdsAsTheServerDid() throws {
        func model() throws -> Model {
            var doc = ConfigDocument(file: "test")
            doc.set("scorers.load", .array([.string("cf"), .string("popularity")]))
            doc.set("lifelong.item_expire_after_seconds", .integer(100))
            doc.set("lifelong.expire_after_seconds", .integer(150))
            return Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
        }
        // Items 1-70, but each tenth of the stream shifts to a new set.
        var rng = SplitMix64(seed: 8)
        let events = (0..<3000).map { k in
            IncomingEvent(user: UInt64(rng.below(40) + 1 + (k / 600) * 20), item: UInt64(rng.below(70) + 1 + (k / 300) * 20),
                          kind: .click, value: 1, timestamp: Int64(k + 1))
        }
        let live = try model()
        let (dir, segment, snapshot) = try serveWithLog(events, into: live, versionAfter: 9)
        #expect(live.itemLifecycle.expired > 100 && live.lifecycle.expired > 20)
        let evaluated = try model()
        var r = SnapshotReader(bytes: snapshot)
        try evaluated.restore(from: &r)
        let figures = try VersionEvaluation.run(model: evaluated, logDirectory: dir, fromSegment: segment, scorer: "cf")
        #expect(figures.events == 2000 && figures.total.count > 100)
        var a = SnapshotWriter(), b = SnapshotWriter()
        live.save(to: &a)
        evaluated.save(to: &b)
        // (Compared first: a failed #expect on the arrays themselves would
        // spend minutes diffing hundreds of kilobytes for its message.)
        let identical = a.bytes == b.bytes
        #expect(identical, "the snapshots differ (\(a.bytes.count) and \(b.bytes.count) bytes)")
        #expect(evaluated.itemLifecycle.expired == live.itemLifecycle.expired && evaluated.lifecycle.expired == live.lifecycle.expired)
    }

    /// The paired bootstrap over users: equal variants differ by exactly 0;
    /// one that hits more for every user is ahead with an interval above 0;
    /// one user's large swing among many equal ones gives an interval
    /// around 0 that contains the observed difference.
    @Test func pairedComparisonOverUsers() {
        func tally(_ hits: Int, _ count: Int) -> TopKTally {
            var t = TopKTally()
            for k in 0..<count { t.record(rank: k < hits ? 1 : nil) }
            return t
        }
        var a: [UInt64: TopKTally] = [:], b: [UInt64: TopKTally] = [:]
        for u in UInt64(1)...40 { a[u] = tally(Int(u % 5), 10); b[u] = tally(Int(u % 5), 10) }
        let same = PairedComparison.compare(a, b)
        #expect(same.difference == 0 && same.low == 0 && same.high == 0 && same.users == 40)
        var better = a
        for u in UInt64(1)...40 { better[u] = tally(Int(u % 5) + 2, 10) }
        let ahead = PairedComparison.compare(better, b)
        #expect(abs(ahead.difference - 0.2) < 1e-12 && ahead.low > 0.15)
        var swing = a
        swing[1] = tally(10, 10)
        let one = PairedComparison.compare(swing, b)
        #expect(one.difference > 0 && one.low <= 0 && one.high >= one.difference)
        // The ratio form: equal variants are 1 x exactly; twice the hits, 2 x.
        let r1 = PairedComparison.ratio(a, b)
        #expect(r1.difference == 1 && r1.low == 1 && r1.high == 1)
        var twice = b
        for u in UInt64(1)...40 { twice[u] = tally(2 * Int(u % 5), 10) }
        let r2 = PairedComparison.ratio(twice, b)
        #expect(r2.difference == 2 && r2.low == 2 && r2.high == 2)
    }

    @Test func theDriftStreamHasItsDocumentedShape() {
        var sc = DriftScenario()
        sc.events = 12_000
        let data = sc.stream()
        #expect(data.ratings == sc.stream().ratings)  // seeded
        #expect(data.ratings.count == 12_000)
        // The share of events in the cluster the user's group likes now.
        func share(_ range: Range<Int>, shift: Int) -> Double {
            var inCluster = 0
            for r in data.ratings[range] {
                let group = Int(r.user - 1) % sc.groups, cluster = Int(r.item - 1) / sc.itemsPerCluster
                if cluster == (group + shift) % sc.groups { inCluster += 1 }
            }
            return Double(inCluster) / Double(range.count)
        }
        #expect(share(0..<sc.changeAt, shift: 0) > 0.85)
        #expect(share(sc.changeAt..<sc.returnAt, shift: 1) > 0.85)
        #expect(share(sc.returnAt..<sc.events, shift: 0) > 0.85)
        // Nobody gets an item twice.
        #expect(Set(data.ratings.map { "\($0.user)-\($0.item)" }).count == data.ratings.count)
    }

    /// The churn scenario: a catalogue that turns over; with item expiry
    /// the model holds about the recent articles, scores the same events,
    /// and counts a forgotten article as a miss.
    @Test func churnScenarioWithAndWithoutExpiry() throws {
        var sc = ChurnScenario()
        sc.events = 20_000
        sc.days = 12
        sc.users = 400
        let churn = Churn(scenario: sc, setup: EvalSetup(config: try PerennialConfig.defaults(registry: .builtin)))
        #expect(churn.data.ratings.count == 20_000 && churn.data.ratings == sc.stream().ratings)
        #expect(zip(churn.data.ratings, churn.data.ratings.dropFirst()).allSatisfy { $0.timestamp <= $1.timestamp })
        let off = try churn.run(scorer: "cf", expireAfter: 0)
        let day = try churn.run(scorer: "cf", expireAfter: 86_400)
        #expect(off.total.count == day.total.count && off.total.count > 12_000)
        #expect(off.forgotten == 0 && day.forgotten > 0)
        // The articles read in the last day or so (up to five days old),
        // against every article ever read: 817 and 891 rows, 4,565 rows.
        #expect(day.liveItems < 1000 && day.itemRows < 1100 && off.itemRows > 4 * day.itemRows)
        #expect(off.total.hr > 0.02 && day.total.hr > 0.02)
    }

    @Test func driftFiguresFromWindows() {
        func window(_ hr: Double) -> TopKTally {
            var t = TopKTally()
            for k in 0..<100 { t.record(rank: Double(k) < hr * 100 ? 1 : nil) }
            return t
        }
        // Windows of 10 events; change at 40, return at 70.
        let hrs = [0.5, 0.5, 0.4, 0.4, 0.1, 0.2, 0.45, 0.5, 0.1, 0.3]
        let r = DriftResult(variant: .online, windows: hrs.map(window), window: 10, changeAt: 40, returnAt: 70)
        #expect(abs(r.beforeChange - 0.4333) < 0.001)  // windows 1-3
        #expect(r.recoveryEvents == 30)  // 90% of 0.433 is 0.39: first reached by window 6 (events 60-69)
        #expect(abs(r.onReturn.hr - (0.5 + 0.1 + 0.3) / 3) < 0.001)
        // Recovery only counts before the return (window 7 is after it).
        let never = DriftResult(variant: .online, windows: [0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.5].map(window), window: 10,
                                changeAt: 40, returnAt: 70)
        #expect(never.recoveryEvents == nil)
    }

    @Test func theCurveDrawsEverySeries() {
        let plot = CurvePlot(title: "t <&>", xLabel: "x", yLabel: "y",
                             series: [.init(name: "a", values: [0.1, 0.2, 0.15]), .init(name: "b", values: [0.05, 0.07, 0.06])])
        let svg = plot.svg
        #expect(svg.hasPrefix("<svg") && svg.hasSuffix("</svg>\n"))
        #expect(svg.components(separatedBy: "<polyline").count == 3)
        #expect(svg.contains(">a<") && svg.contains(">b<") && svg.contains("t &lt;&amp;&gt;"))
    }
}
