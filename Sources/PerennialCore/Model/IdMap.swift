// External ids (u64, chosen by users) to dense row indices, inserted on first
// sight. A dictionary, so two ids never share a row (no hashing trick).
// Owned by the thread that admits events; the reverse map lives in
// never-moving memory so other threads may read it for indices they were
// given.

public final class IdMap {
    private var dense: [UInt64: Int32] = [:]
    private let external = ChunkedBuffer<UInt64>(width: 1, fill: 0, rowsPerChunkLog2: 12, maxRows: Int(Int32.max))

    public init() {}

    public var count: Int { dense.count }

    /// The index of `id`, if seen.
    @inline(__always)
    public func index(of id: UInt64) -> Int32? { dense[id] }

    /// The index of `id`, inserting it when new; `isNew` says which.
    @inline(__always)
    public func insert(_ id: UInt64) -> (index: Int32, isNew: Bool) {
        if let i = dense[id] { return (i, false) }
        let i = Int32(dense.count)
        external.ensure(rows: Int(i) + 1)
        external[Int(i)] = id
        dense[id] = i
        return (i, true)
    }

    /// The external id of a dense index.
    @inline(__always)
    public func id(at index: Int32) -> UInt64 { external[Int(index)] }

    /// Approximate bytes held.
    public var bytes: Int { dense.capacity * 16 + external.bytes }
}
