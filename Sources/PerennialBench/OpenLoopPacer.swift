// Open-loop pacing: requests are due on a fixed schedule, the k-th at
// start + k / rate, whether or not earlier replies have come back. Latency
// is measured from that intended time, not from when the request could
// finally be sent, so a stalled server shows up in the tail instead of
// slowing the load down (the "coordinated omission" of Tene's talk
// "How NOT to Measure Latency").

public struct OpenLoopPacer: Sendable {
    public let start: UInt64
    public let intervalNanos: Double
    public private(set) var issued: UInt64 = 0

    /// `rate` requests per second from `start` (nanoseconds, monotonic).
    public init(rate: Double, start: UInt64) {
        precondition(rate > 0)
        self.start = start
        intervalNanos = 1e9 / rate
    }

    /// The intended send time of request k.
    @inline(__always)
    public func intended(_ k: UInt64) -> UInt64 { start + UInt64(Double(k) * intervalNanos) }

    /// Requests due by `now` and not yet issued.
    public func due(now: UInt64) -> Int {
        guard now >= start else { return 0 }
        let total = UInt64(Double(now - start) / intervalNanos) + 1
        return total > issued ? Int(total - issued) : 0
    }

    /// Marks the next request issued and returns its intended time.
    public mutating func issue() -> UInt64 {
        defer { issued += 1 }
        return intended(issued)
    }
}
