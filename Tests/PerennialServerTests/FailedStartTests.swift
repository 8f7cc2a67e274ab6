// A server that cannot start (its port is taken) leaves nothing behind in
// the process: no descriptors of its event loop (helper-55: each failed
// start leaked about six), and a stopped learner (holding the model) is freed.

import Foundation
import ScratchDirectory
import Testing
import PerennialCore
import PerennialPlugins
@testable import PerennialServer

@Suite struct FailedStartTests {
    @Test func aStartThatCannotBindClosesItsLoop() throws {
        let running = try TestServer()
        defer { running.stop() }
        // A taken port fails the start before anything is made (probed);
        // taken between the probe and the bind, it fails at the bind, which
        // must close the loop: that race, made by skipping the probe.
        let probed = Server(config: try {
            var doc = ConfigDocument(file: "test")
            doc.set("server.port", .integer(running.port))
            doc.set("server.data_dir", .string(ScratchDirectory.path("probed")))
            return try PerennialConfig.load(doc, registry: .builtin)
        }())
        #expect(throws: (any Error).self) { _ = try probed.start() }
        #expect(!FileManager.default.fileExists(atPath: ScratchDirectory.path("probed")))
        #expect(EventLoop.closes.withLock { $0[running.port] } == nil)
        EventLoop.probesBeforeStart.store(false, ordering: .relaxed)
        defer { EventLoop.probesBeforeStart.store(true, ordering: .relaxed) }
        // (Counted by the loops themselves, by the port they were asked
        // for: other tests open and close descriptors meanwhile, so counting
        // the process's is not exact.)
        for _ in 0..<3 {
            let dir = ScratchDirectory.path("failed")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var doc = ConfigDocument(file: "test")
            doc.set("server.port", .integer(running.port))
            doc.set("server.data_dir", .string(dir))
            let server = Server(config: try PerennialConfig.load(doc, registry: .builtin))
            #expect(throws: (any Error).self) { _ = try server.start() }
        }
        var closes: (freed: Int, leftOpen: Int) = (0, 0)
        for _ in 0..<500 {
            closes = EventLoop.closes.withLock { $0[running.port] ?? (0, 0) }
            if closes.freed >= 3 { break }
            usleep(10_000)
        }
        #expect(closes.freed == 3)
        // Leaking, each left its listener open, the loop unclosed, and
        // about six descriptors with it.
        #expect(closes.leftOpen == 0)
    }

    @Test func aStoppedLearnerIsFreed() throws {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array([.string("popularity")]))
        let model = Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
        weak var freed: Learner?
        do {
            let learner = Learner(model: model, capacity: 64)
            freed = learner
            learner.start()
            learner.stop()
        }
        // (The thread lets go of its closure once it has exited, just after
        // `stop` returns.)
        for _ in 0..<100 where freed != nil { usleep(10_000) }
        #expect(freed == nil)
    }
}
