"""Disk full: the data directory on a small tmpfs. FEEDBACK gets a STORAGE
error once the log cannot grow, nothing acknowledged is lost, RECOMMEND keeps
working, and feedback is accepted again when space returns. Needs root (to
mount a tmpfs); skipped otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

import perennial
from test_crash_recovery import _events, _launch


@pytest.fixture
def small_disk():
    mnt = tempfile.mkdtemp(prefix="perennial-tmpfs-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): %s" % r.stderr.decode().strip())
    try:
        yield Path(mnt)
    finally:
        subprocess.run(["umount", "-l", mnt])
        os.rmdir(mnt)


def test_full_disk_refuses_feedback_and_loses_nothing(small_disk: Path) -> None:
    data_dir = small_disk / "data"
    events = _events(20_000)  # about 600 KB of log: more than the disk holds
    proc, port = _launch(data_dir, "always")
    acked = 0
    refused = None
    with perennial.Client("127.0.0.1", port) as c:
        for start in range(0, len(events), 200):
            try:
                ack = c.feedback(events[start:start + 200])
                acked = ack.last_seq
            except perennial.ServerError as e:
                refused = e
                break
        assert refused is not None, "the disk never filled"
        assert refused.code_name == "STORAGE"
        # The server still serves reads, and its counts match what was acknowledged.
        assert len(c.recommend(events[0].user, k=5)) > 0
        st = c.stats()
        assert st["events_accepted"] == acked == st["events_durable"]
        # Space returns: feedback is accepted again.
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        ack = c.feedback(events[acked:acked + 200])
        assert ack.first_seq == acked + 1
        acked = ack.last_seq
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    # Everything acknowledged is recovered.
    proc, port = _launch(data_dir, "always")
    with perennial.Client("127.0.0.1", port) as c:
        assert c.stats()["events_applied"] == acked
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
