// Recovery while serving (server.serve_while_recovering): a restart with log
// to replay listens at once, answers reads from the model as the replay
// goes, holds writes until it ends (or refuses them RECOVERING after
// limits.wait_ms), and ends with the model a closed-port replay builds.
// (The tests hold the replay where it is, `TestServer(holdReplay:)`, so they
// see the server mid-replay however busy the machine is.)

import Foundation
import ScratchDirectory
import Testing
import PerennialClient
import PerennialCore
import PerennialProtocol

@Suite struct RecoveryWhileServingTests {
    static let events = 10_000

    /// A data directory holding a log of `events` events and no snapshot,
    /// as a kill -9 leaves it (written with the log's own code), and
    /// copies of it, one per name.
    static func crashedDataDirectories(_ names: [String]) throws -> [String] {
        let dir = ScratchDirectory.path("crashed")
        let log = FeedbackLog(directory: dir + "/log", policy: .no)
        try log.openForAppend(lastSeq: 0)
        var seq: UInt64 = 0
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next(_ n: UInt64) -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return (state >> 33) % n
        }
        while seq < UInt64(events) {
            let batch = (0..<500).map { i in
                IncomingEvent(user: 1 + next(300), item: 1 + next(600), kind: .click, value: 1, timestamp: Int64(seq) + Int64(i) + 1)
            }
            try log.append(.feedback(firstSeq: seq + 1, events: batch), lastSeq: seq + UInt64(batch.count))
            seq += UInt64(batch.count)
        }
        log.close()
        return try names.map { name in
            let copy = ScratchDirectory.path(name)
            try FileManager.default.copyItem(atPath: dir, toPath: copy)
            return copy
        }
    }

    /// (Debug builds replay slowly, and other suites run meanwhile: a read
    /// waiting for the replay's end may wait long.)
    static func client(_ s: TestServer, recoveryWait: Double = 60) async throws -> PerennialClient {
        try await PerennialClient.connect(port: s.port, timeout: 300, recoveryWait: recoveryWait)
    }

    @Test func readsAreAnsweredWhileTheLogReplaysAndTheModelEndsTheSame() async throws {
        let dirs = try Self.crashedDataDirectories(["serving", "closed"])
        let last = UInt64(Self.events)
        let serving = try TestServer(dataDir: dirs[0], holdReplay: true)
        defer { serving.stop() }
        let c = try await Self.client(serving)
        defer { c.close() }
        let held = try await c.stats()
        #expect(held["recovering"] == 1)
        #expect(held["recovery_events_left"] == last)
        #expect(held["events_applied"] == 0)
        // A read is answered at once, from what is replayed so far.
        _ = try await c.recommend(user: 1, k: 5)
        // The log's last sequence may be waited for; beyond it is an error.
        do {
            _ = try await c.recommend(user: 1, k: 5, minAppliedSeq: last + 1)
            Issue.record("min_applied_seq beyond the log was accepted")
        } catch let e as PerennialClientError {
            #expect(e.serverCode == .invalidArgument)
        }
        serving.releaseReplay()
        var answers: [[RankedItem]] = []
        for user in UInt64(1)...20 { answers.append(try await c.recommend(user: user, k: 10, minAppliedSeq: last)) }
        #expect(try await eventually(300) { try await c.stats()["recovering"] == 0 })
        let done = try await c.stats()
        #expect(done["events_applied"] == last)
        #expect(done["recovery_events_left"] == 0)

        // The same model as a replay with the port closed.
        let closed = try TestServer("[server]\nserve_while_recovering = false\n", dataDir: dirs[1])
        defer { closed.stop() }
        let d = try await Self.client(closed)
        defer { d.close() }
        #expect(try await d.stats()["recovering"] == 0)
        for user in UInt64(1)...20 {
            #expect(try await d.recommend(user: user, k: 10) == answers[Int(user) - 1])
        }

        // Writes go on after the log's last event.
        let ack = try await c.feedback([WireEvent(user: 1, item: 1, kind: .click)])
        #expect(ack.firstSeq == last + 1)
    }

    /// A data directory holding a snapshot of 3,000 events (300 users, 200
    /// items) and, after it in the log, `later` (as a kill -9 leaves it).
    static func snapshotThenLog(_ name: String, config: String, later: [IncomingEvent]) throws -> String {
        try snapshotThenLog(name, config: config, records: { [.feedback(firstSeq: $0 + 1, events: later)] })
    }

    /// The same with the records `records(snapshot's sequence)` after it.
    static func snapshotThenLog(_ name: String, config: String, records: (UInt64) -> [LogRecord]) throws -> String {
        let dir = ScratchDirectory.path(name)
        let model = Model(config: try PerennialConfig.load(try ConfigDocument(text: config, file: "test.toml"), registry: .builtin),
                          registry: .builtin)
        var rng = SplitMix64(seed: 5)
        var out: [LearnEvent] = []
        for k in 0..<3000 {
            out.removeAll()
            let e = IncomingEvent(user: UInt64(rng.below(300) + 1), item: UInt64(rng.below(200) + 1), kind: .click, value: 1,
                                  timestamp: Int64(k + 1))
            model.admit(CollectionOfOne(e), now: 0, into: &out)
            for l in out { model.learn(l) }
        }
        var w = SnapshotWriter()
        model.save(to: &w)
        _ = try SnapshotStore(directory: dir + "/snapshots").write(seq: model.lastSeq, firstLogSegment: 2, payload: w.bytes)
        let log = FeedbackLog(directory: dir + "/log", policy: .no)
        try log.openForAppend(lastSeq: model.lastSeq, atLeastSegment: 2)
        var seq = model.lastSeq
        for record in records(seq) {
            if case .feedback(_, let events) = record { seq += UInt64(events.count) }
            try log.append(record, lastSeq: seq)
        }
        log.close()
        return dir
    }

    @Test func readsDuringTheReplayExcludeWhatTheUserDidInTheLogStillToComeAndFollowIt() async throws {
        let config = "[scorers]\nload = [\"cf\", \"popularity\"]\ndefault = \"cf\"\n"
        // User 7 (in the snapshot) and user 9999 (new in the log) clicked
        // known items after the snapshot.
        let seen7: [UInt64] = [1, 2, 3, 4, 5]
        let seen9999: [UInt64] = [11, 12, 13]
        let later = (seen7.map { (7, $0) } + seen9999.map { (9999, $0) }).enumerated().map { k, e in
            IncomingEvent(user: UInt64(e.0), item: e.1, kind: .click, value: 1, timestamp: Int64(3001 + k))
        }
        let dir = try Self.snapshotThenLog("seen", config: config, later: later)
        let s = try TestServer(config, dataDir: dir, holdReplay: true)
        defer { s.stop() }
        let c = try await Self.client(s)
        defer { c.close() }
        #expect(try await c.stats()["recovery_events_left"] == UInt64(later.count))
        let all7 = try await c.recommend(user: 7, k: 200).map(\.item)
        #expect(Set(all7).isDisjoint(with: seen7), "an item user 7 clicked in the log not yet replayed was recommended")
        let new9999 = try await c.recommend(user: 9999, k: 200).map(\.item)
        #expect(Set(new9999).isDisjoint(with: seen9999))
        // Their clicks steer the answer: not the answer for a user never seen.
        let stranger = try await c.recommend(user: 123_456, k: 10, exclude: seen9999).map(\.item)
        #expect(Array(new9999.prefix(10)) != stranger)
        // After the replay the same exclusions hold, from the model itself.
        s.releaseReplay()
        let after7 = try await c.recommend(user: 7, k: 200, minAppliedSeq: 3000 + UInt64(later.count)).map(\.item)
        #expect(Set(after7).isDisjoint(with: seen7))
        #expect(try await eventually(300) { try await c.stats()["recovering"] == 0 })
    }

    @Test func readsDuringTheReplayFollowExcludeKindsAndDeletionsStillToCome() async throws {
        let config = "[scorers]\nload = [\"cf\", \"popularity\"]\ndefault = \"cf\"\n[history]\nexclude_kinds = [\"purchase\"]\n"
        func events(_ user: UInt64, _ list: [(UInt64, FeedbackKind)]) -> [IncomingEvent] {
            list.map { IncomingEvent(user: user, item: $0.0, kind: $0.1, value: 1, timestamp: 4000) }
        }
        let dir = try Self.snapshotThenLog("seen-kinds", config: config) { seq in
            [.feedback(firstSeq: seq + 1, events: events(7, [(1, .view), (2, .purchase), (3, .click), (1, .view)])),
             .deleteItems(items: [50]),
             .feedback(firstSeq: seq + 5, events: events(8, [(4, .click)]))]
        }
        let s = try TestServer(config, dataDir: dir, holdReplay: true)
        defer { s.stop() }
        let c = try await Self.client(s)
        defer { c.close() }
        func missing(_ user: UInt64, minAppliedSeq: UInt64 = 0) async throws -> Set<UInt64> {
            Set(1...200).subtracting(try await c.recommend(user: user, k: 200, minAppliedSeq: minAppliedSeq).map(\.item))
        }
        let during7 = try await missing(7), during100 = try await missing(100)
        s.releaseReplay()
        let after7 = try await missing(7, minAppliedSeq: 3005), after100 = try await missing(100, minAppliedSeq: 3005)
        // Only the purchase is excluded (views and clicks are shown again),
        // and the item deleted further on is gone for everyone already.
        #expect(during7.contains(2) && !during7.contains(1) && !during7.contains(3))
        #expect(during7.contains(50) && during100.contains(50))
        #expect(during7 == after7)
        #expect(during100 == after100)
    }

    @Test func feedbackDuringTheReplayIsAcceptedAtOnceAndLearnedAfterTheLog() async throws {
        let dirs = try Self.crashedDataDirectories(["accepted", "accepted-closed"])
        let last = UInt64(Self.events)
        let s = try TestServer(dataDir: dirs[0], holdReplay: true)
        defer { s.stop() }
        let c = try await Self.client(s)
        let writer = try await Self.client(s)
        defer { c.close(); writer.close() }
        // Accepted while the replay has not learned a single event.
        let batches = [[WireEvent(user: 7, item: 7, kind: .click), WireEvent(user: 9_999, item: 3, kind: .purchase)],
                       [WireEvent(user: 7, item: 8, kind: .click)]]
        let first = try await writer.feedback(batches[0])
        let second = try await writer.feedback(batches[1])
        #expect((first.firstSeq, first.lastSeq, second.firstSeq, second.lastSeq) == (last + 1, last + 2, last + 3, last + 3))
        let meanwhile = try await c.stats()
        #expect(meanwhile["recovering"] == 1)
        #expect(meanwhile["events_applied"] == 0)
        #expect(meanwhile["events_accepted"] == last + 3)
        #expect(meanwhile["recovery_events_left"] == last + 3)
        // A read on the writer's own connection does not wait for the
        // replay to learn its events; they are excluded already.
        let mine = try await writer.recommend(user: 7, k: 600).map(\.item)
        #expect(!mine.contains(7) && !mine.contains(8))
        // The log holds them after its own events: a copy replayed with
        // the port closed...
        try FileManager.default.removeItem(atPath: dirs[1])
        try FileManager.default.copyItem(atPath: dirs[0], toPath: dirs[1])
        s.releaseReplay()
        #expect(try await eventually(300) { try await c.stats()["recovering"] == 0 })
        let after = try await c.stats()
        #expect(after["events_accepted"] == last + 3)
        #expect(after["events_applied"] == last + 3)
        // ...ends with the same model as this replay.
        var answers: [[RankedItem]] = []
        for user: UInt64 in [1, 2, 3, 7, 9_999] { answers.append(try await c.recommend(user: user, k: 10)) }
        let next = try await writer.feedback([WireEvent(user: 8, item: 8, kind: .click)])
        #expect(next.firstSeq == last + 4)
        let closed = try TestServer("[server]\nserve_while_recovering = false\n", dataDir: dirs[1])
        defer { closed.stop() }
        let d = try await Self.client(closed)
        defer { d.close() }
        #expect(try await d.stats()["events_applied"] == last + 3)
        for (k, user) in [UInt64(1), 2, 3, 7, 9_999].enumerated() {
            #expect(try await d.recommend(user: user, k: 10) == answers[k], "user \(user)")
        }
    }

    @Test func feedbackPastTheReplaysBudgetWaitsForTheEndThenIsRefusedRecovering() async throws {
        let dir = try Self.crashedDataDirectories(["budget"])[0]
        let s = try TestServer("[limits]\nwait_ms = 20\nmax_events = 100\n[learner]\nqueue_capacity = 200\nmax_lag_seconds = 0\n",
                               dataDir: dir, holdReplay: true)
        defer { s.stop() }
        let c = try await Self.client(s, recoveryWait: 0)
        let other = try await Self.client(s, recoveryWait: 0)
        defer { c.close(); other.close() }
        let batch = (1...100).map { WireEvent(user: UInt64($0), item: 5, kind: .click) }
        let small = [WireEvent(user: 1, item: 6, kind: .click)]
        // Two batches use up what one replay takes (the learner queue's capacity)...
        #expect(try await c.feedback(batch).lastSeq == UInt64(Self.events) + 100)
        #expect(try await c.feedback(batch).lastSeq == UInt64(Self.events) + 200)
        // ...and after them every FEEDBACK waits for the end, then is
        // refused: the replay ends however fast clients send.
        for (client, events) in [(c, batch), (other, small), (c, small)] {
            do {
                _ = try await client.feedback(events)
                Issue.record("a batch past the replay's budget was accepted")
            } catch let e as PerennialClientError {
                #expect(e.serverCode == .recovering)
            }
        }
        #expect(try await c.stats()["events_accepted"] == UInt64(Self.events) + 200)
        s.releaseReplay()
        #expect(try await eventually(300) { try await c.stats()["recovering"] == 0 })
        #expect(try await c.feedback(batch).lastSeq == UInt64(Self.events) + 300)
    }

    /// A stream's batches refused RECOVERING were refusals at once
    /// (helper-91), though `feedback` and the Python streamer send such a
    /// write again until the replay ends: now the stream does too, in
    /// stream order, and every event goes in once.
    @Test func aStreamSendsBatchesRefusedRecoveringAgainUntilTheReplayEnds() async throws {
        let dir = try Self.crashedDataDirectories(["stream-resent"])[0]
        let s = try TestServer("[limits]\nwait_ms = 20\nmax_events = 100\n[learner]\nqueue_capacity = 200\nmax_lag_seconds = 0\n",
                               dataDir: dir, holdReplay: true)
        defer { s.stop() }
        let c = try await Self.client(s)
        let watcher = try await Self.client(s, recoveryWait: 0)
        defer { c.close(); watcher.close() }
        let events: [WireEvent] = (0..<500).map { (k: Int) -> WireEvent in
            WireEvent(user: UInt64(k % 100 + 1), item: UInt64(5 + k / 100), kind: .click)
        }
        async let streamed = c.stream(events, batchSize: 100, window: 2)
        // Two batches go in (what one replay takes); the others are
        // refused, and sent again, until the replay ends.
        #expect(try await eventually(300) { (try await watcher.stats()["errors_total"] ?? 0) >= 3 })
        #expect(try await watcher.stats()["events_accepted"] == UInt64(Self.events) + 200)
        s.releaseReplay()
        let ack = try await streamed
        #expect(ack?.lastSeq == UInt64(Self.events) + 500)
        #expect(try await watcher.stats()["events_accepted"] == UInt64(Self.events) + 500)
    }

    @Test func feedbackHeldBeforeTheReplayHasAPaceGoesInOnceItHasOne() async throws {
        // Before the replay has learned enough to know its pace, it takes
        // one batch (limits.max_events); a batch held then goes in as soon
        // as the pace is known, not at the end (helper-70).
        let dir = try Self.crashedDataDirectories(["paced"])[0]
        let s = try TestServer("[limits]\nmax_events = 100\n", dataDir: dir, holdReplay: true)
        defer { s.stop() }
        let c = try await Self.client(s)
        let other = try await Self.client(s)
        defer { c.close(); other.close() }
        let batch = (1...100).map { WireEvent(user: UInt64($0), item: 5, kind: .click) }
        let last = UInt64(Self.events)
        #expect(try await c.feedback(batch).lastSeq == last + 100)
        async let held = c.feedback(batch)
        #expect(try await eventually(60) { try await other.stats()["recovering"] == 1 })
        try await Task.sleep(nanoseconds: 200_000_000)
        #expect(try await other.stats()["events_accepted"] == last + 100)
        s.releaseReplay()
        // (Read from the acknowledgement, the model's position when the
        // batch went in: a STATS after it raced the replay's end, and on a
        // loaded machine lost, failing a fresh clone's run once.)
        let ack = try await held
        #expect(ack.firstSeq == last + 101)
        #expect(ack.appliedSeq < last + 100, "the held batch went in only at the end (applied \(ack.appliedSeq) of \(last + 100))")
        #expect(try await eventually(300) { try await other.stats()["recovering"] == 0 })
    }

    @Test func feedbackDuringTheReplayKeepsWithinTheIdBoundsTheModelWillHave() async throws {
        // The log names 600 items; the model holds none of them yet.
        let dir = try Self.crashedDataDirectories(["bounds"])[0]
        let s = try TestServer("[limits]\nwait_ms = 20\nmax_item_ids = 605\n", dataDir: dir, holdReplay: true)
        defer { s.stop() }
        let c = try await Self.client(s, recoveryWait: 0)
        let other = try await Self.client(s, recoveryWait: 0)
        defer { c.close(); other.close() }
        // Five new items fit, a sixth does not (refused after waiting)...
        _ = try await c.feedback((601...605).map { WireEvent(user: 1, item: UInt64($0), kind: .click) })
        do {
            _ = try await c.feedback([WireEvent(user: 1, item: 606, kind: .click)])
            Issue.record("an item past max_item_ids was accepted during the replay")
        } catch let e as PerennialClientError {
            #expect(e.serverCode == .recovering)
        }
        // ...while events on items the log or the batch named go on.
        _ = try await other.feedback([WireEvent(user: 2, item: 3, kind: .click), WireEvent(user: 2, item: 603, kind: .click)])
        s.releaseReplay()
        #expect(try await eventually(300) { try await c.stats()["recovering"] == 0 })
        #expect(try await c.stats()["items"] == 605)
        do {
            _ = try await c.feedback([WireEvent(user: 1, item: 606, kind: .click)])
            Issue.record("an item past max_item_ids was accepted")
        } catch let e as PerennialClientError {
            #expect(e.serverCode == .capacity)
        }
    }

    @Test func aWriteHeldPastWaitMsIsRefusedRecoveringAndNothingOfItIsAccepted() async throws {
        let dir = try Self.crashedDataDirectories(["refused"])[0]
        let s = try TestServer("[limits]\nwait_ms = 20\n", dataDir: dir, holdReplay: true)
        defer { s.stop() }
        let c = try await Self.client(s, recoveryWait: 0)
        defer { c.close() }
        for request in [{ _ = try await c.upsertItem(5, text: "a new text") },
                        { _ = try await c.deleteItems([3]) },
                        { _ = try await c.deleteUsers([3]) },
                        { _ = try await c.snapshot() }] {
            do {
                try await request()
                Issue.record("a write was accepted during the replay")
            } catch let e as PerennialClientError {
                #expect(e.serverCode == .recovering)
            }
        }
        // PING and STATS are answered as usual.
        try await c.ping()
        #expect(try await c.stats()["recovering"] == 1)
        s.releaseReplay()
        #expect(try await eventually(300) { try await c.stats()["recovering"] == 0 })
        let after = try await c.stats()
        #expect(after["events_accepted"] == UInt64(Self.events))
        #expect(after["items_deleted"] == 0)
        #expect(after["users_deleted"] == 0)
        // (`snapshots` may be 1: a slow replay, as in a debug build, can
        // make the recovery budget ask for one once it is done.)
        let ack = try await c.feedback([WireEvent(user: 7, item: 7, kind: .click)])
        #expect(ack.firstSeq == UInt64(Self.events) + 1)
    }

    @Test func aStopDuringTheReplayWritesNoSnapshotAndTheNextStartReplaysItAll() async throws {
        let dir = try Self.crashedDataDirectories(["stopped"])[0]
        let s = try TestServer(dataDir: dir, holdReplay: true)
        let c = try await Self.client(s)
        #expect(try await c.stats()["recovering"] == 1)
        c.close()
        s.stop()
        let snapshots = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/snapshots")) ?? []
        #expect(snapshots.filter { $0.hasPrefix("snapshot-") }.isEmpty, "\(snapshots)")
        let again = try TestServer(dataDir: dir)
        defer { again.stop() }
        let d = try await Self.client(again)
        defer { d.close() }
        let stats = try await d.stats()
        #expect(stats["recovering"] == 0)
        #expect(stats["events_applied"] == UInt64(Self.events))
    }

    @Test func theSwiftClientSendsAWriteRefusedRecoveringAgainUntilTheReplayEnds() async throws {
        let dir = try Self.crashedDataDirectories(["resent"])[0]
        let s = try TestServer("[limits]\nwait_ms = 20\n", dataDir: dir, holdReplay: true)
        defer { s.stop() }
        let c = try await Self.client(s)
        let writer = try await Self.client(s)
        defer { c.close(); writer.close() }
        async let upserted: Void = { _ = try await writer.upsertItem(7, text: "seven") }()
        // Refused (and sent again) while the replay is held.
        #expect(try await eventually(120) { (try await c.stats()["errors_total"] ?? 0) >= 2 })
        #expect(try await c.stats()["items_with_text"] == 0)
        s.releaseReplay()
        try await upserted
        #expect(try await c.stats()["items_with_text"] == 1)
    }

    @Test func aStopAnswersTheWritesWaitingForTheReplayAtOnce() async throws {
        let dir = try Self.crashedDataDirectories(["stop-parked"])[0]
        // (A wait far past the test's own pause.)
        let s = try TestServer("[limits]\nwait_ms = 60000\n", dataDir: dir, holdReplay: true)
        // (A raw socket: the frame is in the server's socket once `send`
        // returns, however busy the test's own executor is.)
        let writer = try RawSocket(port: s.port, timeout: 60)
        defer { writer.close() }
        try writer.send(.deleteItems([7]), id: 5)
        // A blocking sleep (usleep), not Task.sleep: in a full run on 2 cores the
        // other tests' blocking calls hold the cooperative threads, and a
        // Task.sleep of 300 ms twice took longer than the write's wait
        // (5 s, then 60 s), which then refused it RECOVERING before the
        // stop came.
        usleep(300_000)
        let t0 = Date()
        s.stop()
        let reply = try writer.readFrame()
        #expect(reply?.header.requestID == 5)
        #expect(reply?.error?.code == .shuttingDown, "\(String(describing: reply?.reply))")
        // (Before: the write held the stop for its whole wait, limits.wait_ms.)
        #expect(Date().timeIntervalSince(t0) < 4)
    }
}
