import Testing
import PerennialPlugins
@testable import PerennialCore

/// The admission sketches halve their counts every `admission_window`
/// sightings (TinyLFU's reset), so a stream of one-off ids without end
/// never fills them and admission stays selective for the server's life.
@Suite struct AdmissionAgingTests {
    /// Four million one-off ids (61 windows, 15 times the sketch's width):
    /// without aging about nine in ten of the last million would look seen
    /// before and be admitted at their first sighting.
    @Test func aStreamOfOneOffIdsWithoutEndStaysSelective() {
        var filter = AdmissionFilter(minOccurrences: 2, window: 65_536)
        var admittedLastMillion = 0
        for k in 0..<4_000_000 where filter.admits(UInt64(1_000_000_000 + k)) {
            if k >= 3_000_000 { admittedLastMillion += 1 }
        }
        #expect(admittedLastMillion < 5_000, "one-off ids admitted in the last million: \(admittedLastMillion)")
        #expect(filter.sketchOccupancy < 0.35)
    }

    @Test func anIdSeenAgainWithinTheWindowIsAdmittedAndOneSeenLongAgoIsNot() {
        var filter = AdmissionFilter(minOccurrences: 2, window: 4096)
        var other: UInt64 = 1 << 40
        func others(_ n: Int) { for _ in 0..<n { _ = filter.admits(other); other += 1 } }
        // Seen, then again within the same window: admitted.
        var sightings: [Bool] = []
        sightings.append(filter.admits(7))
        others(1000)
        sightings.append(filter.admits(7))
        #expect(sightings == [false, true])
        // Seen, then again only after two halvings: its one sighting is gone.
        sightings = [filter.admits(8)]
        others(2 * 4096)
        sightings.append(filter.admits(8))
        sightings.append(filter.admits(8))
        #expect(sightings == [false, false, true])
        // A count of 2 toward 3 is halved to 1, not lost: after one halving
        // the id needs two more sightings, not three.
        var three = AdmissionFilter(minOccurrences: 3, window: 4096)
        sightings = [three.admits(9), three.admits(9)]
        for k in 0..<4096 { _ = three.admits(UInt64(1 << 41) + UInt64(k)) }
        sightings.append(three.admits(9))
        sightings.append(three.admits(9))
        #expect(sightings == [false, false, false, true])
    }

    /// The halvings fall at the same sightings after a snapshot: a sketch
    /// restored mid-window admits exactly as the one that went on.
    @Test func aRestoredSketchHalvesWhereTheLiveOneDoes() throws {
        var live = AdmissionFilter(minOccurrences: 2, window: 2048)
        var rng = SplitMix64(seed: 5)
        for _ in 0..<5_000 { _ = live.admits(rng.next() % 20_000) }
        var w = SnapshotWriter()
        live.saveSketch(to: &w)
        var restored = AdmissionFilter(minOccurrences: 2, window: 2048)
        var r = SnapshotReader(bytes: w.bytes)
        try restored.loadSketch(from: &r)
        var mismatches = 0
        for _ in 0..<10_000 {
            let id = rng.next() % 20_000
            if live.admits(id) != restored.admits(id) { mismatches += 1 }
        }
        #expect(mismatches == 0)
        // A format-4 snapshot (no window position) starts its window afresh;
        // one saved with another window's width starts counting afresh.
        var old = SnapshotReader(bytes: Array(w.bytes.dropLast(8)))
        old.format = 4
        var fromOld = AdmissionFilter(minOccurrences: 2, window: 2048)
        try fromOld.loadSketch(from: &old)
        #expect(old.offset == old.bytesCount)
        #expect(fromOld.sketchUntilHalving == 2048)
        var wider = AdmissionFilter(minOccurrences: 2, window: 65_536)
        var r2 = SnapshotReader(bytes: w.bytes)
        try wider.loadSketch(from: &r2)
        #expect(r2.offset == r2.bytesCount)
        #expect(wider.sketchOccupancy == 0)
    }

    /// Over a model: `admission_window` in the config, and a user stream of
    /// 200,000 one-off ids through a small sketch (width 4,096) keeps the
    /// user rows few.
    @Test func aModelWithASmallWindowKeepsFewRowsForOneOffIds() throws {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array([.string("popularity")]))
        doc.set("lifelong.min_occurrences", .integer(2))
        doc.set("lifelong.admission_window", .integer(1024))
        let m = Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
        var out: [LearnEvent] = []
        for start in stride(from: 0, to: 200_000, by: 1000) {
            out.removeAll(keepingCapacity: true)
            let batch = (start..<(start + 1000)).map { k in
                IncomingEvent(user: UInt64(1_000_000 + k), item: UInt64(1 + k % 100), kind: .click, value: 1, timestamp: 1000)
            }
            m.admit(batch, now: 0, into: &out)
            for l in out { m.learn(l) }
        }
        // One in a few hundred collides at most; without aging a sketch of
        // width 4,096 is full after some tens of thousands and admits all.
        #expect(m.users.count < 2_000, "user rows: \(m.users.count)")
        #expect(m.counters.first { $0.0 == "lifelong_admission_window" }?.1 == 1024)
    }
}
