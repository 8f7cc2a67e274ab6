// External ids (u64, chosen by users) to dense row indices, inserted on first
// sight. A dictionary, so two ids never share a row (no hashing trick). An
// id can be removed (id lifecycle: expiry); its index is then vacant (id 0,
// which no client may use) and is given to the next new id, so the indices
// in use, and every table sized by them, stay within a bound.
// Owned by the thread that admits events; the reverse map lives in
// never-moving memory so other threads may read it for indices they were
// given.

public final class IdMap {
    private var dense: [UInt64: Int32] = [:]
    private let external = ChunkedBuffer<UInt64>(width: 1, fill: 0, rowsPerChunkLog2: 12, maxRows: Int(Int32.max))

    public init() {}

    private var vacant: [Int32] = []
    private var allocated = 0

    /// Indices allocated (in use or vacant): what per-index tables are sized by.
    public var count: Int { allocated }
    /// Ids mapped now.
    public var liveCount: Int { dense.count }

    /// The index of `id`, if seen.
    @inline(__always)
    public func index(of id: UInt64) -> Int32? { dense[id] }

    /// The index of `id`, inserting it when new; `isNew` says which.
    @inline(__always)
    public func insert(_ id: UInt64) -> (index: Int32, isNew: Bool) {
        let (i, isNew, _) = insertReportingReuse(id)
        return (i, isNew)
    }

    /// `insert`, also saying whether the id took a vacant index (a new id
    /// whose index held an expired one: `isNew` is false then, since no
    /// table grows).
    @inline(__always)
    public func insertReportingReuse(_ id: UInt64) -> (index: Int32, isNew: Bool, reused: Bool) {
        if let i = dense[id] { return (i, false, false) }
        if let i = vacant.popLast() {
            external[Int(i)] = id
            dense[id] = i
            return (i, false, true)
        }
        let i = Int32(allocated)
        allocated += 1
        external.ensure(rows: allocated)
        external[Int(i)] = id
        dense[id] = i
        return (i, true, false)
    }

    /// Forgets the id at `index`; the index is reused by a later new id.
    public func remove(index: Int32) {
        let id = external[Int(index)]
        guard id != 0, dense.removeValue(forKey: id) != nil else { return }
        external[Int(index)] = 0
        vacant.append(index)
    }

    /// Vacant indices, in the order `insert` will hand them out (last first).
    public var vacantIndices: [Int32] { vacant }

    /// Rebuilds a fresh map from a snapshot: `ids[i]` at index i (0 = vacant),
    /// and the vacant indices in their saved order.
    public func restore(ids: [UInt64], vacant order: [Int32]) {
        precondition(allocated == 0, "restore needs a fresh map")
        allocated = ids.count
        external.ensure(rows: allocated)
        for (i, id) in ids.enumerated() {
            external[i] = id
            if id != 0 { dense[id] = Int32(i) }
        }
        vacant = order
    }

    /// The external id of a dense index.
    @inline(__always)
    public func id(at index: Int32) -> UInt64 { external[Int(index)] }

    /// Approximate bytes held.
    public var bytes: Int { dense.capacity * 16 + external.bytes + vacant.capacity * 4 }
}
