// The serving thread's cache of item encodings for `text-cnn`, kept by
// generation so that one ranking never mixes encodings of different ages.
//
// The encoder moves as the learner trains it, so cached encodings go stale.
// Re-encoding the whole catalogue inside one request would stall the
// serving thread (about 20 ms at ml-latest-small size), and refreshing a
// few hundred stale rows per request, as this scorer first did, ranked with
// a mix of fresh and stale rows: on an idle server the same request got 13
// different top-5s in 25 tries while the refresh worked through the
// catalogue (review finding, helper-46). So there are two buffers: `live`,
// which requests rank with, and `spare`, which a refresh fills a bounded
// number of items per request, in item order, from one encoder step on; when
// it covers the catalogue it becomes `live` whole. An idle server's answers
// then change at most once after learning stops, at that swap.
//
// Rows never encoded (a new item, or one whose text changed) are encoded on
// demand into `live` at once: a cold item is recommendable the moment its
// text arrives, even though its row is newer than the rest.

import PerennialCore

final class EncodingCache {
    let width: Int
    private var live: ChunkedBuffer<Float>
    private var spare: ChunkedBuffer<Float>
    /// Per item: whether its row in `live` (or `spare`) holds its encoding.
    private var liveValid: [Bool] = []
    private var spareValid: [Bool] = []
    /// The encoder step the live generation was begun at (nil until the
    /// first request after a start, a load or `invalidateAll`).
    private(set) var liveStep: Int?
    /// The refresh under way: the encoder step it began at, the next item
    /// index it encodes, and where it ends (the item count when it began:
    /// items added since are encoded on demand, so a catalogue growing
    /// faster than the refresh cannot keep it from finishing; review
    /// finding, helper-47).
    private var refresh: (step: Int, next: Int, end: Int)?

    init(width: Int) {
        self.width = width
        live = ChunkedBuffer(width: width, fill: 0, rowsPerChunkLog2: 10)
        spare = ChunkedBuffer(width: width, fill: 0, rowsPerChunkLog2: 10)
    }

    var bytes: Int { live.bytes + spare.bytes }

    func grow(items: Int) {
        live.ensure(rows: items)
        spare.ensure(rows: items)
        if liveValid.count < items {
            liveValid.append(contentsOf: repeatElement(false, count: items - liveValid.count))
            spareValid.append(contentsOf: repeatElement(false, count: items - spareValid.count))
        }
    }

    /// Item i's encoding is no longer right (its text changed, or it
    /// expired): it is encoded again when next asked for, in either buffer.
    func invalidate(_ i: Int) {
        guard i < liveValid.count else { return }
        liveValid[i] = false
        spareValid[i] = false
    }

    /// Every encoding goes (a snapshot was loaded), and any refresh.
    func invalidateAll() {
        for i in liveValid.indices { liveValid[i] = false; spareValid[i] = false }
        liveStep = nil
        refresh = nil
    }

    /// Called once per request, before it ranks: begins a refresh of the
    /// first `items` items when the encoder has taken `every` steps since
    /// the live generation began, and encodes up to `budget` items of it
    /// (`encode` writes item i's row and says whether the item has a text);
    /// swaps it in once it is complete. (Items added meanwhile are not in
    /// it: after the swap they are encoded again on demand.)
    func advance(now: Int, every: Int, budget: Int, items: Int,
                 encode: (Int, UnsafeMutablePointer<Float>) -> Bool) {
        guard let began = liveStep else {
            liveStep = now
            return
        }
        if refresh == nil {
            guard now - began >= every else { return }
            refresh = (now, 0, min(items, spareValid.count))
        }
        guard var r = refresh else { return }
        var left = budget
        while left > 0 && r.next < r.end {
            let i = r.next
            r.next += 1
            spareValid[i] = encode(i, spare.row(i))
            if spareValid[i] { left -= 1 }
        }
        refresh = r
        guard r.next >= r.end else { return }
        swap(&live, &spare)
        swap(&liveValid, &spareValid)
        for i in spareValid.indices { spareValid[i] = false }
        liveStep = r.step
        refresh = nil
    }

    /// Item i's live row, encoded now by `encode` if it never was; nil for
    /// an item without text.
    @inline(__always)
    func row(_ i: Int, encode: (Int, UnsafeMutablePointer<Float>) -> Bool) -> UnsafeMutablePointer<Float>? {
        guard i < liveValid.count else { return nil }
        let row = live.row(i)
        if liveValid[i] { return row }
        guard encode(i, row) else { return nil }
        liveValid[i] = true
        // A refresh that already passed this item, or that ends before it
        // (the item came after it began), would otherwise swap in a buffer
        // without it, and the first request after the swap would encode
        // every such item at once (review finding, helper-48).
        if let r = refresh, i < r.next || i >= r.end {
            spare.row(i).update(from: row, count: width)
            spareValid[i] = true
        }
        return row
    }
}
