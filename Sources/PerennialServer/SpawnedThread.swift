// A thread started with pthread_create, so that a failure to start one is
// known: Foundation's Thread.start() gives no sign of it, and the work it
// was to do (a snapshot's serialisation, or waiting for its writer process)
// would silently never happen, leaving whatever waits for it waiting for
// good (helper-83: a server one task short of its pids cgroup limit held
// FEEDBACK, SNAPSHOT requests and its own graceful stop forever).

import CProcess
#if canImport(Glibc)
import Glibc
#endif

enum SpawnedThread {
    private final class Work {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Runs `body` on a new detached thread named `name` (at most 15
    /// bytes are kept); returns the error code when none could be started.
    static func start(name: String, _ body: @escaping @Sendable () -> Void) -> Int32? {
        let work = Unmanaged.passRetained(Work(name: name, body: body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            let work = Unmanaged<Work>.fromOpaque(context!).takeRetainedValue()
            _ = perennial_name_thread(String(work.name.utf8.prefix(15))!)
            work.body()
            return nil
        }, work)
        guard rc == 0 else {
            Unmanaged<Work>.fromOpaque(work).release()
            return rc
        }
        pthread_detach(thread)
        return nil
    }
}
