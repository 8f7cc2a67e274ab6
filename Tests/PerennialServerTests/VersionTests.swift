import Foundation
import Testing
import PerennialClient
import PerennialCore
import PerennialProtocol
import PerennialPlugins
@testable import PerennialServer

/// Model versions: every snapshot is one; a server started from an older
/// one serves exactly that version's scores.
@Suite struct VersionTests {
    func events(_ range: Range<Int>) -> [WireEvent] {
        var rng = SplitMix64(seed: 4)
        var all: [WireEvent] = []
        for k in 0..<range.upperBound {
            let user = UInt64(rng.below(80) + 1), item = UInt64(rng.below(150) + 1)
            all.append(WireEvent(user: user, item: item, kind: .rating, value: Float(rng.below(5) + 1), timestamp: Int64(k + 1)))
        }
        return Array(all[range])
    }

    func scores(_ c: PerennialClient) async throws -> [[Float]] {
        var out: [[Float]] = []
        for user in [UInt64(3), 17, 42, 77] {
            out.append(try await c.score(user: user, items: Array(1...150)).map(\.score))
            out.append(try await c.recommend(user: user, k: 20).map(\.score))
        }
        return out
    }

    @Test func rollingBackRestoresExactlyThatVersionsScores() async throws {
        let first = try TestServer()
        var c = try await PerennialClient.connect(port: first.port)
        _ = try await c.stream(events(0..<4000), batchSize: 500, window: 4)
        guard case .snapshot(let v1, let v1id) = try await c.call(.snapshot) else { throw TestError("no snapshot reply") }
        #expect(v1id == "v\(v1)")
        let atV1 = try await scores(c)
        _ = try await c.stream(events(4000..<8000), batchSize: 500, window: 4)
        let later = try await scores(c)
        #expect(later != atV1, "the later events changed the model")
        c.close()
        first.stop()

        let store = SnapshotStore(directory: first.dataDir + "/snapshots")
        #expect(store.files().map(\.id) == ["v8000", "v\(v1)"])
        #expect((store.metadata(of: store.files()[1])["scorers"] as? [String]) == ["cf", "popularity"])

        // Start from v4000: exactly its scores, and the skipped events are
        // recorded with the new version.
        let back = try TestServer(dataDir: first.dataDir, startVersion: "v\(v1)")
        c = try await PerennialClient.connect(port: back.port)
        #expect(try await scores(c) == atV1)
        // The rollback is saved as a version at the log's end, beside the
        // model rolled back from (v8000): a SNAPSHOT now answers with the
        // rollback's id, the one to start from to get this model again.
        guard case .snapshot(let atEnd, let atEndID) = try await c.call(.snapshot) else { throw TestError("no snapshot reply") }
        #expect(atEnd == 8000 && atEndID == "v8000.1")
        // Numbering continues after the log's end; new events are learned.
        let ack = try await c.feedback([WireEvent(user: 3, item: 5, kind: .click)])
        #expect(ack.lastSeq == 8001)
        c.close()
        back.stop()
        let files = store.files()
        #expect(files.first?.id == "v8001")
        #expect(files.contains { $0.id == "v8000.1" } && files.contains { $0.id == "v8000" })
        let note = store.metadata(of: files.first { $0.id == "v8000.1" }!)
        #expect(note["rolled_back_from"] as? String == "v\(v1)" && note["events_not_learned"] as? Int == 4000)

        // A restart after the rollback keeps the rolled-back model (plus the one new event).
        let again = try TestServer(dataDir: first.dataDir)
        c = try await PerennialClient.connect(port: again.port)
        let stats = try await c.stats()
        #expect(stats["events_applied"] == 8001 && stats["events_accepted"] == 8001)
        c.close()
        again.stop()

        // The same --from-version again (a flag left in a service unit) does
        // not roll back a second time: the event learned since stays, and
        // no version is added.
        let versionsBefore = store.files().map(\.id).sorted()
        let repeated = try TestServer(dataDir: first.dataDir, startVersion: "v\(v1)")
        c = try await PerennialClient.connect(port: repeated.port)
        let afterRepeat = try await c.stats()
        #expect(afterRepeat["events_applied"] == 8001 && afterRepeat["events_accepted"] == 8001)
        c.close()
        repeated.stop()
        #expect(store.files().map(\.id).sorted() == versionsBefore)

        // An unknown version is a clear start-up error naming the versions.
        #expect(throws: (any Error).self) { _ = try TestServer(dataDir: first.dataDir, startVersion: "v123") }
    }

    /// A restart whose config no longer loads a scorer the snapshot holds
    /// (the wrong config, say) is refused, naming the scorer and the flag
    /// that drops it, and never falls back to an older snapshot that lacks
    /// the scorer (here: from before a restart added it), not even when the
    /// newest fails to load for another reason; with the flag it starts, and
    /// the others keep their exact scores.
    @Test func aScorerTheConfigNoLongerLoadsIsRefusedUnlessDroppedByName() async throws {
        let cfOnly = "[scorers]\nload = [\"cf\"]\ndefault = \"cf\"\n"
        let first = try TestServer(cfOnly)
        var c = try await PerennialClient.connect(port: first.port)
        _ = try await c.stream(events(0..<1500), batchSize: 500, window: 4)
        guard case .snapshot = try await c.call(.snapshot) else { throw TestError("no snapshot reply") }
        c.close()
        first.stop()
        // popularity added (the default config loads cf and popularity).
        let second = try TestServer(dataDir: first.dataDir)
        c = try await PerennialClient.connect(port: second.port)
        _ = try await c.stream(events(1500..<3000), batchSize: 500, window: 4)
        guard case .snapshot = try await c.call(.snapshot) else { throw TestError("no snapshot reply") }
        let cfBefore = try await c.score(user: 17, items: Array(1...150)).map(\.score)
        c.close()
        second.stop()
        let store = SnapshotStore(directory: first.dataDir + "/snapshots")
        #expect(store.files().map(\.id) == ["v3000", "v1500"])

        for config in [cfOnly, cfOnly + "[scorers.cf]\nneighbours = 128\n"] {
            do {
                _ = try TestServer(config, dataDir: first.dataDir)
                Issue.record("a start that would drop popularity's state was not refused")
            } catch {
                let message = "\(error)"
                #expect(message.contains("popularity") && message.contains("--drop-scorer popularity"), "\(message)")
            }
        }
        #expect(store.files().map(\.id) == ["v3000", "v1500"])

        // Dropped as asked: a new version without it, at once (so a start
        // without the flag is not refused again, events or not).
        let dropped = try TestServer(cfOnly, dataDir: first.dataDir, dropScorers: ["popularity"])
        c = try await PerennialClient.connect(port: dropped.port)
        #expect(try await c.score(user: 17, items: Array(1...150)).map(\.score) == cfBefore)
        c.close()
        dropped.stop()
        #expect(store.files().map(\.id) == ["v3000.1", "v3000", "v1500"])
        let note = store.metadata(of: store.files().first { $0.id == "v3000.1" }!)
        #expect(note["scorers"] as? [String] == ["cf"] && note["dropped_scorers"] as? [String] == ["popularity"])
        // Dropped once, it is gone: the same config now starts without the flag.
        let again = try TestServer(cfOnly, dataDir: first.dataDir)
        again.stop()
    }

    /// A restart under a setting that reshapes the stored model, once the
    /// log no longer reaches back to the start, is refused naming the key
    /// and both values (each snapshot records the settings it was written
    /// under).
    @Test func aStartUnderAReshapedSettingNamesTheKey() async throws {
        let first = try TestServer("[snapshot]\nkeep = 1\n")
        let c = try await PerennialClient.connect(port: first.port)
        _ = try await c.stream(events(0..<2000), batchSize: 500, window: 4)
        guard case .snapshot = try await c.call(.snapshot) else { throw TestError("no snapshot reply") }
        _ = try await c.stream(events(2000..<3000), batchSize: 500, window: 4)
        guard case .snapshot = try await c.call(.snapshot) else { throw TestError("no snapshot reply") }
        c.close()
        first.stop()
        let store = SnapshotStore(directory: first.dataDir + "/snapshots")
        let newest = try #require(store.files().first)
        let saved = try #require(store.metadata(of: newest)["settings"] as? [String: String])
        #expect(saved["scorers.cf.neighbours"] == "256" && saved["table.dimension"] == "64")
        do {
            _ = try TestServer("[snapshot]\nkeep = 1\n[scorers.cf]\nneighbours = 128\n", dataDir: first.dataDir)
            Issue.record("a reshaped cf started")
        } catch {
            #expect("\(error)".contains("scorers.cf.neighbours 256 -> 128"), "\(error)")
        }
    }

    /// A SNAPSHOT with nothing accepted since the last one answers with it:
    /// no file rewritten, no new version.
    @Test func snapshotWithNothingNewAnswersWithTheLastOne() async throws {
        let s = try TestServer()
        let c = try await PerennialClient.connect(port: s.port)
        _ = try await c.stream(events(0..<300), batchSize: 100, window: 2)
        guard case .snapshot(let a, let aID) = try await c.call(.snapshot) else { throw TestError("no snapshot reply") }
        let store = SnapshotStore(directory: s.dataDir + "/snapshots")
        let file = try #require(store.files().first)
        let written = try FileManager.default.attributesOfItem(atPath: file.path)[.modificationDate] as? Date
        guard case .snapshot(let b, let bID) = try await c.call(.snapshot) else { throw TestError("no snapshot reply") }
        #expect(a == 300 && b == 300 && aID == "v300" && bID == "v300")
        #expect(store.files().map(\.id) == ["v300"])
        #expect(try FileManager.default.attributesOfItem(atPath: file.path)[.modificationDate] as? Date == written)
        // One event more: a new snapshot at its position.
        _ = try await c.feedback([WireEvent(user: 3, item: 5, kind: .click)])
        guard case .snapshot(let d, let dID) = try await c.call(.snapshot) else { throw TestError("no snapshot reply") }
        #expect(d == 301 && dID == "v301")
        c.close()
        s.stop()
    }

    /// Automatic snapshots (`snapshot.every_events`) are written by their
    /// own thread while the server keeps answering; each becomes the newest
    /// version, covered log segments go, and a restart starts from the
    /// newest and has every event.
    @Test func automaticSnapshotsAreWrittenInTheBackground() async throws {
        let s = try TestServer("[snapshot]\nevery_events = 1000\nkeep = 2\n")
        let c = try await PerennialClient.connect(port: s.port)
        // Two halves, each followed by its snapshots: how many a stream
        // gets while it lasts depends on the learner's speed (a threshold
        // crossed while the learner is behind tapers admission and waits
        // for it; on a loaded machine one stream of 5,000 got a single
        // snapshot, at its end). After each half, whatever is left since
        // the last snapshot is less than `every_events`.
        var seen: [String: UInt64] = [:]
        for (half, range) in [0..<2500, 2500..<5000].enumerated() {
            _ = try await c.stream(events(range), batchSize: 250, window: 4)
            // Served while snapshots are taken and written.
            #expect(try await c.recommend(user: 3, k: 10).count == 10)
            let taken = try await eventually(60) {
                seen = try await c.stats()
                return (seen["snapshots"] ?? 0) >= UInt64(half + 1) && (seen["last_snapshot_seq"] ?? 0) > UInt64(range.upperBound - 1000)
            }
            #expect(taken, "snapshot counters: \(seen.filter { $0.key.contains("snapshot") || $0.key.hasPrefix("events_") || $0.key.hasPrefix("learner_") })")
        }
        let before = try await scores(c)
        c.close()
        s.stop()
        let store = SnapshotStore(directory: s.dataDir + "/snapshots")
        // Pruned to `keep`, newest last taken at the graceful stop.
        #expect(store.files().count == 2 && store.files().first?.id == "v5000")
        let segments = try FeedbackLog.segments(in: s.dataDir + "/log")
        #expect(segments.first ?? 0 > 1, "log segments covered by the kept snapshots were removed")

        let again = try TestServer(dataDir: s.dataDir)
        let c2 = try await PerennialClient.connect(port: again.port)
        #expect(try await c2.stats()["events_applied"] == 5000)
        #expect(try await scores(c2) == before)
        c2.close()
        again.stop()
    }

    /// A snapshot's thread (automatic, or for a SNAPSHOT request) reads the
    /// model while the loop goes on serving: RECOMMEND, SCORE and STATS are
    /// answered meanwhile, and FEEDBACK and UPSERT_ITEM wait. Each snapshot taken so, restored and
    /// brought forward by the log after it, must be exactly the final
    /// model: a snapshot that caught a change halfway would not be.
    @Test func snapshotsTakenWhileServingHoldExactlyTheModelAtTheirPosition() async throws {
        let s = try TestServer("[snapshot]\nevery_events = 400\nkeep = 8\n")
        let c = try await PerennialClient.connect(port: s.port)
        // Reads, and item texts, on two more connections throughout.
        let port = s.port
        let reads = Task {
            let r = try await PerennialClient.connect(port: port)
            defer { r.close() }
            var n = 0
            // (Cancelled, a call in flight throws CancellationError.)
            do {
                while !Task.isCancelled {
                    let user = UInt64(n % 80 + 1)
                    _ = try await r.recommend(user: user, k: 10)
                    _ = try await r.score(user: user, items: [1, 2, 3, UInt64(n % 150 + 1)])
                    if n % 10 == 0 { _ = try await r.stats() }
                    if n % 40 == 39 {
                        // SNAPSHOT requests too, from two connections at once.
                        guard case .snapshot = try await r.call(.snapshot) else { throw TestError("no snapshot reply") }
                    }
                    n += 1
                }
            } catch is CancellationError {}
            return n
        }
        let upserts = Task {
            let u = try await PerennialClient.connect(port: port)
            defer { u.close() }
            var n = 0
            do {
                while !Task.isCancelled {
                    _ = try await u.upsertItem(UInt64(n % 150 + 1), text: "item \(n) of a catalogue that keeps changing")
                    n += 1
                }
            } catch is CancellationError {}
            return n
        }
        for part in 0..<10 {
            _ = try await c.stream(events(part * 600..<(part + 1) * 600), batchSize: 50, window: 4)
            // A SNAPSHOT request is answered once a snapshot holding what was
            // acknowledged before it is durable.
            if part % 3 == 1 {
                guard case .snapshot(let seq, _) = try await c.call(.snapshot) else { throw TestError("no snapshot reply") }
                #expect(seq >= UInt64((part + 1) * 600))
                #expect(SnapshotStore(directory: s.dataDir + "/snapshots").files().contains { $0.seq >= UInt64((part + 1) * 600) })
            }
            // (A pause, so the reads overlap the snapshots on a loaded machine too.)
            try await Task.sleep(for: .milliseconds(50))
        }
        reads.cancel()
        upserts.cancel()
        let served = try await reads.value, upserted = try await upserts.value
        #expect(served > 10 && upserted > 10, "reads and upserts went on during the stream (\(served), \(upserted))")
        let stats = try await c.stats()
        #expect((stats["snapshots"] ?? 0) >= 4)
        c.close()
        s.stop()

        let store = SnapshotStore(directory: s.dataDir + "/snapshots")
        let files = store.files()
        func bytes(of m: Model) -> [UInt8] {
            var w = SnapshotWriter()
            m.save(to: &w)
            return w.bytes
        }
        func restored(_ file: SnapshotFile) throws -> (Model, SnapshotInfo) {
            var (info, reader) = try store.read(file.path)
            let m = Model(config: s.server.config, registry: .builtin)
            try m.restore(from: &reader)
            return (m, info)
        }
        // Every snapshot brought forward by the log after it (item texts
        // sent after the last one are there too) gives the same model.
        func broughtForward(_ file: SnapshotFile) throws -> Model {
            let (m, info) = try restored(file)
            var scratch: [LearnEvent] = []
            try FeedbackLog.scan(directory: s.dataDir + "/log", fromSegment: info.firstLogSegment, cutTornTail: false) { record in
                try m.replay(record, scratch: &scratch)
            }
            return m
        }
        let newest = try broughtForward(files[0])
        #expect(newest.lastSeq == 6000 && newest.appliedSeq == 6000)
        let final = bytes(of: newest)
        for file in files.dropFirst() {
            let brought = bytes(of: try broughtForward(file))
            // (Compared first: a failed #expect on the arrays themselves
            // would spend minutes diffing megabytes for its message.)
            let identical = brought == final
            #expect(identical, "\(file.id), brought forward by the log, differs from the newest one")
        }
        #expect(files.count >= 5)
    }

    @Test func aShadowScorerIsComparedLiveAndNotReturned() async throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        _ = try await c.stream(events(0..<3000), batchSize: 500, window: 4)
        var servedFirst: [UInt64: UInt64] = [:]
        for user in UInt64(1)...20 {
            let plain = try await c.recommend(user: user, k: 10)
            let shadowed = try await c.recommend(user: user, k: 10, shadow: "popularity")
            // The reply is the serving scorer's answer alone.
            #expect(plain == shadowed)
            servedFirst[user] = shadowed[0].item
        }
        // Each user's next positive event is the served list's first item;
        // a non-positive one before it does not count.
        var feedback: [WireEvent] = []
        for user in UInt64(1)...20 {
            feedback.append(WireEvent(user: user, item: servedFirst[user]!, kind: .rating, value: 1))
            feedback.append(WireEvent(user: user, item: servedFirst[user]!, kind: .click))
        }
        _ = try await c.feedback(feedback)
        let stats = try await c.stats()
        #expect(stats["shadow_popularity_requests"] == 20)
        #expect(stats["shadow_popularity_followups"] == 20)
        #expect(stats["shadow_popularity_served_hits"] == 20)
        let shadowHits = try #require(stats["shadow_popularity_shadow_hits"])
        #expect(shadowHits <= 20)
        #expect(stats["shadow_popularity_served_items"] == 200)
        #expect(stats["shadow_pending_users"] == 0)
        // An unknown shadow is UNKNOWN_SCORER, like an unknown scorer.
        await #expect(throws: PerennialClientError.self) { _ = try await c.recommend(user: 1, k: 5, shadow: "nope") }
    }
}
