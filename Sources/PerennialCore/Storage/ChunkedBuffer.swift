// Rows of a fixed width in memory that never moves: storage grows by whole
// chunks, and a chunk, once allocated, stays where it is until the buffer is
// destroyed. That is what lets the loop thread read rows while the learner
// writes them (Hogwild-style reads of floats, DESIGN.md): a reader may see a
// row half-updated, never freed or moved memory.
//
// Threading invariant (why this is `@unchecked Sendable`): `ensure(rows:)` is
// called only by the one thread that admits new ids (the loop, or the single
// thread of an in-process evaluation), and it publishes a row index to other
// threads only after the chunk exists (the learner receives indices through a
// mutex-protected queue, which orders the chunk's allocation before its use).
// The chunk directory is allocated once at its full size, so reading a chunk
// pointer never races with the directory moving.

public final class ChunkedBuffer<Element: BitwiseCopyable>: @unchecked Sendable {
    public let width: Int
    public let rowsPerChunk: Int
    private let chunkShift: Int
    private let maxChunks: Int
    private let directory: UnsafeMutablePointer<UnsafeMutablePointer<Element>?>
    private let fill: Element
    public private(set) var allocatedRows = 0

    /// - Parameters:
    ///   - width: elements per row (e.g. the embedding dimension).
    ///   - rowsPerChunkLog2: chunk size as a power of two, in rows.
    ///   - maxRows: hard capacity; the directory is sized for it up front.
    public init(width: Int, fill: Element, rowsPerChunkLog2: Int = 10, maxRows: Int = 1 << 28) {
        precondition(width > 0)
        self.width = width
        self.fill = fill
        self.chunkShift = rowsPerChunkLog2
        self.rowsPerChunk = 1 << rowsPerChunkLog2
        self.maxChunks = (maxRows + rowsPerChunk - 1) / rowsPerChunk
        directory = .allocate(capacity: maxChunks)
        directory.initialize(repeating: nil, count: maxChunks)
    }

    deinit {
        for c in 0..<maxChunks {
            guard let chunk = directory[c] else { break }
            chunk.deallocate()
        }
        directory.deallocate()
    }

    public var capacity: Int { maxChunks * rowsPerChunk }

    /// Makes rows 0..<rows addressable (new rows filled with `fill`).
    public func ensure(rows: Int) {
        precondition(rows <= capacity, "ChunkedBuffer capacity of \(capacity) rows exceeded")
        while allocatedRows < rows {
            let c = allocatedRows >> chunkShift
            let chunk = UnsafeMutablePointer<Element>.allocate(capacity: rowsPerChunk * width)
            chunk.initialize(repeating: fill, count: rowsPerChunk * width)
            directory[c] = chunk
            allocatedRows += rowsPerChunk
        }
    }

    /// The start of row `i`; `i` must be below a count passed to `ensure`.
    @inline(__always)
    public func row(_ i: Int) -> UnsafeMutablePointer<Element> {
        directory[i >> chunkShift].unsafelyUnwrapped + (i & (rowsPerChunk - 1)) * width
    }

    @inline(__always)
    public subscript(i: Int) -> Element {
        get { row(i).pointee }
        set { row(i).pointee = newValue }
    }

    /// Bytes held by allocated chunks.
    public var bytes: Int { allocatedRows * width * MemoryLayout<Element>.stride }

    /// Visits whole chunks covering rows 0..<rows: (first row, pointer, row count).
    @inline(__always)
    public func forEachChunk(rows: Int, _ body: (Int, UnsafeMutablePointer<Element>, Int) -> Void) {
        var start = 0
        while start < rows {
            let n = min(rowsPerChunk, rows - start)
            body(start, directory[start >> chunkShift].unsafelyUnwrapped, n)
            start += n
        }
    }
}
