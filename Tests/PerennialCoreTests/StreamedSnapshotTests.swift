// A snapshot streamed into its file (measured in a first pass, written in
// pieces in a second, as the server's forked writer does) is byte for byte
// the snapshot serialised in memory, and a second pass that differs from
// the first leaves no snapshot behind.

import Foundation
import ScratchDirectory
import Testing
@testable import PerennialCore
import PerennialPlugins

@Suite struct StreamedSnapshotTests {
    func empty() throws -> Model {
        var doc = ConfigDocument(file: "test")
        doc.set("scorers.load", .array(["cf", "popularity", "text-cnn", "session-rnn", "gan"].map { .string($0) }))
        doc.set("scorers.text-cnn.batch", .integer(16))
        return Model(config: try PerennialConfig.load(doc, registry: .builtin), registry: .builtin)
    }

    func model() throws -> Model {
        let m = try empty()
        for i in 1...60 { _ = m.upsertItem(id: UInt64(i), text: "word\(i % 7) tag\(i % 5) item \(i)", attributes: []) }
        var rng = SplitMix64(seed: 5)
        var out: [LearnEvent] = []
        for k in 0..<600 {
            let e = IncomingEvent(user: UInt64(rng.below(30) + 1), item: UInt64(rng.below(60) + 1), kind: .click, value: 0, timestamp: Int64(k))
            out.removeAll()
            m.admit(CollectionOfOne(e), now: 0, into: &out)
            for l in out { m.learn(l) }
        }
        return m
    }

    @Test func streamingWritesTheBytesOfTheInMemorySnapshot() throws {
        let m = try model()
        var memory = SnapshotWriter()
        m.save(to: &memory)
        var measured = SnapshotWriter.measuring()
        m.save(to: &measured)
        #expect(measured.size == memory.bytes.count)
        #expect(measured.bytes.isEmpty)
        // Pieces of 1,000 bytes: many hand-overs, and blocks that straddle them.
        var streamed: [UInt8] = []
        var pieces = 0
        var w = SnapshotWriter.streaming(like: measured, piece: 1000) { raw in
            streamed.append(contentsOf: raw)
            pieces += 1
            return true
        }
        m.save(to: &w)
        let finished = w.finish()
        #expect(finished)
        #expect(streamed == memory.bytes)
        #expect(pieces > 10)

        // Through the store: the same file as from the in-memory payload.
        let a = SnapshotStore(directory: ScratchDirectory.path("memory"))
        let b = SnapshotStore(directory: ScratchDirectory.path("streamed"))
        let fa = try a.write(seq: 600, firstLogSegment: 1, payload: memory.bytes)
        let fb = try b.write(seq: 600, firstLogSegment: 1, payloadSize: measured.size) { put in
            withoutActuallyEscaping(put) { put in
                var w = SnapshotWriter.streaming(like: measured, piece: 4096, to: put)
                m.save(to: &w)
                return w.finish()
            }
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: fa.path)) == Data(contentsOf: URL(fileURLWithPath: fb.path)))
        var r = try b.read(fb.path).1
        let restored = try empty()
        try restored.restore(from: &r)
        #expect(try restored.recommend(user: 3, k: 10, scorer: "cf") == m.recommend(user: 3, k: 10, scorer: "cf"))
    }

    /// A second pass that writes other bytes than the first measured (the
    /// model changed between them) is refused: nothing is listed, and no
    /// temporary file is left.
    @Test func aSecondPassThatDiffersLeavesNoSnapshot() throws {
        let m = try model()
        var measured = SnapshotWriter.measuring()
        m.save(to: &measured)
        let store = SnapshotStore(directory: ScratchDirectory.path("differs"))
        for extra in [{ (w: inout SnapshotWriter) in w.u8(1) },                       // one byte more
                      { (w: inout SnapshotWriter) in w.block { $0.u64(7) } }] {        // a block the first pass had not
            #expect(throws: LogError.self) {
                try store.write(seq: 600, firstLogSegment: 1, payloadSize: measured.size) { put in
                    withoutActuallyEscaping(put) { put in
                        var w = SnapshotWriter.streaming(like: measured, piece: 4096, to: put)
                        m.save(to: &w)
                        extra(&w)
                        return w.finish()
                    }
                }
            }
        }
        #expect(store.files().isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.directory).filter { $0.hasSuffix(".tmp") }.isEmpty)
    }
}
