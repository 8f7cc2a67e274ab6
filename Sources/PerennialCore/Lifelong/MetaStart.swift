// A meta-learned start for new users (Reptile, Nichol, Achiam & Schulman
// 2018; per-dimension step sizes in the spirit of Meta-SGD, Li et al. 2017).
//
// Each new user is a small learning task: their first `events` events adapt
// their row from the start θ. Reptile's outer step moves θ toward where the
// task ended up, θ ← θ + ε (φ_u − θ), so θ becomes the point from which a
// few events adapt a user best (to first order, the average of adapted
// users). The same adapted rows give per-dimension step sizes: dimensions
// along which users' adapted rows spread widely from θ are the ones a
// user's first events need to move, so a young user's step in dimension k
// is scaled by s_k = σ_k / mean(σ), σ_k² the running mean of (φ_u,k − θ_k)²
// (clamped to [0.25, 4]). Both are learned as the stream goes.
//
// A new user's row becomes θ plus its own small initial noise (which breaks
// symmetry between users), and its Adagrad accumulator starts at the
// running mean accumulator of adapted users, so a first event does not
// throw a barely-known row across the space.
//
// Threading: `grow` on the admitting thread; everything else on the learner.

import Synchronization

public final class MetaStart: @unchecked Sendable {
    public let events: Int
    public let rate: Float
    let dimension: Int
    /// θ, σ², the mean accumulator at adaptation, and the step scales.
    /// (Allocated once: `stepScale` hands the scale out as a pointer.)
    let start: UnsafeMutablePointer<Float>
    let spread: UnsafeMutablePointer<Float>
    let scale: UnsafeMutablePointer<Float>
    private var accumulator: Float = 0
    /// Users adapted (that taught θ) and users started from θ (learner
    /// thread; mirrored into atomics that STATS reads).
    private var adaptedCount: UInt64 = 0
    private let adaptedShown = Atomic<UInt64>(0)
    private let startedShown = Atomic<UInt64>(0)
    public var adapted: UInt64 { adaptedShown.load(ordering: .relaxed) }
    public var started: UInt64 { startedShown.load(ordering: .relaxed) }
    /// Per user: events learned so far (saturates at `events` + 1).
    let userEvents: ChunkedBuffer<UInt16>

    init(dimension: Int, events: Int, rate: Float) {
        self.dimension = dimension
        self.events = events
        self.rate = rate
        start = .allocate(capacity: dimension)
        start.initialize(repeating: 0, count: dimension)
        spread = .allocate(capacity: dimension)
        spread.initialize(repeating: 0, count: dimension)
        scale = .allocate(capacity: dimension)
        scale.initialize(repeating: 1, count: dimension)
        userEvents = ChunkedBuffer(width: 1, fill: 0, rowsPerChunkLog2: 12)
    }

    deinit {
        start.deallocate()
        spread.deallocate()
        scale.deallocate()
    }

    func grow(users: Int) { userEvents.ensure(rows: users) }

    /// Before a user's event is learned: a user's first event starts their
    /// row from θ (once something has been learned).
    @inline(__always)
    func willLearn(user u: Int32, table: EmbeddingTable) {
        guard userEvents[Int(u)] == 0, adaptedCount > 0 else { return }
        let row = table.user(u)
        for k in 0..<dimension { row[k] += start[k] }
        table.userAdagrad[Int(u)] = accumulator
        if let anchors = table.anchors { anchors.users.row(Int(u)).update(from: row, count: dimension) }
        startedShown.add(1, ordering: .relaxed)
    }

    /// After a user's event is learned: at their `events`-th event, their
    /// adapted row teaches θ, σ and the accumulator (Reptile's outer step).
    @inline(__always)
    func didLearn(user u: Int32, table: EmbeddingTable) {
        let n = userEvents[Int(u)]
        guard Int(n) <= events else { return }
        userEvents[Int(u)] = n + 1
        guard Int(n) + 1 == events else { return }
        let row = table.user(u)
        // The first adapted users set θ directly; then a running mean of
        // at least 1/adapted weight, so θ settles fast and keeps following.
        adaptedCount += 1
        adaptedShown.store(adaptedCount, ordering: .relaxed)
        let eps = max(rate, 1 / Float(adaptedCount))
        var meanSigma: Float = 0
        for k in 0..<dimension {
            let delta = row[k] - start[k]
            start[k] += eps * delta
            spread[k] += eps * (delta * delta - spread[k])
            meanSigma += spread[k].squareRoot()
        }
        accumulator += eps * (table.userAdagrad[Int(u)] - accumulator)
        meanSigma /= Float(dimension)
        if meanSigma > 0 {
            for k in 0..<dimension { scale[k] = min(4, max(0.25, spread[k].squareRoot() / meanSigma)) }
        }
    }

    /// Users 0..<users count as past their first events.
    func markAdapted(users: Int) {
        for u in 0..<users { userEvents[u] = UInt16(min(events + 1, Int(UInt16.max))) }
    }

    /// A reused user index starts as a new user.
    func reset(user u: Int32) { userEvents[Int(u)] = 0 }

    /// The per-dimension step scales for a user still in their first
    /// `events` events, or nil once they are adapted.
    @inline(__always)
    public func stepScale(user u: Int32) -> UnsafePointer<Float>? {
        guard adaptedCount > 0, Int(userEvents[Int(u)]) < events else { return nil }
        return UnsafePointer(scale)
    }

    func save(to w: inout SnapshotWriter, users: Int) {
        w.floats(start, count: dimension); w.floats(spread, count: dimension); w.floats(scale, count: dimension)
        w.f32(accumulator); w.u64(adaptedCount); w.u64(started)
        w.rows(userEvents, count: users)
    }

    func load(from r: inout SnapshotReader, users: Int) throws {
        try r.floats(into: start, count: dimension); try r.floats(into: spread, count: dimension)
        try r.floats(into: scale, count: dimension)
        accumulator = try r.f32(); adaptedCount = try r.u64()
        adaptedShown.store(adaptedCount, ordering: .relaxed)
        startedShown.store(try r.u64(), ordering: .relaxed)
        try r.rows(into: userEvents, expected: users)
    }
}
