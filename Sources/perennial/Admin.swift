// `perennial admin`: a running server's operations from the shell (as
// redis-cli is to redis): check it answers, read its counters, and the
// admin requests RELOAD, SNAPSHOT and SHUTDOWN.

import ArgumentParser
import Foundation
import PerennialClient
import PerennialCore
import PerennialEval
import PerennialProtocol

struct Admin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask a running server: ping, stats, reload, snapshot, shutdown.",
        discussion: """
            ping      round trip to the server, and its name and limits (HELLO)
            stats     every counter, one per line (--json: one JSON object);
                      name prefixes to show only those, e.g. `stats cf_ events_`
            reload    re-read the config file the server was started with and
                      apply it (scorers, their settings, [limits]); settings
                      that need a restart are refused and nothing changes
            snapshot  write a snapshot (a new model version) now; prints its id
            shutdown  stop the server gracefully (needs the admin token, or
                      server.allow_shutdown = true)
            reload, snapshot and shutdown need the admin token when the server
            has auth.admin_token_file (--token-file names the file holding it).
            """
    )

    @Argument(help: "ping, stats, reload, snapshot or shutdown")
    var action: String
    @Argument(help: "With stats: only counters whose names start with one of these.")
    var prefixes: [String] = []
    @Option var host = "127.0.0.1"
    @Option(parsing: .unconditional) var port = 7878
    @Option(help: "A file holding the token to send in HELLO (auth.token_file or admin_token_file; its first token when it lists several).")
    var tokenFile: String?
    @Option(parsing: .unconditional, help: "Seconds to wait for the connection and for each reply (default 10; 600 for reload and snapshot, which write the whole model first).")
    var timeout: Double?
    @Flag(help: "Print one JSON object (for scripts): stats' counters, or what the action did.")
    var json = false

    func validate() throws {
        guard ["ping", "stats", "reload", "snapshot", "shutdown"].contains(action) else {
            throw ValidationError("unknown action '\(action)': use ping, stats, reload, snapshot or shutdown")
        }
        if !prefixes.isEmpty && action != "stats" { throw ValidationError("only stats takes name prefixes") }
        if let t = timeout, !(t > 0 && t <= 86_400) { throw ValidationError("--timeout must be above 0 and at most 86400 seconds, not \(t)") }
    }

    func run() async throws {
        do {
            try await perform()
        } catch {
            reportFailure(error)
            throw error
        }
    }

    /// A script reading --json gets an object on failure too (a
    /// connection, the server's refusal), not an empty stdout; the message
    /// also goes to stderr, and the exit code says it failed.
    private func reportFailure(_ error: any Error) {
        if json { try? Self.printJSON(["action": action, "error": "\(error)"]) }
    }

    /// The same for a command line refused before `admin` ran (an unknown
    /// option, a bad value, an unknown action: Perennial.main): the action
    /// is the first word after `admin` that is not an option (null when
    /// there is none).
    static func reportRefusedCommandLine(_ arguments: [String], message: String) {
        // (After "--" every word is an argument: "--json" there is not the flag.)
        guard let at = arguments.firstIndex(of: "admin"), !arguments[..<at].contains(where: { !$0.hasPrefix("-") }) else { return }
        let options = arguments[at...].prefix { $0 != "--" }
        guard options.contains("--json") else { return }
        // (Options that take a value: their value is not the action.)
        let valued: Set<String> = ["--host", "--port", "--token-file", "--timeout"]
        var action: String?
        var i = at + 1
        while i < arguments.count {
            let word = arguments[i]
            if valued.contains(word) { i += 2; continue }
            if !word.hasPrefix("-") { action = word; break }
            i += 1
        }
        try? printJSON(["action": action.map { $0 as Any } ?? NSNull(), "error": message])
    }

    private func perform() async throws {
        let client: PerennialClient
        do {
            // (A snapshot of a large model takes longer than any reply.)
            let wait = timeout ?? (["reload", "snapshot"].contains(action) ? 600 : 10)
            // (The HELLO below, with the token, is the one timed.)
            client = try await PerennialClient.connect(host: host, port: port, timeout: wait, greet: false)
        } catch {
            throw CommandError("\(error)")
        }
        defer { client.close() }
        do {
            let hello = try await client.hello(clientName: "perennial-admin", token: try tokenFile.map(readToken) ?? "")
            switch action {
            case "ping":
                let t0 = MonotonicClock.nowNanos()
                try await client.ping()
                let us = Double(MonotonicClock.nowNanos() - t0) / 1e3
                if json {
                    return try Self.printJSON(["server_name": hello.serverName, "host": host, "port": port, "round_trip_us": Int(us),
                                          "protocol_version": Int(hello.protocolVersion), "max_frame_bytes": Int(hello.maxFrameBytes),
                                          "max_items": Int(hello.maxItems), "max_events": Int(hello.maxEvents)])
                }
                print(String(format: "%@ at %@:%d answered in %.0f us (max frame %u bytes, k up to %u, %u events a batch)",
                             hello.serverName, host, port, us, hello.maxFrameBytes, hello.maxItems, hello.maxEvents))
            case "stats":
                let shown = try await client.stats().filter { s in prefixes.isEmpty || prefixes.contains { s.key.hasPrefix($0) } }
                // (A mistyped prefix must not look like an empty answer.)
                if shown.isEmpty && !prefixes.isEmpty {
                    throw CommandError("no counter's name starts with \(prefixes.joined(separator: " or ")); `perennial admin stats` lists them all")
                }
                if json {
                    try Self.printJSON(shown)
                } else {
                    let width = shown.keys.map(\.count).max() ?? 0
                    for (name, value) in shown.sorted(by: { $0.key < $1.key }) {
                        print(name.padding(toLength: width, withPad: " ", startingAt: 0) + "  \(value)")
                    }
                }
            case "reload":
                guard case .reload = try await client.call(.reload) else { throw CommandError("unexpected reply to RELOAD") }
                if json { return try Self.printJSON(["reloaded": true]) }
                print("reloaded: the server applied its config file (its log says what changed)")
            case "snapshot":
                guard case .snapshot(let seq, let version) = try await client.call(.snapshot) else { throw CommandError("unexpected reply to SNAPSHOT") }
                if json { return try Self.printJSON(["seq": seq, "version": version]) }
                print("snapshot durable: version \(version), at log sequence \(seq) (`perennial serve --from-version \(version)` rolls back to it)")
            default:
                try await client.shutdown()
                if json { return try Self.printJSON(["stopping": true]) }
                print("the server is stopping")
            }
        } catch PerennialClientError.server(_, let rawCode, _, let message) {
            let name = ErrorCode(rawValue: rawCode)?.name ?? "CODE_\(rawCode)"
            throw CommandError("the server refused \(action): \(name): \(message)")
        }
    }

    private static func printJSON(_ object: [String: Any]) throws {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    }
}
