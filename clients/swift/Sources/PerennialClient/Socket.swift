// The client's TCP transport: a blocking socket whose connect, reads and
// writes are each bounded by the client's timeout, and a send that reads
// the server's replies while the server is not taking more bytes (a
// pipeline larger than the server's reply buffer would otherwise deadlock:
// the server stops reading a connection whose replies are not read). Used
// only on the client's serial queue, except `shutdownNow`.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Opening a TCP connection to a host name or address: the first of its
/// addresses (IPv4 or IPv6) that accepts. Shared with the load tool.
public enum TCPConnection {
    /// A connected, blocking socket's descriptor. `timeout` (seconds; nil:
    /// the system's) bounds each address's connect.
    public static func open(host: String, port: Int, timeout: Double? = nil) throws(PerennialClientError) -> Int32 {
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
            switch connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen, timeoutMs: timeout.map(BlockingSocket.milliseconds) ?? -1) {
            case nil: return s
            case .some(let failure):
                (lastError, timedOut) = failure
                Glibc.close(s)
            }
        }
        if timedOut { throw .timeout("cannot connect to \(host):\(port) within \(timeout ?? 0) s") }
        throw .connection("cannot connect to \(host):\(port): \(lastError)")
    }

    /// Connects `s`, waiting at most `timeoutMs` (-1: no bound) for the
    /// handshake; nil when connected, else why and whether it timed out.
    private static func connect(_ s: Int32, _ addr: UnsafePointer<sockaddr>, _ len: socklen_t, timeoutMs: Int32) -> (String, Bool)? {
        if timeoutMs < 0 {
            return Glibc.connect(s, addr, len) == 0 ? nil : (String(cString: strerror(errno)), false)
        }
        let flags = fcntl(s, F_GETFL)
        _ = fcntl(s, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(s, F_SETFL, flags) }
        if Glibc.connect(s, addr, len) == 0 { return nil }
        guard errno == EINPROGRESS else { return (String(cString: strerror(errno)), false) }
        var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
        var ready: Int32
        repeat { ready = poll(&p, 1, timeoutMs) } while ready < 0 && errno == EINTR
        if ready == 0 { return ("timed out", true) }
        var err: Int32 = 0
        var errLen = socklen_t(MemoryLayout<Int32>.size)
        if ready < 0 || getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &errLen) != 0 { return (String(cString: strerror(errno)), false) }
        return err == 0 ? nil : (String(cString: strerror(err)), false)
    }
}

final class BlockingSocket {
    private(set) var fd: Int32 = -1
    /// "host:port within N s", for timeout messages.
    private let within: String
    /// Each wait's bound for poll (-1: none).
    private let timeoutMs: Int32
    /// The connection's first bytes from the server (quoted when HELLO fails).
    private(set) var firstBytes: [UInt8] = []

    /// `timeout`: seconds, nil for none.
    init(host: String, port: Int, timeout: Double?) throws(PerennialClientError) {
        within = "\(host):\(port) within \(timeout.map { "\($0) s" } ?? "no time limit")"
        timeoutMs = timeout.map(Self.milliseconds) ?? -1
        fd = try TCPConnection.open(host: host, port: port, timeout: timeout)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        if let t = timeout {
            var tv = timeval(tv_sec: Int(t), tv_usec: Int((t - t.rounded(.down)) * 1_000_000))
            if tv.tv_sec == 0 && tv.tv_usec == 0 { tv.tv_usec = 1 }   // (0 would mean no timeout)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// A validated timeout (finite, positive, at most a day) in poll's milliseconds.
    static func milliseconds(_ seconds: Double) -> Int32 { Int32(max(1, (seconds * 1000).rounded(.up))) }

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
                close()
                throw .connection("send failed: \(String(cString: strerror(e)))")
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN | POLLOUT), revents: 0)
            let ready = poll(&p, 1, timeoutMs)
            if ready < 0 && errno == EINTR { continue }
            if ready == 0 { close(); throw .timeout("could not send to \(within) (the server is not reading)") }
            if ready < 0 { close(); throw .connection("poll failed: \(String(cString: strerror(errno)))") }
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
            if n == 0 { close(); throw .connection("the server closed the connection") }
            if errno == EINTR { continue }
            let e = errno
            close()
            if e == EAGAIN || e == EWOULDBLOCK { throw .timeout("no reply from \(within)") }
            throw .connection("receive failed: \(String(cString: strerror(e)))")
        }
    }
}
