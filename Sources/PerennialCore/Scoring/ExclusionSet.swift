// The items a request must not return (the user's history and the request's
// own exclusions), as a stamped array: marking and testing are O(1) and
// clearing is one increment, so a request allocates nothing.

public final class ExclusionSet {
    private var stamps: [UInt32] = []
    private var generation: UInt32 = 1

    public init() {}

    /// Starts a new, empty set for items 0..<itemCount.
    public func reset(itemCount: Int) {
        if stamps.count < itemCount {
            stamps.append(contentsOf: repeatElement(0, count: itemCount - stamps.count))
        }
        generation &+= 1
        if generation == 0 {
            // Wrapped after 4 billion requests: clear once and go on.
            for i in stamps.indices { stamps[i] = 0 }
            generation = 1
        }
    }

    @inline(__always)
    public func insert(_ item: Int32) {
        let i = Int(item)
        if i < stamps.count { stamps[i] = generation }
    }

    @inline(__always)
    public func contains(_ item: Int32) -> Bool {
        let i = Int(item)
        return i < stamps.count && stamps[i] == generation
    }
}
