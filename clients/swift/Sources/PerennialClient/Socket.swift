// A blocking TCP socket with a receive timeout: the transport under the
// client. Used only on the client's serial queue.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Opening a TCP connection to a host name or address: the first of its
/// addresses (IPv4 or IPv6) that accepts. Shared with the load tool.
public enum TCPConnection {
    /// A connected, blocking socket's descriptor.
    public static func open(host: String, port: Int) throws(PerennialClientError) -> Int32 {
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
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            let s = socket(a.pointee.ai_family, a.pointee.ai_socktype, a.pointee.ai_protocol)
            if s >= 0 {
                if Glibc.connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return s }
                lastError = String(cString: strerror(errno))
                Glibc.close(s)
            }
            ai = a.pointee.ai_next
        }
        throw .connection("cannot connect to \(host):\(port): \(lastError)")
    }
}

final class BlockingSocket {
    private var fd: Int32 = -1
    /// "host:port, within N s", for timeout messages.
    private let within: String
    /// The connection's first bytes from the server (quoted when HELLO fails).
    private(set) var firstBytes: [UInt8] = []

    init(host: String, port: Int, timeout: Double) throws(PerennialClientError) {
        within = "\(host):\(port) within \(timeout) s"
        fd = try TCPConnection.open(host: host, port: port)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - floor(timeout)) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close() }

    var isOpen: Bool { fd >= 0 }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    func send(_ bytes: [UInt8]) throws(PerennialClientError) {
        guard fd >= 0 else { throw .connection("the connection is closed") }
        var sent = 0
        let failure: PerennialClientError? = bytes.withUnsafeBytes { raw in
            while sent < raw.count {
                let n = Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if n < 0 {
                    if errno == EINTR { continue }
                    if errno == EAGAIN || errno == EWOULDBLOCK { return .timeout("could not send to \(within)") }
                    return .connection("send failed: \(String(cString: strerror(errno)))")
                }
                sent += n
            }
            return nil
        }
        if let failure { close(); throw failure }
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
