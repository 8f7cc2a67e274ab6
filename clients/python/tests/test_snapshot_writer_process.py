"""A snapshot is serialised and written by a child process the server forks
(snapshot.fork, on by default), as Redis's BGSAVE is, so new FEEDBACK is
admitted and learned while it is written (at a million items the
serialisation alone held FEEDBACK for 9-28 s; helper-77). The child is
kept slow here by a small LD_PRELOAD library whose fsync (which the
snapshot's file gets, and the log never: it uses fdatasync) sleeps while a
flag file exists.

What the child must not do: hold the server's descriptors, outlive a
server killed with SIGKILL, or lose or corrupt anything; and a graceful
stop waits for it."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import perennial
from test_crash_recovery import _applied_after_restart, _events, _launch as _launch_server, _stop
from test_fsync_failure import _shim

SLOW_FSYNC = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
int fsync(int fd) {
    const char *flag = getenv("PERENNIAL_TEST_FSYNC_SLOW_IF");
    if (flag && access(flag, F_OK) == 0) usleep(2500000);
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
"""


_started: List["subprocess.Popen[bytes]"] = []


def _launch(*args, **kwargs):
    """test_crash_recovery's _launch, remembered so that a failing test
    does not leave its server running."""
    proc, port = _launch_server(*args, **kwargs)
    _started.append(proc)
    return proc, port


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _children(pid: int) -> List[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def _wait_for(what, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.02)
    return what()


class _Snapshot(threading.Thread):
    """An admin SNAPSHOT request on its own connection, in the background."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.result: Optional[perennial.Snapshot] = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            with perennial.Client("127.0.0.1", self.port, timeout=30.0) as c:
                self.result = c.snapshot()
        except BaseException as e:          # reported by the test
            self.error = e


@pytest.fixture
def slow_fsync(tmp_path: Path) -> Dict[str, str]:
    lib = _shim(tmp_path, SLOW_FSYNC, "slow_snapshot_fsync")
    return {"LD_PRELOAD": str(lib), "PERENNIAL_TEST_FSYNC_SLOW_IF": str(tmp_path / "fsync-slow")}


def _writer_at_work(data: Path, fsync: str, env: Dict[str, str], events: List[perennial.Event]):
    """A server on `data` that has learned `events` and is writing a
    snapshot of them, its writer kept at work by the slow-fsync library:
    (process, port, the SNAPSHOT request's thread, the writer's pid)."""
    proc, port = _launch(data, fsync, env=env)
    with perennial.Client("127.0.0.1", port) as c:
        for k in range(0, len(events), 500):
            c.feedback(events[k:k + 500])
    Path(env["PERENNIAL_TEST_FSYNC_SLOW_IF"]).touch()
    snap = _Snapshot(port)
    snap.start()
    assert _wait_for(lambda: _children(proc.pid) and _temporary_files(data), 5), "no writer at work"
    return proc, port, snap, _children(proc.pid)[0]


def test_feedback_is_learned_while_a_child_process_writes_the_snapshot(tmp_path: Path, slow_fsync: Dict[str, str]) -> None:
    events = _events(6_000)
    data = tmp_path / "data"
    proc, port, snap, writer = _writer_at_work(data, "everysec", slow_fsync, events[:3_000])
    with perennial.Client("127.0.0.1", port) as c:
        # While the child writes: FEEDBACK is answered at once and learned
        # (applied), not held for the snapshot.
        slowest = 0.0
        for k in range(3_000, 6_000, 500):
            t = time.monotonic()
            ack = c.feedback(events[k:k + 500])
            slowest = max(slowest, time.monotonic() - t)
        assert slowest < 1.0, "a FEEDBACK took %.2f s while the snapshot was written" % slowest
        assert _wait_for(lambda: c.stats()["events_applied"] == ack.last_seq == 6_000, 5)
        rec = c.recommend(events[5_999].user, k=5, min_applied_seq=ack.last_seq)
        assert len(rec) == 5
        # The writer holds none of the server's descriptors (its sockets,
        # log segments, the data directory's lock): only standard input,
        # output and error, its pipe to the server, and the snapshot file.
        held = {}
        for fd in os.listdir("/proc/%d/fd" % writer):
            try:
                held[int(fd)] = os.readlink("/proc/%d/fd/%s" % (writer, fd))
            except OSError:
                pass
        others = {fd: target for fd, target in held.items()
                  if fd > 2 and not target.startswith("pipe:") and not target.endswith(".bin.tmp")}
        assert not others, "the writer holds the server's descriptors: %r" % others
        assert _alive(writer), "the writer finished before the checks ran: they proved nothing"
        snap.join(30)
        assert snap.error is None, snap.error
        assert snap.result is not None and snap.result == 3_000
        assert not _alive(writer)
        assert c.stats()["snapshots"] >= 1 and c.stats()["snapshot_failures"] == 0
    Path(slow_fsync["PERENNIAL_TEST_FSYNC_SLOW_IF"]).unlink()
    _stop(proc)
    assert _applied_after_restart(data, "everysec") == 6_000


def test_a_killed_server_takes_its_snapshot_writer_with_it(tmp_path: Path, slow_fsync: Dict[str, str]) -> None:
    data = tmp_path / "data"
    proc, port, snap, writer = _writer_at_work(data, "always", slow_fsync, _events(3_000))
    proc.kill()
    proc.wait(10)
    # (Left running, it would go on writing into the data directory the
    # next server uses.)
    assert _wait_for(lambda: not _alive(writer), 2), "the snapshot's writer outlived the server"
    snap.join(10)
    Path(slow_fsync["PERENNIAL_TEST_FSYNC_SLOW_IF"]).unlink()
    names = [p.name for p in (data / "snapshots").iterdir()]
    assert "snapshot-3000.bin.tmp" in names and "snapshot-3000.bin" not in names, names
    # Every acknowledged event is back (from the log), and start-up removed
    # the half-written snapshot.
    assert _applied_after_restart(data, "always") == 3_000
    assert not [n for n in os.listdir(data / "snapshots") if n.endswith(".tmp")]


def test_a_graceful_stop_waits_for_the_snapshot_writer(tmp_path: Path, slow_fsync: Dict[str, str]) -> None:
    events = _events(2_000)
    data = tmp_path / "data"
    proc, port, snap, _ = _writer_at_work(data, "everysec", slow_fsync, events[:1_000])
    with perennial.Client("127.0.0.1", port) as c:
        c.feedback(events[1_000:])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    snap.join(10)
    assert snap.error is None and snap.result == 1_000, snap.error
    Path(slow_fsync["PERENNIAL_TEST_FSYNC_SLOW_IF"]).unlink()
    versions = sorted(p.name for p in (data / "snapshots").iterdir() if p.suffix == ".bin")
    assert "snapshot-1000.bin" in versions and "snapshot-2000.bin" in versions, versions
    assert _applied_after_restart(data, "everysec") == 2_000


SNAPSHOT_FILE_FSYNC = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* Only a snapshot file's fsync is changed (a log segment roll fsyncs the
   log's directory on the server's loop). */
static int snapshot_file(int fd) {
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 8) return 0;
    target[n] = 0;
    return strcmp(target + n - 8, ".bin.tmp") == 0;
}
static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
int fsync(int fd) {
    const char *lock = getenv("PERENNIAL_TEST_FSYNC_LOCKS_IF");
    const char *sleepy = getenv("PERENNIAL_TEST_FSYNC_SLEEPS_IF");
    if (snapshot_file(fd)) {
        /* A lock that is never released, as one held by another thread
           at the fork would be in the child. */
        if (lock && access(lock, F_OK) == 0) { pthread_mutex_lock(&held); pthread_mutex_lock(&held); }
        /* A slow file system (FUSE waits in state S too). */
        if (sleepy && access(sleepy, F_OK) == 0) sleep(6);
    }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
"""

NO_THREADS = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
int pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*f)(void *), void *arg) {
    const char *flag = getenv("PERENNIAL_TEST_NO_THREADS_IF");
    if (flag && access(flag, F_OK) == 0) return EAGAIN;
    int (*real)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *) =
        (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))dlsym(RTLD_NEXT, "pthread_create");
    return real(t, a, f, arg);
}
"""


def _temporary_files(data: Path) -> List[str]:
    d = data / "snapshots"
    return [n for n in os.listdir(d) if n.endswith(".tmp")] if d.exists() else []


def test_a_writer_killed_before_it_reported_fails_its_snapshot_and_leaves_no_file(tmp_path: Path,
                                                                                  slow_fsync: Dict[str, str]) -> None:
    """Review finding (helper-83): a writer the OOM killer (here SIGKILL)
    ends mid-write left its half-written file, the model's size, until the
    next restart."""
    events = _events(3_000)
    data = tmp_path / "data"
    proc, port, snap, writer = _writer_at_work(data, "everysec", slow_fsync, events[:2_000])
    with perennial.Client("127.0.0.1", port) as c:
        os.kill(writer, signal.SIGKILL)
        snap.join(30)
        assert isinstance(snap.error, perennial.ServerError) and snap.error.code_name == "STORAGE", snap.error
        assert "killed by signal 9" in str(snap.error)
        assert _temporary_files(data) == []
        assert c.stats()["snapshot_failures"] == 1
        # The server goes on: FEEDBACK, and a snapshot once the disk is well.
        Path(slow_fsync["PERENNIAL_TEST_FSYNC_SLOW_IF"]).unlink()
        c.feedback(events[2_000:])
        assert c.snapshot() == 3_000
    _stop(proc)
    assert _applied_after_restart(data, "everysec") == 3_000


def test_a_writer_blocked_on_a_lock_is_killed_and_a_slow_file_system_is_waited_for(tmp_path: Path) -> None:
    """A lock held by another thread at the fork stays held in the child for
    good; its snapshot, and the graceful stop that waits for it, would wait
    forever. A writer blocked on a lock `writer_stall_seconds` without
    using the CPU is killed, and its snapshot fails. One asleep in a slow
    file system's fsync, longer than that, is not (helper-84: the first
    watchdog killed writers on FUSE, which sleeps in state S)."""
    lib = _shim(tmp_path, SNAPSHOT_FILE_FSYNC, "snapshot_file_fsync")
    locks, sleeps = tmp_path / "fsync-locks", tmp_path / "fsync-sleeps"
    data = tmp_path / "data"
    events = _events(3_000)
    proc, port = _launch(data, "everysec", config="[snapshot]\nwriter_stall_seconds = 2\n",
                         env={"LD_PRELOAD": str(lib), "PERENNIAL_TEST_FSYNC_LOCKS_IF": str(locks),
                              "PERENNIAL_TEST_FSYNC_SLEEPS_IF": str(sleeps)})
    with perennial.Client("127.0.0.1", port) as c, perennial.Client("127.0.0.1", port, timeout=30.0) as admin:
        c.feedback(events[:1_000])
        locks.touch()
        t = time.monotonic()
        with pytest.raises(perennial.ServerError) as e:
            admin.snapshot()
        assert e.value.code_name == "STORAGE" and "blocked on a lock" in str(e.value), e.value
        assert time.monotonic() - t < 10
        assert _temporary_files(data) == [] and _children(proc.pid) == []
        locks.unlink()
        c.feedback(events[1_000:2_000])
        sleeps.touch()
        t = time.monotonic()
        assert admin.snapshot() == 2_000
        assert time.monotonic() - t > 5.5
        sleeps.unlink()
        c.feedback(events[2_000:])
    _stop(proc)
    assert _applied_after_restart(data, "everysec") == 3_000


EIO_PREAD = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* Reads of one snapshot file past its first 4 KiB fail with EIO, as a bad
   block would. */
static int bad(int fd, off_t offset) {
    const char *name = getenv("PERENNIAL_TEST_EIO_FILE");
    char link[64], target[4096];
    if (!name || offset < 4096) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    const char *base = strrchr(target, '/');
    return base && strcmp(base + 1, name) == 0;
}
ssize_t pread(int fd, void *buf, size_t count, off_t offset) {
    if (bad(fd, offset)) { errno = EIO; return -1; }
    ssize_t (*real)(int, void *, size_t, off_t) = (ssize_t (*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread");
    return real(fd, buf, count, offset);
}
ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    if (bad(fd, offset)) { errno = EIO; return -1; }
    ssize_t (*real)(int, void *, size_t, off_t) = (ssize_t (*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread64");
    return real(fd, buf, count, offset);
}
"""


def _two_snapshots(data: Path) -> List[perennial.Event]:
    """A data directory whose newest snapshot (2,000 events) has an older
    one (1,000 events) to fall back to; returns the events sent."""
    events = _events(2_000)
    proc, port = _launch(data, "everysec")
    with perennial.Client("127.0.0.1", port) as c:
        c.feedback(events[:1_000])
        assert c.snapshot() == 1_000
        c.feedback(events[1_000:])
    _stop(proc)
    return events


def test_a_read_error_in_the_newest_snapshot_falls_back_to_an_older_one(tmp_path: Path) -> None:
    """helper-84: with the snapshot mapped, a bad block killed start-up
    with SIGBUS, at every restart. The file is checked with pread first:
    the read error makes the version damaged, and start-up falls back."""
    lib = _shim(tmp_path, EIO_PREAD, "eio_pread")
    data = tmp_path / "data"
    _two_snapshots(data)
    assert (data / "snapshots" / "snapshot-2000.bin").exists()
    proc, port = _launch(data, "everysec", env={"LD_PRELOAD": str(lib), "PERENNIAL_TEST_EIO_FILE": "snapshot-2000.bin"})
    with perennial.Client("127.0.0.1", port) as c:
        assert c.stats()["events_applied"] == 2_000
    _stop(proc)
    log = (tmp_path / "server.log").read_text()
    assert "snapshot-2000.bin: Input/output error" in log and "loaded the snapshot at sequence 1000" in log, log[-2000:]


TRUNCATE_AFTER_MAP = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>
/* Once one snapshot file has been mapped (its checksum already read with
   pread), it loses all but its first 4 KiB: the pages after read back as
   SIGBUS, as when a file is truncated under its mapping, or as a block
   that read once and fails the second time. */
static int done;
void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    void *(*real)(void *, size_t, int, int, int, off_t) =
        (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
    void *p = real(addr, length, prot, flags, fd, offset);
    const char *name = getenv("PERENNIAL_TEST_TRUNCATE_FILE");
    char link[64], target[4096];
    if (p == MAP_FAILED || done || !name || fd < 0) return p;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return p;
    target[n] = 0;
    const char *base = strrchr(target, '/');
    if (base && strcmp(base + 1, name) == 0) { done = 1; truncate(target, 4096); }
    return p;
}
void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    return mmap(addr, length, prot, flags, fd, offset);
}
"""


def test_a_snapshot_truncated_under_its_mapping_falls_back_to_an_older_one(tmp_path: Path) -> None:
    """helper-87: the model is built from the snapshot's mapping after the
    pread checksum pass, and a page that could not be read again killed
    start-up with SIGBUS. Now it reads as zeros, the reader throws, and
    start-up falls back to the version before and replays the log."""
    lib = _shim(tmp_path, TRUNCATE_AFTER_MAP, "truncate_after_map")
    data = tmp_path / "data"
    events = _two_snapshots(data)
    assert (data / "snapshots" / "snapshot-2000.bin").stat().st_size > 4096
    proc, port = _launch(data, "everysec", env={"LD_PRELOAD": str(lib), "PERENNIAL_TEST_TRUNCATE_FILE": "snapshot-2000.bin"})
    with perennial.Client("127.0.0.1", port) as c:
        assert c.stats()["events_applied"] == 2_000
        assert len(c.recommend(events[0].user, k=5)) == 5
    _stop(proc)
    log = (tmp_path / "server.log").read_text()
    assert "could not be read again while it was loaded" in log and "loaded the snapshot at sequence 1000" in log, log[-2000:]


@pytest.mark.parametrize("fork", ["true", "false"])
def test_a_snapshot_no_thread_can_be_started_for_fails_and_holds_nothing(tmp_path: Path, fork: str) -> None:
    """Review finding (helper-83): one task short of a pids limit, fork
    succeeded and the thread to wait for the child did not start (or, on a
    thread, the serialisation's never did): FEEDBACK, SNAPSHOT requests and
    the graceful stop waited forever, and the child stayed a zombie. Now the
    snapshot fails at once (STORAGE), the child is reaped, and the server
    goes on."""
    lib = _shim(tmp_path, NO_THREADS, "no_threads")
    flag = tmp_path / "no-threads"
    data = tmp_path / "data"
    events = _events(2_000)
    proc, port = _launch(data, "everysec", config="[snapshot]\nfork = %s\n" % fork,
                         env={"LD_PRELOAD": str(lib), "PERENNIAL_TEST_NO_THREADS_IF": str(flag)})
    with perennial.Client("127.0.0.1", port) as c:
        c.feedback(events[:1_000])
        flag.touch()
        with pytest.raises(perennial.ServerError) as e:
            with perennial.Client("127.0.0.1", port, timeout=10.0) as admin:
                admin.snapshot()
        assert e.value.code_name == "STORAGE" and "cannot start a thread" in str(e.value), e.value
        t = time.monotonic()
        ack = c.feedback(events[1_000:1_500])
        assert time.monotonic() - t < 2.0
        assert _wait_for(lambda: c.stats()["events_applied"] == ack.last_seq, 5)
        assert _children(proc.pid) == [] and _temporary_files(data) == []
        flag.unlink()
        c.feedback(events[1_500:])
        assert c.snapshot() == 2_000
    _stop(proc)
    assert _applied_after_restart(data, "everysec") == 2_000
