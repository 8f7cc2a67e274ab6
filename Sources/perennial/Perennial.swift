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
}
