// `perennial`: the server and the tools around it.

import ArgumentParser

@main
struct Perennial: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perennial",
        abstract: "A recommendation model server that never stops learning.",
        discussion: """
            Start a server with the bundled defaults (127.0.0.1:7878, data in ./data):
              perennial serve
            Stream the MovieLens sample into it:
              perennial replay --data ../shared/data/ml-latest-small
            """,
        version: "0.1.0",
        subcommands: [Serve.self, Replay.self, Eval.self, Bench.self, Admin.self, LogCommand.self, Versions.self]
    )

    /// As ArgumentParser's own, except that a command line refused before a
    /// command runs (an unknown option, a value of the wrong type, a
    /// refused argument) is reported as JSON too when `admin --json` asked
    /// for it: a script reading --json gets an object on every failure.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        let command: any ParsableCommand
        do {
            command = try parseAsRoot(arguments)
        } catch {
            if exitCode(for: error) != .success { Admin.reportRefusedCommandLine(arguments, message: message(for: error)) }
            exit(withError: error)
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                var plain = command
                try plain.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
