// Item-to-item co-occurrence counted online: each new event of a user counts
// one co-occurrence between its item and each of the user's previous
// `window` items (both directions). A user's neighbourhood score for item j
// is then Σ_k w_k · C[c_k, j] / (n_j + 1)^damping over their `recent` latest
// items c_k (w_k = decay^k, most recent first), the item-based CF of Sarwar
// et al. (2001) / Linden et al. (2003) made sequence-aware as in
// session-based kNN (Ludewig & Jannach 2018): recent items and nearby pairs
// say most about the next one. Also used directed, as transition counts
// (`add(previous, next)`, from each of a user's few latest items), by the
// session scorer.
//
// Storage: per item, a fixed-capacity open-addressing table of (neighbour,
// count) in a ChunkedBuffer, so memory never moves while the serving thread
// reads it. When a table fills, the learner halves every count and drops
// those below one (keeping the strong neighbours), rebuilding the table in
// place; a reader during that instant may miss some neighbours, never touch
// freed memory.

import CKernels
import Synchronization

public final class ItemNeighbourhood {
    public let capacity: Int
    public let window: Int
    /// Per item: `capacity` slots of (key as Float bit pattern, count); key
    /// bit pattern of -1 means empty. Two floats per slot.
    public let slots: ChunkedBuffer<Float>
    /// Per item: number of used slots.
    public let used: ChunkedBuffer<Int32>
    private static let empty = Float(bitPattern: UInt32.max)
    private var rebuild: [(Int32, Float)] = []
    private var items = 0
    /// Pairs counted (written by the learner, read by STATS).
    public var pairs: UInt64 { pairCount.load(ordering: .relaxed) }
    private let pairCount = Atomic<UInt64>(0)

    public init(capacity: Int, window: Int) {
        var cap = 8
        while cap < capacity { cap *= 2 }
        self.capacity = cap
        self.window = window
        slots = ChunkedBuffer(width: 2 * cap, fill: ItemNeighbourhood.empty, rowsPerChunkLog2: 6)
        used = ChunkedBuffer(width: 1, fill: 0, rowsPerChunkLog2: 12)
    }

    public func grow(items n: Int) {
        slots.ensure(rows: n)
        used.ensure(rows: n)
        items = max(items, n)
    }

    @inline(__always)
    private func home(_ key: Int32) -> Int {
        Int((UInt32(bitPattern: key) &* 2_654_435_761) >> 16) & (capacity - 1)
    }

    /// Adds `amount` to C[a, b].
    public func add(_ a: Int32, _ b: Int32, _ amount: Float) {
        let row = slots.row(Int(a))
        var s = home(b)
        while true {
            let k = row[2 * s].bitPattern
            if k == UInt32(bitPattern: b) { row[2 * s + 1] += amount; return }
            if k == UInt32.max { break }
            s = (s + 1) & (capacity - 1)
        }
        if Int(used[Int(a)]) * 4 >= capacity * 3 {
            shrink(a)
            add(a, b, amount)
            return
        }
        row[2 * s + 1] = amount
        row[2 * s] = Float(bitPattern: UInt32(bitPattern: b))
        used[Int(a)] += 1
    }

    /// Halves every count of item a's table and drops those below 1.
    private func shrink(_ a: Int32) {
        let row = slots.row(Int(a))
        rebuild.removeAll(keepingCapacity: true)
        for s in 0..<capacity where row[2 * s].bitPattern != UInt32.max {
            let c = row[2 * s + 1] * 0.5
            if c >= 1 { rebuild.append((Int32(bitPattern: row[2 * s].bitPattern), c)) }
        }
        // If halving freed too little, keep only the stronger half.
        if rebuild.count * 2 > capacity {
            rebuild.sort { $0.1 > $1.1 }
            rebuild.removeLast(rebuild.count - capacity / 2)
        }
        refill(a, rebuild)
    }

    /// Counts the pairs (item, each of the user's last `window` items),
    /// each `weight` times (0: none).
    public func learn(item: Int32, previous: ArraySlice<Int32>, weight: Float = 1) {
        guard weight > 0 else { return }
        // Each pair lands in another item's table, scattered over megabytes:
        // start fetching every slot (and count) the adds will probe first,
        // so their cache misses overlap instead of coming one after another.
        let own = slots.row(Int(item)), hItem = home(item)
        for p in previous.suffix(window) where p != item {
            pk_prefetch(slots.row(Int(p)) + 2 * hItem, 8)
            pk_prefetch(used.row(Int(p)), 4)
            pk_prefetch(own + 2 * home(p), 8)
        }
        var counted: UInt64 = 0
        for p in previous.suffix(window) where p != item {
            add(item, p, weight)
            add(p, item, weight)
            counted += 1
        }
        pairCount.add(counted, ordering: .relaxed)
    }

    /// Expired or deleted items: their own tables empty, and every count
    /// naming them dropped from the others' (their indices will name other
    /// items). Visits every table: on the learner thread (a LearnerJob), or
    /// with the learner idle. A few items (a
    /// deletion) are looked up in each table by their hash, a cache line
    /// or two each; many (an expiry sweep) are found by reading each table
    /// whole. At a million items reading every table took 0.5 s, which held
    /// every connection for a DELETE_ITEMS of ten items; looking them up,
    /// 0.15 s. (Two threads, each searching half the tables, were no
    /// faster on this 2-core machine.) `lookingUp` forces one way (tests).
    public func forget(_ retired: RetiredItems, lookingUp: Bool? = nil) {
        // (The items there were when these were retired: the tables added
        // since cannot name them. Not `items`, which the admitting thread
        // grows while the learner runs this: LearnerJob.)
        let items = retired.itemCount
        for i in retired.indices where Int(i) < items {
            let row = slots.row(Int(i))
            for s in 0..<(2 * capacity) { row[s] = ItemNeighbourhood.empty }
            used[Int(i)] = 0
        }
        let keys = retired.indices.filter { Int($0) < items }
        guard !keys.isEmpty else { return }
        // Looking one key up reads from its home slot to the first empty
        // one (a quarter of the slots are always empty): about as much as
        // reading 1/16 of the table, while keys are fewer than that.
        let lookUp = lookingUp ?? (keys.count <= capacity / 16)
        let homes = keys.map(home)
        for a in 0..<items where used[a] > 0 {
            let row = slots.row(a)
            var named = false
            if lookUp {
                // (A later table's lines start coming in meanwhile: each
                // lookup is a cache miss into another table.)
                if a + 4 < items {
                    let later = slots.row(a + 4)
                    for h in homes { pk_prefetch(later + 2 * h, 8) }
                }
                for (key, h) in zip(keys, homes) where holds(row, key, from: h) { named = true; break }
            } else {
                for s in 0..<capacity {
                    let k = row[2 * s].bitPattern
                    if k != UInt32.max && retired.contains(Int32(bitPattern: k)) { named = true; break }
                }
            }
            guard named else { continue }
            rebuild.removeAll(keepingCapacity: true)
            for s in 0..<capacity where row[2 * s].bitPattern != UInt32.max {
                let k = Int32(bitPattern: row[2 * s].bitPattern)
                if !retired.contains(k) { rebuild.append((k, row[2 * s + 1])) }
            }
            refill(Int32(a), rebuild)
        }
    }

    /// Whether a table holds `key`, probing from its home slot `h` to the
    /// first empty slot (tables are rebuilt, never given tombstones, so a
    /// key is always before it).
    @inline(__always)
    private func holds(_ row: UnsafeMutablePointer<Float>, _ key: Int32, from h: Int) -> Bool {
        var s = h
        for _ in 0..<capacity {
            let k = row[2 * s].bitPattern
            if k == UInt32(bitPattern: key) { return true }
            if k == UInt32.max { return false }
            s = (s + 1) & (capacity - 1)
        }
        return false
    }

    /// Item a's table holding exactly `entries`.
    private func refill(_ a: Int32, _ entries: [(Int32, Float)]) {
        let row = slots.row(Int(a))
        for s in 0..<(2 * capacity) { row[s] = ItemNeighbourhood.empty }
        used[Int(a)] = 0
        for (k, c) in entries {
            var s = home(k)
            while row[2 * s].bitPattern != UInt32.max { s = (s + 1) & (capacity - 1) }
            row[2 * s + 1] = c
            row[2 * s] = Float(bitPattern: UInt32(bitPattern: k))
            used[Int(a)] += 1
        }
    }

    /// C[a, b] (0 when absent).
    @inline(__always)
    public func count(_ a: Int32, _ b: Int32) -> Float {
        let row = slots.row(Int(a))
        var s = home(b)
        for _ in 0..<capacity {
            let k = row[2 * s].bitPattern
            if k == UInt32(bitPattern: b) { let c = row[2 * s + 1]; return c.isFinite ? c : 0 }
            if k == UInt32.max { return 0 }
            s = (s + 1) & (capacity - 1)
        }
        return 0
    }

    /// Starts bringing item c's table into cache (a serving thread that
    /// knows which tables it reads next overlaps their misses with work).
    @inline(__always)
    public func prefetch(_ c: Int32) {
        pk_prefetch(slots.row(Int(c)), 2 * capacity * MemoryLayout<Float>.stride)
    }

    /// Adds w · C[c, j] to out[j] for every neighbour j of c, appending to
    /// `touched` each j not seen before: whose `seen` byte was 0 (then set
    /// to 1; the caller clears the touched ones), or without `seen`, whose
    /// entry was zero (in C: this loop is most of a request's neighbourhood
    /// part).
    @inline(__always)
    public func accumulate(from c: Int32, weight: Float, into out: UnsafeMutablePointer<Float>,
                           seen: UnsafeMutablePointer<UInt8>? = nil, touched: inout [Int32]) {
        let row = slots.row(Int(c))
        let start = touched.count
        touched.append(contentsOf: repeatElement(0, count: capacity))
        let end = touched.withUnsafeMutableBufferPointer { t in
            // (Items past `items` are skipped, and so is a count read
            // mid-rebuild, which may be the empty marker, a NaN.)
            t.baseAddress!.withMemoryRebound(to: CInt.self, capacity: t.count) {
                pk_accumulate_neighbours(row, capacity, weight, items, out, seen, $0, start)
            }
        }
        touched.removeLast(touched.count - end)
    }

    public var bytes: Int { slots.bytes + used.bytes }

    /// Writes the tables of items 0..<items and the pair count.
    public func save(to w: inout SnapshotWriter, items: Int) {
        w.rows(slots, count: items)
        w.rows(used, count: items)
        w.u64(pairs)
    }

    /// Reads what `save` wrote (after `grow` made room for `items`).
    public func load(from r: inout SnapshotReader, items: Int) throws {
        try r.rows(into: slots, expected: items)
        try r.rows(into: used, expected: items)
        pairCount.store(try r.u64(), ordering: .relaxed)
        // Each table as `add` keeps it: keys are items, `used` counts them,
        // and at least a quarter of the slots are empty (`add` probes until
        // it meets one: a full table would loop for ever).
        for a in 0..<items {
            let row = slots.row(a)
            var n: Int32 = 0
            for s in 0..<capacity where row[2 * s].bitPattern != UInt32.max {
                guard Int(row[2 * s].bitPattern) < items else {
                    throw LogError("snapshot: item \(a)'s neighbour table names item \(row[2 * s].bitPattern) of \(items)")
                }
                n += 1
            }
            guard n == used[a], Int(n) * 4 <= capacity * 3 else {
                throw LogError("snapshot: item \(a)'s neighbour table holds \(n) entries, counted as \(used[a]), of \(capacity) slots")
            }
        }
    }
}
