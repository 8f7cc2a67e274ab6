// Admission of rare ids by frequency, as production embedding tables do it
// (Monolith, Liu et al. 2022): an id gets a row of its own only at its
// `minOccurrences`-th sighting, counted in a count-min sketch (fixed memory
// however many rare ids pass). The counts are halved every `window`
// sightings (CountMinSketch), so an id must reach its count within about
// that many sightings of ids without rows, and a stream of one-off ids
// without end never fills the sketch. Until then the caller gives the id's
// events to a shared fallback row. Used for user ids
// (IdLifecycle) and item ids (ItemLifecycle).
//
// Admitting thread only, in log order: a replay admits the same ids at the
// same events.

struct AdmissionFilter {
    let minOccurrences: Int
    private var sketch: CountMinSketch?
    /// Events given to the shared fallback so far.
    var sharedEvents: UInt64 = 0

    init(minOccurrences: Int, window: Int) {
        self.minOccurrences = minOccurrences
        if minOccurrences > 1 { sketch = CountMinSketch(window: window) }
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
    /// sighting from now (asks the sketch; counts nothing). Conservative
    /// across a halving due meanwhile: it may say yes where the halving then
    /// says no (a capacity check counts a row too many), never the reverse.
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
    /// How full the sketch is, and sightings until its next halving (tests).
    var sketchOccupancy: Double { sketch?.occupancy ?? 0 }
    var sketchUntilHalving: Int { sketch?.untilHalving ?? 0 }

    func saveSketch(to w: inout SnapshotWriter) {
        w.bool(sketch != nil)
        sketch?.save(to: &w)
    }

    /// Restores `saveSketch`'s output. Saved without the filter, or read
    /// without it, or saved with another window's width: counting starts
    /// afresh.
    mutating func loadSketch(from r: inout SnapshotReader) throws {
        guard try r.bool() else { return }
        var s = sketch ?? CountMinSketch(window: 1)  // (read past)
        let same = try s.load(from: &r)
        if sketch != nil {
            if same { sketch = s } else { Log.info("the id admission sketch was saved with another admission_window: counting starts afresh") }
        }
    }
}
