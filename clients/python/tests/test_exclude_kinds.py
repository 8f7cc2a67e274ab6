"""``[history] exclude_kinds`` against a real server: a shop shows viewed
products again but never a bought one; the rule changes on a RELOAD, and
a server killed with kill -9 (replaying its log) and one restarted from a
snapshot keep each entry's kinds."""

from __future__ import annotations

import signal
from pathlib import Path

import perennial
from perennial import Event
from test_crash_recovery import _launch

CONFIG = """[snapshot]
every_events = 0
[scorers]
load = ["popularity", "cf"]
[history]
exclude_kinds = %s
"""


def _feed(c: perennial.Client) -> None:
    # Items 1..20, popular in that order; then user 7 views 1, buys 2, clicks 3.
    events = [Event(100 + u, item) for item in range(1, 21) for u in range(40 - item)]
    c.feedback(events)
    c.feedback([Event(7, 1, "view"), Event(7, 2, "purchase"), Event(7, 3, "click")])


def _answer(c: perennial.Client) -> list:
    return [r.item for r in c.recommend(7, k=5, scorer="popularity")]


def test_only_purchases_are_excluded_and_the_rule_reloads_and_survives_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    proc, port = _launch(data_dir, "everysec", CONFIG % '["purchase"]')
    try:
        with perennial.Client("127.0.0.1", port) as c:
            _feed(c)
            assert _answer(c) == [1, 3, 4, 5, 6]
            cf = [r.item for r in c.recommend(7, k=30, scorer="cf")]
            assert 2 not in cf and 1 in cf
        # Killed: the replay of the log rebuilds the kinds.
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc, port = _launch(data_dir, "everysec", CONFIG % '["purchase"]')
        with perennial.Client("127.0.0.1", port) as c:
            assert _answer(c) == [1, 3, 4, 5, 6]
            # RELOAD: clicks too, then the default (every kind).
            (tmp_path / "perennial.toml").write_text(CONFIG % '["purchase", "click"]')
            c.reload()
            assert _answer(c) == [1, 4, 5, 6, 7]
            (tmp_path / "perennial.toml").write_text(CONFIG % '["view", "click", "purchase", "rating"]')
            c.reload()
            assert _answer(c) == [4, 5, 6, 7, 8]
            (tmp_path / "perennial.toml").write_text(CONFIG % '["purchase"]')
            c.reload()
            # A snapshot, then a graceful stop and a start from it.
            c.snapshot()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        proc, port = _launch(data_dir, "everysec", CONFIG % '["purchase"]')
        with perennial.Client("127.0.0.1", port) as c:
            assert c.stats()["events_applied"] == sum(40 - i for i in range(1, 21)) + 3
            assert _answer(c) == [1, 3, 4, 5, 6]
            # A typo in the reloaded config is refused, naming the line.
            (tmp_path / "perennial.toml").write_text(CONFIG % '["purchased"]')
            try:
                c.reload()
                raise AssertionError("a config naming an unknown kind was accepted")
            except perennial.InvalidArgument as e:
                assert "perennial.toml:6" in str(e) and '"purchased"' in str(e), e
            assert _answer(c) == [1, 3, 4, 5, 6]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_a_heavy_user_gets_none_of_their_items_back_under_the_defaults(start_server) -> None:
    """A user with thousands of items (MovieLens has users with 2,698) is
    never recommended one of them under the bundled defaults (review
    finding, helper-71: with the old bound of 1,000 items per user, users
    with more got up to 10 of their own items back in a top 10)."""
    srv = start_server(None)
    with srv.client() as c:
        # 4,000 items; the heavy user has 3,000 of them, the most popular first.
        crowd = [Event(10_000 + u, item) for item in range(1, 201) for u in range(3)]
        c.feedback(crowd)
        mine = list(range(1, 3001))
        for k in range(0, len(mine), 1000):
            c.feedback([Event(7, item) for item in mine[k:k + 1000]])
        c.feedback([Event(8, item) for item in range(3001, 4001)])
        for scorer in ("cf", "popularity"):
            got = [r.item for r in c.recommend(7, k=100, scorer=scorer)]
            assert len(got) == 100 and not set(got) & set(mine), (scorer, sorted(set(got) & set(mine))[:10])
