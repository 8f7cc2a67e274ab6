// Counters the server keeps about itself, reported by STATS next to the
// model's and the scorers' counters. Touched only on the loop thread.

struct ServerStats {
    var connections = 0
    var connectionsTotal: UInt64 = 0
    var connectionsRejected: UInt64 = 0
    var requestsTotal: UInt64 = 0
    var errorsTotal: UInt64 = 0
    var fatalErrors: UInt64 = 0
    var timeouts: UInt64 = 0
    var authFailures: UInt64 = 0
    var reloads: UInt64 = 0
    var bytesIn: UInt64 = 0
    var bytesOut: UInt64 = 0
    var feedbackBatches: UInt64 = 0
    var recommends: UInt64 = 0
    /// Batches of RECOMMENDs answered together, and the requests in them.
    var recommendBatches: UInt64 = 0
    /// Batches held for connections the previous batch answered.
    var recommendBatchWaits: UInt64 = 0
    var recommendsBatched: UInt64 = 0
    var backpressurePauses: UInt64 = 0
    /// Frames refused BUSY because all connections' receive buffers had
    /// reached `limits.max_inbox_bytes`.
    var inboxBudgetRefusals: UInt64 = 0
    var queueFullPauses: UInt64 = 0
    /// Item expiry sweeps whose batch waited for the learner to drain.
    var sweepWaits: UInt64 = 0
    /// Items forgotten by DELETE_ITEMS since the server started.
    var itemsDeleted: UInt64 = 0
    /// Users forgotten by DELETE_USERS since the server started.
    var usersDeleted: UInt64 = 0
    /// FEEDBACK batches and upserts refused because they would add an id beyond `[limits]`'s bounds.
    var capacityRefusals: UInt64 = 0
    /// Requests refused because the log could not be written.
    var storageRefusals = CountedWarning(level: .error, intervalSeconds: 10)
}
