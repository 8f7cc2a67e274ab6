"""A graceful stop (SIGTERM, SHUTDOWN) tells every client the fate of each
request it sent: answered, or refused SHUTTING_DOWN, then a clean close.

Review finding (helper-33): clients still pipelining FEEDBACK at a SIGTERM
got a connection reset instead of their last acknowledgements, though the
server had accepted the events (a retry would send them twice); requests
pipelined behind a SHUTDOWN got no answer at all."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Dict, List, Tuple

import perennial
from perennial import protocol as P
from perennial.protocol import Opcode

LIMITS = P.Limits(max_frame_bytes=1 << 26, max_items=1000, max_events=10000)


def _feedback_frame(rid: int, base: int, n: int) -> bytes:
    events = [{"user": 1 + (base + j) % 500, "item": 1 + (base + j) % 3000, "kind": "click"} for j in range(n)]
    return P.encode_request(Opcode.FEEDBACK, rid, {"events": events})


def _flood(port: int, out: Dict[int, Tuple[str, int, int, int]], key: int) -> None:
    """Pipelines 100-event FEEDBACKs without waiting, reading replies as
    they come, until the server closes; records how it ended, the events
    acknowledged, the FEEDBACKs refused SHUTTING_DOWN, and those never
    answered."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    dec = P.FrameDecoder(LIMITS)
    pending: Dict[int, int] = {}
    rid, acked, refused, end = 0, 0, 0, "timeout"
    buf = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if len(buf) < 50_000:
            for _ in range(10):
                rid += 1
                pending[rid] = 100
                buf += _feedback_frame(rid, rid * 100, 100)
        r, w, _ = select.select([s], [s] if buf else [], [], 1)
        try:
            if w:
                buf = buf[s.send(buf):]
            if r:
                data = s.recv(1 << 20)
                if not data:
                    end = "eof"
                    break
                dec.feed(data)
                while True:
                    f = dec.next_frame()
                    if f is None:
                        break
                    n = pending.pop(f.request_id)
                    if f.opcode == Opcode.FEEDBACK:
                        acked += n
                    else:
                        assert f.opcode == Opcode.ERROR and f.payload["code"] == "SHUTTING_DOWN", f.payload
                        refused += 1
        except BrokenPipeError:
            # (Our write after the server shut its side: the replies were
            # all read before, as the EOF that follows shows.)
            buf = b""
        except OSError as e:
            end = repr(e)
            break
    s.close()
    out[key] = (end, acked, refused, len(pending))


def test_a_sigterm_under_pipelined_feedback_acknowledges_every_accepted_event(start_server) -> None:
    srv = start_server("[snapshot]\nevery_events = 0\nrecovery_seconds = 0\n")
    with srv.client() as c:
        assert c.ping()
    results: Dict[int, Tuple[str, int, int, int]] = {}
    threads = [threading.Thread(target=_flood, args=(srv.port, results, k)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert srv.stop() == 0, srv.log()
    for t in threads:
        t.join()
    assert all(end == "eof" for end, _, _, _ in results.values()), results   # no reset
    acked = sum(a for _, a, _, _ in results.values())
    assert acked > 0
    srv.start_again()
    with srv.client() as c:
        # Every event the server holds was acknowledged to its sender: none
        # is durable without a reply (a client's retry would duplicate it).
        assert c.stats()["events_accepted"] == acked, (results, srv.log())


def test_requests_pipelined_behind_a_shutdown_are_refused_shutting_down(start_server) -> None:
    srv = start_server("[server]\nallow_shutdown = true\n")
    events = {"events": [{"user": 1, "item": 2, "kind": "click"}]}
    s = socket.create_connection(srv.address)
    s.sendall(P.encode_request(Opcode.PING, 1) + P.encode_request(Opcode.SHUTDOWN, 2)
              + P.encode_request(Opcode.PING, 3) + P.encode_request(Opcode.FEEDBACK, 4, events)
              + P.encode_request(Opcode.PING, 5))
    dec = P.FrameDecoder(LIMITS)
    frames: List[P.Frame] = []
    s.settimeout(10)
    while True:
        data = s.recv(1 << 16)
        if not data:
            break
        dec.feed(data)
        while (f := dec.next_frame()) is not None:
            frames.append(f)
    s.close()
    assert [(f.request_id, f.opcode) for f in frames] == [
        (1, Opcode.PING), (2, Opcode.SHUTDOWN), (3, Opcode.ERROR), (4, Opcode.ERROR), (5, Opcode.ERROR)]
    assert all(f.payload["code"] == "SHUTTING_DOWN" for f in frames[2:])
    assert srv.proc.wait(10) == 0
    srv.start_again()
    with srv.client() as c:
        assert c.stats()["events_accepted"] == 0          # the refused FEEDBACK was not accepted


ALL_SCORERS = ('[scorers]\nload = ["cf", "popularity", "session-rnn", "gan", "text-cnn"]\ndefault = "cf"\n'
               '[learner]\nmax_lag_seconds = 30\nqueue_capacity = 400000\n[snapshot]\nevery_events = 0\n'
               'recovery_seconds = 0\n[limits]\nwait_ms = 120000\n')


def test_requests_waiting_on_the_learner_at_the_stop_deadline_get_a_reply(start_server) -> None:
    """Review finding (helper-39): a stop closes every connection 5 s after
    it began; requests still waiting on the learner then (a deletion, a
    read-your-writes RECOMMEND) got EOF, no reply. Now each is answered
    (SHUTTING_DOWN: it had no effect) before the close."""
    srv = start_server(ALL_SCORERS)
    with srv.client(timeout=120) as c:
        c.feedback([perennial.Event(1 + i % 700, 1 + i % 2000) for i in range(10_000)])
        c.stats()
    outcomes: Dict[str, object] = {}

    def flood() -> None:
        # Pipelined without waiting: the learner's queue fills to its
        # allowance (about max_lag_seconds of work); the rest is refused
        # SHUTTING_DOWN at the stop.
        with srv.client(timeout=120) as f:
            p = f.pipeline()
            for b in range(8):
                p.feedback([perennial.Event(1 + (b * 10_000 + i) % 700, 1 + i % 2000) for i in range(10_000)])
            outcomes["flood"] = p.execute()

    def wait_on_learner(name: str, call: "Callable[[perennial.Client], object]") -> None:
        try:
            with srv.client(timeout=120) as w:
                outcomes[name] = call(w)
        except perennial.PerennialError as e:
            outcomes[name] = e

    flooding = threading.Thread(target=flood)
    flooding.start()
    with srv.client(timeout=120) as c:
        deadline = time.monotonic() + 60
        while True:
            st = c.stats()
            backlog_s = (st["events_accepted"] - st["events_applied"]) * st["learner_ns_per_event"] / 1e9
            if backlog_s > 6.5 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        applied = st["events_accepted"]
    threads = [threading.Thread(target=wait_on_learner, args=("delete", lambda w: w.delete_items([296]))),
               threading.Thread(target=wait_on_learner,
                                args=("read", lambda w: w.recommend(5, k=3, min_applied_seq=applied)))]
    for t in threads:
        t.start()
    time.sleep(0.3)
    srv.proc.send_signal(15)
    for t in threads + [flooding]:
        t.join(120)
    assert srv.proc.wait(120) == 0
    assert set(outcomes) == {"delete", "read", "flood"}
    for name, got in outcomes.items():
        # A reply: the request's result, or SHUTTING_DOWN; never a bare close.
        for r in (got if isinstance(got, list) else [got]):
            if isinstance(r, BaseException):
                assert isinstance(r, perennial.ServerError) and r.code_name == "SHUTTING_DOWN", (name, r, backlog_s)
    # (The deadline path is what this checks: the learner had more than the
    # stop's 5 s of work left when it began.)
    assert backlog_s > 6.5, backlog_s


def test_sessions_survive_a_graceful_restart_and_not_a_crash(start_server) -> None:
    """Sessions kept by id (RECOMMEND's session_id) used to be forgotten by
    every restart; a graceful stop now saves them, and the next start puts
    them back (their items stay excluded from the session's answers). A
    crash still forgets them, since RECOMMEND's items are not logged."""
    srv = start_server("[scorers]\nload = [\"popularity\"]\n")
    with srv.client() as c:
        # Items 1..30, popular in that order.
        c.feedback([perennial.Event(100 + u, item) for item in range(1, 31) for u in range(40 - item)])
        seen = [1, 2, 3, 5, 8]
        got = [r.item for r in c.recommend(7, k=5, session_id="visit-42", session=seen)]
        assert got == [4, 6, 7, 9, 10]
        assert c.stats()["sessions"] == 1
    srv.restart()
    assert "1 sessions kept from the last graceful stop" in srv.log(), srv.log()
    with srv.client() as c:
        assert c.stats()["sessions"] == 1
        # The session's items are still left out, with no items sent now.
        assert [r.item for r in c.recommend(7, k=5, session_id="visit-42")] == [4, 6, 7, 9, 10]
        _ = c.recommend(7, k=5, session_id="visit-42", session=[4])
    srv.kill()
    srv.start_again()
    with srv.client() as c:
        assert c.stats()["sessions"] == 0
        assert [r.item for r in c.recommend(7, k=5, session_id="visit-42")] == [1, 2, 3, 4, 5]


def test_saved_sessions_wait_for_a_start_that_listens(start_server) -> None:
    """A start that failed after reading sessions.bin (its port still held,
    say) had deleted the file: every saved session was lost (review
    finding, helper-75). Now the file is read once the server listens; a
    temporary file a failed save left is swept at the start."""
    srv = start_server("[scorers]\nload = [\"popularity\"]\n")
    with srv.client() as c:
        c.feedback([perennial.Event(100 + u, item) for item in range(1, 11) for u in range(12 - item)])
        c.recommend(7, k=3, session_id="visit-1", session=[1, 2])
    assert srv.stop() == 0, srv.log()
    data = srv.data_dir
    assert os.path.exists(os.path.join(data, "sessions.bin"))
    with open(os.path.join(data, "sessions.bin.tmp"), "wb") as f:
        f.write(b"left by a save that failed")
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", srv.port))
    held.listen(1)
    try:
        failed = subprocess.run(srv.args, capture_output=True, text=True, timeout=60)
        assert failed.returncode != 0, failed.stderr
    finally:
        held.close()
    assert os.path.exists(os.path.join(data, "sessions.bin"))
    srv.start_again()
    with srv.client() as c:
        assert c.stats()["sessions"] == 1
        assert [r.item for r in c.recommend(7, k=3, session_id="visit-1")] == [3, 4, 5]
    assert not os.path.exists(os.path.join(data, "sessions.bin.tmp"))


def test_a_server_started_with_its_signals_blocked_still_obeys_them(start_server) -> None:
    """Review finding (helper-91): a blocked signal mask is inherited across
    exec (Foundation.Process starts children so), and the server ignored
    SIGTERM and SIGHUP for good. It unblocks the signals it handles."""
    handled = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        srv = start_server("")                   # the child inherits the blocked mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    with open("/proc/%d/status" % srv.proc.pid) as f:
        blocked = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
    assert blocked & (1 << (signal.SIGTERM - 1)) == 0, "SIGTERM still blocked in the main thread: %x" % blocked
    with perennial.Client(*srv.address) as c:
        srv.proc.send_signal(signal.SIGHUP)      # a reload of the same config
        deadline = time.monotonic() + 10
        while c.stats()["reloads"] == 0:
            assert time.monotonic() < deadline, "SIGHUP was not acted on"
            time.sleep(0.05)
    assert srv.stop() == 0                       # SIGTERM, within the stop timeout
