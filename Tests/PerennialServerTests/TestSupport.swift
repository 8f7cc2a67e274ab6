// Real servers on real sockets for the tests: an in-process server on a free
// loopback port, and a raw blocking socket for sending arbitrary bytes.

import Foundation
import ScratchDirectory
import PerennialCore
import PerennialProtocol
import PerennialPlugins
@testable import PerennialServer
#if canImport(Glibc)
import Glibc
#endif

/// A server on 127.0.0.1 with a free port and its own data directory.
final class TestServer: Sendable {
    let server: Server
    let port: Int
    let dataDir: String
    let configFile: String

    /// A server with its own new data directory, or `dataDir` (a restart),
    /// optionally starting from a model version.
    /// `holdReplay`: a replay while serving waits (`releaseReplay` lets it
    /// go on), and `start` returns as soon as the server listens.
    init(_ configText: String = "", dataDir: String? = nil, startVersion: String? = nil, dropScorers: Set<String> = [],
         holdReplay: Bool = false) throws {
        let dir = dataDir ?? ScratchDirectory.path("server")
        self.dataDir = dir
        // The config text is also a file beside the data directory, which
        // RELOAD reads again (`rewriteConfig`), with the same fixed settings.
        let file = dir + ".toml"
        configFile = file
        try configText.write(toFile: file, atomically: true, encoding: .utf8)
        @Sendable func read(_ text: String) throws -> PerennialConfig {
            var doc = try ConfigDocument(text: text, file: "test.toml")
            doc.set("server.port", .integer(0))
            // Debug builds learn about ten times slower than release, and the
            // suites run in parallel: reads wait for the learner generously.
            if doc.entries["limits.wait_ms"] == nil { doc.set("limits.wait_ms", .integer(120_000)) }
            // Snapshots on a thread, not a forked process: these servers
            // share one process with every other suite's threads, and a
            // child of fork() has only the thread that forked. The forked
            // writer is tested on the real binary (clients/python/tests).
            if doc.entries["snapshot.fork"] == nil { doc.set("snapshot.fork", .bool(false)) }
            doc.set("server.data_dir", .string(dir))
            return try PerennialConfig.load(doc, registry: .builtin)
        }
        let config = try read(configText)
        server = Server(config: config, startVersion: startVersion, dropScorers: dropScorers,
                        reloadConfig: { try read(String(contentsOfFile: file, encoding: .utf8)) })
        server.replayHeld.store(holdReplay, ordering: .relaxed)
        port = try server.start(waitForRecovery: !holdReplay)
    }

    func releaseReplay() { server.replayHeld.store(false, ordering: .relaxed) }

    /// The config file's new text, for the next RELOAD.
    func rewriteConfig(_ text: String) throws { try text.write(toFile: configFile, atomically: true, encoding: .utf8) }

    func stop() { server.stop() }
}

struct RawFrame {
    var header: FrameHeader
    var payload: [UInt8]

    var reply: Reply? {
        guard let op = Opcode(rawValue: header.opcode) else { return nil }
        return payload.withUnsafeBytes { try? Reply.decode(opcode: op, payload: $0) }
    }

    var error: ErrorReply? {
        if case .error(let e)? = reply { return e }
        return nil
    }
}

/// A blocking socket that sends any bytes and reads whole frames.
/// Test-only: used from one thread at a time, or one writer and one reader.
final class RawSocket: @unchecked Sendable {
    private(set) var fd: Int32
    private var inbox: [UInt8] = []

    init(port: Int, timeout: Double = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw TestError("connect failed: \(String(cString: strerror(errno)))") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - floor(timeout)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    /// Half-closes: the server sees EOF, the socket still reads.
    func shutdownWrite() { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestError("send failed: \(String(cString: strerror(errno)))") }
            sent += n
        }
    }

    func send(_ request: Request, id: UInt32) throws {
        var out: [UInt8] = []
        request.encode(into: &out, requestID: id)
        try send(out)
    }

    /// The next whole frame, or nil when the server closed the connection.
    func readFrame() throws -> RawFrame? {
        while true {
            if inbox.count >= FrameHeader.size {
                let length = Int(UInt32(inbox[0]) | UInt32(inbox[1]) << 8 | UInt32(inbox[2]) << 16 | UInt32(inbox[3]) << 24)
                if inbox.count >= length + 4 {
                    let h = FrameHeader(length: UInt32(length), version: inbox[4], opcode: inbox[5],
                                        flags: UInt16(inbox[6]) | UInt16(inbox[7]) << 8,
                                        requestID: UInt32(inbox[8]) | UInt32(inbox[9]) << 8 | UInt32(inbox[10]) << 16 | UInt32(inbox[11]) << 24)
                    let f = RawFrame(header: h, payload: Array(inbox[12..<(length + 4)]))
                    inbox.removeFirst(length + 4)
                    return f
                }
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return nil }
            if n < 0 { throw TestError("recv failed: \(String(cString: strerror(errno)))") }
            inbox.append(contentsOf: chunk[0..<n])
        }
    }

    /// Reads until the server closes; returns the frames seen before.
    func readUntilClosed() throws -> [RawFrame] {
        var frames: [RawFrame] = []
        while let f = try readFrame() { frames.append(f) }
        return frames
    }
}

struct TestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

func header(length: UInt32, version: UInt8 = 1, opcode: UInt8, flags: UInt16 = 0, id: UInt32) -> [UInt8] {
    var b: [UInt8] = []
    b.put(length)
    b.put(version)
    b.put(opcode)
    b.put(flags)
    b.put(id)
    return b
}

/// Polls a condition for up to `seconds`.
func eventually(_ seconds: Double = 5, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try? await Task.sleep(nanoseconds: 20_000_000)
    }
    return try await condition()
}
