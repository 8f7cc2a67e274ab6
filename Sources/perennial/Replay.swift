// `perennial replay`: stream a MovieLens folder into a running server as
// FEEDBACK, in stream order, and report the rate.

import ArgumentParser
import Foundation
import PerennialClient
import PerennialCore
import PerennialEval
import PerennialProtocol

struct Replay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream a MovieLens folder's item texts (UPSERT_ITEM) and ratings (FEEDBACK) into a server.",
        discussion: """
            First every movie's text (title, genres, tags, as EVALUATION.md defines
            it) is sent as UPSERT_ITEM, pipelined. Then events go in time order (ratings.csv sorted stably by timestamp, user,
            item) as kind "rating" with the rating as value, in batches, with a
            bounded window of unacknowledged batches. Ends when every event is
            acknowledged and applied, and prints events/second.
            """
    )

    @Option(help: "A MovieLens-shaped folder (ratings.csv, movies.csv, tags.csv).")
    var data: String

    @Option var host = "127.0.0.1"
    @Option(parsing: .unconditional) var port = 7878
    @Option(parsing: .unconditional, help: "Send only the first N events.")
    var limit: Int?
    @Option(parsing: .unconditional, help: "Events per FEEDBACK batch.")
    var batch = 1000
    @Option(parsing: .unconditional, help: "Unacknowledged batches in flight.")
    var window = 8
    @Flag(help: "Do not send the item texts.")
    var noTexts = false
    @Option(help: "A file holding the server's token (auth.token_file; its first token when it lists several), sent in HELLO.")
    var tokenFile: String?

    func validate() throws {
        if let limit, limit < 0 { throw ValidationError("--limit must be 0 or more, not \(limit)") }
        guard batch >= 1, window >= 1 else { throw ValidationError("--batch and --window must be at least 1") }
        guard (1...65535).contains(port) else { throw ValidationError("--port must be in 1...65535, not \(port)") }
    }

    func run() async throws {
        let ml = try MovieLensData.load(folder: data)
        if ml.skippedTextRows.count > 0 && !noTexts {
            print("warning: \(ml.skippedTextRows.count) row(s) of item texts could not be read and are left out (the first: \(ml.skippedTextRows.first ?? "?"); a row needs an id and its fields, and a quote left open runs to the end of the file)")
        }
        var events = ml.ratings.map {
            WireEvent(user: $0.user, item: $0.item, kind: .rating, value: $0.rating, timestamp: $0.timestamp)
        }
        if let limit { events = Array(events.prefix(max(0, limit))) }
        let client = try await PerennialClient.connect(host: host, port: port, greet: false)
        do {
            _ = try await client.hello(clientName: "perennial-replay", token: try tokenFile.map(readToken) ?? "")
        } catch PerennialClientError.server(let code, _, _, let message) where code == .unauthorized {
            throw CommandError("the server refused the connection: \(message)" + (tokenFile == nil ? " (pass --token-file FILE, the file holding the token)" : ""))
        }
        // A server still replaying its own log after a restart would refuse
        // the stream's batches (RECOVERING): wait for it, saying so.
        var before = try await client.stats()
        if (before["recovering"] ?? 0) != 0 {
            print("the server is replaying its log after a restart (\(before["recovery_events_left"] ?? 0) events left): waiting for it")
            while (before["recovering"] ?? 0) != 0 {
                try await Task.sleep(nanoseconds: 100_000_000)
                before = try await client.stats()
            }
        }
        if let held = before["events_accepted"], held > 0 {
            print("note: the server already holds \(held) events; these \(events.count) are added to them (a fresh data directory starts from none)")
        }
        if !noTexts && !ml.itemTexts.isEmpty {
            let tText = MonotonicClock.nowNanos()
            var sent = 0
            for chunk in stride(from: 0, to: ml.itemTexts.count, by: 1000) {
                let part = ml.itemTexts[chunk..<min(chunk + 1000, ml.itemTexts.count)]
                let replies = try await client.pipeline(part.map { .upsertItem(UpsertItem(item: $0.item, text: $0.text)) })
                for r in replies { if case .error(let e) = r { throw CommandError("UPSERT_ITEM refused: \(e.code?.name ?? "code \(e.rawCode)"): \(e.message)") } }
                sent += replies.count
            }
            print(String(format: "sent %d item texts in %.3f s", sent, Double(MonotonicClock.nowNanos() - tText) / 1e9))
        }
        let bar = ProgressBar(total: events.count, label: "replay")
        let t0 = MonotonicClock.nowNanos()
        let ack = try await client.stream(events, batchSize: batch, window: window) { bar.update($0) }
        let tAcked = MonotonicClock.nowNanos()
        // Wait until the learner has applied the last event: a read that
        // asks for it is answered the moment it is (no polling interval, no
        // STATS requests taking the learner's core); a slow learner may
        // need longer than one read's wait (`limits.wait_ms`), which ends
        // in TIMEOUT, and then the read is asked again (after a pause when
        // the server does not wait at all, wait_ms = 0).
        if let last = ack?.lastSeq, let user = events.last?.user {
            while true {
                let asked = MonotonicClock.nowNanos()
                do {
                    _ = try await client.recommend(user: user, k: 1, minAppliedSeq: last)
                    break
                } catch PerennialClientError.server(let code, _, _, _) where code == .timeout {
                    if MonotonicClock.nowNanos() - asked < 1_000_000 { try await Task.sleep(nanoseconds: 2_000_000) }
                }
            }
        }
        let tApplied = MonotonicClock.nowNanos()
        bar.finish()
        let stats = try await client.stats()
        client.close()
        let acked = Double(tAcked - t0) / 1e9
        let applied = Double(tApplied - t0) / 1e9
        print(String(format: "replayed %d events from %@: acknowledged in %.3f s (%.0f events/s), applied in %.3f s (%.0f events/s); server events_applied = %llu",
                     events.count, ml.name, acked, Double(events.count) / max(acked, 1e-9), applied,
                     Double(events.count) / max(applied, 1e-9), stats["events_applied"] ?? 0))
    }
}
