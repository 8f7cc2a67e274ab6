// An automatic snapshot serialised and written by a child process, as
// Redis's BGSAVE does: fork() gives the child the model as it is at that
// instant (the kernel shares the pages and copies one only when the server
// writes to it), so the loop admits FEEDBACK again, and the learner learns,
// as soon as fork returns, instead of waiting for the serialisation. At a
// million items that wait was 3-28 s, past the clients' 10 s timeout at
// worst (helper-77), where a fork of the 5.6 GB server takes about 0.1 s
// (copying its page tables).
//
// Why Swift code may run in the child, though fork copies only the calling
// thread: the snapshot forks from the loop thread when nothing else works on
// the model (the learner is idle, having applied everything accepted: the
// snapshot's precondition); the other thread, the log's everysec sync, only
// touches the log, which the child never uses; glibc's own fork handlers
// leave malloc usable in the child. The child runs only the serialisation
// and SnapshotJob.write (files), and ends with _exit, so no deinit, atexit
// handler or buffered output of the server's runs twice. A lock held at the
// fork can still not be ruled out (the write uses Foundation), so a child
// blocked on one is killed (`wait`).
//
// The child closes every descriptor it inherited but standard input, output
// and error and its pipe (the listener, client sockets, the log's segments,
// the data directory's lock: none of them is its to hold), and it dies with
// the server's loop thread (PR_SET_PDEATHSIG), so a killed server leaves no
// writer behind to race the next one over the data directory.

import CProcess
import Foundation
import PerennialCore
#if canImport(Glibc)
import Glibc
#endif

enum SnapshotProcess {
    /// A running child: its pid and the read end of its pipe.
    struct Child {
        let pid: pid_t
        let pipe: Int32
        /// How long fork() held the loop (ms).
        let forkMs: Double
    }

    /// What the child reports through its pipe.
    struct Report {
        var outcome: Result<SnapshotWritten, any Error>
        var size: Int
        var serialiseNs: UInt64
    }

    /// Forks a child that serialises the model and writes the snapshot.
    /// Fails, with errno's reason, when fork or pipe failed (the caller
    /// then writes it on a thread instead).
    static func start(job: SnapshotJob, save: (inout SnapshotWriter) -> Void) -> Result<Child, SnapshotForkFailure> {
        var fds: [Int32] = [-1, -1]
        guard perennial_pipe_cloexec(&fds) == 0 else { return .failure(SnapshotForkFailure(errno)) }
        let parent = getpid()
        // Every signal is blocked across the fork, so none reaches the
        // child before it has set the server's signals aside (a handler's
        // copy there would write into the loop's own signal pipe, which the
        // child shares).
        var all = sigset_t(), previous = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, &previous)
        let t0 = MonotonicClock.nowNanos()
        let pid = fork()
        if pid == 0 { runChild(writeEnd: fds[1], parent: parent, signalMask: previous, job: job, save: save) }
        let forkErrno = errno
        pthread_sigmask(SIG_SETMASK, &previous, nil)
        let forkMs = Double(MonotonicClock.nowNanos() - t0) / 1e6
        Glibc.close(fds[1])
        guard pid > 0 else {
            Glibc.close(fds[0])
            return .failure(SnapshotForkFailure(forkErrno))
        }
        return .success(Child(pid: pid, pipe: fds[0], forkMs: forkMs))
    }

    /// Waits (blocking) for the child's report and its exit. A child that
    /// ended without a whole report (killed, out of memory) is a failure
    /// that says how it ended, and its half-written file is removed. A
    /// child blocked on a lock (asleep in the futex call) for
    /// `stallSeconds` without using the CPU is killed: a lock some other
    /// thread held at the fork is never released in the child, and without
    /// this the snapshot, and the graceful stop that waits for it, would
    /// wait for good. Waiting for a file system is not a lock: a FUSE file
    /// system's slow fsync also sleeps in state S, but in its own call
    /// (helper-84 saw the first version of this kill such a writer).
    static func wait(for child: Child, job: SnapshotJob, stallSeconds: Int) -> Report {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        var poller = pollfd(fd: child.pipe, events: Int16(POLLIN), revents: 0)
        var blocked = 0
        var lastCPU: UInt64?
        var killedBlocked = false
        while true {
            let ready = poll(&poller, 1, 1000)
            if ready < 0 && errno == EINTR { continue }
            if ready == 0 {
                // A second without a word: the child reports only at the end.
                let now = sample(child.pid)
                if let now, now.state == "S", now.cpu == lastCPU, waitsOnLock(child.pid) { blocked += 1 } else { blocked = 0 }
                lastCPU = now?.cpu
                if blocked >= stallSeconds && !killedBlocked {
                    kill(child.pid, SIGKILL)
                    killedBlocked = true
                }
                continue
            }
            let n = chunk.withUnsafeMutableBytes { read(child.pipe, $0.baseAddress!, $0.count) }
            if n > 0 { bytes.append(contentsOf: chunk[0..<n]); continue }
            if n < 0 && errno == EINTR { continue }
            break
        }
        Glibc.close(child.pipe)
        var status: Int32 = 0
        while waitpid(child.pid, &status, 0) < 0 && errno == EINTR {}
        if let report = decode(bytes) { return report }
        job.store.removeTemporaryFiles(seq: job.seq)
        let how = killedBlocked ? "was killed after \(stallSeconds) s blocked on a lock without using the CPU (one held at the fork?)"
            : (status & 0x7f) == 0 ? "exited with status \((status >> 8) & 0xff)" : "was killed by signal \(status & 0x7f)"
        return Report(outcome: .failure(LogError("the snapshot's writer process \(child.pid) \(how) before it reported")), size: 0, serialiseNs: 0)
    }

    /// Ends a child nothing will wait for (no thread could be started to):
    /// kills it, reaps it, removes its half-written file.
    static func abandon(_ child: Child, job: SnapshotJob) {
        kill(child.pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(child.pid, &status, 0) < 0 && errno == EINTR {}
        Glibc.close(child.pipe)
        job.store.removeTemporaryFiles(seq: job.seq)
    }

    /// A process's state letter and CPU time so far (clock ticks), from
    /// /proc; nil once it is gone.
    private static func sample(_ pid: pid_t) -> (state: Character, cpu: UInt64)? {
        guard let text = procFile("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
        // After "pid (comm) ": state, then utime and stime as fields 14 and 15.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let state = fields[0].first,
              let user = UInt64(fields[11]), let system = UInt64(fields[12]) else { return nil }
        return (state, user + system)
    }

    /// Whether the process is in the futex call (waiting for a lock), from
    /// /proc/PID/syscall (the call's number first; "running" when in none).
    private static func waitsOnLock(_ pid: pid_t) -> Bool {
        guard let text = procFile("/proc/\(pid)/syscall"),
              let number = text.split(separator: " ").first.flatMap({ Int($0) }) else { return false }
        return number == perennial_futex_syscall()
    }

    /// A small /proc file's text (read directly: /proc files report a size of 0).
    private static func procFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        Glibc.close(fd)
        return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : nil
    }

    /// The child: serialise straight into the file (measured first, so no
    /// copy of the model is made), report, _exit. Never returns.
    private static func runChild(writeEnd: Int32, parent: pid_t, signalMask: sigset_t, job: SnapshotJob,
                                 save: (inout SnapshotWriter) -> Void) -> Never {
        // (A server killed before the request took effect is already gone:
        // then this child has been handed to another parent.)
        if perennial_die_with_parent() != 0 || getppid() != parent { _exit(1) }
        // Signals meant for the server (a terminal's ^C goes to the whole
        // process group) must not reach its handlers' copies in the child:
        // the server stops it itself, or it dies with the server.
        for s in [SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGPIPE] { signal(s, SIG_IGN) }
        var mask = signalMask
        pthread_sigmask(SIG_SETMASK, &mask, nil)
        // Under memory pressure the kernel kills this disposable child
        // first, not the server (it sees both holding the shared pages).
        let adjust = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC)
        if adjust >= 0 { _ = Glibc.write(adjust, "1000", 4); Glibc.close(adjust) }
        // Every inherited descriptor but standard input/output/error and
        // the pipe's write end: client sockets, the listener, the log.
        if writeEnd > 3 { _ = perennial_close_range(3, UInt32(writeEnd - 1)) }
        _ = perennial_close_range(UInt32(writeEnd + 1), UInt32.max)
        let t0 = MonotonicClock.nowNanos()
        let outcome = Result { try job.write(streaming: save) }
        let ns = MonotonicClock.nowNanos() - t0
        let size = (try? outcome.get())?.size ?? 0
        let report = encode(Report(outcome: outcome.map(\.0), size: size, serialiseNs: ns))
        report.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = Glibc.write(writeEnd, raw.baseAddress! + done, raw.count - done)
                if n < 0 { if errno == EINTR { continue }; break }
                done += n
            }
        }
        _exit(0)
    }

    // MARK: the report's bytes

    // [ok u8][size int][serialise ns u64], then
    // ok: [seq u64][serial int][keep-log-from int, -1 = none][path string]
    // failure: [message string]
    // (In the snapshot's own coding: SnapshotWriter, SnapshotReader.)
    static func encode(_ r: Report) -> [UInt8] {
        var w = SnapshotWriter()
        switch r.outcome {
        case .success(let written):
            w.bool(true)
            w.int(r.size)
            w.u64(r.serialiseNs)
            w.u64(written.file.seq)
            w.int(written.file.serial)
            w.int(written.keepLogFrom ?? -1)
            w.string(written.file.path)
        case .failure(let e):
            w.bool(false)
            w.int(r.size)
            w.u64(r.serialiseNs)
            w.string("\(e)")
        }
        return w.bytes
    }

    /// The report, or nil unless the bytes are exactly a whole one.
    static func decode(_ b: [UInt8]) -> Report? {
        var r = SnapshotReader(bytes: b)
        guard let ok = try? r.bool(), let size = try? r.int(), let ns = try? r.u64() else { return nil }
        let outcome: Result<SnapshotWritten, any Error>
        if ok {
            guard let seq = try? r.u64(), let serial = try? r.int(), let keep = try? r.int(), let path = try? r.string() else { return nil }
            outcome = .success(SnapshotWritten(file: SnapshotFile(seq: seq, serial: serial, path: path), keepLogFrom: keep < 0 ? nil : keep))
        } else {
            guard let message = try? r.string() else { return nil }
            outcome = .failure(LogError(message))
        }
        return r.remaining == 0 ? Report(outcome: outcome, size: size, serialiseNs: ns) : nil
    }
}

/// fork or pipe failed (errno's reason): the snapshot is written on a thread.
struct SnapshotForkFailure: Error, CustomStringConvertible {
    let code: Int32
    init(_ code: Int32) { self.code = code }
    var description: String { String(cString: strerror(code)) }
}
