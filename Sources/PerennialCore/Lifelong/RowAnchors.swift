// Anchored learning for the shared table's rows: each row has an anchor
// copy that follows it slowly (an exponential moving average of the row,
// `rate` per update of that row), and every learning step on the row also
// descends λ/2·‖row − anchor‖², an L2 pull toward what the row held some
// 1/rate updates ago. This is the "L2 toward the old solution" member of the
// regularisation family of continual learning (Kirkpatrick et al. 2017,
// EWC, weight it by the Fisher information; here the per-row Adagrad
// accumulator already shrinks the steps of much-trained rows, which plays
// that part), so a burst of new behaviour bends a row without wiping out
// what it learned before. With λ = 0 the step is exactly the plain one.
//
// The step and the anchor's move are one C pass (pk_adagrad_row_follow,
// EmbeddingTable.step).
//
// Threading: `grow` on the admitting thread, like the table's rows; anchors
// are read and written only by the learner (the serving thread never reads
// them).

public final class RowAnchors: @unchecked Sendable {
    public let strength: Float
    public let rate: Float
    public let users: ChunkedBuffer<Float>
    public let items: ChunkedBuffer<Float>
    let dimension: Int

    init(dimension: Int, strength: Float, rate: Float) {
        self.dimension = dimension
        self.strength = strength
        self.rate = rate
        users = ChunkedBuffer(width: dimension, fill: 0, rowsPerChunkLog2: 10)
        items = ChunkedBuffer(width: dimension, fill: 0, rowsPerChunkLog2: 10)
    }

    /// Rows `from..<to` were just initialised: their anchors start equal to them.
    func grow(_ anchors: ChunkedBuffer<Float>, rows: ChunkedBuffer<Float>, from: Int, to: Int) {
        anchors.ensure(rows: to)
        for r in from..<to { anchors.row(r).update(from: rows.row(r), count: dimension) }
    }

    public var bytes: Int { users.bytes + items.bytes }
}
