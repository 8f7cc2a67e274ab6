// The logistic function σ(a) = 1 / (1 + e^−a), in two forms.

/// σ(a) computed as written: the GRU's gates and text-cnn's BPR step, whose
/// arguments stay moderate. (For a below about −88, e^−a overflows to
/// infinity and the result is 0, which is σ's limit; no NaN.)
@inline(__always)
public func sigmoid(_ a: Float) -> Float { 1 / (1 + expf(-a)) }

/// σ(a) without ever forming e^|a| for a large |a| (e^a / (1 + e^a) for
/// negative a): cf's BPR step, whose score differences can be large. The
/// same value as `sigmoid` up to rounding.
@inline(__always)
public func stableSigmoid(_ x: Float) -> Float {
    if x >= 0 { return 1 / (1 + expf(-x)) }
    let e = expf(x)
    return e / (1 + e)
}

#if canImport(Glibc)
import Glibc
#endif
