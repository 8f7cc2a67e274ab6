// The client side of `auth.token_file`: the tools that connect to a server
// with a token (bench, replay) read it from a file, as the server does, so
// it never shows in a process list.

import Foundation
import PerennialCore
import PerennialEval

/// The token in the file at `path`, surrounding whitespace removed. A
/// server's file may list several, one per line, while a token is rotated:
/// the first one listed is sent, the one the server knows at every step of
/// a rotation (the new token is added below the old, and the server reads
/// the file again only at a RELOAD).
func readToken(_ path: String) throws -> String {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw CommandError("cannot read the token file \(path)")
    }
    guard let first = PerennialConfig.tokenLines(text).first else { throw CommandError("the token file \(path) is empty") }
    return first.token
}
