// The live scorer comparison's memory: whatever one client asks, the
// remembered answers stay within the tracker's bounds, and what is
// remembered is still scored.

import Testing
import PerennialCore
@testable import PerennialServer

@Suite struct ShadowTrackerTests {
    @Test func rememberedAnswersStayWithinTheirBounds() {
        let t = ShadowTracker(capacity: 500, itemBudget: 10_000)
        // 2,000 users, each answered with 100 + 100 items: 400,000 ids asked.
        for u in 1...2000 {
            let served = (0..<100).map { UInt64(u * 1000 + $0) }
            t.record(user: UInt64(u), shadow: "text-cnn", served: served, other: served.reversed())
            #expect(t.heldItems <= 10_000)
        }
        let counters = Dictionary(uniqueKeysWithValues: t.counters)
        #expect(counters["shadow_pending_users"] == 50 && counters["shadow_pending_items"] == 10_000)
        // The oldest were forgotten; the newest are still scored.
        t.observe(user: 1, item: 1000, kind: .click, value: 1, weights: FeedbackWeights())
        t.observe(user: 2000, item: 2_000_005, kind: .click, value: 1, weights: FeedbackWeights())
        #expect(t.tallies["text-cnn"]?.followups == 1 && t.tallies["text-cnn"]?.servedHits == 1)
        #expect(t.tallies["text-cnn"]?.requests == 2000)
        #expect(t.heldItems == 9_800)
        // A user asked again replaces their answer instead of adding one.
        t.record(user: 1999, shadow: "text-cnn", served: [1], other: [2])
        #expect(t.heldItems == 9_800 - 200 + 2)
    }
}
