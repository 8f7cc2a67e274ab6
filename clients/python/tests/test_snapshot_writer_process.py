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
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import perennial
from test_crash_recovery import _applied_after_restart, _events, _launch, _stop
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


def test_feedback_is_learned_while_a_child_process_writes_the_snapshot(tmp_path: Path, slow_fsync: Dict[str, str]) -> None:
    events = _events(6_000)
    data = tmp_path / "data"
    proc, port = _launch(data, "everysec", env=slow_fsync)
    with perennial.Client("127.0.0.1", port) as c:
        for k in range(0, 3_000, 500):
            c.feedback(events[k:k + 500])
        Path(slow_fsync["PERENNIAL_TEST_FSYNC_SLOW_IF"]).touch()
        snap = _Snapshot(port)
        snap.start()
        assert _wait_for(lambda: _children(proc.pid), 5), "no writer process appeared"
        writer = _children(proc.pid)[0]
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
    events = _events(3_000)
    data = tmp_path / "data"
    proc, port = _launch(data, "always", env=slow_fsync)
    with perennial.Client("127.0.0.1", port) as c:
        for k in range(0, 3_000, 500):
            c.feedback(events[k:k + 500])
    Path(slow_fsync["PERENNIAL_TEST_FSYNC_SLOW_IF"]).touch()
    snap = _Snapshot(port)
    snap.start()
    assert _wait_for(lambda: _children(proc.pid), 5), "no writer process appeared"
    writer = _children(proc.pid)[0]
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
    proc, port = _launch(data, "everysec", env=slow_fsync)
    with perennial.Client("127.0.0.1", port) as c:
        c.feedback(events[:1_000])
        Path(slow_fsync["PERENNIAL_TEST_FSYNC_SLOW_IF"]).touch()
        snap = _Snapshot(port)
        snap.start()
        assert _wait_for(lambda: _children(proc.pid), 5), "no writer process appeared"
        c.feedback(events[1_000:])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    snap.join(10)
    assert snap.error is None and snap.result == 1_000, snap.error
    Path(slow_fsync["PERENNIAL_TEST_FSYNC_SLOW_IF"]).unlink()
    versions = sorted(p.name for p in (data / "snapshots").iterdir() if p.suffix == ".bin")
    assert "snapshot-1000.bin" in versions and "snapshot-2000.bin" in versions, versions
    assert _applied_after_restart(data, "everysec") == 2_000
