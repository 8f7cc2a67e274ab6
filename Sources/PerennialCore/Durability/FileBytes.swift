// A whole file's bytes, or an error that says why it could not be read
// (Foundation's `contents(atPath:)` answers nil alone, and "cannot read
// PATH" left an operator guessing between permissions and a missing file:
// review finding, helper-59).

#if canImport(Glibc)
import Glibc
#endif

enum FileBytes {
    static func read(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LogError("cannot read \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw LogError("cannot read \(path): \(String(cString: strerror(errno)))") }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw LogError("cannot read \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { bytes.removeSubrange(done...); break }  // (shrank while read)
            done += n
        }
        return bytes
    }
}
