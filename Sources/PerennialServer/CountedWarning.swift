// Something an operator must hear about that can happen thousands of times
// a second (requests refused because the log cannot be written, snapshots
// put off for want of disk space): counted for STATS, and logged at most
// once per interval with the number since the last line, so an operator
// sees it without a full disk filling the server's log too (review
// finding, helper-49: thousands of STORAGE refusals left no line at all).
// Touched only on the loop thread.

import PerennialCore

struct CountedWarning {
    let level: Log.Level
    let intervalNs: UInt64
    private(set) var count: UInt64 = 0
    private var unreported = 0
    private var lastLineNs: UInt64 = 0

    init(level: Log.Level, intervalSeconds: UInt64) {
        self.level = level
        intervalNs = intervalSeconds * 1_000_000_000
    }

    /// Counts one occurrence; logs `message` unless a line went out within
    /// the interval.
    mutating func note(_ message: @autoclosure () -> String) {
        count += 1
        unreported += 1
        let now = MonotonicClock.nowNanos()
        guard lastLineNs == 0 || now &- lastLineNs >= intervalNs else { return }
        let also = unreported > 1 ? " (\(unreported) times since the last such line)" : ""
        Log.write(level, message() + also)
        unreported = 0
        lastLineNs = now
    }
}
