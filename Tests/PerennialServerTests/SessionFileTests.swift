// The file a graceful stop leaves the sessions in (SessionFile): what it
// writes comes back, and a file that fails part-way, or is not one, restores
// nothing (review finding, helper-75: one that failed part-way restored the
// sessions before the failure and said "sessions start afresh").

import Foundation
import Testing
import ScratchDirectory
import PerennialCore
import PerennialProtocol
@testable import PerennialServer

@Suite struct SessionFileTests {
    @Test func whatIsSavedComesBackAndADamagedFileRestoresNothing() throws {
        let dir = ScratchDirectory.path("sessions")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = SessionFile.path(dataDir: dir)
        let store = SessionStore(maxSessions: 10, maxItems: 5, idleSeconds: 600)
        _ = store.update("a", appending: [1, 2], now: 0)
        _ = store.update("b", appending: [3], now: 5)
        try SessionFile.save(store, now: 10, to: path)
        #expect(!FileManager.default.fileExists(atPath: path + ".tmp"))

        let back = SessionStore(maxSessions: 10, maxItems: 5, idleSeconds: 600)
        #expect(SessionFile.restore(into: back, now: 100, from: path, maxBytes: 1 << 20) == 2)
        #expect(back.items(of: "a", now: 100) == [1, 2] && back.items(of: "b", now: 100) == [3])
        #expect(!FileManager.default.fileExists(atPath: path))   // read once

        // A file whose checksum holds but which claims one session more
        // than it has: nothing of it comes back.
        try SessionFile.save(store, now: 10, to: path)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes.removeLast(4)
        bytes[SessionFile.magic.count + 8] &+= 1
        bytes.put(CRC32C.checksum(bytes))
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let none = SessionStore(maxSessions: 10, maxItems: 5, idleSeconds: 600)
        #expect(SessionFile.restore(into: none, now: 100, from: path, maxBytes: 1 << 20) == 0 && none.count == 0)
        // Nor does one over the size this config could write.
        try SessionFile.save(store, now: 10, to: path)
        #expect(SessionFile.restore(into: none, now: 100, from: path, maxBytes: 16) == 0 && none.count == 0)
        // Nor one whose session claims more items than the file holds
        // (its checksum made to hold), nor a torn or an empty file.
        try SessionFile.save(store, now: 10, to: path)
        bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes.removeLast(4)
        let firstCount = SessionFile.magic.count + 8 + 4 + 2 + 1 + 8   // magic, saved at, n, key "a", idle
        bytes[firstCount] = 0xff
        bytes.put(CRC32C.checksum(bytes))
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(SessionFile.restore(into: none, now: 100, from: path, maxBytes: 1 << 20) == 0 && none.count == 0)
        try SessionFile.save(store, now: 10, to: path)
        bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        try Data(bytes.dropLast(3)).write(to: URL(fileURLWithPath: path))
        #expect(SessionFile.restore(into: none, now: 100, from: path, maxBytes: 1 << 20) == 0 && none.count == 0)
        try Data().write(to: URL(fileURLWithPath: path))
        #expect(SessionFile.restore(into: none, now: 100, from: path, maxBytes: 1 << 20) == 0 && none.count == 0)
        #expect(!FileManager.default.fileExists(atPath: path))
    }
}
