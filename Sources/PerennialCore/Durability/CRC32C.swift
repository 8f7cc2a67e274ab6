// CRC-32C (Castagnoli), the checksum on every log record and snapshot:
// reflected polynomial 0x82F63B78, as in iSCSI (RFC 3720) and ext4. In C
// (pk_crc32c): SSE4.2's crc32 instruction where the CPU has it, else a
// table, with the same result.

import CKernels

public enum CRC32C {
    /// The checksum of `bytes`; `seed` continues (or salts) a checksum.
    public static func checksum(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress else { return seed }
        return pk_crc32c(seed, base, bytes.count)
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }
}
