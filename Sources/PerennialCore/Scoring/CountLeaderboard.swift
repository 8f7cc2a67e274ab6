// The most-counted items, kept in order as the counts grow, so "the most
// popular items this user has not seen" (popularity's answers, and cf's for
// a user nobody knows) reads a few thousand candidates instead of every
// count in the catalogue. At a million items that pass took 6-9 ms a
// request; this takes microseconds.
//
// It keeps the `capacity` best items by count (ties: the lower index, as
// TopK breaks them) in a min-heap whose root is the worst kept item, with
// each kept item's count beside it. Counts only rise while it follows them
// (`raised`, or `scaled` by one factor for all); a scorer that sets counts
// anew (loading a snapshot) calls `rebuild`; one that clears
// items' counts (forgetting them) calls `forget`.
//
// Every item not kept counts at most a floor: the root's count while the
// heap is full, or more once forgotten items have emptied places (below).
// A ranking of the kept items is trusted only when its k-th score is above
// the floor: no other item could have entered it. Otherwise the caller
// ranks the whole catalogue, as before. Either way the answer is the full
// pass's.
//
// Forgotten items (their counts cleared) leave the heap one by one
// (`forget`), without a rebuild that visits every item: at a million items
// the two leaderboards' rebuilds held the event loop ~15 ms a deletion. The
// places they leave stay empty until counts rise into them, so items not
// kept may then count more than the root: up to what the root counted when
// a place of the full heap was emptied, which `outsideAtMost` remembers.
// The floor is the larger of the two.
//
// Threading invariant (why `@unchecked Sendable`): `heap` is changed only by
// the learner thread (or with the learner idle, on the admitting thread),
// always with `mutex` held; the learner reads it without the lock (it is
// the only writer), and other threads copy it with the lock held.
// `counts` and `place` are touched by those writers alone.

import Foundation
import Synchronization

public final class CountLeaderboard: @unchecked Sendable {
    /// Items kept: enough for k up to limits.max_items (1000) with a few
    /// thousand of the most popular items excluded by a user's history.
    public let capacity: Int
    /// The kept items, a min-heap by (count, higher index first).
    private var heap: [Int32] = []
    /// The count of the item at each place of `heap`.
    private var counts: [Double] = []
    /// Each item's place in `heap`, or -1.
    private var place: [Int32] = []
    /// Every item not kept counts at most the larger of this and (when the
    /// heap is full) the root's count. 0 until a forgotten item empties a
    /// place of the full heap, and again after a rebuild. Changed with
    /// `mutex` held.
    private var outsideAtMost: Double = 0
    /// Bytes held (for STATS, on any thread): set by the writer as `place` grows.
    private let held = Atomic<Int>(0)
    /// Allocated, not stored: a pthread mutex must not move.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    public init(capacity: Int = 4096) {
        precondition(capacity > 0)
        self.capacity = capacity
        heap.reserveCapacity(capacity)
        counts.reserveCapacity(capacity)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Memory held: the kept items and the place of every item counted (any thread).
    public var bytes: Int { held.load(ordering: .relaxed) }

    /// Items kept now (any thread).
    public var count: Int {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return heap.count
    }

    /// `item`'s count rose (or was first counted) to `count`. Learner thread.
    @inline(__always)
    public func raised(_ item: Int32, to count: Double) {
        let i = Int(item)
        if i >= place.count {
            place.append(contentsOf: repeatElement(-1, count: i + 1 - place.count))
            held.store(4 * place.count + 12 * capacity, ordering: .relaxed)
        }
        let p = Int(place[i])
        if p >= 0 {
            // Kept already: it got better, so it may move away from the
            // root; the lock only when it does.
            counts[p] = count
            if outranksAChild(p) {
                pthread_mutex_lock(mutex)
                siftDown(p)
                pthread_mutex_unlock(mutex)
            }
        } else if heap.count < capacity {
            pthread_mutex_lock(mutex)
            heap.append(item)
            counts.append(count)
            place[i] = Int32(heap.count - 1)
            siftUp(heap.count - 1)
            pthread_mutex_unlock(mutex)
        } else if Self.worse(counts[0], heap[0], than: count, item) {
            pthread_mutex_lock(mutex)
            place[Int(heap[0])] = -1
            heap[0] = item
            counts[0] = count
            place[i] = 0
            siftDown(0)
            pthread_mutex_unlock(mutex)
        }
    }

    /// Every count was multiplied by `factor` (> 0). Their order stays,
    /// but for rounding that can make two counts equal: the heap then may
    /// break such a tie by the higher index, but no count below the root's
    /// is kept, which is all `rank` relies on. Learner thread.
    public func scaled(by factor: Double) {
        for p in counts.indices { counts[p] *= factor }
        pthread_mutex_lock(mutex)
        outsideAtMost *= factor
        pthread_mutex_unlock(mutex)
    }

    /// The counts of `retired` were cleared: they leave the heap, in
    /// O(log capacity) each. The learner thread, or with it idle.
    public func forget(_ retired: RetiredItems) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        for item in retired.indices {
            let i = Int(item)
            guard i < place.count, place[i] >= 0 else { continue }
            // Items not kept counted at most the root: once a place is
            // empty, that bound is no longer the root's.
            if heap.count == capacity { outsideAtMost = max(outsideAtMost, counts[0]) }
            remove(at: Int(place[i]))
        }
    }

    /// Starts again from the counts of items 0..<items (after counts were
    /// lowered, cleared or loaded). The learner thread, or with it idle.
    public func rebuild(items: Int, count: (Int32) -> Double) {
        pthread_mutex_lock(mutex)
        for item in heap { place[Int(item)] = -1 }
        heap.removeAll(keepingCapacity: true)
        counts.removeAll(keepingCapacity: true)
        outsideAtMost = 0
        pthread_mutex_unlock(mutex)
        // (Items that never counted stay out: while the heap is not full,
        // every item outside it counts 0, which `rank` relies on.)
        for i in 0..<items {
            let c = count(Int32(i))
            if c > 0 { raised(Int32(i), to: c) }
        }
    }

    /// Ranks the eligible kept items into `top` by `score` (the count as
    /// the scorer ranks it: `countScore` of the item's count, a monotone
    /// function; the count itself by default). Returns true
    /// when that is exactly what a pass over the whole catalogue would
    /// return; false when the caller must make that pass (candidates given,
    /// too many kept items excluded, a k-th score not above what an item
    /// not kept may count, or a tie there). `scratch`
    /// is the caller's, reused across requests (serving thread).
    ///
    /// A count may rise between the copy of the kept items and the scores'
    /// reads, as during a full pass, which reads counts one by one while
    /// the learner writes: the answer then is that of a pass that read the
    /// risen item first. Events applied before the request are always in it.
    public func rank(_ query: ScoringQuery, into top: inout TopK, scratch: inout [Int32],
                     countScore: (Double) -> Float = { Float($0) }, score: (Int32) -> Float) -> Bool {
        guard query.candidates == nil else { return false }
        pthread_mutex_lock(mutex)
        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: heap)
        let root: Int32? = heap.count == capacity ? heap[0] : nil
        let outside = outsideAtMost
        pthread_mutex_unlock(mutex)
        let k = top.k
        top.reset(k: k)
        for i in scratch where Int(i) < query.itemCount && !query.exclusions.contains(i) { top.push(i, score(i)) }
        // Every item not kept scores at most this (0 while the heap is not
        // full and no place of a full one was emptied since the build).
        let floor: Float = max(root.map(score) ?? 0, countScore(outside))
        return k > 0 && top.count == k && top.threshold > floor
    }

    // MARK: the heap (writers only; changes with `mutex` held)

    /// True when (count a, item a) ranks below (count b, item b): a lower
    /// count, or the same and a higher index.
    @inline(__always)
    private static func worse(_ ca: Double, _ a: Int32, than cb: Double, _ b: Int32) -> Bool {
        ca < cb || (ca == cb && a > b)
    }

    @inline(__always)
    private func worse(_ p: Int, than q: Int) -> Bool { Self.worse(counts[p], heap[p], than: counts[q], heap[q]) }

    /// Whether the item at `p` ranks above one of its children (the heap
    /// wants it lower down).
    @inline(__always)
    private func outranksAChild(_ p: Int) -> Bool {
        let l = 2 * p + 1, r = l + 1, n = heap.count
        return (l < n && worse(l, than: p)) || (r < n && worse(r, than: p))
    }

    private func siftUp(_ start: Int) {
        var i = start
        while i > 0 {
            let p = (i - 1) / 2
            guard worse(i, than: p) else { break }
            swapPlaces(i, p)
            i = p
        }
    }

    private func siftDown(_ start: Int) {
        var i = start
        let n = heap.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < n && worse(l, than: m) { m = l }
            if r < n && worse(r, than: m) { m = r }
            if m == i { return }
            swapPlaces(i, m)
            i = m
        }
    }

    /// Takes the item at `p` out: the last item takes its place and moves
    /// up or down to where it belongs.
    private func remove(at p: Int) {
        place[Int(heap[p])] = -1
        let last = heap.count - 1
        if p != last {
            heap[p] = heap[last]
            counts[p] = counts[last]
            place[Int(heap[p])] = Int32(p)
        }
        heap.removeLast()
        counts.removeLast()
        if p < heap.count {
            siftUp(p)
            siftDown(p)
        }
    }

    @inline(__always)
    private func swapPlaces(_ a: Int, _ b: Int) {
        heap.swapAt(a, b)
        counts.swapAt(a, b)
        place[Int(heap[a])] = Int32(a)
        place[Int(heap[b])] = Int32(b)
    }
}
