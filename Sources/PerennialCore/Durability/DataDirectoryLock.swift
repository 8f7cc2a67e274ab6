// The lock on a data directory (`<data_dir>/LOCK`, flock): one process at a
// time may change a data directory, so a server never appends to a log that
// another server, or `perennial log repair`, is changing under it. Held by
// the open descriptor until it is closed (or the process exits).

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum DataDirectoryLock {
    /// Takes the lock of `directory` (which must exist); returns the
    /// descriptor that holds it.
    public static func take(_ directory: String) throws -> Int32 {
        let path = (directory as NSString).appendingPathComponent("LOCK")
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw LogError("cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw LogError("the data directory \(directory) is in use by another perennial server (or tool)")
        }
        return fd
    }
}
