// The byte-level writer and reader of snapshot files: little-endian scalars,
// arrays of floats and integers, strings, and whole ChunkedBuffers. Every
// read is bounds-checked and throws on a short or malformed file; counts are
// checked against the bytes left before anything is allocated, and indices
// read with `index(below:)`/`indices(below:)` against what they index.
//
// A snapshot's checksum only says the bytes are the ones written. A file
// whose checksum holds but whose contents do not (copied in from another
// build, crafted, or a writer's bug) must make `restore` throw, so start-up
// falls back to an older version: a trap cannot be caught, and an index
// past a buffer's end reaches unchecked row arithmetic (review finding).

#if canImport(Glibc)
import Glibc
#endif

public struct SnapshotWriter {
    /// The bytes written (in a streaming writer: those not yet handed on).
    public private(set) var bytes: [UInt8] = []
    private var mode = Mode.memory
    /// A measuring writer's count; a streaming writer's bytes handed on.
    private var counted = 0
    /// Each block's length, in the order the blocks start: a measuring
    /// writer records them, a streaming one writes them ahead of each block
    /// (it cannot fill a length in after handing the bytes on).
    private var blockLengths: [Int] = []
    private var nextBlock = 0
    /// A streaming writer: its sink refused bytes, or the blocks differed
    /// from the measuring pass's.
    public private(set) var failed = false

    private enum Mode {
        /// All bytes kept in `bytes`.
        case memory
        /// Only counted (and block lengths recorded): the first of two
        /// passes over a model that does not change between them.
        case measure
        /// Handed to the sink in pieces of about `piece` bytes.
        case stream((UnsafeRawBufferPointer) -> Bool)
    }

    public init() {}
    /// A writer with room for `capacity` bytes (the last snapshot's size:
    /// growing a buffer of tens of megabytes by doubling copies it each time).
    public init(capacity: Int) { bytes.reserveCapacity(capacity) }

    /// A writer that only counts: `size` and the block lengths, for a
    /// streaming writer over the same, unchanged, model.
    public static func measuring() -> SnapshotWriter {
        var w = SnapshotWriter()
        w.mode = .measure
        return w
    }

    /// A writer that hands its bytes to `sink` in pieces rather than keep
    /// them (a snapshot of gigabytes needs no second copy of the model in
    /// memory), using `measured`'s block lengths: what it writes must be
    /// exactly what `measured` counted. Call `finish` at the end.
    public static func streaming(like measured: SnapshotWriter, piece: Int = 8 << 20,
                                 to sink: @escaping (UnsafeRawBufferPointer) -> Bool) -> SnapshotWriter {
        var w = SnapshotWriter(capacity: piece + (1 << 16))
        w.mode = .stream(sink)
        w.piece = piece
        w.blockLengths = measured.blockLengths
        return w
    }

    /// A streaming writer hands its bytes on once it holds this many.
    private var piece = 0

    /// Bytes written so far (counted, handed on or kept).
    public var size: Int {
        if case .measure = mode { return counted }
        return counted + bytes.count
    }

    /// A streaming writer hands on what it holds; false if anything failed
    /// or differed from the measuring pass.
    public mutating func finish() -> Bool {
        if case .stream = mode {
            handOn()
            if nextBlock != blockLengths.count { failed = true }
        }
        return !failed
    }

    private mutating func handOn() {
        guard case .stream(let sink) = mode, !bytes.isEmpty else { return }
        if !failed && !bytes.withUnsafeBytes({ sink($0) }) { failed = true }
        counted += bytes.count
        bytes.removeAll(keepingCapacity: true)
    }

    @inline(__always) private mutating func put(_ raw: UnsafeRawBufferPointer) {
        switch mode {
        case .memory: bytes.append(contentsOf: raw)
        case .measure: counted += raw.count
        case .stream:
            bytes.append(contentsOf: raw)
            if bytes.count >= piece { handOn() }
        }
    }
    @inline(__always) private mutating func putLE<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { put($0) }
    }

    public mutating func u8(_ v: UInt8) { putLE(v) }
    public mutating func bool(_ v: Bool) { putLE(UInt8(v ? 1 : 0)) }
    public mutating func u32(_ v: UInt32) { putLE(v) }
    public mutating func u64(_ v: UInt64) { putLE(v) }
    public mutating func int(_ v: Int) { putLE(UInt64(bitPattern: Int64(v))) }
    public mutating func f32(_ v: Float) { putLE(v.bitPattern) }
    public mutating func f64(_ v: Double) { putLE(v.bitPattern) }
    public mutating func string(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            int(utf8.count)
            put(UnsafeRawBufferPointer(utf8))
        }
    }
    public mutating func int32s(_ a: [Int32]) {
        int(a.count)
        a.withUnsafeBytes { put($0) }
    }
    /// Lists of indices (a scorer's per-user recent items), read back with
    /// `indexLists(below:)`.
    public mutating func int32Lists(_ lists: [[Int32]]) {
        int(lists.count)
        for l in lists { int32s(l) }
    }
    /// Rows 0..<rows of a buffer, as raw little-endian elements.
    public mutating func rows<T: BitwiseCopyable>(_ b: ChunkedBuffer<T>, count rows: Int) {
        int(rows)
        int(b.width)
        b.forEachChunk(rows: rows) { _, p, n in
            put(UnsafeRawBufferPointer(start: p, count: n * b.width * MemoryLayout<T>.stride))
        }
    }
    /// `count` floats from raw memory (weights held outside ChunkedBuffers).
    public mutating func floats(_ p: UnsafePointer<Float>, count: Int) {
        int(count)
        put(UnsafeRawBufferPointer(start: p, count: count * 4))
    }
    /// A length-prefixed block (a section a reader may skip).
    public mutating func block(_ b: [UInt8]) {
        int(b.count)
        b.withUnsafeBytes { put($0) }
    }
    /// A length-prefixed block written in place by `body`, its length
    /// filled in after: the same bytes as `block`, without a second buffer
    /// the size of the block and a copy of it (a scorer's state is most of
    /// a snapshot: gigabytes at a million items; review finding, helper-77).
    /// (A streaming writer writes the length the measuring pass found.)
    public mutating func block(_ body: (inout SnapshotWriter) -> Void) {
        switch mode {
        case .memory:
            let at = bytes.count
            int(0)
            body(&self)
            let length = UInt64(bytes.count - at - 8).littleEndian
            withUnsafeBytes(of: length) { raw in
                bytes.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: at).copyMemory(from: raw.baseAddress!, byteCount: 8) }
            }
        case .measure:
            let slot = blockLengths.count
            blockLengths.append(0)
            let at = counted
            int(0)
            body(&self)
            blockLengths[slot] = counted - at - 8
        case .stream:
            guard nextBlock < blockLengths.count else { failed = true; return }
            let length = blockLengths[nextBlock]
            nextBlock += 1
            let at = size
            int(length)
            body(&self)
            if size - at - 8 != length { failed = true }
        }
    }
    /// A section marker, checked on reading, so a mismatch between writer
    /// and reader is caught where it happens.
    public mutating func mark(_ name: String) { string("§" + name) }
}

/// A snapshot that is whole but was saved under other settings than the
/// config's (the table's dimension, a scorer's shape): not damage, and
/// `perennial versions --verify` says so rather than call it damaged.
public struct SnapshotSettingsMismatch: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The bytes a SnapshotReader reads: an array's, or a snapshot file mapped
/// read-only, so that loading a snapshot of gigabytes reads it from the
/// page cache rather than from a copy the size of the model in the
/// server's own memory (which start-up, a rollback and `versions` needed
/// beside the model they build). Unmapped when the last reader goes.
/// Snapshot files are never changed in place (written aside and renamed;
/// pruning unlinks, which leaves a mapping whole), so the mapping stays
/// valid. Immutable after init: why it is Sendable.
public final class SnapshotBytes: @unchecked Sendable {
    private let array: [UInt8]
    /// The mapping, when the bytes are a file's.
    private let mapping: UnsafeRawBufferPointer?
    /// The mapping's SIGBUS guard (MappingGuard), if it is a file's.
    private let mappingGuard: MappingGuard?
    public let count: Int

    public init(_ bytes: [UInt8]) {
        array = bytes
        mapping = nil
        mappingGuard = nil
        count = bytes.count
    }

    /// Maps the file at `path` (an empty file reads as no bytes).
    public init(mapping path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LogError("cannot read \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw LogError("cannot read \(path): \(String(cString: strerror(errno)))") }
        array = []
        count = Int(st.st_size)
        guard count > 0 else { mapping = nil; mappingGuard = nil; return }
        guard let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw LogError("cannot map \(path): \(String(cString: strerror(errno)))")
        }
        // (Read once from start to end: the checksum, then the model.)
        _ = madvise(p, count, MADV_SEQUENTIAL)
        mapping = UnsafeRawBufferPointer(start: p, count: count)
        // A page that cannot be read again (an I/O error since the checksum
        // pass read it, the file truncated meanwhile) reads as zeros
        // instead of killing the process with SIGBUS, and `readFailed`
        // says so: the reader throws at its next number or section mark.
        mappingGuard = MappingGuard(mapping!)
    }

    /// Whether a read of the mapping failed (its bytes are not the file's).
    public var readFailed: Bool { mappingGuard?.readFailed ?? false }

    /// The bytes, for the duration of `body`.
    @inline(__always)
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        if let mapping { return try body(mapping) }
        return try array.withUnsafeBytes(body)
    }

    deinit {
        mappingGuard?.end()
        if let m = mapping { munmap(UnsafeMutableRawPointer(mutating: m.baseAddress!), m.count) }
    }
}

public struct SnapshotReader {
    let storage: SnapshotBytes
    public private(set) var offset: Int
    /// Where this reader's bytes end (a block's reader shares the whole
    /// snapshot's bytes and reads only its block).
    let end: Int
    /// The format the bytes were written in (SnapshotStore.version, or an
    /// older one this build still reads).
    public var format: UInt32 = SnapshotStore.version

    public init(bytes: [UInt8], offset: Int = 0) {
        self.init(storage: SnapshotBytes(bytes), offset: offset)
    }

    public init(storage: SnapshotBytes, offset: Int = 0) {
        self.storage = storage
        self.offset = offset
        self.end = storage.count
    }

    private init(sharing storage: SnapshotBytes, range: Range<Int>) {
        self.storage = storage
        self.offset = range.lowerBound
        self.end = range.upperBound
    }

    /// All the bytes, read or not (offset == bytesCount: all read).
    public var bytesCount: Int { end }

    private mutating func take(_ n: Int) throws -> Range<Int> {
        guard n >= 0, end - offset >= n else { throw LogError("snapshot is truncated at byte \(offset)") }
        defer { offset += n }
        return offset..<(offset + n)
    }

    private mutating func scalar<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let r = try take(MemoryLayout<T>.size)
        let v = storage.withBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: r.lowerBound, as: T.self)) }
        try checkRead()
        return v
    }

    /// A page that failed to read gave zeros (SnapshotBytes): every read
    /// checks, so nothing read after that is used, and the error says why
    /// (not a setting or a section that zeros happen to imitate: review
    /// finding, helper-87).
    @inline(__always)
    private func checkRead() throws {
        if storage.readFailed { throw LogError(Self.unreadable) }
    }

    static let unreadable = "snapshot: a page of the file could not be read again while it was loaded (an I/O error, or the file truncated meanwhile)"

    public mutating func u8() throws -> UInt8 { try scalar(UInt8.self) }
    public mutating func bool() throws -> Bool { try scalar(UInt8.self) != 0 }
    public mutating func u32() throws -> UInt32 { try scalar(UInt32.self) }
    public mutating func u64() throws -> UInt64 { try scalar(UInt64.self) }
    public mutating func int() throws -> Int { Int(Int64(bitPattern: try scalar(UInt64.self))) }
    public mutating func f32() throws -> Float { Float(bitPattern: try scalar(UInt32.self)) }
    public mutating func f64() throws -> Double { Double(bitPattern: try scalar(UInt64.self)) }
    public mutating func string() throws -> String {
        let n = try int()
        let r = try take(n)
        let s = storage.withBytes({ String(validating: $0[r], as: UTF8.self) })
        try checkRead()
        guard let s else { throw LogError("snapshot: invalid UTF-8 at byte \(r.lowerBound)") }
        return s
    }
    /// Bytes not read yet.
    public var remaining: Int { end - offset }

    /// A count of things that take at least `bytesEach` bytes each: never
    /// negative, never more than the bytes left could hold.
    public mutating func count(bytesEach: Int) throws -> Int {
        let at = offset
        let n = try int()
        guard n >= 0 else { throw LogError("snapshot: a negative count (\(n)) at byte \(at)") }
        guard n <= remaining / max(bytesEach, 1) else {
            throw LogError("snapshot: a count of \(n) at byte \(at) is more than the \(remaining) bytes left hold")
        }
        return n
    }

    /// An index saved as `int`, in 0..<bound.
    public mutating func index(below bound: Int) throws -> Int32 {
        let at = offset
        let i = try int()
        guard i >= 0, i < bound, let v = Int32(exactly: i) else {
            throw LogError("snapshot: index \(i) at byte \(at) is outside 0..<\(bound)")
        }
        return v
    }

    /// `int32s()` whose every element is an index in 0..<bound.
    public mutating func indices(below bound: Int) throws -> [Int32] {
        let at = offset
        let a = try int32s()
        if let bad = a.first(where: { $0 < 0 || Int($0) >= bound }) {
            throw LogError("snapshot: index \(bad) in the list at byte \(at) is outside 0..<\(bound)")
        }
        return a
    }

    /// What `int32Lists` wrote, every element an index in 0..<bound.
    public mutating func indexLists(below bound: Int) throws -> [[Int32]] {
        var lists: [[Int32]] = []
        for _ in 0..<(try count(bytesEach: 8)) { lists.append(try indices(below: bound)) }
        return lists
    }

    /// An `int` in `range` (`what` names it in the error).
    public mutating func int(in range: ClosedRange<Int>, _ what: String) throws -> Int {
        let v = try int()
        guard range.contains(v) else { throw LogError("snapshot: \(what) \(v) is outside \(range)") }
        return v
    }

    public mutating func int32s() throws -> [Int32] {
        let n = try count(bytesEach: 4)
        let r = try take(n * 4)
        let a = storage.withBytes { raw in
            (0..<n).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: r.lowerBound + 4 * $0, as: Int32.self)) }
        }
        try checkRead()
        return a
    }
    /// Fills rows 0..<count of `b` (which must already hold them).
    public mutating func rows<T: BitwiseCopyable>(into b: ChunkedBuffer<T>, expected: Int? = nil) throws {
        let rows = try int(), width = try int()
        guard width == b.width else { throw SnapshotSettingsMismatch("snapshot: row width \(width) where \(b.width) is configured") }
        if let expected, expected != rows { throw LogError("snapshot: \(rows) rows where \(expected) were expected") }
        // (Before `ensure` allocates them.)
        guard rows >= 0, rows <= remaining / max(width * MemoryLayout<T>.stride, 1) else {
            throw LogError("snapshot: \(rows) rows of \(width) are more than the \(remaining) bytes left hold")
        }
        b.ensure(rows: rows)
        var done = 0
        while done < rows {
            let n = min(b.rowsPerChunk - (done % b.rowsPerChunk), rows - done)
            let r = try take(n * width * MemoryLayout<T>.stride)
            let dst = UnsafeMutableRawPointer(b.row(done))
            storage.withBytes { dst.copyMemory(from: $0.baseAddress! + r.lowerBound, byteCount: r.count) }
            done += n
        }
        try checkRead()
    }
    /// Reads what `floats(_:count:)` wrote into `p`, which holds `count`.
    public mutating func floats(into p: UnsafeMutablePointer<Float>, count: Int) throws {
        let n = try int()
        guard n == count else { throw SnapshotSettingsMismatch("snapshot holds \(n) weights where \(count) are expected (different settings?)") }
        let r = try take(n * 4)
        if n > 0 { storage.withBytes { UnsafeMutableRawPointer(p).copyMemory(from: $0.baseAddress! + r.lowerBound, byteCount: n * 4) } }
        try checkRead()
    }

    public mutating func block() throws -> [UInt8] {
        let n = try count(bytesEach: 1)
        let r = try take(n)
        let a = storage.withBytes { Array($0[r]) }
        try checkRead()
        return a
    }
    /// A length-prefixed block as a reader of its own, sharing these bytes
    /// (`block()` copied a scorer's state, most of a snapshot, before it
    /// was read: review finding, helper-77).
    public mutating func blockReader() throws -> SnapshotReader {
        let n = try count(bytesEach: 1)
        return SnapshotReader(sharing: storage, range: try take(n))
    }
    public mutating func mark(_ name: String) throws {
        try checkRead()
        let got = try string()
        guard got == "§" + name else { throw LogError("snapshot: expected section \(name), found \(got)") }
    }
}
