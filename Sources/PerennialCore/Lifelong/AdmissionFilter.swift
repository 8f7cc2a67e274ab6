// Admission of rare ids by frequency, as production embedding tables do it
// (Monolith, Liu et al. 2022): an id gets a row of its own only at its
// `minOccurrences`-th sighting, counted in a count-min sketch (fixed memory
// however many rare ids pass; it never decays, so over a very long stream
// of one-off ids its counts grow and it admits more). Until then the caller
// gives the id's events to a shared fallback row. Used for user ids
// (IdLifecycle) and item ids (ItemLifecycle).
//
// Admitting thread only, in log order: a replay admits the same ids at the
// same events.

struct AdmissionFilter {
    let minOccurrences: Int
    private var sketch: CountMinSketch?
    /// Events given to the shared fallback so far.
    var sharedEvents: UInt64 = 0

    init(minOccurrences: Int) {
        self.minOccurrences = minOccurrences
        if minOccurrences > 1 { sketch = CountMinSketch() }
    }

    /// Whether rare ids wait for a row (min_occurrences > 1).
    var filters: Bool { sketch != nil }

    /// Counts a sighting of an id not yet holding a row; whether it gets one now.
    mutating func admits(_ id: UInt64) -> Bool {
        guard sketch != nil else { return true }
        let n = sketch!.add(id)  // (in place: no copy of the counters)
        if n < minOccurrences { sharedEvents += 1 }
        return n >= minOccurrences
    }

    /// Whether an id not yet holding a row would get one at its `more`-th
    /// sighting from now (asks the sketch; counts nothing).
    func wouldAdmit(_ id: UInt64, afterMore more: Int) -> Bool {
        guard let sketch else { return true }
        return sketch.estimate(id) + more >= minOccurrences
    }

    /// Whether the sketch counts sightings of `id` (admitted or not: a
    /// deletion takes them back either way).
    func hasSightings(of id: UInt64) -> Bool { (sketch?.estimate(id) ?? 0) > 0 }

    /// A deleted id's sightings go, so the id starts again as a new one.
    mutating func forgetSightings(of id: UInt64) { sketch?.remove(id) }

    var bytes: Int { sketch?.bytes ?? 0 }

    func saveSketch(to w: inout SnapshotWriter) {
        w.bool(sketch != nil)
        sketch?.save(to: &w)
    }

    /// Restores `saveSketch`'s output. Saved without the filter, or read
    /// without it: counting starts afresh.
    mutating func loadSketch(from r: inout SnapshotReader) throws {
        guard try r.bool() else { return }
        var s = sketch ?? CountMinSketch()
        try s.load(from: &r)
        if sketch != nil { sketch = s }
    }
}
