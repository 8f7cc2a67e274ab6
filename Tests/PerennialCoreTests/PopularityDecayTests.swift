// Popularity with decay rescales every count now and then on the learner;
// a SCORE or RECOMMEND read meanwhile must never mix rescaled and unscaled
// counts (helper-55: two equally popular items' scores differed by a factor
// of 2^62 during a rescale).

import Foundation
import Synchronization
import Testing
@testable import PerennialCore
@testable import Popularity

/// The scorer as the server shares it: the learner thread writes, the
/// serving thread reads (the scorer's own contract makes that safe).
private struct SharedScorer: @unchecked Sendable { let p: PopularityScorer }

@Suite struct PopularityDecayTests {
    @Test func readsDuringRescalesStayConsistent() throws {
        let p = PopularityScorer(settings: PopularitySettings(halfLifeEvents: 1000))  // a rescale every 60,000 events
        p.grow(users: 1, items: 1_000_000)  // a rescale walks them all
        let query = ScoringQuery(user: nil, exclusions: ExclusionSet(), itemCount: 1_000_000)
        let stop = Atomic<Bool>(false), learned = Atomic<Int>(0)
        let shared = SharedScorer(p: p)
        let learner = Thread {
            let p = shared.p
            var seq: UInt64 = 0
            while !stop.load(ordering: .relaxed) {
                seq += 1
                p.learn(LearnEvent(seq: seq, user: 0, item: seq % 2 == 0 ? 0 : 999_999, kind: .click, value: 1, timestamp: 0))
                learned.store(Int(seq), ordering: .relaxed)
            }
        }
        learner.start()
        // Alternating events on the first and the last item (rescaled some
        // 100,000 rows apart): the two counts are equal but for the events
        // the learner applies while the two are read (each makes a count
        // 2^(1/1000) larger), never a rescale's 2^60.
        var worstExcess = 0.0
        for _ in 0..<1_000_000 {
            let before = learned.load(ordering: .relaxed)
            let s = p.score(query, items: [0, 999_999])
            let during = learned.load(ordering: .relaxed) - before
            // (Until each item has some thousand events, one event moves a
            // count by more than its share.)
            guard before > 10_000 else { continue }
            let ratio = s[0] > 0 && s[1] > 0 ? log2(Double(max(s[0] / s[1], s[1] / s[0]))) : 1000
            worstExcess = max(worstExcess, ratio - Double(during + 2) / 1000)
        }
        stop.store(true, ordering: .relaxed)
        #expect(worstExcess < 0.5)
    }
}
