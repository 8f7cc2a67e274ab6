import Testing
import PerennialPlugins
@testable import PerennialCore

/// Experience replay's reservoir, anchored learning and the meta-learned start.
@Suite struct LifelongTests {
    func event(_ k: Int, user: Int32 = 0, item: Int32 = 0) -> LearnEvent {
        LearnEvent(seq: UInt64(k + 1), user: user, item: item, kind: .click, value: 1, timestamp: Int64(k))
    }

    @Test func reservoirKeepsAUniformSample() {
        // 10,000 events through a 100-slot reservoir, 400 times: each tenth
        // of the stream should hold a tenth of the slots (10 per trial).
        var perTenth = [Int](repeating: 0, count: 10)
        for trial in 0..<400 {
            var b = ReplayBuffer(capacity: 100, seed: UInt64(trial))
            for k in 0..<10_000 { b.offer(event(k)) }
            #expect(b.events.count == 100)
            for e in b.events { perTenth[Int(e.seq - 1) / 1000] += 1 }
        }
        for n in perTenth { #expect(abs(n - 4000) < 400, "tenths \(perTenth)") }
        // Draws are uniform over the held events.
        var b = ReplayBuffer(capacity: 10, seed: 1)
        for k in 0..<10 { b.offer(event(k)) }
        var drawn = [Int](repeating: 0, count: 10)
        for _ in 0..<20_000 { drawn[Int(b.draw()!.seq - 1)] += 1 }
        for n in drawn { #expect(abs(n - 2000) < 250) }
    }

    @Test func reservoirMemoryIsBounded() {
        var b = ReplayBuffer(capacity: 1000, seed: 3)
        for k in 0..<1000 { b.offer(event(k)) }
        let bytes = b.bytes
        for k in 1000..<1_000_000 { b.offer(event(k)) }
        #expect(b.events.count == 1000 && b.bytes == bytes && b.seen == 1_000_000)
    }

    @Test func reservoirSurvivesASnapshotAndAShrink() throws {
        var b = ReplayBuffer(capacity: 50, seed: 9)
        for k in 0..<500 { b.offer(event(k, user: Int32(k % 7), item: Int32(k % 11))) }
        var w = SnapshotWriter()
        b.save(to: &w)
        var same = ReplayBuffer(capacity: 50, seed: 0)
        var r = SnapshotReader(bytes: w.bytes)
        try same.load(from: &r)
        #expect(same.events == b.events && same.seen == b.seen)
        #expect(same.draw() == b.draw())
        var smaller = ReplayBuffer(capacity: 20, seed: 0)
        r = SnapshotReader(bytes: w.bytes)
        try smaller.load(from: &r)
        #expect(smaller.events.count == 20 && smaller.events.allSatisfy { b.events.contains($0) })
    }

    func model(_ set: (inout ConfigDocument) -> Void) throws -> Model {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array([.string("cf")]))
        set(&doc)
        return Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
    }

    func feed(_ m: Model, users: Range<Int>, items: Range<Int>, events: Int, seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var out: [LearnEvent] = []
        for k in 0..<events {
            out.removeAll()
            let e = IncomingEvent(user: UInt64(users.lowerBound + rng.below(users.count)), item: UInt64(items.lowerBound + rng.below(items.count)),
                                  kind: .click, value: 1, timestamp: Int64(k + 1))
            m.admit(CollectionOfOne(e), now: 0, into: &out)
            for l in out { m.learn(l) }
        }
    }

    func plain(_ d: inout ConfigDocument) {
        d.set("lifelong.replay", .integer(0))
        d.set("lifelong.anchor_strength", .float(0))
        d.set("lifelong.meta_start", .bool(false))
    }

    @Test func anchoringWithStrengthZeroIsThePlainUpdate() throws {
        let a = try model(plain)
        let b = try model { d in plain(&d); d.set("lifelong.anchor_rate", .float(0.5)) }
        feed(a, users: 1..<30, items: 1..<50, events: 3000, seed: 5)
        feed(b, users: 1..<30, items: 1..<50, events: 3000, seed: 5)
        for u in 1..<30 {
            #expect(try a.recommend(user: UInt64(u), k: 10) == b.recommend(user: UInt64(u), k: 10))
        }
        for i in 0..<49 {
            let ra = a.table.item(Int32(i)), rb = b.table.item(Int32(i))
            #expect((0..<a.table.dimension).allSatisfy { ra[$0] == rb[$0] })
        }
    }

    @Test func anchoringKeepsRowsNearWhatTheyLearned() throws {
        // Learn items 1..<40 from users 1..<30, then a burst on the same
        // items from other users: anchored rows move less.
        func drift(strength: Double) throws -> Float {
            let m = try model { d in plain(&d); d.set("lifelong.anchor_strength", .float(strength)); d.set("lifelong.anchor_rate", .float(0.001)) }
            feed(m, users: 1..<30, items: 1..<40, events: 6000, seed: 11)
            let dim = m.table.dimension
            let before = (0..<39).map { i in (0..<dim).map { m.table.item(Int32(i))[$0] } }
            feed(m, users: 100..<130, items: 1..<40, events: 6000, seed: 12)
            var moved: Float = 0
            for i in 0..<39 { for k in 0..<dim { let x = m.table.item(Int32(i))[k] - before[i][k]; moved += x * x } }
            return moved.squareRoot()
        }
        let free = try drift(strength: 0), anchored = try drift(strength: 1)
        #expect(anchored < free * 0.8, "anchored \(anchored) free \(free)")
    }

    @Test func metaStartLearnsTheAdaptedUsersMean() throws {
        let m = try model { d in plain(&d); d.set("lifelong.meta_start", .bool(true)); d.set("lifelong.meta_events", .integer(3)) }
        // 200 users with 3 events each on a small catalogue.
        var out: [LearnEvent] = []
        var k = 0
        for u in 1...200 {
            for j in 0..<3 {
                out.removeAll()
                k += 1
                m.admit(CollectionOfOne(IncomingEvent(user: UInt64(u), item: UInt64(1 + (u + j) % 20), kind: .click, value: 1, timestamp: Int64(k))),
                        now: 0, into: &out)
                for l in out { m.learn(l) }
            }
        }
        let meta = try #require(m.table.meta)
        #expect(meta.adapted == 200 && meta.started == 199)
        // θ is close to the mean adapted row (rate 0.01 after the first
        // hundred, so a running mean weighted toward later users).
        let dim = m.table.dimension
        var mean = [Float](repeating: 0, count: dim)
        for u in 0..<200 { for c in 0..<dim { mean[c] += m.table.user(Int32(u))[c] / 200 } }
        var err: Float = 0, norm: Float = 0
        for c in 0..<dim { err += (meta.start[c] - mean[c]) * (meta.start[c] - mean[c]); norm += mean[c] * mean[c] }
        #expect(norm > 0 && err.squareRoot() < 0.5 * norm.squareRoot(), "err \(err) norm \(norm)")
        // A new user starts from θ (plus their own small noise).
        out.removeAll()
        m.admit(CollectionOfOne(IncomingEvent(user: 9999, item: 1, kind: .click, value: 1, timestamp: Int64(k + 1))), now: 0, into: &out)
        let u = out[0].user
        let noise = (0..<dim).map { m.table.user(u)[$0] }
        m.table.meta!.willLearn(user: u, table: m.table)
        for c in 0..<dim { #expect(abs(m.table.user(u)[c] - (noise[c] + meta.start[c])) < 1e-6) }
        #expect(m.table.userStepScale(u) != nil)
        #expect(m.table.userStepScale(0) == nil)
    }
}
