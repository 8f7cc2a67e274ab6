// The requests each `perennial bench` workload sends. Users and items are
// drawn from 1…users and 1…items by a seeded generator per connection, so a
// run is repeatable.

import PerennialProtocol

public enum Workload: String, CaseIterable, Sendable {
    case ping, recommend, feedback, mixed
}

public struct WorkloadSettings: Sendable {
    public var users = 610
    public var items = 9742
    public var k = 10
    public var scorer = ""
    public var feedbackBatch = 100
    /// Mixed: the share of requests that are FEEDBACK (of one event).
    public var feedbackShare = 0.1
    public init() {}
}

/// Builds request bytes for connection `c`, request `n`.
public final class RequestMaker: @unchecked Sendable {
    // Invariant for @unchecked Sendable: used by the one driver thread only.
    let workload: Workload
    let s: WorkloadSettings
    private var rngs: [UInt64]
    private var scratch: [UInt8] = []

    public init(_ workload: Workload, settings: WorkloadSettings, connections: Int) {
        self.workload = workload
        s = settings
        rngs = (0..<connections).map { UInt64($0) &* 0x9E37_79B9_7F4A_7C15 &+ 1 }
    }

    private func next(_ c: Int) -> UInt64 {
        rngs[c] &+= 0x9E37_79B9_7F4A_7C15
        var z = rngs[c]
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public func make(connection c: Int, n: Int) -> (bytes: [UInt8], units: Int) {
        scratch.removeAll(keepingCapacity: true)
        let id = UInt32(truncatingIfNeeded: n)
        switch workload {
        case .ping:
            Request.ping.encode(into: &scratch, requestID: 1)
            return (scratch, 1)
        case .recommend:
            recommend(c, id)
            return (scratch, 1)
        case .feedback:
            feedback(c, id, count: s.feedbackBatch)
            return (scratch, s.feedbackBatch)
        case .mixed:
            if Double(next(c) % 10_000) / 10_000 < s.feedbackShare {
                feedback(c, id, count: 1)
            } else {
                recommend(c, id)
            }
            return (scratch, 1)
        }
    }

    private func recommend(_ c: Int, _ id: UInt32) {
        let user = next(c) % UInt64(s.users) + 1
        Request.recommend(RecommendRequest(user: user, k: UInt16(s.k), scorer: s.scorer)).encode(into: &scratch, requestID: id)
    }

    private func feedback(_ c: Int, _ id: UInt32, count: Int) {
        let events = (0..<count).map { _ in
            WireEvent(user: next(c) % UInt64(s.users) + 1, item: next(c) % UInt64(s.items) + 1, kind: .click)
        }
        Request.feedback(events).encode(into: &scratch, requestID: id)
    }
}
