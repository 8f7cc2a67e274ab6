// A cheap test that spares the Gumbel-top-k draw (Kool et al. 2019) its two
// logarithms for items that cannot enter the sample.
//
// An item with logit x (already divided by the temperature) and uniform u
// gets the key x − ln(−ln u), and enters a full top-k only if that key beats
// the k-th best key t. The key is below t exactly when ln(−ln u) > x − t.
// Since −ln u ≥ 1 − u, and 1 − u ≥ 2^e where e is the binary exponent of
// 1 − u, ln(−ln u) ≥ e · ln 2; so when e · ln 2 exceeds x − t (by a margin
// far above the float rounding of either side), the key is certainly below
// t and the item is skipped without a logarithm. Over a catalogue most
// items are skipped this way, and the sample is the same as with every key
// computed: the test only skips items the full computation would reject.
// (Checked exhaustively in float arithmetic: over all 334,709,556 floats u
// in [1e-12, 1), logf(−logf(u)) minus the bound is never below 0; the
// draw keeps u in [1e-12, 1 − 2^-24].)

import PerennialCore

enum GumbelTopK {
    /// The uniform draw behind an item's key, kept in [1e-12, 1 − 2^-24]:
    /// a draw that rounds to 1.0 as a Float would make the key +inf and let
    /// any item in.
    @inline(__always)
    static func uniform(_ g: inout SplitMix64) -> Float {
        min(max(Float(g.unitDouble()), 1e-12), 1 - 0x1p-24)
    }

    @inline(__always)
    static func cannotEnter(_ x: Float, uniform u: Float, threshold t: Float) -> Bool {
        guard t.isFinite, x.isFinite else { return false }
        let v = 1 - u
        // v's binary exponent from its bits (v is 0 or a normal float in
        // [2^-24, 1]; 0 keeps every key). Rounding in 1 − u moves the bound
        // by under 1e-7, far inside the margin.
        let biased = Int32((v.bitPattern >> 23) & 0xff)
        guard biased > 0 else { return false }
        let lowerBound = Float(biased - 127) * 0.693_147_2  // ≤ ln(1 − u) ≤ ln(−ln u)
        let margin: Float = 1e-3 + 1e-5 * (abs(x) + abs(t))
        return x - t < lowerBound - margin
    }
}
