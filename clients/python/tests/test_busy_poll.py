"""`server.busy_poll_us`: after it last read from a connection the event loop
polls for that long instead of sleeping, and then sleeps. The server's own
CPU time (from /proc) shows both: a window of polling after a burst of
requests, and an idle server using almost nothing once the window is over.
Requests are answered the same either way."""

from __future__ import annotations

import os
import time

import perennial

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime + stime


def test_the_loop_polls_for_the_window_then_sleeps(start_server) -> None:
    srv = start_server("[server]\nbusy_poll_us = 100000\n")   # the most, 0.1 s, to be seen in clock ticks
    pid = srv.proc.pid
    with srv.client() as c:
        c.feedback([perennial.Event(1, 10), perennial.Event(1, 11), perennial.Event(2, 10)])
        assert [r.item for r in c.recommend(2, k=1, min_applied_seq=3)] == [11]
        # Right after a request the loop polls: about 0.1 s of CPU.
        before = _cpu_seconds(pid)
        c.ping()
        time.sleep(0.4)
        polled = _cpu_seconds(pid) - before
        # Once the window is over it sleeps: an idle second costs nothing.
        before = _cpu_seconds(pid)
        time.sleep(1.0)
        idle = _cpu_seconds(pid) - before
    assert polled >= 0.05, "the loop did not poll after the request (%.2f s of CPU)" % polled
    assert idle <= 0.03, "the loop went on polling with nothing to read (%.2f s of CPU in 1 s)" % idle


def test_without_busy_poll_the_loop_sleeps_at_once(start_server) -> None:
    srv = start_server("[server]\nbusy_poll_us = 0\n")
    pid = srv.proc.pid
    with srv.client() as c:
        c.ping()
        before = _cpu_seconds(pid)
        c.ping()
        time.sleep(0.4)
        assert _cpu_seconds(pid) - before <= 0.03
