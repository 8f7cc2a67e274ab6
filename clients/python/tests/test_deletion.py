"""DELETE_ITEMS and DELETE_USERS against a real server: a deleted item is
never recommended again and SCORE calls it unknown, even after later events
name it (until an UPSERT_ITEM brings it back); a deleted user is a
stranger; a deletion waits for the learner to apply what came before it
without stopping reads; and a server killed with kill -9 replays its log
to a model that answers exactly as the live one did, the deletions
included. Bad requests get clear errors."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import List

import pytest

import perennial
from test_crash_recovery import _events, _launch
from test_item_expiry import _answers  # (cf, popularity, session-rnn, gan: as loaded here)

SCORERS = ["cf", "popularity", "session-rnn", "gan"]
CONFIG = """
[scorers]
load = ["cf", "popularity", "session-rnn", "gan"]
[snapshot]
every_events = 0
"""


def test_deleted_items_and_users_are_forgotten_and_a_replay_forgets_them_too(tmp_path: Path) -> None:
    events = _events(25_000)
    first, later = events[:20_000], events[20_000:]
    data_dir = tmp_path / "data"
    proc, port = _launch(data_dir, "always", CONFIG)
    popular = [i for i, _ in collections.Counter(e.item for e in first).most_common(30)]
    users = sorted({e.user for e in first[-3000:]})[:8]
    with perennial.Client("127.0.0.1", port) as c:
        for start in range(0, len(first), 1000):
            c.feedback(first[start:start + 1000])
        before = {r.item for name in SCORERS for u in users for r in c.recommend(u, k=20, scorer=name)}
        assert before & set(popular), "the test needs the deleted items to be recommended before"
        # (This connection's reads waited for its feedback, so the learner
        # is idle here; the next test sends a deletion while it is behind.)
        assert c.delete_items(popular + [10**12]) == 30
        st = c.stats()
        assert st["items_deleted"] == 30 and st["events_applied"] == len(first)
        assert c.delete_items(popular[:5]) == 0                    # already gone
        for name in SCORERS:
            for u in users + [999_999]:                                # known users and a new one
                assert not {r.item for r in c.recommend(u, k=50, scorer=name)} & set(popular), name
        assert not any(s.known for s in c.score(users[0], popular))
        # Users: the three heaviest so far. Deleted, each is a stranger.
        heavy = [u for u, _ in collections.Counter(e.user for e in first).most_common(3)]
        held = c.stats()["users"]
        assert c.delete_users(heavy + [10**12]) == 3
        st = c.stats()
        assert st["users_deleted"] == 3 and st["users"] == held - 3
        for name in SCORERS:
            stranger = c.recommend(777_777, k=10, scorer=name)
            for u in heavy:
                assert c.recommend(u, k=10, scorer=name) == stranger, name
        # Later events: some name deleted ids again, which stay deleted.
        for start in range(0, len(later), 1000):
            c.feedback(later[start:start + 1000])
        c.recommend(1, k=1)                                            # waits until they are applied
        st = c.stats()
        assert not any(s.known for s in c.score(users[0], popular))
        for name in SCORERS:
            assert not {r.item for r in c.recommend(users[0], k=50, scorer=name)} & set(popular), name
    named_again = [e for e in later if e.item in set(popular)]
    assert named_again, "the test needs later events that name deleted ids"
    assert st["lifelong_events_on_deleted_items"] == len(named_again)
    assert st["lifelong_deleted_items_remembered"] == 30
    assert {e.user for e in later} & set(heavy), "the test needs a deleted user to come back"
    live = _answers(port, users + heavy, popular)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc, port = _launch(data_dir, "always", CONFIG)
    with perennial.Client("127.0.0.1", port) as c:
        again = c.stats()
        known = {s.item for s in c.score(users[0], popular) if s.known}
    assert again["events_applied"] == len(events)
    for key in ("items", "item_rows", "users", "user_rows"):
        assert again[key] == st[key], key
    assert known == set() and again["lifelong_events_on_deleted_items"] == len(named_again)
    replayed = _answers(port, users + heavy, popular)
    # An upsert brings a deleted id back on purpose, as a new item.
    with perennial.Client("127.0.0.1", port) as c:
        assert c.upsert_item(popular[0], "back in stock").created
        c.feedback([perennial.Event(users[0], popular[0])])
        assert [s.known for s in c.score(users[1], popular[:2])] == [True, False]
        assert c.stats()["lifelong_deleted_items_remembered"] == 29
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert replayed == live


def test_a_deletion_waits_for_the_learner_without_stopping_reads(start_server) -> None:
    """Forgetting an item needs the learner idle. The DELETE_ITEMS waits
    for it parked, new FEEDBACK waits with it, and reads on other
    connections are answered meanwhile."""
    srv = start_server('[snapshot]\nevery_events = 0\n[scorers]\nload = ["cf", "session-rnn"]\n')
    rng = random.Random(8)
    events = [perennial.Event(rng.randint(1, 500), rng.randint(1, 2000)) for _ in range(20_000)]
    with srv.client() as feeder, srv.client() as reader, srv.client(timeout=60) as deleter, \
            srv.client(timeout=60) as late:
        feeder.feedback(events[:2000])
        feeder.recommend(1, k=1)
        for k in range(2000, len(events), 1000):
            feeder.feedback(events[k:k + 1000])
        behind = reader.stats()
        assert behind["events_applied"] < behind["events_accepted"], behind
        done = {}

        def delete() -> None:
            done["deleted"] = deleter.delete_items([events[0].item, events[1].item])
            done["at"] = time.monotonic()

        def feed_late() -> None:
            done["ack"] = late.feedback(events[:100])
            done["acked_at"] = time.monotonic()

        t = threading.Thread(target=delete)
        t.start()
        time.sleep(0.05)                                               # read and parked
        f = threading.Thread(target=feed_late)                        # FEEDBACK sent while it waits...
        f.start()
        reader.recommend(7, k=5)
        answered = time.monotonic()
        assert reader.stats()["items_deleted"] == 0, "the read waited behind the deletion"
        t.join()
        f.join()
        assert answered < done["at"]
        assert done["deleted"] == len({events[0].item, events[1].item})
        # ...waited for it: accepted after the deletion, numbered after every
        # earlier event. (Told by the server, not by the two threads' clocks,
        # which are read after each reply and may be read in either order:
        # its events naming the deleted items came after the deletion.)
        assert done["ack"].first_seq == 20_001
        st = reader.stats()
        assert st["events_accepted"] == 20_100
        gone = {events[0].item, events[1].item}
        assert st["lifelong_events_on_deleted_items"] == sum(1 for e in events[:100] if e.item in gone) >= 2


def test_a_sighup_while_a_deletions_purge_runs_waits_for_it(start_server) -> None:
    """A deletion's purge of the co-occurrence tables runs on the learner
    after the DELETE_ITEMS is answered (at 30,000 items, a millisecond or
    two). A SIGHUP meanwhile reloaded at once, swapping scorers under the
    purge, and the server stopped on a failed precondition (review finding,
    helper-96); its reload now waits for the purge, as a RELOAD does."""
    srv = start_server("[snapshot]\nevery_events = 0\n")
    with srv.client() as c:
        c.feedback([perennial.Event(1 + i % 2000, 1 + (i * 7919) % 30000) for i in range(120_000)])
        c.recommend(1, k=1)     # (read-your-writes: all learned)
        for k in range(5):
            c.delete_items(range(1 + k * 50, 51 + k * 50))
            srv.proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)
            assert srv.proc.poll() is None, srv.log()
            assert c.ping()
        st = c.stats()
        assert st["reloads"] == 5 and st["learner_jobs_pending"] == 0, st
    assert "precondition" not in srv.log()


def test_bad_deletions_get_clear_errors(client: perennial.Client, server) -> None:
    with pytest.raises(perennial.InvalidArgument, match="item"):
        client.delete_items([5, 0])
    with pytest.raises(ValueError, match="at least one"):
        client.delete_items([])
    with pytest.raises(perennial.InvalidArgument, match="users"):
        client.delete_users([2**63])
    with pytest.raises(ValueError, match="at least one"):
        client.delete_users([])
    with pytest.raises(TypeError):
        client.delete_items(7)  # type: ignore[arg-type]
    # Over max_items ids in one request: refused by name, connection intact.
    with pytest.raises(perennial.InvalidArgument, match="limit"):
        client.delete_items(range(1, 1100))
    assert client.ping()
    # Ids the server never held are ignored; pipelines and asyncio work too.
    results = client.pipeline().delete_items([10**15]).delete_users([10**15]).ping().execute()
    assert results == [0, 0, True]

    async def run() -> int:
        async with perennial.AsyncClient(*server) as c:
            return await c.delete_items([10**15 + 1])
    assert asyncio.run(run()) == 0


def test_deletions_survive_snapshots_stops_and_rollbacks(start_server) -> None:
    """A deletion changes the model without a sequence number of its own:
    SNAPSHOT then writes a version that holds it (not the old one again),
    a graceful stop after one takes a snapshot, and a rollback to a version
    from before the deletion keeps the deleted ids deleted (review finding:
    SNAPSHOT answered with the old version, and a rollback to it brought
    deleted items back)."""
    srv = start_server('[snapshot]\nevery_events = 0\n[scorers]\nload = ["cf", "popularity"]\n')
    rng = random.Random(12)
    events = [perennial.Event(rng.randint(1, 80), rng.randint(1, 300)) for _ in range(4000)]
    by_count = [i for i, _ in collections.Counter(e.item for e in events).most_common()]
    popular, other = by_count[0], by_count[1]
    heavy = collections.Counter(e.user for e in events).most_common(1)[0][0]
    snapshots = os.path.join(srv.data_dir, "snapshots")

    def written(seq: int) -> float:
        return os.path.getmtime(os.path.join(snapshots, "snapshot-%d.bin" % seq))

    with srv.client() as c:
        c.feedback(events[:2000])
        older = c.snapshot()
        c.feedback(events[2000:] + [perennial.Event(1, 999_999)])     # an item the older version lacks
        newer = c.snapshot()
        before = written(newer)
        assert c.snapshot() == newer and written(newer) == before   # nothing changed: answered from it
        time.sleep(0.02)
        assert c.delete_items([popular]) == 1 and c.delete_users([heavy]) == 1
        assert c.snapshot() == newer and written(newer) > before    # the same position, written again

    def deleted(items: List[int]) -> None:
        with srv.client() as c:
            assert not any(s.known for s in c.score(1, items))
            assert c.recommend(heavy, k=10) == c.recommend(123_456, k=10)

    stops = srv.log().count("snapshot (version")
    srv.restart()                   # nothing changed since the SNAPSHOT: the stop writes none
    assert srv.log().count("snapshot (version") == stops
    deleted([popular])
    with srv.client() as c:
        assert c.delete_items([other, 999_999, 888_888]) == 2       # 888,888: never seen
    srv.restart()                   # a deletion since: the stop writes one
    assert srv.log().count("snapshot (version") == stops + 1
    deleted([popular, other])
    # Back to the version from before the deletions: they are carried over.
    srv.args = srv.args + ["--from-version", "v%d" % older]
    srv.restart()
    assert "3 deletion(s) made since are carried over" in srv.log()
    deleted([popular, other, 999_999])
    # Remembered as deleted, though the older version never held 999,999:
    # a late event does not bring it back (review finding, helper-61).
    # An id the live server never held is not remembered (helper-62: it
    # could push real deletions out of the memory).
    with srv.client() as c:
        assert c.stats()["lifelong_deleted_items_remembered"] == 3          # popular, other, 999,999
        c.feedback([perennial.Event(2, 999_999), perennial.Event(3, other), perennial.Event(4, 888_888)])
        assert [s.known for s in c.score(1, [999_999, other, 888_888])] == [False, False, True]
        assert c.stats()["lifelong_events_on_deleted_items"] == 2


def test_a_deletion_replayed_after_a_crash_is_still_owed_a_snapshot(tmp_path: Path) -> None:
    """Start-up replays a deletion logged after the newest snapshot; that
    snapshot still holds what was deleted, so SNAPSHOT must write a new
    one (review finding: after a restart it answered with the old one)."""
    data_dir = tmp_path / "data"
    proc, port = _launch(data_dir, "always", '[snapshot]\nevery_events = 0\n[scorers]\nload = ["cf"]\n')
    rng = random.Random(4)
    events = [perennial.Event(rng.randint(1, 50), rng.randint(1, 200)) for _ in range(3000)]
    with perennial.Client("127.0.0.1", port) as c:
        c.feedback(events)
        seq = c.snapshot()
        path = data_dir / "snapshots" / ("snapshot-%d.bin" % seq)
        before = path.stat().st_mtime_ns
        assert c.delete_users([events[0].user]) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc, port = _launch(data_dir, "always", '[snapshot]\nevery_events = 0\n[scorers]\nload = ["cf"]\n')
    with perennial.Client("127.0.0.1", port) as c:
        assert c.stats()["users"] == len({e.user for e in events}) - 1
        assert c.snapshot() == seq
        assert path.stat().st_mtime_ns > before
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
