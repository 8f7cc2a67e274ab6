// Serving-thread scratch for a batch of queries: per slot, the query's user
// vector, its factor score for every catalogue item, and the moments of
// those scores; plus the pointer arrays the C catalogue kernel takes. Allocated
// once and grown (never per request), and owned by one scorer on the
// serving thread only.

final class QueryBatchScratch {
    let dimension: Int
    private(set) var slots = 0
    /// Rows each slot's score array holds.
    private(set) var rows = 0
    private var vectors: UnsafeMutablePointer<Float>
    private var scoreArrays: [UnsafeMutablePointer<Float>] = []
    /// For the kernel: each slot's user vector, and where its scores for the
    /// current chunk of the table go.
    private(set) var queryPointers: UnsafeMutablePointer<UnsafePointer<Float>?>
    private(set) var outPointers: UnsafeMutablePointer<UnsafeMutablePointer<Float>?>
    /// Each slot's Σ score and Σ score² over the catalogue.
    private(set) var sums: UnsafeMutablePointer<Double>
    private(set) var squares: UnsafeMutablePointer<Double>

    init(dimension: Int) {
        self.dimension = dimension
        vectors = .allocate(capacity: 1)
        queryPointers = .allocate(capacity: 1)
        outPointers = .allocate(capacity: 1)
        sums = .allocate(capacity: 1)
        squares = .allocate(capacity: 1)
    }

    deinit {
        vectors.deallocate()
        for a in scoreArrays { a.deallocate() }
        queryPointers.deallocate()
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
        queryPointers.deallocate()
        queryPointers = .allocate(capacity: wanted)
        outPointers.deallocate()
        outPointers = .allocate(capacity: wanted)
        sums.deallocate()
        sums = .allocate(capacity: wanted)
        squares.deallocate()
        squares = .allocate(capacity: wanted)
        slots = wanted
        for s in 0..<slots { queryPointers[s] = UnsafePointer(vectors + s * dimension) }
    }

    @inline(__always) func vector(_ slot: Int) -> UnsafeMutablePointer<Float> { vectors + slot * dimension }
    @inline(__always) func scores(_ slot: Int) -> UnsafeMutablePointer<Float> { scoreArrays[slot] }

    /// Points the first `count` slots' outputs at row `first` of their score arrays.
    @inline(__always) func aimOutputs(count: Int, at first: Int) {
        for s in 0..<count { outPointers[s] = scoreArrays[s] + first }
    }
}
