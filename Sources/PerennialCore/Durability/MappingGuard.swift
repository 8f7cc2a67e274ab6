// A file mapping read without dying of SIGBUS: while guarded, a page the
// kernel cannot read (an I/O error, or the file truncated under the
// mapping) reads as zeros and `readFailed` turns true, so the reader can
// call the file damaged (Sources/CKernels/mapping_guard.c). Snapshots and
// the sessions file are read this way.

import CKernels

public struct MappingGuard: Sendable {
    /// The guard's slot, or -1 when all are taken (then reads are not guarded).
    private let slot: Int32

    /// Guards `bytes` until `end()`.
    public init(_ bytes: UnsafeRawBufferPointer) {
        slot = bytes.count > 0 ? pk_mapping_guard(bytes.baseAddress, bytes.count) : -1
    }

    /// Whether a read of the range failed since it was guarded.
    public var readFailed: Bool { pk_mapping_guard_tripped(slot) != 0 }

    /// Ends the guard; call before the range is unmapped.
    public func end() { pk_mapping_unguard(slot) }
}
