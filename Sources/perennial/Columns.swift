// Plain-text table columns for the commands' printed results.

import Foundation

/// `s` padded with spaces to `n` characters (and at least one space after).
func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }

/// A metric with four decimals.
func f(_ x: Double) -> String { String(format: "%.4f", x) }
