// `perennial serve`: run the server until SIGINT/SIGTERM.

import ArgumentParser
import Foundation
import PerennialCore
import PerennialPlugins
import PerennialServer

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the server (bundled defaults unless --config is given).",
        discussion: """
            Every setting and its default is documented in config/perennial.toml.
            Command-line options override the file. SIGHUP (or the RELOAD admin
            request) re-reads the file: scorers and limits change for new requests
            without dropping connections. The server stops gracefully on
            SIGINT or SIGTERM: it stops accepting, answers what it has read,
            flushes, lets the learner apply what it accepted, and exits 0.
            """
    )

    @Option(help: "Config file (TOML). Without it, the bundled defaults are used.")
    var config: String?

    @Option(help: "Address to listen on (default 127.0.0.1: loopback only).")
    var host: String?

    @Option(parsing: .unconditional, help: "Port to listen on (default 7878; 0 picks a free port).")
    var port: Int?

    @Option(help: "Directory for the server's data (default ./data).")
    var dataDir: String?

    @Option(help: "Write-ahead log fsync policy: always, everysec or no (overrides the config).")
    var fsync: String?

    @Option(name: .customLong("from-version"), help: "Start from this model version (see `perennial versions`) instead of the newest: a rollback; later events stay in the log, not learned.")
    var fromVersion: String?

    @Option(name: .customLong("drop-scorer"), help: "Drop this scorer's learned state if the newest snapshot holds it and the config no longer loads it (repeatable); without it such a start is refused, since the state would be lost for good.")
    var dropScorer: [String] = []

    func run() throws {
        var overrides: [String: ConfigValue] = [:]
        if let host { overrides["server.host"] = .string(host) }
        if let port { overrides["server.port"] = .integer(port) }
        if let dataDir { overrides["server.data_dir"] = .string(dataDir) }
        if let fsync { overrides["log.fsync"] = .string(fsync) }
        let cfg: PerennialConfig
        do {
            if let config {
                cfg = try PerennialConfig.load(file: config, registry: .builtin, overrides: overrides)
            } else {
                var doc = ConfigDocument(file: "<bundled defaults>")
                for (k, v) in overrides { doc.set(k, v) }
                cfg = try PerennialConfig.load(doc, registry: .builtin)
            }
        } catch {
            FileHandle.standardError.write(Data("perennial: config error: \(error)\n".utf8))
            throw ExitCode(2)
        }
        do {
            var reload: (@Sendable () throws -> PerennialConfig)?
            if let path = config {
                let fixedOverrides = overrides
                reload = { @Sendable () throws -> PerennialConfig in
                    try PerennialConfig.load(file: path, registry: .builtin, overrides: fixedOverrides)
                }
            }
            try Server(config: cfg, startVersion: fromVersion, dropScorers: Set(dropScorer), reloadConfig: reload).run()
        } catch {
            FileHandle.standardError.write(Data("perennial: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
