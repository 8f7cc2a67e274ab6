// text-cnn's cache of item encodings by generation (EncodingCache): a
// ranking reads one generation, a refresh is swapped in whole, and it
// finishes even while the catalogue grows faster than it.

import Testing
@testable import TextCNN

@Suite struct EncodingCacheTests {
    /// Encodes item i as the value `version` (every item has a text).
    private func encoder(_ version: Float, count: Box) -> (Int, UnsafeMutablePointer<Float>) -> Bool {
        { i, row in
            count.value += 1
            row[0] = version
            row[1] = Float(i)
            return true
        }
    }

    final class Box { var value = 0 }

    @Test func aRefreshIsSwappedInWhole() {
        let cache = EncodingCache(width: 2)
        cache.grow(items: 1000)
        let count = Box()
        cache.advance(now: 0, every: 20, budget: 100, items: 1000, encode: encoder(1, count: count))
        for i in 0..<1000 { #expect(cache.row(i, encode: encoder(1, count: count))?[0] == 1) }
        // The encoder moved 20 steps: each request encodes 100 items of the
        // next generation, and until all 1,000 are done every row read is
        // the old one.
        for request in 1...10 {
            cache.advance(now: 20, every: 20, budget: 100, items: 1000, encode: encoder(2, count: count))
            let seen = Set((0..<1000).map { cache.row($0, encode: encoder(3, count: count))![0] })
            #expect(seen == (request < 10 ? [1] : [2]), "request \(request)")
        }
        #expect(count.value == 2000)
        // Nothing more to do until the encoder moves again.
        cache.advance(now: 39, every: 20, budget: 100, items: 1000, encode: encoder(4, count: count))
        #expect(count.value == 2000)
    }

    /// Review finding (helper-47): a catalogue growing by more items per
    /// request than the refresh's budget kept it from ever finishing. It
    /// now ends at the item count it began with; later items are encoded
    /// on demand, and again after the swap.
    @Test func aRefreshFinishesWhileTheCatalogueGrows() {
        let cache = EncodingCache(width: 2)
        let count = Box()
        var items = 600
        cache.grow(items: items)
        cache.advance(now: 0, every: 20, budget: 512, items: items, encode: encoder(1, count: count))
        for i in 0..<items { _ = cache.row(i, encode: encoder(1, count: count)) }
        var swappedAt: Int?
        for request in 1...10 {
            items += 600
            cache.grow(items: items)
            cache.advance(now: 20, every: 20, budget: 512, items: items, encode: encoder(2, count: count))
            let before = count.value
            for i in 0..<items { _ = cache.row(i, encode: encoder(2, count: count)) }
            if swappedAt == nil && cache.liveStep == 20 {
                swappedAt = request
                // Only this request's 600 new items are encoded: those added
                // during the refresh went into it as they were encoded on
                // demand (review finding, helper-48: all 1,200 again).
                #expect(count.value - before == 600)
            }
        }
        #expect(swappedAt == 3)   // 1,200 items when it began: 512 + 512 + 176
        // After the swap, every row is the new generation's.
        #expect(Set((0..<items).map { cache.row($0, encode: encoder(9, count: count))![0] }) == [2])
    }

    /// An item whose text changes while a refresh is under way is encoded
    /// again, in the generation it is read from.
    @Test func aChangedItemIsEncodedAgain() {
        let cache = EncodingCache(width: 2)
        let count = Box()
        cache.grow(items: 100)
        cache.advance(now: 0, every: 20, budget: 512, items: 100, encode: encoder(1, count: count))
        for i in 0..<100 { _ = cache.row(i, encode: encoder(1, count: count)) }
        cache.advance(now: 20, every: 20, budget: 10, items: 100, encode: encoder(2, count: count))
        cache.invalidate(5)   // passed by the refresh
        cache.invalidate(50)  // not yet
        #expect(cache.row(5, encode: encoder(7, count: count))?[0] == 7)
        #expect(cache.row(50, encode: encoder(7, count: count))?[0] == 7)
        for _ in 0..<10 { cache.advance(now: 20, every: 20, budget: 10, items: 100, encode: encoder(2, count: count)) }
        #expect(cache.liveStep == 20)
        #expect(cache.row(5, encode: encoder(8, count: count))?[0] == 7)    // copied into the refresh on demand
        #expect(cache.row(50, encode: encoder(8, count: count))?[0] == 2)   // encoded by the refresh after the change
        #expect(cache.row(6, encode: encoder(8, count: count))?[0] == 2)
    }
}
