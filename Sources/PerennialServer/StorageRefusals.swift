// Requests refused because the log could not be written (a full disk, an
// I/O error, a failed fsync): counted for STATS, and logged at most once
// every 10 s with the number refused since the last line, so an operator
// sees them without a full disk filling the server's log too (review
// finding, helper-49: thousands of STORAGE refusals left no line at all).
// Touched only on the loop thread.

import PerennialCore

struct StorageRefusals {
    private(set) var count: UInt64 = 0
    private var unreported = 0
    private var lastLineNs: UInt64 = 0
    private static let intervalNs: UInt64 = 10_000_000_000

    /// Counts a refusal of `what` (e.g. "FEEDBACK") because of `error`.
    mutating func note(_ what: String, _ error: any Error) {
        count += 1
        unreported += 1
        let now = MonotonicClock.nowNanos()
        guard lastLineNs == 0 || now &- lastLineNs >= Self.intervalNs else { return }
        let also = unreported > 1 ? " (\(unreported) requests refused so since the last such line)" : ""
        Log.error("\(what) refused with STORAGE: \(error)\(also); STATS storage_refusals counts them")
        unreported = 0
        lastLineNs = now
    }
}
