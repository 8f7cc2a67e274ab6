// The gan candidate generator and a candidates → re-rank route through a
// real server.

import Foundation
import Testing
import PerennialClient
import PerennialProtocol

@Suite struct GANServerTests {
    /// Three planted clusters of 40 items; users keep to their cluster.
    /// For a user of cluster 1, most of gan's 30 candidates come from that
    /// cluster (chance: a third), and the route's re-ranked top 10 too.
    @Test func candidatesFollowThePlantedCluster() async throws {
        let s = try TestServer("""
            [limits]
            wait_ms = 120000
            [scorers]
            load = ["cf", "gan"]
            [routes.gan-cf]
            candidates = "gan"
            count = 40
            rerank = "cf"
            """)
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port, timeout: 120)
        defer { c.close() }
        var rng = SplitMix(seed: 12)
        var events: [WireEvent] = []
        for _ in 0..<8000 {
            let user = UInt64(rng.below(150) + 1)
            events.append(WireEvent(user: user, item: (user % 3) * 40 + UInt64(rng.below(40) + 1), kind: .click))
        }
        _ = try await c.stream(events, batchSize: 1000)
        let inCluster = { (items: [RankedItem]) in items.filter { (41...80).contains($0.item) }.count }
        // User 1000 is new; two clicks in cluster 1 describe them.
        _ = try await c.feedback([WireEvent(user: 1000, item: 45, kind: .click), WireEvent(user: 1000, item: 60, kind: .click)])
        let candidates = try await c.recommend(user: 1000, k: 30, scorer: "gan")
        #expect(candidates.count == 30)
        #expect(inCluster(candidates) >= 20, "\(candidates.map(\.item))")
        let routed = try await c.recommend(user: 1000, k: 10, scorer: "gan-cf")
        #expect(routed.count == 10 && inCluster(routed) >= 8, "\(routed.map(\.item))")
        // More than the catalogue: every item the user has not seen, once.
        let all = try await c.recommend(user: 1000, k: 1000, scorer: "gan")
        #expect(all.count == 118 && Set(all.map(\.item)).count == 118)
        // SCORE through the route uses its re-ranking scorer.
        #expect(try await c.score(user: 1000, items: [50], scorer: "gan-cf") == (try await c.score(user: 1000, items: [50], scorer: "cf")))
        // N = 0 is refused; an unknown candidate source is UNKNOWN_SCORER.
        await #expect(throws: PerennialClientError.self) { _ = try await c.recommend(user: 1000, k: 0, scorer: "gan") }
        do {
            _ = try await c.recommend(user: 1000, k: 5, scorer: "gan-nope")
            Issue.record("an unknown route was accepted")
        } catch let e as PerennialClientError {
            #expect("\(e)".contains("UNKNOWN_SCORER") && "\(e)".contains("gan-cf"), "\(e)")
        }
        let stats = try await c.stats()
        #expect(stats["gan_positives"]! >= 8000)
    }

    @Test func anEmptyCatalogueGivesNoCandidates() async throws {
        let s = try TestServer("[scorers]\nload = [\"gan\"]\n")
        defer { s.stop() }
        let c = try await PerennialClient.connect(port: s.port)
        defer { c.close() }
        #expect(try await c.recommend(user: 1, k: 100).isEmpty)
    }
}
