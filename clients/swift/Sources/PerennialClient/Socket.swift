// The client's TCP transport: a blocking socket whose connect, reads and
// writes are each bounded by the client's timeout, and a send that reads
// the server's replies while the server is not taking more bytes (a
// pipeline larger than the server's reply buffer would otherwise deadlock:
// the server stops reading a connection whose replies are not read). Used
// only on the client's serial queue. It never closes its descriptor by
// itself, even after an error: the client does, after clearing the copy
// other threads may shut down (so that copy never names a reused number).

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Opening a TCP connection to a host name or address: the first of its
/// addresses (IPv4 or IPv6) that accepts. Shared with the load tool.
package enum TCPConnection {
    /// A connected, blocking socket's descriptor. `timeout` (seconds; nil:
    /// none) bounds each address's connect. While one is being connected,
    /// `opening` gets its descriptor (so another thread may shut it down)
    /// and `stopped` is asked every 50 ms whether to give up (a reason).
    package static func open(host: String, port: Int, timeout: Double? = nil, opening: (Int32) -> Void = { _ in },
                            stopped: () -> String? = { nil }) throws(PerennialClientError) -> Int32 {
        // (getaddrinfo would take port 72937 as 72937 mod 65536.)
        guard (1...65535).contains(port) else { throw .invalidArgument("port \(port) is outside 1...65535") }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            throw .connection("cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(result) }
        var lastError = "no address"
        var timedOut = false
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
            let s = socket(a.pointee.ai_family, a.pointee.ai_socktype, a.pointee.ai_protocol)
            guard s >= 0 else { lastError = String(cString: strerror(errno)); continue }
            opening(s)
            let failure = connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen, timeoutMs: timeout.map(BlockingSocket.milliseconds) ?? -1,
                                  stopped: stopped)
            guard let failure else { return s }
            opening(-1)
            Glibc.close(s)
            if let why = stopped() { throw .connection(why) }
            (lastError, timedOut) = failure
        }
        if timedOut { throw .timeout("cannot connect to \(host):\(port) within \(timeout ?? 0) s") }
        throw .connection("cannot connect to \(host):\(port): \(lastError)")
    }

    /// Connects `s`, waiting at most `timeoutMs` (-1: no bound) for the
    /// handshake, in slices of 50 ms so that `stopped` can end the wait;
    /// nil when connected, else why and whether it timed out.
    private static func connect(_ s: Int32, _ addr: UnsafePointer<sockaddr>, _ len: socklen_t, timeoutMs: Int32,
                                stopped: () -> String?) -> (String, Bool)? {
        let flags = fcntl(s, F_GETFL)
        _ = fcntl(s, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(s, F_SETFL, flags) }
        if Glibc.connect(s, addr, len) == 0 { return nil }
        guard errno == EINPROGRESS else { return (String(cString: strerror(errno)), false) }
        var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
        var ready: Int32 = 0
        var waited: Int32 = 0
        while ready == 0 {
            if let why = stopped() { return (why, false) }
            if timeoutMs >= 0 && waited >= timeoutMs { return ("timed out", true) }
            let slice = timeoutMs < 0 ? 50 : min(50, timeoutMs - waited)
            ready = poll(&p, 1, slice)
            if ready < 0 && errno == EINTR { ready = 0 }
            waited += slice
        }
        var err: Int32 = 0
        var errLen = socklen_t(MemoryLayout<Int32>.size)
        if ready < 0 || getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &errLen) != 0 { return (String(cString: strerror(errno)), false) }
        return err == 0 ? nil : (String(cString: strerror(err)), false)
    }
}

final class BlockingSocket {
    private(set) var fd: Int32 = -1
    /// "host:port within N s", for timeout messages.
    private var within: String
    /// Each wait's bound for poll (-1: none).
    private var timeoutMs: Int32
    private let hostPort: String
    private let timeout: Double?
    /// The connection's first bytes from the server (quoted when HELLO fails).
    private(set) var firstBytes: [UInt8] = []

    /// `timeout`: seconds, nil for none; `opening` and `stopped` as for
    /// `TCPConnection.open`.
    init(host: String, port: Int, timeout: Double?, opening: (Int32) -> Void = { _ in },
         stopped: () -> String? = { nil }) throws(PerennialClientError) {
        hostPort = "\(host):\(port)"
        self.timeout = timeout
        within = ""
        timeoutMs = -1
        fd = try TCPConnection.open(host: host, port: port, timeout: timeout, opening: opening, stopped: stopped)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        bound(by: timeout)
    }

    /// Bounds each wait by `t` seconds (nil: none).
    private func bound(by t: Double?) {
        within = "\(hostPort) within \(t.map { "\($0) s" } ?? "no time limit")"
        timeoutMs = t.map(Self.milliseconds) ?? -1
        // (No bound is a zero timeval.)
        var tv = timeval()
        if let t {
            tv = timeval(tv_sec: Int(t), tv_usec: Int((t - t.rounded(.down)) * 1_000_000))
            if tv.tv_sec == 0 && tv.tv_usec == 0 { tv.tv_usec = 1 }   // (0 would mean no timeout)
        }
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Runs `body` with each wait bounded by `t` (nil: none) instead of the
    /// connection's timeout: a request that makes the server write the whole
    /// model (SNAPSHOT, a RELOAD) waits longer than any other reply.
    func waiting<T>(_ t: Double?, _ body: () throws -> T) rethrows -> T {
        // (Every call passes through here: no system call when the bound is the usual one.)
        guard t != timeout else { return try body() }
        bound(by: t)
        defer { if fd >= 0 { bound(by: timeout) } }
        return try body()
    }

    /// A timeout (finite, positive) in poll's milliseconds: at least 1, at
    /// most Int32.max (24.8 days).
    static func milliseconds(_ seconds: Double) -> Int32 { Int32(min(Double(Int32.max), max(1, (seconds * 1000).rounded(.up)))) }

    deinit { close() }

    var isOpen: Bool { fd >= 0 }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    /// Whether a connection with no request outstanding is still usable:
    /// anything readable (EOF, a reset, or bytes nobody asked for, such as
    /// an idle-timeout notice before the close) means the server is done
    /// with it.
    func usableWhileIdle() -> Bool {
        guard fd >= 0 else { return false }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 0
    }

    /// Sends all of `bytes`. While the server does not take more, reads
    /// what it sends into `inbox` (so its replies never fill up), waiting
    /// at most the timeout for either.
    func send(_ bytes: [UInt8], readingInto inbox: inout [UInt8]) throws(PerennialClientError) {
        guard fd >= 0 else { throw .connection("the connection is closed") }
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n > 0 { sent += n; continue }
            let e = errno
            if n < 0 && e == EINTR { continue }
            guard n < 0 && (e == EAGAIN || e == EWOULDBLOCK) else {
                throw .connection("send failed: \(String(cString: strerror(e)))")
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN | POLLOUT), revents: 0)
            let ready = poll(&p, 1, timeoutMs)
            if ready < 0 && errno == EINTR { continue }
            if ready == 0 { throw .timeout("could not send to \(within) (the server is not reading)") }
            if ready < 0 { throw .connection("poll failed: \(String(cString: strerror(errno)))") }
            if p.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 { try receive(into: &inbox) }
        }
    }

    /// Appends at least one byte to `buffer`; throws on close or timeout.
    func receive(into buffer: inout [UInt8]) throws(PerennialClientError) {
        guard fd >= 0 else { throw .connection("the connection is closed") }
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                if firstBytes.count < 24 { firstBytes += chunk[0..<min(n, 24 - firstBytes.count)] }
                buffer.append(contentsOf: chunk[0..<n])
                return
            }
            if n == 0 { throw .connection("the server closed the connection") }
            if errno == EINTR { continue }
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK { throw .timeout("no reply from \(within)") }
            throw .connection("receive failed: \(String(cString: strerror(e)))")
        }
    }
}
