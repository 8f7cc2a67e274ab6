import CKernels
import Testing
@testable import PerennialCore

/// The catalogue pass's first look on 8-bit copies of the item rows
/// (perennial_quantised.h, QuantisedItems).
@Suite struct QuantisedScanTests {
    /// Rows quantised into blocks, with their scales and norms.
    struct Copies {
        let dim: Int, count: Int
        var blocks: [UInt8], scales: [Float], norms: [Float]
        init(rows: [Float], dim: Int, count: Int) {
            self.dim = dim
            self.count = count
            let blockBytes = pk_quantised_groups(dim) * 64
            blocks = [UInt8](repeating: 128, count: max(1, (count + 15) / 16) * blockBytes)
            scales = [Float](repeating: 0, count: count + 16)
            norms = scales
            for r in 0..<count {
                var n: Float = 0
                let s = rows.withUnsafeBufferPointer { pk_quantise_item($0.baseAddress! + r * dim, dim, &blocks, r, &n) }
                scales[r] = s
                norms[r] = n
            }
        }
    }

    /// Runs the pass (fast or plain) for `queries`; returns bounds and moments.
    enum Path { case dispatched, avx2, plain }

    static func pass(_ c: Copies, _ queries: [[Float]], bias: [Float], path: Path) -> (bounds: [[Float]], sums: [Double], squares: [Double]) {
        let width = 4 * pk_quantised_groups(c.dim)
        var q8 = [[Int8]](repeating: [Int8](repeating: 0, count: width), count: queries.count)
        var terms = [pk_quantised_query]()
        for j in queries.indices { terms.append(pk_quantise_query(queries[j], c.dim, &q8[j])) }
        let outs = queries.map { _ in UnsafeMutablePointer<Float>.allocate(capacity: max(c.count, 1)) }
        defer { for o in outs { o.deallocate() } }
        var sums = [Double](repeating: 0.25, count: queries.count), squares = [Double](repeating: 1, count: queries.count)
        let q8p = q8.map { a -> UnsafeMutablePointer<Int8> in
            let p = UnsafeMutablePointer<Int8>.allocate(capacity: width)
            p.update(from: a, count: width)
            return p
        }
        defer { for p in q8p { p.deallocate() } }
        let qp: [UnsafePointer<Int8>?] = q8p.map { UnsafePointer($0) }
        let op: [UnsafeMutablePointer<Float>?] = outs
        switch path {
        case .plain: pk_score_quantised_batch_plain(c.blocks, c.count, c.dim, qp, terms, queries.count, c.scales, c.norms, bias, 3, op, &sums, &squares)
        case .avx2: pk_score_quantised_batch_avx2(c.blocks, c.count, c.dim, qp, terms, queries.count, c.scales, c.norms, bias, 3, op, &sums, &squares)
        case .dispatched: pk_score_quantised_batch(c.blocks, c.count, c.dim, qp, terms, queries.count, c.scales, c.norms, bias, 3, op, &sums, &squares)
        }
        return (outs.map { Array(UnsafeBufferPointer(start: $0, count: c.count)) }, sums, squares)
    }

    /// The fast path equals the plain loop bit for bit; a query's outputs
    /// are the same alone and in any batch (past the 64-query slice too);
    /// every exact score is at most its bound, and the bound is tight enough
    /// to be useful; the moments are close to the exact scores' moments.
    @Test(arguments: [0, 3, 16, 17, 100, 1031])
    func boundsHoldAndEveryPathAgrees(count n: Int) {
        var rng = SplitMix64(seed: 91 + UInt64(n))
        for dim in [64, 8, 12, 30, 72] {
            // Rows of different norms, as a trained table has.
            let rows = (0..<(n * dim)).map { i in rng.nextSignedUnitFloat() * Float(1 + (i / dim) % 5) }
            let bias = (0..<(3 * n)).map { _ in rng.nextSignedUnitFloat() }
            let copies = Copies(rows: rows, dim: dim, count: n)
            for batch in dim == 64 ? [1, 2, 3, 5, 8, 70] : [1, 4, 5] {
                let queries = (0..<batch).map { _ in (0..<dim).map { _ in rng.nextSignedUnitFloat() * 3 } }
                let fast = Self.pass(copies, queries, bias: bias, path: .dispatched)
                let plain = Self.pass(copies, queries, bias: bias, path: .plain)
                let avx2 = Self.pass(copies, queries, bias: bias, path: .avx2)
                for j in 0..<batch {
                    for other in [plain, avx2] {
                        #expect(zip(fast.bounds[j], other.bounds[j]).allSatisfy { $0.bitPattern == $1.bitPattern }, "dim \(dim) batch \(batch) query \(j)")
                        #expect(fast.sums[j].bitPattern == other.sums[j].bitPattern && fast.squares[j].bitPattern == other.squares[j].bitPattern)
                    }
                    let alone = Self.pass(copies, [queries[j]], bias: bias, path: .dispatched)
                    #expect(zip(fast.bounds[j], alone.bounds[0]).allSatisfy { $0.bitPattern == $1.bitPattern })
                    #expect(fast.sums[j].bitPattern == alone.sums[0].bitPattern)
                    var s = 0.25, q = 1.0, slack: Float = 0, spread: Float = 0
                    for r in 0..<n {
                        var dot: Float = 0
                        for k in 0..<dim { dot += rows[r * dim + k] * queries[j][k] }
                        let exact = bias[3 * r] + dot
                        #expect(exact <= fast.bounds[j][r], "dim \(dim) row \(r): \(exact) > \(fast.bounds[j][r])")
                        slack += fast.bounds[j][r] - exact
                        spread += abs(exact)
                        s += Double(exact)
                        q += Double(exact) * Double(exact)
                    }
                    if n >= 100 {
                        // The bound is a small part of the scores' scale.
                        #expect(slack < 0.25 * spread, "dim \(dim): slack \(slack) against \(spread)")
                        #expect(abs(fast.sums[j] - s) <= 0.02 * (q - 1).squareRoot() * Double(n).squareRoot())
                        #expect(abs(fast.squares[j] - q) <= 0.02 * q)
                    }
                }
            }
        }
    }

    /// A row with a non-finite value is never skipped (bound +inf) and adds
    /// nothing to the moments; the other rows are unaffected.
    @Test func nonFiniteRowsAreAlwaysLookedAt() {
        var rng = SplitMix64(seed: 5)
        let dim = 64, n = 40
        var rows = (0..<(n * dim)).map { _ in rng.nextSignedUnitFloat() }
        let bias = [Float](repeating: 0.5, count: 3 * n)
        let query = (0..<dim).map { _ in rng.nextSignedUnitFloat() }
        let clean = Self.pass(Copies(rows: rows, dim: dim, count: n), [query], bias: bias, path: .dispatched)
        rows[7 * dim + 3] = .nan
        rows[20 * dim] = .infinity
        for path in [Path.dispatched, .avx2, .plain] {
            let out = Self.pass(Copies(rows: rows, dim: dim, count: n), [query], bias: bias, path: path)
            #expect(out.bounds[0][7] == .infinity && out.bounds[0][20] == .infinity)
            #expect((0..<n).filter { $0 != 7 && $0 != 20 }.allSatisfy { out.bounds[0][$0] == clean.bounds[0][$0] })
            #expect(out.sums[0].isFinite && out.squares[0].isFinite && out.sums[0] != clean.sums[0])
        }
        // Magnitudes too small to quantise (127 / max would overflow): a
        // row, then a query, always looked at; a zero row is exact.
        rows = (0..<(n * dim)).map { _ in rng.nextSignedUnitFloat() }
        for k in 0..<dim {
            rows[9 * dim + k] = k % 2 == 0 ? 1e-37 : -5e-38
            rows[10 * dim + k] = 0
            rows[11 * dim + k] = 1e-20  // its product with a scale could be subnormal
            rows[12 * dim + k] = 1e37  // its ‖x‖₁ would overflow
        }
        for path in [Path.dispatched, .avx2, .plain] {
            let odd = Self.pass(Copies(rows: rows, dim: dim, count: n), [query, [Float](repeating: 0, count: dim)], bias: bias, path: path)
            for b in odd.bounds {
                #expect(b[9] == .infinity && b[10] == 0.5 && b[11] == .infinity && b[12] == .infinity)
                #expect(!b.contains { $0.isNaN })
            }
        }
        let tinyQuery = query.map { $0 * 1e-22 }
        for path in [Path.dispatched, .avx2, .plain] {
            let out = Self.pass(Copies(rows: rows, dim: dim, count: n), [tinyQuery], bias: bias, path: path)
            #expect(out.bounds[0].allSatisfy { $0 == .infinity })
        }
    }

    /// The table's copies follow its rows: a stepped item is re-quantised
    /// at the next refresh (and only it), and matches a fresh quantisation.
    @Test func copiesFollowTheRowsTheLearnerWrites() {
        let table = EmbeddingTable(dimension: 64)
        table.grow(users: 1, items: 40)
        let copies = table.quantisedItems
        copies.refresh(from: table, count: 40)
        #expect(copies.requantised == 40)
        copies.refresh(from: table, count: 40)
        #expect(copies.requantised == 40)
        let v = [Float](repeating: 0.5, count: 64)
        table.stepItem(17, along: v, alpha: 1, reg: 0, lr: 0.5)
        table.noteItemChanged(3)
        copies.refresh(from: table, count: 40)
        #expect(copies.requantised == 42)
        for i in [3, 17, 18] {
            var blocks = [UInt8](repeating: 128, count: 16 * 64), n: Float = 0
            let s = pk_quantise_item(table.items.row(i), 64, &blocks, i & 15, &n)
            #expect(copies.scales[i] == s && copies.norms[i] == n)
            let stored = UnsafeBufferPointer(start: copies.blocks.row(i >> 4), count: 16 * 64)
            #expect((0..<16).allSatisfy { g in (0..<4).allSatisfy { t in stored[g * 64 + (i & 15) * 4 + t] == blocks[g * 64 + (i & 15) * 4 + t] } })
        }
        // A write after a refresh is reported (flag kept) until the next one.
        table.noteItemChanged(30)
        var written: [Int] = []
        copies.forEachWrittenSinceRefresh(table, count: 40) { written.append($0) }
        #expect(written == [30])
        copies.refresh(from: table, count: 40)
        #expect(copies.requantised == 43)
        written.removeAll()
        copies.forEachWrittenSinceRefresh(table, count: 40) { written.append($0) }
        #expect(written.isEmpty)
        // Rows added later start flagged.
        table.grow(users: 1, items: 50)
        copies.refresh(from: table, count: 50)
        #expect(copies.requantised == 53)
    }
}
