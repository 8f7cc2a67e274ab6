// A server that cannot start (its port is taken) leaves nothing behind in
// the process: no descriptors of its event loop (helper-55: each failed
// start leaked about six), and a stopped learner (holding the model) is freed.

import Foundation
import Testing
import PerennialCore
import PerennialPlugins
@testable import PerennialServer

@Suite struct FailedStartTests {
    static func descriptors() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0 }

    @Test func aStartThatCannotBindLeaksNoDescriptors() throws {
        let running = try TestServer()
        defer { running.stop() }
        let before = Self.descriptors()
        for _ in 0..<10 {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("perennial-failed-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var doc = ConfigDocument(file: "test")
            doc.set("server.port", .integer(running.port))
            doc.set("server.data_dir", .string(dir))
            let server = Server(config: try PerennialConfig.load(doc, registry: .builtin))
            #expect(throws: (any Error).self) { _ = try server.start() }
        }
        // (Other tests run alongside and open descriptors of their own.)
        #expect(Self.descriptors() - before < 40)  // leaking, 10 starts left about 60
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
