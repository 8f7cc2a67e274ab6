// A minimal leveled logger to standard error: one line per message with a
// UTC timestamp. The server has a handful of messages; this is all it needs.

import Foundation

public enum Log {
    public enum Level: Int, Sendable, Comparable {
        case debug = 0, info, warning, error
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        var label: String { ["debug", "info", "warning", "error"][rawValue] }
    }

    private static let minimum: Level = {
        switch ProcessInfo.processInfo.environment["PERENNIAL_LOG"] {
        case "debug": .debug
        case "warning": .warning
        case "error": .error
        default: .info
        }
    }()

    public static func write(_ level: Level, _ message: @autoclosure () -> String) {
        guard level >= minimum else { return }
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        var tmv = tm()
        var secs = t.tv_sec
        gmtime_r(&secs, &tmv)
        let stamp = String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                           Int(tmv.tm_year) + 1900, Int(tmv.tm_mon) + 1, Int(tmv.tm_mday),
                           Int(tmv.tm_hour), Int(tmv.tm_min), Int(tmv.tm_sec), Int(t.tv_nsec / 1_000_000))
        // (A message of several lines, such as a config's mistakes, gets
        // the stamp and level on each, so filtering the log keeps them all.)
        let lines = message().split(separator: "\n", omittingEmptySubsequences: false)
        FileHandle.standardError.write(Data(lines.map { "\(stamp) \(level.label) \($0)\n" }.joined().utf8))
    }

    public static func info(_ m: @autoclosure () -> String) { write(.info, m()) }
    public static func warning(_ m: @autoclosure () -> String) { write(.warning, m()) }
    public static func error(_ m: @autoclosure () -> String) { write(.error, m()) }
    public static func debug(_ m: @autoclosure () -> String) { write(.debug, m()) }
}

/// Monotonic milliseconds, for timeouts.
public enum MonotonicClock {
    public static func nowNanos() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }
    public static func nowMillis() -> UInt64 { nowNanos() / 1_000_000 }
}

extension MonotonicClock {
    /// Wall-clock Unix seconds (for event timestamps, not timeouts).
    public static func unixSeconds() -> Int64 {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        return Int64(t.tv_sec)
    }
}
