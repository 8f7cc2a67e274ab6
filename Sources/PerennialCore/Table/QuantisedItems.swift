// 8-bit copies of the table's item rows, for the first look of the catalogue
// pass (perennial_quantised.h): a request scores every item approximately,
// with a guaranteed bound, and exactly only the items that can reach its top
// k, so the pass does a quarter of the float work.
//
// The copies follow the rows through a flag per item (EmbeddingTable's
// `itemChanged`): every writer of an item row sets it after the write, and
// `refresh` re-quantises the flagged rows before a pass. New rows start
// flagged.
//
// Threading invariant (why this is `@unchecked Sendable`): `refresh` and
// every read of the copies happen on the one thread that serves requests
// (or the single thread of an in-process evaluation). The flags are bytes
// written by the learner and cleared here, Hogwild-style; `refresh` clears
// the flags it found, then fences, then reads the rows, so a write it did
// not see sets its flag again after the clear and is picked up by the next
// refresh. A pass looks at the flags again after scoring and scores the
// rows written meanwhile exactly (`forEachWrittenSinceRefresh`); a write
// between that look and the exact scoring can still leave one row's bound
// stale for that request: the same kind of race as reading a row
// mid-update. Writers fence (release) before setting the flag, so on a
// weakly ordered CPU the flag is never seen before the row it announces.

import CKernels
import Synchronization

public final class QuantisedItems: @unchecked Sendable {
    public let dimension: Int
    /// Groups of four dimensions per row: a block of 16 rows is groups · 64 bytes.
    public let groups: Int
    /// Blocks of 16 rows; 64 blocks (1,024 rows) per chunk, as the table's items.
    public let blocks: ChunkedBuffer<UInt8>
    /// Each row's scale s and ‖x‖₁ (the bound's terms).
    public let scales: ChunkedBuffer<Float>
    public let norms: ChunkedBuffer<Float>
    /// Rows re-quantised by `refresh` (STATS: how much the copies cost).
    public private(set) var requantised: UInt64 = 0
    private var found: [Int32] = []

    init(dimension: Int) {
        self.dimension = dimension
        groups = pk_quantised_groups(dimension)
        blocks = ChunkedBuffer(width: groups * 64, fill: 128, rowsPerChunkLog2: 6)
        scales = ChunkedBuffer(width: 1, fill: 0, rowsPerChunkLog2: 10)
        norms = ChunkedBuffer(width: 1, fill: 0, rowsPerChunkLog2: 10)
    }

    /// Brings the copies of rows 0..<count up to date with the table's rows.
    public func refresh(from table: EmbeddingTable, count: Int) {
        blocks.ensure(rows: (count + 15) / 16)
        scales.ensure(rows: count)
        norms.ensure(rows: count)
        found.removeAll(keepingCapacity: true)
        Self.forEachFlagged(table, count: count) { flag, i in
            flag.pointee = 0
            found.append(Int32(i))
        }
        guard !found.isEmpty else { return }
        // The clears are visible before the rows are read (see the invariant).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        for i in found { quantise(Int(i), from: table) }
        requantised &+= UInt64(found.count)
    }

    /// Calls `body` for every row below `count` written since the last
    /// refresh (the flags are left set). A pass calls this after scoring:
    /// a row the learner wrote during the pass has a stale copy, whose bound
    /// may not hold, so the caller scores it exactly.
    public func forEachWrittenSinceRefresh(_ table: EmbeddingTable, count: Int, _ body: (Int) -> Void) {
        Self.forEachFlagged(table, count: count) { _, i in body(i) }
    }

    /// Visits the set flags below `count`, eight per load (almost every
    /// word is zero).
    private static func forEachFlagged(_ table: EmbeddingTable, count: Int,
                                       _ body: (UnsafeMutablePointer<UInt8>, Int) -> Void) {
        table.itemChanged.forEachChunk(rows: count) { first, flags, n in
            var k = 0
            while k + 8 <= n {
                if UnsafeRawPointer(flags + k).loadUnaligned(as: UInt64.self) != 0 {
                    for t in k..<(k + 8) where flags[t] != 0 { body(flags + t, first + t) }
                }
                k += 8
            }
            for t in k..<n where flags[t] != 0 { body(flags + t, first + t) }
        }
    }

    private func quantise(_ i: Int, from table: EmbeddingTable) {
        var norm: Float = 0
        // The block's start, and the row's lane in it.
        let s = pk_quantise_item(table.items.row(i), dimension, blocks.row(i >> 4), i & 15, &norm)
        scales[i] = s
        norms[i] = norm
    }
}
