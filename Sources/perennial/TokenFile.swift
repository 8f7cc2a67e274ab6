// The client side of `auth.token_file`: the tools that connect to a server
// with a token (bench, replay) read it from a file, as the server does, so
// it never shows in a process list.

import Foundation
import PerennialEval

/// The token in the file at `path`, surrounding whitespace removed.
func readToken(_ path: String) throws -> String {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw CommandError("cannot read the token file \(path)")
    }
    let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
    if token.isEmpty { throw CommandError("the token file \(path) is empty") }
    return token
}
