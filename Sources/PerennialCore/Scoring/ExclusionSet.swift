// The items a request must not return (the user's history and the request's
// own exclusions), as a stamped array: marking and testing are O(1) and
// clearing is one increment, so a request allocates nothing. Vacant item
// indices (an expired item's, until a new item takes it) carry a stamp no
// request uses, so they stay excluded across requests at no cost per
// request.

public final class ExclusionSet {
    private var stamps: [UInt32] = []
    private var generation: UInt32 = 1
    /// The stamp of an index excluded until `readmit` (never a generation).
    private static let always = UInt32.max

    public init() {}

    /// Starts a new, empty set for items 0..<itemCount (the always-excluded
    /// indices stay).
    public func reset(itemCount: Int) {
        if stamps.count < itemCount {
            stamps.append(contentsOf: repeatElement(0, count: itemCount - stamps.count))
        }
        generation &+= 1
        if generation == Self.always {
            // Wrapped after 4 billion requests: clear once and go on.
            for i in stamps.indices where stamps[i] != Self.always { stamps[i] = 0 }
            generation = 1
        }
    }

    @inline(__always)
    public func insert(_ item: Int32) {
        let i = Int(item)
        if i < stamps.count && stamps[i] != Self.always { stamps[i] = generation }
    }

    @inline(__always)
    public func contains(_ item: Int32) -> Bool {
        let i = Int(item)
        guard i < stamps.count else { return false }
        let s = stamps[i]
        return s == generation || s == Self.always
    }

    /// Excludes an index from every request until `readmit` (a vacant item index).
    public func excludeAlways(_ item: Int32) {
        let i = Int(item)
        if i >= stamps.count { stamps.append(contentsOf: repeatElement(0, count: i + 1 - stamps.count)) }
        stamps[i] = Self.always
    }

    /// Ends `excludeAlways` for an index (a new item took it).
    public func readmit(_ item: Int32) {
        let i = Int(item)
        if i < stamps.count && stamps[i] == Self.always { stamps[i] = 0 }
    }
}
