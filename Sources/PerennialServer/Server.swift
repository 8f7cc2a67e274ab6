// The server as a value users and tests hold: build it from a config, run it
// on the calling thread (`perennial serve`) or on a thread of its own
// (tests), stop it from anywhere.

import CLibUV
import Foundation
import PerennialCore
import PerennialPlugins
import Synchronization

public final class Server: Sendable {
    public let config: PerennialConfig
    private let state: Mutex<State>
    private let started = DispatchSemaphore(value: 0)
    private let ended = DispatchSemaphore(value: 0)

    struct State {
        var port = 0
        var waker: EventLoopWaker?
        var running = false
        var startError: String?
    }

    public init(config: PerennialConfig) {
        self.config = config
        state = Mutex(State())
    }

    /// Runs the server on the calling thread until it stops (SIGINT/SIGTERM,
    /// SHUTDOWN or `stop()`). `onListening` gets the bound port.
    public func run(handleSignals: Bool = true, onListening: (Int) -> Void = { _ in }) throws {
        raiseOpenFileLimit()
        try prepareDataDirectory()
        let model = Model(config: config, registry: .builtin)
        // The learner reports progress through the loop's async handle, which
        // exists only once the loop is bound; until then it has nothing to report.
        let wakerBox = Mutex<EventLoopWaker?>(nil)
        let learner = Learner(model: model, capacity: config.learnerQueueCapacity) { _ in
            wakerBox.withLock { $0 }?.progressed()
        }
        let handler = RequestHandler(config: config, model: model, learner: learner)
        let loop = EventLoop(handler: handler)
        let port: Int
        do {
            port = try loop.bind(host: config.host, port: config.port, handleSignals: handleSignals)
        } catch {
            state.withLock { $0.startError = "\(error)" }
            started.signal()
            ended.signal()
            throw error
        }
        wakerBox.withLock { $0 = loop.waker }
        learner.start()
        state.withLock {
            $0.port = port
            $0.waker = loop.waker
            $0.running = true
        }
        Log.info("perennial \(PerennialVersion.string) listening on \(config.host):\(port) (scorers: \(model.scorerNames.joined(separator: ", ")); default \(model.defaultScorer); config \(config.source))")
        onListening(port)
        started.signal()
        loop.run()
        // The learner was stopped (and drained) before the loop's handles closed.
        state.withLock {
            $0.running = false
            $0.waker = nil
        }
        wakerBox.withLock { $0 = nil }
        Log.info("stopped after \(handler.stats.requestsTotal) requests; \(model.appliedSeq) events applied")
        ended.signal()
    }

    /// Starts the server on a new thread and returns its port once it listens.
    public func start() throws -> Int {
        let t = Thread { [self] in
            do { try run(handleSignals: false) } catch { Log.error("\(error)") }
        }
        t.name = "perennial-loop"
        t.start()
        started.wait()
        if let e = state.withLock({ $0.startError }) { throw ServerError(e) }
        return state.withLock { $0.port }
    }

    /// Asks the server to stop gracefully and waits until it has.
    public func stop() {
        let shouldWait = state.withLock { s -> Bool in
            guard s.running, let w = s.waker else { return false }
            w.requestStop()
            return true
        }
        if shouldWait { ended.wait(); ended.signal() }
    }

    public var port: Int { state.withLock { $0.port } }

    private func prepareDataDirectory() throws {
        do {
            try FileManager.default.createDirectory(atPath: config.dataDir, withIntermediateDirectories: true)
        } catch {
            throw ServerError("cannot create the data directory \(config.dataDir): \(error.localizedDescription)")
        }
    }
}

/// Many concurrent connections need many descriptors: lift the soft limit to
/// the hard one.
private func raiseOpenFileLimit() {
    var rl = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0, rl.rlim_cur < rl.rlim_max else { return }
    rl.rlim_cur = rl.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
}
