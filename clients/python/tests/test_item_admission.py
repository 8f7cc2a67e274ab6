"""`[lifelong] item_min_occurrences` over the wire: an item id seen in fewer
events than that is unknown (its events train a shared fallback item that
is never recommended) until it is seen often enough or upserted, and a
restart that replays the log admits the same ids."""

from __future__ import annotations

import perennial

CONFIG = '[lifelong]\nitem_min_occurrences = 3\n[snapshot]\nevery_events = 0\n'


def test_rare_items_wait_for_a_row_of_their_own(start_server) -> None:
    srv = start_server(CONFIG)
    events = [perennial.Event(u, 1 + (u * 3 + r) % 20) for r in range(15) for u in range(1, 13)]
    events += [perennial.Event(1 + k % 12, 101 + k % 30) for k in range(75)]   # 101-115 thrice, 116-130 twice
    with srv.client() as c:
        c.feedback(events)
        c.upsert_item(500, "a catalogue entry")
        known = {s.item: s.known for s in c.score(1, list(range(101, 131)) + [500])}
        assert [i for i in range(101, 131) if known[i]] == list(range(101, 116))
        assert known[500]
        st = c.stats()
        assert st["lifelong_item_min_occurrences"] == 3
        # Each id's first two events went to the fallback.
        assert st["lifelong_item_shared_events"] == 2 * 20 + 2 * 15 + 2 * 15
        for scorer in ("cf", "popularity"):
            for user in (1, 5, 777):
                items = [r.item for r in c.recommend(user, k=100, scorer=scorer)]
                assert items and 2**63 not in items and not set(items) & set(range(116, 131))
        before = [(r.item, r.score) for r in c.recommend(5, k=20)]
    srv.kill()
    srv.start_again()
    with srv.client() as c:
        assert c.stats()["lifelong_item_shared_events"] == st["lifelong_item_shared_events"]
        assert [(r.item, r.score) for r in c.recommend(5, k=20)] == before
