// Forgotten items leave users' histories lazily (InteractionHistory): every
// read must see exactly what removing them from every list at once gives,
// however reads, writes, sweeps and later items taking the freed indices
// interleave.

import Testing
@testable import PerennialCore

@Suite struct HistoryForgetTests {
    /// Item indices are multiples of `spread`: 1 (each its own sieve bit),
    /// or 4,096 (all sharing one, so every entry reaches the numbers).
    @Test(arguments: [1, 4_096])
    func forgettingLazilyReadsAsForgettingAtOnce(spread: Int) {
        let items = 60, users = 40, limit = 8
        let index = { (n: Int) in Int32(n * spread) }
        let h = InteractionHistory(limitPerUser: limit)
        // The same lists, each deletion applied to all of them at once.
        var reference = [[Int32]](repeating: [], count: users)
        var rng = SplitMix64(seed: 7)
        var deletions = 0, reads = 0
        for _ in 0..<60_000 {
            let u = Int32(rng.below(users))
            switch rng.below(100) {
            case 0..<70:
                // An event; its index may be one a deletion freed, now
                // another item's.
                let i = index(rng.below(items))
                h.record(user: u, item: i, kind: .click)
                reference[Int(u)].removeAll { $0 == i }
                reference[Int(u)].append(i)
                if reference[Int(u)].count > limit { reference[Int(u)].removeFirst() }
            case 70..<73:
                let gone = Array(Set((0...rng.below(3)).map { _ in index(rng.below(items)) })).sorted()
                h.remove(RetiredItems(gone, itemCount: items * spread))
                for v in reference.indices { reference[v].removeAll { gone.contains($0) } }
                deletions += 1
            case 73..<75:
                h.sweep(users: 1 + rng.below(10))
            case 75:
                h.clear(user: u)
                reference[Int(u)] = []
            default:
                #expect(h.items(of: u) == reference[Int(u)])
                #expect(h.kinds(of: u).count == reference[Int(u)].count)
                reads += 1
            }
        }
        #expect(deletions > 1_500 && reads > 10_000)
        // The pass under way and a full one leave every list clean; nothing
        // read changes.
        h.sweep(users: users)
        h.sweep(users: users)
        #expect(!h.unsettled)
        for v in 0..<users { #expect(h.items(of: Int32(v)) == reference[v]) }
        #expect(h.totalEntries == reference.map(\.count).reduce(0, +))
    }

    @Test func aDeletionReachesEveryListThroughTheSweepAlone() {
        // Lists never read again are cleaned by the sweep, a slice at a
        // time, and every list is clean once the pass ends.
        let h = InteractionHistory(limitPerUser: 10)
        for u in 0..<100 { for i in [1, 2, 3] { h.record(user: Int32(u), item: Int32(i), kind: .view) } }
        h.remove(RetiredItems([2], itemCount: 10))
        #expect(h.totalEntries == 300)
        var turns = 0
        while h.sweep(users: 16) { turns += 1 }
        #expect(turns == 6)   // 100 users, 16 a turn: the 7th turn ends the pass
        #expect(h.totalEntries == 200 && !h.unsettled)
        #expect(h.items(of: 57) == [1, 3])
    }

    @Test func retiredItemsAreFoundThroughTheSieveAndNoOthers() {
        // Indices 4,096 apart share a sieve bit: only the retired one is in,
        // and a set bit for an index outside the catalogue (or negative)
        // is not membership.
        let retired = RetiredItems([5, 9_000], itemCount: 20_000)
        #expect(retired.contains(5) && retired.contains(9_000))
        for other: Int32 in [6, 5 + 4_096, 9_000 - 4_096, 5 + 5 * 4_096, -4_091, 0] {
            #expect(!retired.contains(other), "\(other)")
        }
        // A large set (every sieve bit set) is answered by membership alone.
        let many = RetiredItems(Array(0..<2_000), itemCount: 5_000)
        #expect(many.contains(0) && many.contains(1_999))
        #expect(!many.contains(2_000) && !many.contains(4_096 + 5) && !many.contains(-1) && !many.contains(6_000))
        // Every user's history loses them, and only them.
        let h = InteractionHistory(limitPerUser: 10)
        for (u, items) in [(0, [1, 5, 4_101, 7]), (1, [4_101, 9_000]), (2, [8]), (3, [5])] {
            for i in items { h.record(user: Int32(u), item: Int32(i), kind: .click) }
        }
        h.remove(retired)
        #expect(h.items(of: 0) == [1, 4_101, 7])
        #expect(h.items(of: 1) == [4_101])
        #expect(h.items(of: 2) == [8])
        #expect(h.items(of: 3) == [])
        #expect(h.kinds(of: 0).count == 3)
        #expect(h.totalEntries == 5)
    }
}
