import Testing
@testable import PerennialCore

@Suite struct RecencyQueueTests {
    /// Oldest-first order by last sighting, stale entries skipped, and the
    /// queue stays near one entry per key under a long stream of repeats.
    @Test func keepsTheLeastRecentlySeenFirstInBoundedMemory() {
        var q = RecencyQueue<Int>()
        var latest: [Int: UInt64] = [:]
        let live = { (k: Int, s: UInt64) in latest[k] == s }
        var stamp: UInt64 = 0
        var rng = SplitMix64(seed: 5)
        var largest = 0
        for _ in 0..<1_000_000 {
            let k = rng.below(100)
            stamp += 1
            latest[k] = stamp
            q.append(k, stamp: stamp, isLive: live)
            largest = max(largest, q.count)
        }
        #expect(largest <= 1024 + 1, "the queue grew to \(largest) entries for 100 keys")
        // Every key once, ordered by its last sighting.
        let order = q.live(isLive: live)
        #expect(order.count == 100)
        #expect(order.map(\.stamp) == order.map(\.stamp).sorted())
        // Taking the oldest repeatedly yields that same order.
        var taken: [Int] = []
        while let (k, _) = q.oldest(isLive: live) {
            taken.append(k)
            q.removeOldest()
            latest[k] = nil
        }
        #expect(taken == order.map(\.key))
        #expect(q.oldest(isLive: live) == nil)
    }
}
