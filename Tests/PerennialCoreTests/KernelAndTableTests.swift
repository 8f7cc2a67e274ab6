import CKernels
import Foundation
import Testing
@testable import PerennialCore

@Suite struct KernelAndTableTests {
    /// The fast dot-product path equals the plain loop within float tolerance,
    /// for dimensions that hit every tail of the vector loop.
    @Test(arguments: [1, 7, 8, 31, 32, 33, 64, 100, 128])
    func fastDotEqualsPlainLoop(dim: Int) {
        var rng = SplitMix64(seed: UInt64(dim))
        let rows = 257
        let m = (0..<(rows * dim)).map { _ in rng.nextSignedUnitFloat() }
        let q = (0..<dim).map { _ in rng.nextSignedUnitFloat() }
        var fast = [Float](repeating: 0, count: rows), plain = [Float](repeating: 0, count: rows)
        pk_dot_rows(m, rows, dim, q, &fast)
        pk_dot_rows_plain(m, rows, dim, q, &plain)
        for r in 0..<rows {
            var swift: Float = 0
            for k in 0..<dim { swift += m[r * dim + k] * q[k] }
            #expect(abs(fast[r] - plain[r]) <= 1e-4 * Float(dim))
            #expect(abs(plain[r] - swift) <= 1e-4 * Float(dim))
        }
        print("dot kernel fast path in use: \(pk_has_fast_path() == 1)")
    }

    /// The learners' row kernels (dot, BPR margin, Adagrad step with L2 and
    /// anchor pulls) agree with their plain loops, and the plain Adagrad
    /// step agrees with the formula written out here.
    /// Rows with extra fields after their vector (the gan scorer's rows
    /// carry their accumulator): the strided fast path equals the plain
    /// loop, and neither reads the extra fields.
    @Test(arguments: [(1, 2), (8, 9), (33, 40), (64, 65)])
    func stridedDotEqualsPlainLoop(dim: Int, stride: Int) {
        var rng = SplitMix64(seed: UInt64(dim * 100 + stride))
        let rows = 131
        var m = (0..<(rows * stride)).map { _ in rng.nextSignedUnitFloat() }
        for r in 0..<rows { for k in dim..<stride { m[r * stride + k] = .nan } }
        let q = (0..<dim).map { _ in rng.nextSignedUnitFloat() }
        var fast = [Float](repeating: 0, count: rows), plain = fast
        pk_dot_rows_strided(m, rows, stride, dim, q, &fast)
        pk_dot_rows_strided_plain(m, rows, stride, dim, q, &plain)
        for r in 0..<rows {
            var swift: Float = 0
            for k in 0..<dim { swift += m[r * stride + k] * q[k] }
            #expect(abs(fast[r] - swift) <= 1e-4 * max(1, abs(swift)))
            #expect(abs(plain[r] - swift) <= 1e-4 * max(1, abs(swift)))
        }
    }

    /// The softmax's cumulative weights: the polynomial exp path agrees with
    /// libm's expf to a relative 1e-6 per term, over arguments from 0 down
    /// past where exp underflows, at lengths that hit the vector loop's tail.
    @Test(arguments: [0, 1, 7, 8, 9, 1000, 9742])
    func expCumulativeEqualsPlainLoop(n: Int) {
        var rng = SplitMix64(seed: UInt64(n) + 5)
        let x = (0..<n).map { i in i % 97 == 0 ? -120 : rng.nextSignedUnitFloat() * 40 - 40 }
        var fast = [Float](repeating: -1, count: n), plain = fast
        let fastTotal = pk_exp_cumulative(x, n, 0, &fast)
        let plainTotal = pk_exp_cumulative_plain(x, n, 0, &plain)
        #expect(abs(fastTotal - plainTotal) <= 1e-5 * max(plainTotal, 1e-30))
        var previous: Float = 0
        for i in 0..<n {
            let term = fast[i] - previous
            let exact = expf(x[i])
            // (Terms below exp(-87.3) are that floor instead of 0.)
            #expect(abs(term - exact) <= 1e-5 * max(fast[i], 1e-30) + 2e-38, "x \(x[i]): \(term) vs \(exact)")
            #expect(fast[i] >= previous)
            previous = fast[i]
        }
        // A NaN argument (a diverged model) makes the total NaN on both paths.
        if n > 0 {
            var poisoned = x
            poisoned[n / 2] = .nan
            var out = [Float](repeating: 0, count: n)
            #expect(pk_exp_cumulative(poisoned, n, 0, &out).isNaN)
            #expect(pk_exp_cumulative_plain(poisoned, n, 0, &out).isNaN)
        }
        // Shifting by the largest argument: the largest term is exp(0) = 1.
        if n > 0 {
            let top = x.max()!
            var shifted = [Float](repeating: 0, count: n)
            let total = pk_exp_cumulative(x, n, top, &shifted)
            #expect(total >= 1 && total <= Float(n))
        }
    }

    /// The neural scorers' row step and their backward pass's products
    /// (transposed matrix-vector, outer product): the AVX2+FMA paths agree
    /// with the plain loops to float rounding, at sizes that hit every tail.
    @Test(arguments: [1, 7, 8, 9, 64, 67])
    func neuralKernelsEqualPlainLoops(n: Int) {
        var rng = SplitMix64(seed: UInt64(n) + 23)
        func vector(_ count: Int) -> [Float] { (0..<count).map { _ in rng.nextSignedUnitFloat() } }
        func close(_ a: [Float], _ b: [Float], _ tolerance: Float) -> Bool {
            zip(a, b).allSatisfy { abs($0 - $1) <= tolerance * max(1, abs($1)) }
        }
        // Row step.
        let row = vector(n), direction = vector(n)
        var rf = row, rp = row
        var af: Float = 0.3, ap: Float = 0.3
        pk_adagrad_step(&rf, direction, -0.5, &af, 0.05, n)
        pk_adagrad_step_plain(&rp, direction, -0.5, &ap, 0.05, n)
        #expect(abs(af - ap) <= 1e-6)
        #expect(close(rf, rp, 1e-6))
        var mean: Float = 0
        for k in 0..<n { mean += 0.25 * direction[k] * direction[k] }
        #expect(abs(ap - (0.3 + mean / Float(n))) <= 1e-6)
        // Products, with a zero entry (skipped) among the coefficients.
        let rows = 2 * n + 1
        let m = vector(rows * n)
        var v = vector(rows); v[0] = 0
        let b = vector(n)
        var of = vector(n), op = of
        pk_matvec_t_acc(m, rows, n, v, &of)
        pk_matvec_t_acc_plain(m, rows, n, v, &op)
        #expect(close(of, op, 1e-5))
        var mf = m, mp = m
        pk_outer_acc(&mf, rows, n, v, b)
        pk_outer_acc_plain(&mp, rows, n, v, b)
        #expect(close(mf, mp, 1e-6))
        #expect(Array(mf[0..<n]) == Array(m[0..<n]))
        // Several steps' outer products at once equal them one by one.
        let steps = 5, aStride = rows + 3, bStride = n + 2
        var a = vector(steps * aStride); a[2 * aStride + 1] = 0
        let bs = vector(steps * bStride)
        var ms = m, mo = m, msp = m
        pk_outer_acc_steps(&ms, rows, n, a, aStride, bs, bStride, steps)
        pk_outer_acc_steps_plain(&msp, rows, n, a, aStride, bs, bStride, steps)
        for s in 0..<steps {
            pk_outer_acc_plain(&mo, rows, n, Array(a[(s * aStride)...]), Array(bs[(s * bStride)...]))
        }
        #expect(close(ms, mo, 1e-5))
        #expect(close(msp, mo, 1e-6))
        // Adam: bit for bit.
        var (wa, ga, ma, va) = (vector(n), vector(n), vector(n), vector(n).map(abs))
        var (wb, gb, mb, vb) = (wa, ga, ma, va)
        pk_adam(&wa, &ga, &ma, &va, 0.01, 0.9, 0.999, 1e-8, n)
        pk_adam_plain(&wb, &gb, &mb, &vb, 0.01, 0.9, 0.999, 1e-8, n)
        #expect(wa.map(\.bitPattern) == wb.map(\.bitPattern) && ma == mb && va == vb)
        #expect(ga.allSatisfy { $0 == 0 } && gb.allSatisfy { $0 == 0 })
        // axpy.
        var yf = vector(n), yp = yf
        pk_axpy(0.7, b, &yf, n)
        pk_axpy_plain(0.7, b, &yp, n)
        #expect(close(yf, yp, 1e-6))
    }

    /// Dense per-weight Adagrad (session-rnn's GRU and output weights): the
    /// fast path equals the plain loop bit for bit, leaves weights with a
    /// zero gradient alone, zeroes the gradient, and matches the formula.
    @Test(arguments: [0, 1, 7, 8, 9, 64, 1000])
    func denseAdagradEqualsPlainLoop(n: Int) {
        var rng = SplitMix64(seed: UInt64(n) + 11)
        let w0 = (0..<n).map { _ in rng.nextSignedUnitFloat() }
        let a0 = (0..<n).map { _ in abs(rng.nextSignedUnitFloat()) }
        let g0 = (0..<n).map { i in i % 3 == 0 ? 0 : rng.nextSignedUnitFloat() * 0.1 }
        var wf = w0, af = a0, gf = g0
        var wp = w0, ap = a0, gp = g0
        pk_adagrad_dense(&wf, &gf, &af, 0.05, n)
        pk_adagrad_dense_plain(&wp, &gp, &ap, 0.05, n)
        #expect(wf.map(\.bitPattern) == wp.map(\.bitPattern))
        #expect(af.map(\.bitPattern) == ap.map(\.bitPattern))
        #expect(gf.allSatisfy { $0 == 0 } && gp.allSatisfy { $0 == 0 })
        // The vector loop's scalar tail rounds as the plain loop too (a fused
        // multiply-add there once differed in about 1% of draws).
        var differing = 0
        for _ in 0..<2000 {
            var (w1, g1, a1) = ((0..<n).map { _ in rng.nextSignedUnitFloat() }, (0..<n).map { _ in rng.nextSignedUnitFloat() * 0.1 },
                                (0..<n).map { _ in abs(rng.nextSignedUnitFloat()) })
            var (w2, g2, a2) = (w1, g1, a1)
            pk_adagrad_dense(&w1, &g1, &a1, 0.05, n)
            pk_adagrad_dense_plain(&w2, &g2, &a2, 0.05, n)
            if w1.map(\.bitPattern) != w2.map(\.bitPattern) || a1.map(\.bitPattern) != a2.map(\.bitPattern) { differing += 1 }
        }
        #expect(differing == 0)
        for k in 0..<n {
            if g0[k] == 0 {
                #expect(wf[k] == w0[k] && af[k] == a0[k])
            } else {
                let acc = a0[k] + g0[k] * g0[k]
                #expect(af[k] == acc)
                #expect(wf[k] == w0[k] - 0.05 * g0[k] / (acc.squareRoot() + 1e-8))
            }
        }
    }

    @Test(arguments: [1, 7, 8, 15, 16, 17, 64, 67])
    func rowUpdateKernelsEqualPlainLoops(dim n: Int) {
        var rng = SplitMix64(seed: 100 + UInt64(n))
        func vector() -> [Float] { (0..<n).map { _ in rng.nextSignedUnitFloat() } }
        let a = vector(), b = vector(), z = vector()
        #expect(abs(pk_dot(a, b, n) - pk_dot_plain(a, b, n)) <= 1e-5 * Float(n))
        #expect(abs(pk_dot_diff(0.5, z, a, b, n) - pk_dot_diff_plain(0.5, z, a, b, n)) <= 1e-5 * Float(n))
        for (anchored, scaled) in [(false, false), (true, false), (false, true), (true, true)] {
            let start = vector(), anchor = vector(), v = vector(), scale = vector().map { 1 + $0 / 2 }
            var fast = start, plain = start, written = start
            var accFast: Float = 0.3, accPlain: Float = 0.3
            let alpha: Float = -0.7, reg: Float = 0.01, lambda: Float = anchored ? 0.2 : 0
            scale.withUnsafeBufferPointer { sp in
            anchor.withUnsafeBufferPointer { ap in
                let s = scaled ? sp.baseAddress : nil
                fast.withUnsafeMutableBufferPointer { f in
                    pk_adagrad_row(f.baseAddress, anchored ? ap.baseAddress : UnsafePointer(f.baseAddress), v, alpha, reg, lambda, &accFast, 0.1, s, n)
                }
                plain.withUnsafeMutableBufferPointer { p in
                    pk_adagrad_row_plain(p.baseAddress, anchored ? ap.baseAddress : UnsafePointer(p.baseAddress), v, alpha, reg, lambda, &accPlain, 0.1, s, n)
                }
            }}
            let g = (0..<n).map { k in alpha * v[k] - reg * start[k] - lambda * (start[k] - (anchored ? anchor[k] : start[k])) }
            let acc: Float = 0.3 + g.map { $0 * $0 }.reduce(0, +) / Float(n)
            let step = 0.1 / (acc + 1e-8).squareRoot()
            for k in 0..<n { written[k] += step * (scaled ? scale[k] : 1) * g[k] }
            #expect(abs(accFast - accPlain) <= 1e-5 && abs(accPlain - acc) <= 1e-5)
            for k in 0..<n {
                #expect(abs(fast[k] - plain[k]) <= 1e-5)
                #expect(abs(plain[k] - written[k]) <= 1e-5)
            }
            #expect(fast != start)
        }
        // The step with its anchor following, fast and plain, against the
        // plain step followed by the moving average written out here; and
        // the BPR pair's gradient accumulation.
        for scaled in [false, true] {
            let start = vector(), anchorStart = vector(), v = vector(), scale = vector().map { 1 + $0 / 2 }
            var fast = start, plain = start, reference = start
            var anchorFast = anchorStart, anchorPlain = anchorStart
            var accFast: Float = 0.3, accPlain: Float = 0.3, accReference: Float = 0.3
            scale.withUnsafeBufferPointer { sp in
                let s = scaled ? sp.baseAddress : nil
                pk_adagrad_row_follow(&fast, &anchorFast, v, 0.6, 0.01, 0.2, &accFast, 0.1, s, 0.05, n)
                pk_adagrad_row_follow_plain(&plain, &anchorPlain, v, 0.6, 0.01, 0.2, &accPlain, 0.1, s, 0.05, n)
                pk_adagrad_row_plain(&reference, anchorStart, v, 0.6, 0.01, 0.2, &accReference, 0.1, s, n)
            }
            #expect(abs(accFast - accReference) <= 1e-5 && accPlain == accReference)
            for k in 0..<n {
                let anchor = anchorStart[k] + 0.05 * (reference[k] - anchorStart[k])
                #expect(abs(fast[k] - reference[k]) <= 1e-5 && plain[k] == reference[k])
                #expect(abs(anchorFast[k] - anchor) <= 1e-5 && abs(anchorPlain[k] - anchor) <= 1e-6)
            }
        }
        var dzFast = vector(), giFast = vector()
        var dzPlain = dzFast, giPlain = giFast
        let dz0 = dzFast, gi0 = giFast
        pk_bpr_accumulate(0.37, a, b, z, &dzFast, &giFast, n)
        pk_bpr_accumulate_plain(0.37, a, b, z, &dzPlain, &giPlain, n)
        for k in 0..<n {
            #expect(abs(dzFast[k] - (dz0[k] + 0.37 * (a[k] - b[k]))) <= 1e-6 && abs(dzPlain[k] - dzFast[k]) <= 1e-6)
            #expect(abs(giFast[k] - (gi0[k] + 0.37 * z[k])) <= 1e-6 && abs(giPlain[k] - giFast[k]) <= 1e-6)
        }
    }

    /// The top-k scan's SIMD search equals the plain loop, NaN included.
    @Test(arguments: [0, 3, 8, 13, 100, 1031])
    func nextAtLeastEqualsPlainLoop(count n: Int) {
        var rng = SplitMix64(seed: 7 + UInt64(n))
        var fast = (0..<n).map { _ in rng.nextSignedUnitFloat() * 10 }
        if n > 5 { fast[5] = .nan }
        for threshold: Float in [-.infinity, -5, 0, 3, 9.5, .infinity] {
            var i = 0, found: [Int] = [], expected: [Int] = []
            while true {
                i = pk_next_at_least(fast, i, n, threshold)
                if i >= n { break }
                found.append(i)
                i += 1
            }
            i = 0
            while true {
                i = pk_next_at_least_plain(fast, i, n, threshold)
                if i >= n { break }
                expected.append(i)
                i += 1
            }
            #expect(found == expected)
            #expect(expected == fast.indices.filter { fast[$0] >= threshold })
        }
    }

    /// The neighbourhood accumulation (several items' co-occurrence tables
    /// into one score array) gives the scores and the touched set that the
    /// plain loop written out here gives, with and without the `seen`
    /// bytes, skipping empty slots, neighbours past `items` and NaN counts.
    @Test func neighbourAccumulationEqualsThePlainLoop() {
        var rng = SplitMix64(seed: 77)
        let items = 300, capacity = 64
        var tables: [[Float]] = []
        for _ in 0..<5 {
            var t = [Float](repeating: 0, count: 2 * capacity)
            for s in 0..<capacity {
                let r = rng.below(10)
                let key: UInt32 = r < 3 ? .max : (r == 3 ? UInt32(items + rng.below(50)) : UInt32(rng.below(items)))
                t[2 * s] = Float(bitPattern: key)
                t[2 * s + 1] = r == 4 ? .nan : Float(rng.below(20) + 1)
            }
            tables.append(t)
        }
        var expected = [Float](repeating: 0, count: items)
        var expectedTouched = Set<Int32>()
        var w: Float = 1
        for t in tables {
            for s in 0..<capacity {
                let key = t[2 * s].bitPattern, count = t[2 * s + 1]
                guard key < UInt32(items), count.isFinite else { continue }
                expected[Int(key)] += w * count
                expectedTouched.insert(Int32(key))
            }
            w *= 0.7
        }
        for useSeen in [false, true] {
            var out = [Float](repeating: 0, count: items)
            var seen = [UInt8](repeating: 0, count: items)
            var touched = [CInt](repeating: 0, count: tables.count * capacity)
            var n = 0
            var w: Float = 1
            for t in tables {
                n = out.withUnsafeMutableBufferPointer { o in
                    seen.withUnsafeMutableBufferPointer { sb in
                        pk_accumulate_neighbours(t, capacity, w, items, o.baseAddress!, useSeen ? sb.baseAddress! : nil, &touched, n)
                    }
                }
                w *= 0.7
            }
            #expect(n == expectedTouched.count, "seen: \(useSeen)")
            #expect(Set(touched[0..<n].map { Int32($0) }) == expectedTouched, "seen: \(useSeen)")
            for j in 0..<items { #expect(abs(out[j] - expected[j]) <= 1e-4 * max(1, expected[j])) }
            if useSeen { #expect(seen.enumerated().allSatisfy { ($0.element == 1) == expectedTouched.contains(Int32($0.offset)) }) }
        }
    }

    /// The history's repeat search finds the last match, as the plain loop
    /// does, at every position and length (tails of the 8-wide steps too).
    @Test func lastIndexSearchEqualsThePlainLoop() {
        var rng = SplitMix64(seed: 5)
        for n in [0, 1, 7, 8, 9, 16, 17, 100, 1000] {
            let x = (0..<n).map { _ in Int32(rng.below(20)) }
            for v in Int32(-1)...Int32(21) {
                let expected = x.lastIndex(of: v) ?? -1
                #expect(pk_last_index_i32(x, n, v) == expected, "n \(n) v \(v)")
                #expect(pk_last_index_i32_plain(x, n, v) == expected)
            }
        }
        #expect(pk_last_index_i32(nil, 0, 3) == -1)
    }

    @Test func tableGrowsAcrossChunksDeterministically() {
        let a = EmbeddingTable(dimension: 16, seed: 7), b = EmbeddingTable(dimension: 16, seed: 7)
        a.grow(users: 3, items: 2000)
        b.grow(users: 1, items: 1)
        b.grow(users: 3, items: 2000)
        #expect(a.itemRows == 2000 && a.items.allocatedRows >= 2000)
        for i in [0, 1023, 1024, 1999] {
            for k in 0..<16 { #expect(a.item(Int32(i))[k] == b.item(Int32(i))[k]) }
        }
        #expect(a.item(5)[0] != a.item(6)[0])
        #expect(a.bytes > 2000 * 16 * 4)
    }

    /// One thread writes rows while another reads and grows nothing: the
    /// reader always sees finite values and the memory stays put.
    @Test func readersSeeStableMemoryWhileTheLearnerWrites() async {
        let table = EmbeddingTable(dimension: 64, seed: 1)
        table.grow(users: 10, items: 5000)
        let before = table.item(4999)
        let writer = Task.detached {
            var rng = SplitMix64(seed: 3)
            for _ in 0..<200_000 {
                let row = table.item(Int32(rng.below(5000)))
                for k in 0..<64 { row[k] = rng.nextSignedUnitFloat() }
            }
        }
        var sum: Float = 0
        for _ in 0..<200 {
            for i in stride(from: 0, to: 5000, by: 7) {
                let row = table.item(Int32(i))
                for k in 0..<64 { sum += row[k] }
            }
        }
        await writer.value
        #expect(sum.isFinite)
        #expect(table.item(4999) == before)
    }
}
