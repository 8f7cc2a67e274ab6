// A one-line progress bar on standard error, redrawn at most ten times a
// second, for long-running commands.

import Foundation
import PerennialCore

final class ProgressBar: @unchecked Sendable {
    // Invariant for @unchecked Sendable: all state is guarded by `lock`.
    private let lock = NSLock()
    private let total: Int
    private let label: String
    private var lastDraw: UInt64 = 0
    private let enabled: Bool
    private let started = MonotonicClock.nowNanos()

    init(total: Int, label: String) {
        self.total = max(total, 1)
        self.label = label
        enabled = isatty(2) != 0 || ProcessInfo.processInfo.environment["PERENNIAL_PROGRESS"] != nil
    }

    func update(_ done: Int, force: Bool = false) {
        guard enabled else { return }
        lock.lock()
        defer { lock.unlock() }
        let now = MonotonicClock.nowNanos()
        guard force || now - lastDraw > 100_000_000 else { return }
        lastDraw = now
        let fraction = min(1, Double(done) / Double(total))
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let secs = Double(now - started) / 1e9
        let rate = secs > 0 ? Double(done) / secs : 0
        let line = String(format: "\r%@ [%@] %5.1f%% %d/%d  %.0f/s ", label, bar, fraction * 100, done, total, rate)
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish() {
        guard enabled else { return }
        update(total, force: true)
        FileHandle.standardError.write(Data("\n".utf8))
    }
}
