// A file a command will write its results to (--json, --plot), checked
// before the command runs rather than after it: a run of minutes ending in
// "The file doesn't exist." helps nobody (review findings, helper-76).

import Foundation
import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

enum OutputPath {
    /// Throws a one-line ValidationError naming `flag` when `path` is a
    /// directory, or its directory is missing or cannot be written.
    static func check(_ path: String?, flag: String) throws {
        guard let path else { return }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            throw ValidationError("\(flag) \(path) is a directory: give a file name")
        }
        let given = (path as NSString).deletingLastPathComponent
        let parent = given.isEmpty ? "." : given
        guard FileManager.default.fileExists(atPath: parent, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ValidationError("\(flag) \(path): there is no directory \(parent)")
        }
        if access(parent, W_OK) != 0 || (FileManager.default.fileExists(atPath: path) && access(path, W_OK) != 0) {
            throw ValidationError("\(flag) \(path): cannot write there (\(String(cString: strerror(errno))))")
        }
    }
}
