// Keeping the k best of a stream of scored items: a min-heap of size k, so a
// full catalogue costs O(n log k) and no sort of the whole catalogue.
// Ties go to the lower item index, so results are deterministic.

public struct TopK {
    public private(set) var k: Int
    // Heap of (score, item); the root is the worst kept entry.
    private var scores: [Float] = []
    private var items: [Int32] = []

    public init(k: Int) {
        self.k = k
        scores.reserveCapacity(k)
        items.reserveCapacity(k)
    }

    /// Empties the heap for reuse with a new k, keeping its storage.
    public mutating func reset(k: Int) {
        self.k = k
        scores.removeAll(keepingCapacity: true)
        items.removeAll(keepingCapacity: true)
    }

    public var count: Int { scores.count }

    /// True when (s1, i1) ranks below (s2, i2).
    @inline(__always)
    private static func worse(_ s1: Float, _ i1: Int32, _ s2: Float, _ i2: Int32) -> Bool {
        s1 < s2 || (s1 == s2 && i1 > i2)
    }

    /// The score an item must beat to enter (−inf while not full).
    @inline(__always)
    public var threshold: Float { scores.count < k ? -.infinity : scores[0] }

    @inline(__always)
    public mutating func push(_ item: Int32, _ score: Float) {
        guard k > 0, !score.isNaN else { return }
        if scores.count < k {
            scores.append(score)
            items.append(item)
            siftUp(scores.count - 1)
        } else if TopK.worse(scores[0], items[0], score, item) {
            scores[0] = score
            items[0] = item
            siftDown(0)
        }
    }

    private mutating func siftUp(_ start: Int) {
        var i = start
        while i > 0 {
            let p = (i - 1) / 2
            guard TopK.worse(scores[i], items[i], scores[p], items[p]) else { break }
            scores.swapAt(i, p)
            items.swapAt(i, p)
            i = p
        }
    }

    private mutating func siftDown(_ start: Int) {
        var i = start
        let n = scores.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < n && TopK.worse(scores[l], items[l], scores[m], items[m]) { m = l }
            if r < n && TopK.worse(scores[r], items[r], scores[m], items[m]) { m = r }
            if m == i { return }
            scores.swapAt(i, m)
            items.swapAt(i, m)
            i = m
        }
    }

    /// The kept items, best first.
    public func sorted() -> [(item: Int32, score: Float)] {
        var out = (0..<scores.count).map { (item: items[$0], score: scores[$0]) }
        out.sort { TopK.worse($1.score, $1.item, $0.score, $0.item) }
        return out
    }
}
