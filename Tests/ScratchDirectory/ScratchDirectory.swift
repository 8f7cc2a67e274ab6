// Where the tests put their data directories: one folder per test process,
// removed when the process exits, so repeated runs do not fill /tmp (a
// server test leaves a log and snapshots behind, and restarts reuse them, so
// each test cannot simply delete its own directory when its server stops).

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum ScratchDirectory {
    /// `$TMPDIR/perennial-tests-<pid>`; created on first use, when the
    /// folders of earlier test processes that died without cleaning up are
    /// removed too.
    public static let root: String = {
        let base = FileManager.default.temporaryDirectory.path
        let fm = FileManager.default
        for name in (try? fm.contentsOfDirectory(atPath: base)) ?? [] where name.hasPrefix("perennial-tests-") {
            if let pid = Int32(name.dropFirst("perennial-tests-".count)), kill(pid, 0) != 0, errno == ESRCH {
                try? fm.removeItem(atPath: base + "/" + name)
            }
        }
        let dir = base + "/perennial-tests-\(getpid())"
        try? fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: ScratchDirectory.root) }
        return dir
    }()

    /// A fresh path under `root` (not created).
    public static func path(_ prefix: String) -> String {
        root + "/\(prefix)-\(UUID().uuidString)"
    }
}
