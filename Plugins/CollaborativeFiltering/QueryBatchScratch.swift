// Serving-thread scratch for a batch of queries: per slot, the query's user
// vector and its 8-bit copy, an upper bound on its factor score for every
// catalogue item (QuantisedItems), and the moments of the approximate
// scores; plus the pointer arrays the C catalogue kernel takes. Allocated
// once and grown (never per request), and owned by one scorer on the
// serving thread only.

import CKernels

final class QueryBatchScratch {
    let dimension: Int
    /// Bytes of one quantised query (four per group of four dimensions).
    let quantisedWidth: Int
    private(set) var slots = 0
    /// Rows each slot's score array holds.
    private(set) var rows = 0
    private var vectors: UnsafeMutablePointer<Float>
    private var quantised: UnsafeMutablePointer<Int8>
    private var scoreArrays: [UnsafeMutablePointer<Float>] = []
    /// For the kernel: each slot's quantised query and its terms, and where
    /// its bounds for the current chunk of the table go.
    private(set) var queryPointers: UnsafeMutablePointer<UnsafePointer<Int8>?>
    private(set) var queryTerms: UnsafeMutablePointer<pk_quantised_query>
    private(set) var outPointers: UnsafeMutablePointer<UnsafeMutablePointer<Float>?>
    /// Each slot's Σ score and Σ score² over the catalogue (approximate scores).
    private(set) var sums: UnsafeMutablePointer<Double>
    private(set) var squares: UnsafeMutablePointer<Double>

    init(dimension: Int) {
        self.dimension = dimension
        quantisedWidth = 4 * pk_quantised_groups(dimension)
        vectors = .allocate(capacity: 1)
        quantised = .allocate(capacity: 1)
        queryPointers = .allocate(capacity: 1)
        queryTerms = .allocate(capacity: 1)
        outPointers = .allocate(capacity: 1)
        sums = .allocate(capacity: 1)
        squares = .allocate(capacity: 1)
    }

    deinit {
        vectors.deallocate()
        quantised.deallocate()
        for a in scoreArrays { a.deallocate() }
        queryPointers.deallocate()
        queryTerms.deallocate()
        outPointers.deallocate()
        sums.deallocate()
        squares.deallocate()
    }

    /// Makes room for `slots` queries over `rows` items (contents are not kept).
    func ensure(slots wanted: Int, rows wantedRows: Int) {
        if wantedRows > rows {
            for a in scoreArrays { a.deallocate() }
            scoreArrays = (0..<slots).map { _ in .allocate(capacity: wantedRows) }
            rows = wantedRows
        }
        guard wanted > slots else { return }
        for _ in slots..<wanted { scoreArrays.append(.allocate(capacity: rows)) }
        vectors.deallocate()
        vectors = .allocate(capacity: wanted * dimension)
        quantised.deallocate()
        quantised = .allocate(capacity: wanted * quantisedWidth)
        queryPointers.deallocate()
        queryPointers = .allocate(capacity: wanted)
        queryTerms.deallocate()
        queryTerms = .allocate(capacity: wanted)
        outPointers.deallocate()
        outPointers = .allocate(capacity: wanted)
        sums.deallocate()
        sums = .allocate(capacity: wanted)
        squares.deallocate()
        squares = .allocate(capacity: wanted)
        slots = wanted
        for s in 0..<slots { queryPointers[s] = UnsafePointer(quantised + s * quantisedWidth) }
    }

    @inline(__always) func vector(_ slot: Int) -> UnsafeMutablePointer<Float> { vectors + slot * dimension }
    @inline(__always) func scores(_ slot: Int) -> UnsafeMutablePointer<Float> { scoreArrays[slot] }

    /// The slot's 8-bit copy of its user vector, for the kernel.
    func quantiseQuery(_ slot: Int) {
        queryTerms[slot] = pk_quantise_query(vector(slot), dimension, quantised + slot * quantisedWidth)
    }

    /// Points the first `count` slots' outputs at row `first` of their score arrays.
    @inline(__always) func aimOutputs(count: Int, at first: Int) {
        for s in 0..<count { outPointers[s] = scoreArrays[s] + first }
    }
}
