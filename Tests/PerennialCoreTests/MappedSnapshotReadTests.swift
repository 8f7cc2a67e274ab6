// A snapshot is parsed through a read-only mapping of its file. A page the
// kernel cannot read again (an I/O error since the checksum pass, or the
// file truncated under the mapping) used to end the process with SIGBUS;
// now it reads as zeros, and the reader throws at its next number or
// section mark, so start-up falls back to an older version.

import Foundation
import ScratchDirectory
import Testing
@testable import PerennialCore

@Suite struct MappedSnapshotReadTests {
    /// A file of two marked sections around 64 KiB of numbers 1, 2, 3, ...
    private func writeFile() throws -> String {
        var w = SnapshotWriter()
        w.mark("start")
        for i in 1...8_192 { w.u64(UInt64(i)) }
        w.mark("end")
        let path = ScratchDirectory.path("mapped") + ".bin"
        try Data(w.bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func aWholeFileReadsAsWritten() throws {
        let path = try writeFile()
        let bytes = try SnapshotBytes(mapping: path)
        var r = SnapshotReader(storage: bytes)
        try r.mark("start")
        for i in 1...8_192 { #expect(try r.u64() == UInt64(i)) }
        try r.mark("end")
        #expect(!bytes.readFailed)
    }

    @Test func aFileTruncatedUnderTheMappingIsAnErrorNotACrash() throws {
        let path = try writeFile()
        let bytes = try SnapshotBytes(mapping: path)
        var r = SnapshotReader(storage: bytes)
        try r.mark("start")
        // The file loses all but its first page: reading the mapping past
        // it raises SIGBUS, which the guard turns into zeros and a flag.
        #expect(truncate(path, 4096) == 0)
        var values: [UInt64] = []
        #expect(throws: LogError.self) {
            for _ in 1...8_192 { values.append(try r.u64()) }
        }
        #expect(bytes.readFailed)
        // What the first page still held came back; nothing read from a
        // lost page did (the first such read threw).
        #expect(values.count >= 400 && values.count < 8_192)
        #expect(values == (1...values.count).map(UInt64.init))
        #expect(throws: LogError.self) { try r.mark("end") }
        // A mapping made afterwards (of the short file) is not marked.
        let again = try SnapshotBytes(mapping: path)
        #expect(!again.readFailed)
    }
}
