// Forgetting items drops every co-occurrence count naming them. A few items
// are looked up in each table by their hash, many are found by reading each
// table whole: both ways must leave exactly the same tables, and no table
// may still name a forgotten item.

import Testing
@testable import PerennialCore

@Suite struct ItemNeighbourhoodForgetTests {
    /// The same skewed stream of pairs into a fresh neighbourhood (small
    /// tables, so many fill and shrink).
    private func filled(items: Int, seed: UInt64) -> ItemNeighbourhood {
        let n = ItemNeighbourhood(capacity: 64, window: 6)
        n.grow(items: items)
        var rng = SplitMix64(seed: seed)
        var recent: [Int32] = []
        for _ in 0..<40_000 {
            let r = Double(rng.below(1 << 20)) / Double(1 << 20)
            let item = Int32(Double(items) * r * r)
            n.learn(item: item, previous: recent[...], weight: 1)
            recent.append(item)
            if recent.count > 6 { recent.removeFirst() }
        }
        return n
    }

    /// Item a's slots, as bit patterns (an empty slot's key is a NaN).
    private func table(_ n: ItemNeighbourhood, _ a: Int) -> [UInt32] {
        UnsafeBufferPointer(start: n.slots.row(a), count: 2 * n.capacity).map(\.bitPattern)
    }

    @Test(arguments: [[Int32(0)], [1, 7, 299], [2, 3, 5, 8, 13, 21, 34, 55, 89, 144]])
    func bothWaysLeaveTheSameTables(_ forgotten: [Int32]) {
        let items = 300
        let lookedUp = filled(items: items, seed: 9), read = filled(items: items, seed: 9)
        let retired = RetiredItems(forgotten, itemCount: items)
        // Before: the forgotten items are named somewhere (else the test is empty).
        #expect((0..<items).contains { a in forgotten.contains { lookedUp.count(Int32(a), $0) > 0 } })
        let before = (0..<items).map { table(lookedUp, $0) }
        lookedUp.forget(retired, lookingUp: true)
        read.forget(retired, lookingUp: false)
        var changed = 0
        for a in 0..<items {
            #expect(table(lookedUp, a) == table(read, a), "table \(a)")
            for f in forgotten { #expect(lookedUp.count(Int32(a), f) == 0) }
            if table(lookedUp, a) != before[a] { changed += 1 }
            // Every other count is kept.
            if !forgotten.contains(Int32(a)) {
                for b in 0..<Int32(items) where !forgotten.contains(b) {
                    let s = before[a]
                    var kept: Float = 0
                    for slot in 0..<lookedUp.capacity where s[2 * slot] == UInt32(bitPattern: b) { kept = Float(bitPattern: s[2 * slot + 1]) }
                    if lookedUp.count(Int32(a), b) != kept { Issue.record("table \(a) lost item \(b)'s count") }
                }
            }
        }
        #expect(changed > 0)
    }
}
