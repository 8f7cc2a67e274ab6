// The one embedding table every scorer shares: a row of `dimension` floats
// per user and per item, with per-row Adagrad accumulators beside them, in
// memory that never moves (ChunkedBuffer), so the serving thread reads rows
// while the learner writes them.
//
// Rows start as small deterministic noise derived from the row index and the
// table's seed (so a run is reproducible from the log alone).
//
// Threading: `grow` on the admitting thread (before indices are published);
// row writes only on the learner thread; row reads anywhere (Hogwild-style:
// a reader may see a row mid-update, never moved or freed memory).

import CKernels
import Synchronization

public final class EmbeddingTable: @unchecked Sendable {
    public let dimension: Int
    public let seed: UInt64
    public let initScale: Float
    public let users: ChunkedBuffer<Float>
    public let items: ChunkedBuffer<Float>
    /// Adagrad accumulators: one per row (the mean squared gradient of the
    /// row), which keeps the optimiser state at 4 bytes per row.
    public let userAdagrad: ChunkedBuffer<Float>
    public let itemAdagrad: ChunkedBuffer<Float>
    /// One byte per item row: set by every write of the row (after it), so
    /// that `quantisedItems` knows which copies to redo. New rows start set
    /// (a restored model's rows too: restore fills a fresh table).
    public let itemChanged: ChunkedBuffer<UInt8>
    /// The 8-bit copies of the item rows the catalogue pass looks at first
    /// (refreshed by the serving thread; see QuantisedItems).
    public let quantisedItems: QuantisedItems
    public private(set) var userRows = 0
    public private(set) var itemRows = 0
    /// Lifelong learning's parts that act on rows (nil when switched off):
    /// anchor copies every step is pulled toward, and the meta-learned
    /// start of new users' rows.
    public let anchors: RowAnchors?
    public let meta: MetaStart?

    public init(dimension: Int, seed: UInt64 = 0x5EED, initScale: Float = 0.1, lifelong: LifelongConfig = .plain) {
        self.dimension = dimension
        self.seed = seed
        self.initScale = initScale
        anchors = lifelong.anchorStrength > 0
            ? RowAnchors(dimension: dimension, strength: lifelong.anchorStrength, rate: lifelong.anchorRate) : nil
        meta = lifelong.metaStart ? MetaStart(dimension: dimension, events: lifelong.metaEvents, rate: lifelong.metaRate) : nil
        users = ChunkedBuffer(width: dimension, fill: 0, rowsPerChunkLog2: 10)
        items = ChunkedBuffer(width: dimension, fill: 0, rowsPerChunkLog2: 10)
        userAdagrad = ChunkedBuffer(width: 1, fill: 0, rowsPerChunkLog2: 12)
        itemAdagrad = ChunkedBuffer(width: 1, fill: 0, rowsPerChunkLog2: 12)
        itemChanged = ChunkedBuffer(width: 1, fill: 1, rowsPerChunkLog2: 12)
        quantisedItems = QuantisedItems(dimension: dimension)
    }

    /// Makes rows exist for users 0..<users and items 0..<items.
    public func grow(users u: Int, items i: Int) {
        if u > userRows {
            users.ensure(rows: u)
            userAdagrad.ensure(rows: u)
            for r in userRows..<u { initialise(users.row(r), stream: 1, index: r) }
            if let a = anchors { a.grow(a.users, rows: users, from: userRows, to: u) }
            meta?.grow(users: u)
            userRows = u
        }
        if i > itemRows {
            items.ensure(rows: i)
            itemAdagrad.ensure(rows: i)
            itemChanged.ensure(rows: i)
            for r in itemRows..<i { initialise(items.row(r), stream: 2, index: r) }
            if let a = anchors { a.grow(a.items, rows: items, from: itemRows, to: i) }
            itemRows = i
        }
    }

    /// A user index now serves a new user (id lifecycle): its row starts
    /// again as at creation, with fresh optimiser, anchor and meta state.
    /// Learner thread.
    public func resetUser(_ u: Int32) {
        initialise(users.row(Int(u)), stream: 1, index: Int(u))
        userAdagrad[Int(u)] = 0
        anchors?.users.row(Int(u)).update(from: users.row(Int(u)), count: dimension)
        meta?.reset(user: u)
    }

    /// An item index's id expired (id lifecycle): its row starts again as
    /// at creation, with fresh optimiser and anchor state, ready for the
    /// next item to take the index. Admitting thread, learner idle.
    public func resetItem(_ i: Int32) {
        initialise(items.row(Int(i)), stream: 2, index: Int(i))
        itemAdagrad[Int(i)] = 0
        anchors?.items.row(Int(i)).update(from: items.row(Int(i)), count: dimension)
        noteItemChanged(i)
    }

    private func initialise(_ row: UnsafeMutablePointer<Float>, stream: UInt64, index: Int) {
        var rng = SplitMix64(seed: seed ^ (stream << 56) ^ UInt64(index))
        let scale = initScale / Float(dimension).squareRoot()
        for k in 0..<dimension { row[k] = rng.nextSignedUnitFloat() * scale }
    }

    @inline(__always) public func user(_ u: Int32) -> UnsafeMutablePointer<Float> { users.row(Int(u)) }
    @inline(__always) public func item(_ i: Int32) -> UnsafeMutablePointer<Float> { items.row(Int(i)) }

    @inline(__always) public var anchorStrength: Float { anchors?.strength ?? 0 }

    /// One Adagrad step on item i's row (pk_adagrad_row: gradient
    /// alpha · v − reg · row, one accumulator per row); with anchored
    /// learning on, the step also pulls toward the row's anchor and the
    /// anchor then follows the row (RowAnchors), in the same pass.
    @inline(__always)
    public func stepItem(_ i: Int32, along v: UnsafePointer<Float>, alpha: Float, reg: Float, lr: Float) {
        step(items.row(Int(i)), anchor: anchors?.items.row(Int(i)), along: v, alpha: alpha, reg: reg,
             accumulator: itemAdagrad.row(Int(i)), lr: lr, scale: nil)
        noteItemChanged(i)
    }

    /// Every writer of an item row other than `stepItem` calls this after
    /// the write (the quantised copy is redone before the next pass).
    /// (The fence orders the row's stores before the flag's; on x86 it
    /// costs nothing.)
    @inline(__always) public func noteItemChanged(_ i: Int32) {
        atomicMemoryFence(ordering: .releasing)
        itemChanged[Int(i)] = 1
    }

    /// The same on user u's row; a user in their first events steps with
    /// the meta-learned per-dimension scales (MetaStart).
    @inline(__always)
    public func stepUser(_ u: Int32, along v: UnsafePointer<Float>, alpha: Float, reg: Float, lr: Float) {
        step(users.row(Int(u)), anchor: anchors?.users.row(Int(u)), along: v, alpha: alpha, reg: reg,
             accumulator: userAdagrad.row(Int(u)), lr: lr, scale: userStepScale(u))
    }

    /// A row step, anchored when `anchor` is given (a scorer's own rows with
    /// anchors of their own use it too).
    @inline(__always)
    public func step(_ row: UnsafeMutablePointer<Float>, anchor: UnsafeMutablePointer<Float>?, along v: UnsafePointer<Float>,
                     alpha: Float, reg: Float, accumulator: UnsafeMutablePointer<Float>, lr: Float, scale: UnsafePointer<Float>?) {
        if let anchor, let a = anchors {
            pk_adagrad_row_follow(row, anchor, v, alpha, reg, a.strength, accumulator, lr, scale, a.rate, dimension)
        } else {
            pk_adagrad_row(row, row, v, alpha, reg, 0, accumulator, lr, scale, dimension)
        }
    }

    /// Per-dimension step scales for a user still in their first events
    /// (the meta-learned start), or nil.
    @inline(__always) public func userStepScale(_ u: Int32) -> UnsafePointer<Float>? { meta?.stepScale(user: u) }

    /// Bytes held by rows and optimiser state.
    public var bytes: Int {
        users.bytes + items.bytes + userAdagrad.bytes + itemAdagrad.bytes + itemChanged.bytes + (anchors?.bytes ?? 0)
            + quantisedItems.blocks.bytes + quantisedItems.scales.bytes + quantisedItems.norms.bytes
    }

    public var counters: [(String, UInt64)] {
        [("table_user_rows", UInt64(userRows)), ("table_item_rows", UInt64(itemRows)),
         ("table_dimension", UInt64(dimension)), ("table_bytes", UInt64(bytes))]
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny, fast, seedable generator,
/// so every random choice in learning is reproducible from the log.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }

    @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    @inline(__always)
    public mutating func nextSignedUnitFloat() -> Float {
        Float(next() >> 40) / Float(1 << 23) - 1
    }

    /// Uniform in 0..<n (n > 0), by multiply-shift (Lemire 2019, without the
    /// rejection step: some values are drawn once more in 2^32 draws than
    /// others, a relative bias of about n / 2^32, 2^-12 at a million items).
    @inline(__always)
    public mutating func below(_ n: Int) -> Int {
        Int((UInt64(UInt32(truncatingIfNeeded: next())) &* UInt64(n)) >> 32)
    }

    @inline(__always)
    public mutating func unitDouble() -> Double { Double(next() >> 11) / Double(1 << 53) }
}
