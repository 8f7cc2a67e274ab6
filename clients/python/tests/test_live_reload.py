"""Live swap: RELOAD (and SIGHUP) re-read the config while 50 clients run;
scorers are swapped for new requests, no request fails, no connection drops,
and a bad config is refused with the old one kept."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

import perennial

BASE = """[snapshot]
every_events = 0
recovery_seconds = 0
[scorers]
load = [%s]
default = "%s"
[scorers.cf]
factor_weight = %s
"""


def _write(path: Path, load: str, default: str, factor: str = "0.7") -> None:
    path.write_text(BASE % (load, default, factor))


def _events(seed: int, count: int) -> list:
    rng = random.Random(seed)
    return [perennial.Event(rng.randint(1, 500), rng.randint(1, 2000)) for _ in range(count)]


def _build_backlog(feeder: perennial.Client, events: list) -> None:
    """Leaves the learner behind: the first 2,000 events and a read (so
    the learner's cost is known and the queue allowance follows it), then
    the rest in 1,000-event batches, which fill the queue up to about
    `learner.max_lag_seconds` of session-rnn's learning."""
    feeder.feedback(events[:2000])
    feeder.recommend(1, k=1)
    for k in range(2000, len(events), 1000):
        feeder.feedback(events[k:k + 1000])


def test_reload_under_load(start_server) -> None:
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.7"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    host, port = srv.address
    stop = time.monotonic() + 8
    counts = {"ok": 0, "errors": 0}

    async def worker(i: int) -> None:
        rng = random.Random(i)
        async with perennial.AsyncClient(host, port) as c:
            while time.monotonic() < stop:
                try:
                    if rng.random() < 0.5:
                        await c.recommend(rng.randint(1, 300), k=10)
                    else:
                        await c.feedback([perennial.Event(rng.randint(1, 300), rng.randint(1, 200))])
                    counts["ok"] += 1
                except perennial.PerennialError as e:  # pragma: no cover - reported below
                    counts["errors"] += 1
                    print("request failed:", e)
                await asyncio.sleep(rng.uniform(0, 0.01))

    def admin_steps() -> list:
        seen = []
        with perennial.Client(host, port) as admin:
            time.sleep(1)
            _write(cfg, '"cf", "popularity"', "popularity")
            admin.reload()
            seen.append(admin.recommend(999_999, k=3))           # unknown user: popularity's counts
            time.sleep(1)
            _write(cfg, '"cf", "popularity"', "cf", "0.5")       # cf adjusted in place
            admin.reload()
            time.sleep(1)
            _write(cfg, '"cf"', "cf")                             # popularity removed...
            with pytest.raises(perennial.InvalidArgument, match="no kept version holds"):
                admin.reload()                                   # ...refused: no version holds its state
            assert admin.recommend(1, k=3, scorer="popularity")  # (nothing was changed)
            admin.snapshot()                                     # a version that keeps it
            admin.reload()
            with pytest.raises(perennial.UnknownScorer):
                admin.recommend(1, k=3, scorer="popularity")
            time.sleep(0.5)
            cfg.write_text("[scorers]\nlod = [\"cf\"]\n")          # a typo: refused, old config stays
            with pytest.raises(perennial.ServerError) as bad:
                admin.reload()
            assert "lod" in str(bad.value) and "load" in str(bad.value)
            cfg.write_text("[table]\ndimension = 32\n")         # shapes the model: refused, named
            with pytest.raises(perennial.ServerError, match="table.dimension 64 -> 32"):
                admin.reload()
            assert admin.recommend(1, k=3)                         # still serving with cf
            _write(cfg, '"cf", "popularity"', "popularity")
            srv.proc.send_signal(signal.SIGHUP)                  # the same through SIGHUP
            time.sleep(0.5)
            admin.recommend(1, k=3, scorer="popularity")
            seen.append(admin.stats())
        return seen

    async def main() -> list:
        workers = [asyncio.create_task(worker(i)) for i in range(50)]
        await asyncio.sleep(0.3)
        with perennial.Client(host, port) as c:
            during = c.stats()["connections"]
        seen = await asyncio.to_thread(admin_steps)
        await asyncio.gather(*workers)
        return [during] + seen

    during, _, stats = asyncio.run(main())
    assert during >= 51
    assert counts["errors"] == 0 and counts["ok"] > 1000
    assert stats["reloads"] == 4
    # Nobody reconnected: 50 workers, the probe, the admin connection and this check.
    assert stats["connections_total"] <= 53


def test_feedback_follows_a_lowered_max_events_after_reload(start_server) -> None:
    """A RELOAD by someone else lowers max_events: a client that learned the
    old limit at HELLO still sends its long list whole, in smaller batches."""
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    host, port = srv.address
    with perennial.Client(host, port) as c:
        assert c.ping()
        before = c.server_info.max_events
        assert before > 500
        cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_events = 500\n")
        with perennial.Client(host, port) as admin:
            admin.reload()
            assert admin.server_info.max_events == 500       # the reloading client's limits are refreshed
        events = [perennial.Event(u % 50 + 1, u % 70 + 1) for u in range(1200)]
        ack = c.feedback(events)
        assert ack.last_seq - ack.first_seq + 1 <= 500      # the last of several batches
        assert c.server_info.max_events == 500
        assert c.stats()["events_accepted"] == 1200



def test_feedback_follows_a_lowered_max_frame_bytes_after_reload(start_server) -> None:
    """A RELOAD by someone else lowers max_frame_bytes (and so max_events):
    a batch sized by the old limits is longer than a frame may be, which the
    server refuses FRAME_TOO_LARGE and closes the connection (review
    finding, helper-91: feedback() raised it, with nothing accepted, and the
    client kept the old limits). Both clients learn the limits on a new
    connection and send the list whole, in smaller batches."""
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    host, port = srv.address
    events = [perennial.Event(u % 50 + 1, u % 70 + 1) for u in range(5000)]
    with perennial.Client(host, port) as c:
        assert c.ping() and c.server_info.max_events == 10000
        cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_frame_bytes = 65536\nmax_events = 2000\n")
        with perennial.Client(host, port) as admin:
            admin.reload()
        # 5,000 events are 145,012 bytes: one batch under the old limits.
        ack = c.feedback(events)
        assert ack.last_seq - ack.first_seq + 1 == 1000     # the last of 2,000, 2,000 and 1,000
        assert c.server_info.max_events == 2000 and c.max_frame_bytes == 65536
        assert c.stats()["events_accepted"] == 5000

    async def main() -> None:
        cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3"))
        async with perennial.AsyncClient(host, port) as a:
            await a.reload()
            assert a.server_info.max_events == 10000
            cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_frame_bytes = 65536\nmax_events = 2000\n")
            with perennial.Client(host, port) as admin:
                admin.reload()
            ack = await a.feedback(events)
            assert ack.last_seq - ack.first_seq + 1 == 1000
            assert a.server_info.max_events == 2000
            assert (await a.stats())["events_accepted"] == 10000
    asyncio.run(main())


def test_feedback_says_what_was_accepted_when_relearning_fails(start_server, monkeypatch) -> None:
    """The HELLO feedback() sends to learn a lowered limit failed with an
    error that said nothing of how far the list got (review finding,
    helper-95); it says accepted_events now."""
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    host, port = srv.address
    with perennial.Client(host, port) as c:
        assert c.ping()
        cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_events = 500\n")
        with perennial.Client(host, port) as admin:
            admin.reload()

        def down() -> None:
            raise perennial.ConnectionError("the server went away")
        monkeypatch.setattr(c, "hello", down)
        with pytest.raises(perennial.ConnectionError) as e:
            c.feedback([perennial.Event(u % 50 + 1, u % 70 + 1) for u in range(1200)])
        assert e.value.accepted_events == 0  # type: ignore[attr-defined]


def test_streamers_follow_a_lowered_max_events_after_reload(start_server, monkeypatch) -> None:
    """The same for the streamers (review finding: every batch of a
    streamer that learned the old limit was refused): the batches refused
    as too large are re-sent split, in stream order, and none is lost."""
    sent: list = []
    build = perennial._commands.feedback
    monkeypatch.setattr(perennial._commands, "feedback", lambda batch: (sent.append(list(batch)), build(batch))[1])
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    host, port = srv.address
    # (3,100: full batches and a last, partial one, which must not overtake
    # a refused batch before it: review finding, helper-34.)
    events = [perennial.Event(u % 50 + 1, u % 70 + 1) for u in range(3100)]
    with perennial.Client(host, port) as c, perennial.Client(host, port) as admin:
        assert c.ping() and c.server_info.max_events > 500
        cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_events = 500\n")
        admin.reload()
        with c.streamer(window=4, batch_size=1000) as s:
            s.send_many(events)
        assert s.refused == [] and s.unacknowledged == []
        assert s.acked_events == s.sent_events == 3100
        # Refused whole (those sent before the first refusal came back),
        # then sent again split, in stream order, and the rest at the new size.
        refused = [b for b in sent if len(b) == 1000]
        assert 1 <= len(refused) <= 3 and sent[:len(refused)] == refused
        assert [e for b in sent[len(refused):] for e in b] == events
        assert all(len(b) <= 500 for b in sent[len(refused):])
        assert c.server_info.max_events == 500
        assert admin.stats()["events_accepted"] == 3100

        cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_events = 300\n")
        admin.reload()

        async def stream() -> perennial.aio.AsyncFeedbackStreamer:
            async with perennial.aio.AsyncClient(host, port) as ac:
                await ac.ping()
                cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_events = 200\n")
                admin.reload()
                async with ac.streamer(window=4, batch_size=300) as a:
                    await a.send_many(events)
                return a
        sent.clear()
        a = asyncio.run(stream())
        assert a.refused == [] and a.acked_events == a.sent_events == 3100
        assert admin.stats()["events_accepted"] == 6200
        # (Batches of 300 were refused until the first refusal came back.)
        refused = [b for b in sent if len(b) == 300]
        assert 1 <= len(refused) <= 5 and sent[:len(refused)] == refused   # (window + 1)
        assert all(len(b) <= 200 for b in sent[len(refused):])
        assert [e for b in sent[len(refused):] for e in b] == events




def test_an_interrupted_resplit_keeps_the_chunks_not_sent(start_server, monkeypatch) -> None:
    """Ctrl-C while the sync streamer re-sends, split, a batch refused after
    a RELOAD lowered max_events: the chunks not yet sent stay for the next
    flush (review finding, helper-45: they were reported refused though
    never sent, and a with block's exit swallowed those refusals)."""
    events = [perennial.Event(u % 9 + 1, u + 1) for u in range(250)]
    build = perennial._commands.feedback
    interrupted = []

    def feedback(batch):
        if batch and batch[0] is events[40] and not interrupted:   # the re-split's second chunk
            interrupted.append(True)
            raise KeyboardInterrupt
        return build(batch)
    monkeypatch.setattr(perennial._commands, "feedback", feedback)
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    with srv.client() as c, srv.client() as admin:
        assert c.ping() and c.server_info.max_events > 100
        cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_events = 40\n")
        admin.reload()
        s = c.streamer(window=1, batch_size=100)
        with pytest.raises(KeyboardInterrupt):
            s.send_many(events)
            s.flush()
        assert interrupted and s.refused == [] and s.unacknowledged == []
        taken = s.stream_length
        s.send_many(events[taken:])
        s.flush()
        assert s.refused == [] and s.unacknowledged == []
        assert s.acked_events == s.stream_length == 250
        assert admin.stats()["events_accepted"] == 250


class _SlowReplies:
    """A TCP proxy to the server that delays every reply chunk by `delay`
    seconds (requests pass at once): replies arrive after the client has
    written on, as on a slow network."""

    def __init__(self, target: tuple, delay: float = 0.05) -> None:
        self.target, self.delay = target, delay
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.address = self.listener.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self.delay), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_a_streamers_last_batch_waits_for_refusals_in_flight(start_server, monkeypatch) -> None:
    """With replies slow to come back, the last (partial) batch, smaller
    than a lowered max_events, was accepted ahead of the refused full batch
    before it (review finding, helper-34): now it waits for the replies in
    flight, so the log holds the stream in order."""
    sent: list = []
    build = perennial._commands.feedback
    monkeypatch.setattr(perennial._commands, "feedback", lambda batch: (sent.append(list(batch)), build(batch))[1])
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    proxy = _SlowReplies(srv.address)
    events = [perennial.Event(u % 50 + 1, u % 70 + 1) for u in range(1300)]
    try:
        with perennial.Client(*proxy.address) as c, srv.client() as admin:
            assert c.ping()
            cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_events = 500\n")
            admin.reload()
            with c.streamer(window=4, batch_size=1000) as s:
                s.send_many(events)
            assert s.refused == [] and s.acked_events == 1300
            assert [len(b) for b in sent] == [1000, 500, 500, 300]
            assert [e for b in sent[1:] for e in b] == events

            async def stream() -> None:
                async with perennial.aio.AsyncClient(*proxy.address) as ac:
                    await ac.ping()
                    cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_events = 200\n")
                    admin.reload()
                    async with ac.streamer(window=4, batch_size=500) as a:
                        await a.send_many(events)
                    assert a.refused == [] and a.acked_events == 1300
            sent.clear()
            asyncio.run(stream())
            assert [len(b) for b in sent] == [500, 500, 200, 200, 100, 200, 200, 100, 200, 100], [len(b) for b in sent]
            assert [e for b in sent[2:] for e in b] == events
    finally:
        proxy.close()


def test_a_streamer_whose_resend_fails_reports_the_batch(start_server) -> None:
    """Review finding (helper-34): a batch refused as too large, whose
    re-send then failed (the server went away), was in neither `refused`
    nor `unacknowledged`: its events vanished from the caller's view."""
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    host, port = srv.address
    c = perennial.Client(host, port, timeout=5.0)
    assert c.ping()
    cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_events = 500\n")
    with perennial.Client(host, port) as admin:
        admin.reload()
    s = c.streamer(window=4, batch_size=1000)
    s.send_many([perennial.Event(u % 50 + 1, u % 70 + 1) for u in range(1000)])   # written, then refused
    time.sleep(0.5)
    assert srv.stop() == 0
    with pytest.raises((perennial.ConnectionError, perennial.ServerError)):
        s.flush()
    assert [(e.batch_offset, e.batch_events) for e in s.refused] == [(0, 1000)], (s.refused, s.unacknowledged)
    assert s.sent_events == 0 and s.acked_events == 0
    c.close()


def _versions(srv) -> dict:
    """The data directory's versions: file name -> its description."""
    snaps = Path(srv.data_dir) / "snapshots"
    import json
    return {p.name: json.loads(p.read_text()) for p in sorted(snaps.glob("snapshot-*.json"))}



def test_a_snapshot_asked_for_after_a_reload_is_kept(start_server) -> None:
    """Review finding (helper-32): the version a SNAPSHOT request got right
    after a RELOAD that changed the scorers was the RELOAD's own, which
    goes once a newer snapshot exists, so the checkpoint one took to roll
    back to vanished at the next snapshot. Now a version a SNAPSHOT request
    was answered with is kept like any other."""
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.7"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    with srv.client() as c:
        c.feedback([perennial.Event(u, i) for u in range(1, 20) for i in range(1, 20)])
        c.snapshot()                                   # (a version holds popularity: it may go)
        _write(cfg, '"cf"', "cf")
        c.reload()
        asked = c.snapshot()
        c.feedback([perennial.Event(30, 1)])
        later = c.snapshot()
        assert later == asked + 1
        c.feedback([perennial.Event(31, 1)])
        c.snapshot()
    versions = _versions(srv)
    kept = {v["id"] for v in versions.values()}
    assert any(v["seq"] == asked for v in versions.values()), versions      # the one asked for is still there
    assert "v%d" % later in kept
    with srv.client() as c:
        c.reload()                                     # (no scorer change: no new snapshot)
    # A RELOAD's snapshot that no request asked for still goes once a newer one exists.
    _write(cfg, '"cf", "popularity"', "cf")
    with srv.client() as c:
        c.reload()
        c.feedback([perennial.Event(32, 1)])
        c.snapshot()
    after = _versions(srv)
    reload_only = [v for v in after.values() if "reload" in v and not v.get("requested")]
    assert reload_only == [], after
    assert any(v["seq"] == asked for v in after.values())



def test_an_acknowledged_reload_survives_a_crash(start_server) -> None:
    """A RELOAD that changes scorers answers once its snapshot is durable
    (review finding, helper-35: killed right after the reply, the server
    recovered from the version before the RELOAD and re-learned the events
    since under the new settings, answering unlike the live server)."""
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.7"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    with srv.client() as c:
        c.feedback([perennial.Event(u % 40 + 1, u % 70 + 1) for u in range(3000)])
        first = c.snapshot()
        seq = c.feedback([perennial.Event(u % 40 + 1, (u * 7) % 70 + 1) for u in range(3000)]).last_seq
        c.recommend(1, k=1, min_applied_seq=seq)
        _write(cfg, '"cf", "popularity", "session-rnn"', "cf")
        c.reload()
        # Durable before the reply: a version at this position noting the reload.
        saved = [v for v in _versions(srv).values() if v["seq"] == seq and "reload" in v]
        assert saved and "session-rnn" in saved[0]["scorers"], _versions(srv)
        live = {u: [(r.item, r.score) for r in c.recommend(u, k=5, scorer="session-rnn", session=[1, 2])] for u in (1, 2, 3)}
        events = c.stats()["session_rnn_events"]
    srv.kill()
    srv.start_again()
    with srv.client() as c:
        assert c.stats()["session_rnn_events"] == events          # not re-learned since v%d
        again = {u: [(r.item, r.score) for r in c.recommend(u, k=5, scorer="session-rnn", session=[1, 2])] for u in (1, 2, 3)}
    assert again == live
    assert first < seq



def test_a_waiting_reload_keeps_its_authorisation_and_limits_alone_never_wait(start_server, tmp_path) -> None:
    """Review findings (helper-36) on RELOADs that wait for their snapshot:
    one that turned admin tokens on was answered UNAUTHORIZED though it had
    applied (its frame was authorised again against the new config); and
    after a failed snapshot, a RELOAD that changed only limits waited for
    the next attempt (up to a minute)."""
    srv = start_server(BASE % ('"cf"', "cf", "0.7"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    admin_token = tmp_path / "admin"
    admin_token.write_text("a-long-admin-token\n")
    with srv.client() as c:                              # no token: none is needed yet
        c.feedback([perennial.Event(u % 40 + 1, u % 70 + 1) for u in range(500)])
        cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.7") + '[auth]\nadmin_token_file = "%s"\n' % admin_token)
        c.reload()                                       # applied, saved, answered OK
        with pytest.raises(perennial.Unauthorized):
            c.reload()                                   # the next one needs the token
    with srv.client(token="a-long-admin-token") as c:
        assert c.stats()["reloads"] == 1
        assert c.recommend(1, k=3, scorer="popularity")
        # (The RELOAD's own version, noted as asked for: a version that stays
        # holds popularity, so the RELOAD below may remove it.)
        assert c.snapshot().version == "v500"
        # A snapshot that fails, then a RELOAD of limits alone: answered at once.
        blocker = Path(srv.data_dir) / "snapshots" / ("snapshot-%d.1.bin.tmp" % 500)
        blocker.mkdir()
        cfg.write_text(BASE % ('"cf"', "cf", "0.7") + '[auth]\nadmin_token_file = "%s"\n' % admin_token)
        with pytest.raises(perennial.ServerError):
            c.reload()                                   # popularity removed; its snapshot fails
        cfg.write_text(BASE % ('"cf"', "cf", "0.7") + '[auth]\nadmin_token_file = "%s"\n[limits]\nmax_items = 500\n' % admin_token)
        start = time.monotonic()
        c.reload()
        assert time.monotonic() - start < 0.5
        assert c.server_info.max_items == 500
        blocker.rmdir()


def test_a_failed_resend_reports_each_chunk_in_its_place(start_server, monkeypatch) -> None:
    """Review finding (helper-36): the chunks of a refused batch whose
    re-send broke off shared one error object, so all read the last chunk's
    place and most of the stream was in no list."""
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    host, port = srv.address
    with perennial.Client(host, port) as c, perennial.Client(host, port) as admin:
        assert c.ping()
        cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_events = 100\n")
        admin.reload()
        s = c.streamer(window=4, batch_size=1000)
        s.send_many([perennial.Event(u % 50 + 1, u % 70 + 1) for u in range(1000)])   # refused whole
        write = s._write
        calls = []

        def breaking(offset, batch, **where):
            calls.append(offset)
            if len(calls) == 3:
                raise perennial.ConnectionError("cut")
            write(offset, batch, **where)
        monkeypatch.setattr(s, "_write", breaking)
        with pytest.raises(perennial.ConnectionError):
            s.flush()
        monkeypatch.undo()
        with pytest.raises(perennial.InvalidArgument):
            s.flush()                                    # the chunks not sent: refused, raised now
        places = sorted((e.batch_offset, e.batch_events) for e in s.refused)
        assert places == [(k, 100) for k in range(200, 1000, 100)], places
        assert s.acked_events == 200 and s.unacknowledged == []



def test_a_cancelled_resend_counts_each_event_once(start_server) -> None:
    """Review finding (helper-37): a cancellation (a wait_for timeout, say)
    while a re-sent chunk was being written reported that chunk refused
    although it was in flight, and its ack counted it again. And (helper-44)
    the chunks not yet re-sent were refused for good: they now stay, and
    the next flush sends them."""
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    host, port = srv.address

    async def run() -> None:
        async with perennial.aio.AsyncClient(host, port) as c, perennial.aio.AsyncClient(host, port) as admin:
            await c.ping()
            cfg.write_text(BASE % ('"cf", "popularity"', "cf", "0.3") + "[limits]\nmax_events = 100\n")
            await admin.reload()
            s = c.streamer(window=4, batch_size=1000)
            await s.send_many([perennial.Event(u % 50 + 1, u % 70 + 1) for u in range(1000)])
            real, calls = c._drain, []

            async def cancelling(conn) -> None:
                await real(conn)
                calls.append(1)
                if len(calls) == 3:
                    raise asyncio.CancelledError()
            c._drain = cancelling
            with pytest.raises(asyncio.CancelledError):
                await s.flush()
            c._drain = real
            await s.flush()
            assert s.refused == [] and s.acked_events == 1000 and s.sent_events == 1000
            assert (await admin.stats())["events_accepted"] == 1000
    asyncio.run(run())


def test_a_reload_whose_snapshot_failed_is_saved_later(start_server) -> None:
    """A RELOAD that removes a scorer is tied to a new version by a snapshot.
    When that snapshot fails, the model still differs from the newest
    version: a SNAPSHOT is not answered from the old one, the version that
    holds the removed scorer is never replaced, the server tries again on
    its own (a second later, with no event to make one due), and a graceful
    stop saves the reloaded model, so the next start-up needs no
    --drop-scorer."""
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.7"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    snaps = Path(srv.data_dir) / "snapshots"
    with srv.client() as c:
        seq = c.feedback([perennial.Event(u % 40 + 1, u % 70 + 1) for u in range(500)]).last_seq
        assert c.snapshot() == seq
        blocker = snaps / ("snapshot-%d.1.bin.tmp" % seq)
        blocker.mkdir()                                  # the distinct version's file cannot be written
        _write(cfg, '"cf"', "cf")                        # popularity removed
        with pytest.raises(perennial.ServerError) as applied:
            c.reload()                                   # applied, but its snapshot failed: said so
        assert applied.value.code_name == "STORAGE" and "the new config is applied" in str(applied.value)
        with pytest.raises(perennial.ServerError) as failed:
            c.snapshot()                                 # not the stale answer `seq`
        assert "snapshot failed" in str(failed.value)
        assert list(_versions(srv)) == ["snapshot-%d.json" % seq]
        assert _versions(srv)["snapshot-%d.json" % seq]["scorers"] == ["cf", "popularity"]
        blocker.rmdir()
        deadline = time.monotonic() + 10                 # the retry, with no request and no event
        while "snapshot-%d.1.json" % seq not in _versions(srv) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _versions(srv)["snapshot-%d.1.json" % seq]["scorers"] == ["cf"]
        assert _versions(srv)["snapshot-%d.json" % seq]["scorers"] == ["cf", "popularity"]
        assert c.snapshot() == seq                       # saved: answered from it

        # Again, popularity back; this time the graceful stop saves it.
        blocker = snaps / ("snapshot-%d.2.bin.tmp" % seq)
        blocker.mkdir()
        _write(cfg, '"cf", "popularity"', "cf")
        with pytest.raises(perennial.ServerError):
            c.reload()
        with pytest.raises(perennial.ServerError):
            c.snapshot()
        blocker.rmdir()
    assert "the next SNAPSHOT request or a graceful stop takes one" in srv.log()
    assert "version v%d still holds it (serve --from-version v%d" % (seq, seq) in srv.log()
    srv.restart()                                        # the stop saves the reloaded model
    versions = _versions(srv)
    # (The first reload's version stays although a newer one exists: a
    # SNAPSHOT request was answered with it above.)
    assert sorted(versions) == ["snapshot-%d.1.json" % seq, "snapshot-%d.2.json" % seq, "snapshot-%d.json" % seq]
    assert versions["snapshot-%d.1.json" % seq]["requested"] is True
    assert versions["snapshot-%d.json" % seq]["scorers"] == ["cf", "popularity"]
    assert versions["snapshot-%d.2.json" % seq]["scorers"] == ["cf", "popularity"]
    assert any("popularity added" in change for change in versions["snapshot-%d.2.json" % seq]["reload"])
    with srv.client() as c:
        assert c.stats()["events_accepted"] == seq and c.recommend(1, k=3)


def test_adjusting_in_place_writes_no_version(start_server) -> None:
    """A RELOAD that only adjusts per-query settings (or the default scorer)
    saves no new version: the learned state is the same."""
    srv = start_server(BASE % ('"cf", "popularity"', "cf", "0.7"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    with srv.client() as c:
        seq = c.feedback([perennial.Event(u % 40 + 1, u % 70 + 1) for u in range(500)]).last_seq
        assert c.snapshot() == seq
        before = _versions(srv)
        _write(cfg, '"cf", "popularity"', "popularity", "0.4")
        c.reload()
        assert c.stats()["reloads"] == 1
        assert c.snapshot() == seq
        assert _versions(srv) == before
    assert "cf adjusted in place (factor_weight 0.7 -> 0.4)" in srv.log()


def test_a_reload_that_adds_a_slow_scorer_measures_the_learner_again(start_server) -> None:
    """The learner queue's allowance follows the learner's cost; a RELOAD
    that changes the scorers forgets the old cost (one batch is allowed
    until the new one is measured), so a cheap past does not let a slow
    scorer's queue run long (review finding: 31,552 queued 1.5 s after)."""
    srv = start_server(BASE % ('"cf"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    with srv.client() as c:
        c.feedback([perennial.Event(u % 300 + 1, u % 700 + 1) for u in range(20000)])
        c.recommend(1, k=1)
        cheap = c.stats()["learner_ns_per_event"]
        assert 0 < cheap and c.stats()["learner_queue_allowance"] == 65536
        _write(cfg, '"cf", "session-rnn"', "cf")
        c.reload()
        after = c.stats()
        assert after["learner_ns_per_event"] == 0 and after["learner_queue_allowance"] == 10000
        c.feedback([perennial.Event(u % 300 + 1, u % 700 + 1) for u in range(2000)])
        c.recommend(1, k=1)
        assert c.stats()["learner_ns_per_event"] > 3 * cheap     # session-rnn's cost, measured afresh


def test_a_reload_waits_for_the_learner_without_stopping_reads(start_server) -> None:
    """A RELOAD needs the learner idle. It used to wait for it on the loop
    thread, so every other request stalled behind the learner's backlog
    (up to `learner.max_lag_seconds`); now the RELOAD's connection waits,
    parked, and new FEEDBACK with it, while reads on other connections are
    answered at once. Once it has run, feedback flows again."""
    srv = start_server(BASE % ('"cf", "session-rnn"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    events = _events(seed=3, count=20000)
    with srv.client() as feeder, srv.client() as reader, srv.client(timeout=60) as admin:
        _build_backlog(feeder, events)
        behind = reader.stats()
        assert behind["events_applied"] < behind["events_accepted"], behind
        _write(cfg, '"cf", "session-rnn"', "cf", "0.5")           # an adjustment: no rebuild
        done = {}

        def reload() -> None:
            admin.reload()
            done["reload"] = time.monotonic()

        t = threading.Thread(target=reload)
        t.start()
        time.sleep(0.05)                                          # the RELOAD is read and parked
        reader.recommend(7, k=5)
        answered = time.monotonic()
        assert reader.stats()["reloads"] == 0, "the read waited behind the RELOAD"
        t.join()
        assert answered < done["reload"]
        assert reader.stats()["events_applied"] == 20000          # it ran with the learner idle
        feeder.feedback(events[:100])                            # and feedback is let in again
        assert reader.stats()["events_accepted"] == 20100


def test_a_reload_whose_connection_closes_while_it_waits_holds_nothing_up(start_server) -> None:
    """A RELOAD parked for the learner holds new FEEDBACK back until it has
    run. Its connection going away meanwhile changes nothing: the parked
    connection reads nothing more, so the RELOAD it sent is carried out
    once the learner is idle, and FEEDBACK flows again."""
    srv = start_server(BASE % ('"cf", "session-rnn"', "cf", "0.3"))
    events = _events(seed=4, count=12000)
    host, port = srv.address
    with srv.client(timeout=30) as feeder:
        _build_backlog(feeder, events)
        with socket.create_connection((host, port)) as raw:
            raw.sendall(struct.pack("<IBBHI", 8, 1, 0x10, 0, 1))   # RELOAD, empty payload
            time.sleep(0.05)
        feeder.feedback(events[:100])
        stats = feeder.stats()
    assert stats["events_accepted"] == 12100
    deadline = time.monotonic() + 30
    while "config reloaded" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.log().count("config reloaded") == 1


def test_a_parked_reload_that_fails_when_it_runs_holds_nothing_up(start_server) -> None:
    """The config is read again when a parked RELOAD runs; refused then
    (here the file was broken meanwhile), the RELOAD reports why and new
    FEEDBACK flows again (review finding: the failed RELOAD kept holding
    every connection's FEEDBACK back)."""
    srv = start_server(BASE % ('"cf", "session-rnn"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    events = _events(seed=5, count=14000)
    with srv.client(timeout=30) as feeder, srv.client(timeout=30) as admin:
        _build_backlog(feeder, events)
        failed = {}

        def reload() -> None:
            try:
                admin.reload()
            except perennial.ServerError as e:
                failed["error"] = str(e)

        t = threading.Thread(target=reload)
        t.start()
        time.sleep(0.05)                                          # parked behind the learner
        cfg.write_text(cfg.read_text() + "factor_wieght = 0.5\n")          # (under BASE's [scorers.cf])
        t.join()
        feeder.feedback(events[:100])
        assert feeder.stats()["events_accepted"] == 14100
    assert "factor_wieght" in failed.get("error", ""), failed


def test_a_sighup_reload_waits_for_the_learner_without_stopping_reads(start_server) -> None:
    """SIGHUP is a RELOAD without a connection. It used to wait for the
    learner on the loop thread, stalling every request behind the
    learner's backlog (up to `learner.max_lag_seconds`); now it waits like
    a parked RELOAD request: reads are answered meanwhile, new FEEDBACK
    waits, and the reload runs once the learner is idle."""
    srv = start_server(BASE % ('"cf", "session-rnn"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    events = _events(seed=6, count=20000)
    with srv.client(timeout=30) as feeder, srv.client() as reader:
        _build_backlog(feeder, events)
        assert reader.stats()["events_applied"] < 20000
        _write(cfg, '"cf", "session-rnn"', "cf", "0.5")           # an adjustment: no rebuild
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)                                          # the signal is handled
        reader.recommend(7, k=5)
        stats = reader.stats()
        assert stats["reloads"] == 0, "the read waited behind the SIGHUP's reload"
        assert stats["events_applied"] < 20000, stats
        feeder.feedback(events[:100])                             # waits for the reload, then goes in
        stats = reader.stats()
        assert stats["reloads"] == 1, stats
        assert stats["events_accepted"] == 20100
    assert srv.log().count("config reloaded") == 1


def test_a_sighup_still_waiting_when_the_server_stops_is_carried_out(start_server) -> None:
    """A SIGHUP waiting for the learner when SIGTERM comes is carried out
    before the stop's snapshot (review finding: it was dropped, the stop's
    snapshot kept the removed scorer, and the next start was refused)."""
    srv = start_server(BASE % ('"cf", "session-rnn"', "cf", "0.3"))
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    events = _events(seed=7, count=40000)
    with srv.client(timeout=30) as feeder, srv.client() as reader:
        feeder.feedback(events[:100])
        feeder.snapshot()                                         # (a version holds session-rnn: it may go)
        _write(cfg, '"cf"', "cf")                                 # session-rnn removed (read at SIGHUP)
        _build_backlog(feeder, events[100:])
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)                                          # the signal is handled
        behind = reader.stats()
    assert behind["events_applied"] < 40000 and behind["reloads"] == 0, behind   # so the SIGHUP waits
    assert srv.stop() == 0, srv.log()
    assert srv.log().count("config reloaded") == 1, srv.log()
    srv.start_again()                                             # with the new config: cf alone
    with srv.client() as c:
        stats = c.stats()
    assert stats["events_accepted"] == 40000
    assert "scorer_loaded_session_rnn" not in stats, stats


def test_a_config_nested_too_deep_is_refused_and_the_server_lives(start_server) -> None:
    """Arrays nested 300,000 deep overflowed the config parser's stack: a
    SIGHUP of such a file killed the running server (review finding,
    helper-51). It is refused like any bad value, through SIGHUP and
    RELOAD alike, and the old config stays."""
    srv = start_server('[scorers]\nload = ["cf"]\n')
    cfg = Path(os.path.dirname(srv.data_dir)) / "perennial.toml"
    cfg.write_text("[scorers]\nload = " + "[" * 300_000 + '"cf"' + "]" * 300_000 + "\n")
    srv.proc.send_signal(signal.SIGHUP)
    with srv.client() as c:
        with pytest.raises(perennial.ServerError) as refused:
            c.reload()
        assert "nested more than 32 deep" in str(refused.value) and len(str(refused.value)) < 1000
        assert srv.proc.poll() is None
        assert c.recommend(1, k=3) is not None
        assert c.stats()["reloads"] == 0
    assert "nested more than 32 deep" in srv.log()
