"""DELETE_ITEMS against a real server: a deleted item is never recommended
again and SCORE calls it unknown; the deletion waits for the learner to
apply what came before it without stopping reads; and a server killed with
kill -9 replays its log to a model that answers exactly as the live one did,
the deletion included. Bad requests get clear errors."""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import threading
import time
from pathlib import Path

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


def test_deleted_items_are_never_recommended_and_a_replay_deletes_them_too(tmp_path: Path) -> None:
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
        # Sent while the learner may still be behind: it is carried out once
        # every earlier event is applied.
        assert c.delete_items(popular + [10**12]) == 30
        st = c.stats()
        assert st["items_deleted"] == 30 and st["events_applied"] == len(first)
        assert c.delete_items(popular[:5]) == 0                    # already gone
        for name in SCORERS:
            for u in users + [999_999]:                                # known users and a new one
                assert not {r.item for r in c.recommend(u, k=50, scorer=name)} & set(popular), name
        assert not any(s.known for s in c.score(users[0], popular))
        # Later events: some name deleted ids again, which come back as new items.
        for start in range(0, len(later), 1000):
            c.feedback(later[start:start + 1000])
        c.recommend(1, k=1)                                            # waits until they are applied
        st = c.stats()
    returned = {e.item for e in later} & set(popular)
    assert returned, "the test needs some deleted ids to come back"
    live = _answers(port, users, popular)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc, port = _launch(data_dir, "always", CONFIG)
    with perennial.Client("127.0.0.1", port) as c:
        again = c.stats()
        known = {s.item for s in c.score(users[0], popular) if s.known}
    assert again["events_applied"] == len(events)
    assert again["items"] == st["items"] and again["item_rows"] == st["item_rows"]
    assert known == returned
    replayed = _answers(port, users, popular)
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
    with srv.client() as feeder, srv.client() as reader, srv.client(timeout=60) as deleter:
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

        t = threading.Thread(target=delete)
        t.start()
        time.sleep(0.05)                                               # read and parked
        reader.recommend(7, k=5)
        answered = time.monotonic()
        assert reader.stats()["items_deleted"] == 0, "the read waited behind the deletion"
        t.join()
        assert answered < done["at"]
        assert done["deleted"] == len({events[0].item, events[1].item})
        assert reader.stats()["events_applied"] == 20_000
        feeder.feedback(events[:100])                                 # and feedback is let in again
        assert reader.stats()["events_accepted"] == 20_100


def test_bad_deletions_get_clear_errors(client: perennial.Client, server) -> None:
    with pytest.raises(perennial.InvalidArgument, match="item"):
        client.delete_items([5, 0])
    with pytest.raises(ValueError, match="at least one"):
        client.delete_items([])
    with pytest.raises(TypeError):
        client.delete_items(7)  # type: ignore[arg-type]
    # Over max_items ids in one request: refused by name, connection intact.
    with pytest.raises(perennial.InvalidArgument, match="limit"):
        client.delete_items(range(1, 1100))
    assert client.ping()
    # Ids the server never held are ignored; pipelines and asyncio work too.
    results = client.pipeline().delete_items([10**15]).ping().execute()
    assert results == [0, True]

    async def run() -> int:
        async with perennial.AsyncClient(*server) as c:
            return await c.delete_items([10**15 + 1])
    assert asyncio.run(run()) == 0
