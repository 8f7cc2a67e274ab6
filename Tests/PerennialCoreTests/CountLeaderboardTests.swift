// The count leaderboard answers "the most-counted items this user has not
// seen" from the items it keeps, and must give exactly what a pass over
// every count gives, or say it cannot (then the scorer makes that pass).

import Testing
@testable import PerennialCore
@testable import Popularity

@Suite struct CountLeaderboardTests {
    /// The full pass the leaderboard stands in for.
    private func fullPass(_ query: ScoringQuery, k: Int, score: (Int32) -> Float) -> [Int32] {
        var top = TopK(k: k)
        query.forEachEligibleItem { top.push($0, score($0)) }
        return top.sorted().map(\.item)
    }

    @Test func agreesWithTheFullPassOrDeclines() {
        // A small board (16) over 400 items, integer counts (many ties),
        // random exclusions: both outcomes happen, and every trusted answer
        // is the full pass's.
        let items = 400
        let board = CountLeaderboard(capacity: 16)
        var counts = [Double](repeating: 0, count: items)
        var rng = SplitMix64(seed: 3)
        let exclusions = ExclusionSet()
        var scratch: [Int32] = []
        var trusted = 0, declined = 0
        for step in 0..<20_000 {
            // Skewed: low indices are drawn far more often.
            let r = Double(rng.below(1 << 20)) / Double(1 << 20)
            let item = Int32(Double(items) * r * r * r)
            counts[Int(item)] += Double(1 + rng.below(2))
            board.raised(item, to: counts[Int(item)])
            if step % 1_000 == 999 {
                // Items forgotten: counts cleared, and they leave the board
                // (or, every third time, it is rebuilt). The heap then has
                // places free while items outside count more than new ones.
                let forgotten = (0..<5).map { _ in Int32(rng.below(20)) }
                for i in forgotten { counts[Int(i)] = 0 }
                if step % 3_000 == 2_999 {
                    board.rebuild(items: items) { counts[Int($0)] }
                } else {
                    board.forget(RetiredItems(forgotten, itemCount: items))
                }
            }
            guard step % 7 == 0 else { continue }
            exclusions.reset(itemCount: items)
            for _ in 0..<rng.below(12) { exclusions.insert(Int32(rng.below(30))) }
            let k = [1, 5, 10, 20][rng.below(4)]
            let query = ScoringQuery(user: nil, exclusions: exclusions, itemCount: items)
            let score = { (i: Int32) in Float(counts[Int(i)]) }
            var top = TopK(k: k)
            if board.rank(query, into: &top, scratch: &scratch, score: score) {
                trusted += 1
                #expect(top.sorted().map(\.item) == fullPass(query, k: k, score: score))
            } else {
                declined += 1
            }
        }
        // (The last step forgot up to five kept items, whose places
        // counts rising afterwards would fill.)
        #expect(board.count >= 16 - 5)
        #expect(trusted > 1_000)
        #expect(declined > 100)
    }

    @Test func aBoardNotYetFullAnswersForItemsNeverCounted() {
        // Three items counted out of ten: a top-5 must say it cannot tell
        // (the rest score 0 and tie), a top-3 can.
        let board = CountLeaderboard(capacity: 8)
        var counts = [Double](repeating: 0, count: 10)
        for (item, c) in [(7, 3.0), (2, 1.0), (5, 2.0)] {
            counts[item] = c
            board.raised(Int32(item), to: c)
        }
        let exclusions = ExclusionSet()
        exclusions.reset(itemCount: 10)
        let query = ScoringQuery(user: nil, exclusions: exclusions, itemCount: 10)
        var scratch: [Int32] = []
        var top = TopK(k: 3)
        #expect(board.rank(query, into: &top, scratch: &scratch) { Float(counts[Int($0)]) })
        #expect(top.sorted().map(\.item) == [7, 5, 2])
        top = TopK(k: 5)
        #expect(!board.rank(query, into: &top, scratch: &scratch) { Float(counts[Int($0)]) })
        // Candidates are always ranked by the caller.
        top = TopK(k: 1)
        let restricted = ScoringQuery(user: nil, candidates: [7], exclusions: exclusions, itemCount: 10)
        #expect(!board.rank(restricted, into: &top, scratch: &scratch) { Float(counts[Int($0)]) })
    }

    @Test func placesLeftByForgottenItemsDoNotHideItemsOutside() {
        // Four kept of eight: items 0, 1, 2 and 6; item 3 (3.9) is outside.
        // Items 0 and 1 are forgotten, and two low counts (items 5 and 7)
        // fill their places. Item 3 now outranks item 5 while the root is
        // item 7 (1): a top-3 from the heap ([2, 6, 5]) would be above the
        // root and wrong. The board must decline, and the full pass gives
        // [2, 6, 3].
        let board = CountLeaderboard(capacity: 4)
        var counts = [Double](repeating: 0, count: 8)
        for (item, c) in [(0, 5.0), (1, 4.5), (2, 4.0), (6, 3.95), (3, 3.9)] {
            counts[item] = c
            board.raised(Int32(item), to: c)
        }
        counts[0] = 0
        counts[1] = 0
        board.forget(RetiredItems([0, 1], itemCount: 8))
        #expect(board.count == 2)
        for (item, c) in [(5, 2.0), (7, 1.0)] {
            counts[item] = c
            board.raised(Int32(item), to: c)
        }
        #expect(board.count == 4)
        let exclusions = ExclusionSet()
        exclusions.reset(itemCount: 8)
        let query = ScoringQuery(user: nil, exclusions: exclusions, itemCount: 8)
        let score = { (i: Int32) in Float(counts[Int(i)]) }
        var scratch: [Int32] = []
        var top = TopK(k: 3)
        #expect(!board.rank(query, into: &top, scratch: &scratch, score: score))
        #expect(fullPass(query, k: 3, score: score) == [2, 6, 3])
        // Items outside count at most 3.95 (the root when item 0 left):
        // a top-1 ([2], 4.0) is above that and trusted, a top-2 is not.
        top = TopK(k: 1)
        #expect(board.rank(query, into: &top, scratch: &scratch, score: score))
        #expect(top.sorted().map(\.item) == [2])
        top = TopK(k: 2)
        #expect(!board.rank(query, into: &top, scratch: &scratch, score: score))
        // A rebuild keeps the best four again, and trusts the top-3.
        board.rebuild(items: 8) { counts[Int($0)] }
        top = TopK(k: 3)
        #expect(board.rank(query, into: &top, scratch: &scratch, score: score))
        #expect(top.sorted().map(\.item) == [2, 6, 3])
    }

    @Test func aTieMadeByRoundingIsLeftToTheFullPass() {
        // Two counts that differ as Doubles but score the same Float: the
        // board keeps the larger (item 1), while the full pass breaks the
        // tie by the lower index (item 0). The board must decline.
        let board = CountLeaderboard(capacity: 1)
        let counts: [Double] = [1 + 1e-12, 1 + 2e-12]
        board.raised(0, to: counts[0])
        board.raised(1, to: counts[1])
        let exclusions = ExclusionSet()
        exclusions.reset(itemCount: 2)
        let query = ScoringQuery(user: nil, exclusions: exclusions, itemCount: 2)
        var scratch: [Int32] = []
        var top = TopK(k: 1)
        let score = { (i: Int32) in Float(counts[Int(i)]) }
        #expect(!board.rank(query, into: &top, scratch: &scratch, score: score))
        #expect(fullPass(query, k: 1, score: score) == [0])
    }

    @Test func popularityAnswersAsAPassOverEveryCount() {
        // More items than the board keeps, decayed counts, forgotten items:
        // the scorer's answers equal a ranking of its counts.
        let p = PopularityScorer(settings: PopularitySettings(halfLifeEvents: 500))
        let items = 6_000
        p.grow(users: 1, items: items)
        var rng = SplitMix64(seed: 11)
        let exclusions = ExclusionSet()
        for seq in 1...60_000 {
            let r = Double(rng.below(1 << 20)) / Double(1 << 20)
            p.learn(LearnEvent(seq: UInt64(seq), user: 0, item: Int32(Double(items) * r * r), kind: .click,
                               value: 1, timestamp: 0))
            if seq == 30_000 { p.forget(items: RetiredItems([0, 1, 2], itemCount: items)) }
            guard seq % 997 == 0 else { continue }
            exclusions.reset(itemCount: items)
            for i in 0..<Int32(rng.below(40)) { exclusions.insert(i * 3) }
            let query = ScoringQuery(user: nil, exclusions: exclusions, itemCount: items)
            var top = TopK(k: 10)
            p.recommend(query, into: &top)
            let scores = p.score(query, items: (0..<Int32(items)).map { $0 })
            let expected = fullPass(query, k: 10) { scores[Int($0)] }
            #expect(top.sorted().map(\.item) == expected)
        }
        #expect(p.leaderboard.count == p.leaderboard.capacity)
    }
}
