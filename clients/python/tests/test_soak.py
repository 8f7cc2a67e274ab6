"""Soak: 1,000 connections mixing RECOMMEND and FEEDBACK against one server
for ``PERENNIAL_SOAK_SECONDS`` (60 in CI; the full run uses 600). No request
may fail, and the server's resident memory may grow by less than 5% between
the end of the first third (the first minute in the full run) and the end.
The id space is fixed, so the model's size settles; the history bound is
small so that it settles quickly. Snapshots are taken every 100,000 events,
so the run covers many of them (the first one leaves about 10 MB of heap
with glibc's allocator; later ones reuse it)."""

from __future__ import annotations

import asyncio
import os
import random
import time

import perennial

SECONDS = float(os.environ.get("PERENNIAL_SOAK_SECONDS", "60"))
CONNECTIONS = 1000


def _rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_soak_mixed_load(start_server) -> None:
    srv = start_server("[history]\nmax_items_per_user = 50\n[limits]\nmax_connections = 2000\n[snapshot]\nevery_events = 100000\n")
    host, port = srv.address
    counts = {"recommend": 0, "feedback": 0, "errors": 0}
    deadline = time.monotonic() + SECONDS
    settle = min(60.0, SECONDS / 3)
    rss = {}

    async def worker(i: int) -> None:
        rng = random.Random(i)
        c = perennial.AsyncClient(host, port)
        await c.connect()
        try:
            while time.monotonic() < deadline:
                try:
                    if rng.random() < 0.5:
                        await c.recommend(rng.randint(1, 5000), k=10)
                        counts["recommend"] += 1
                    else:
                        await c.feedback([perennial.Event(rng.randint(1, 5000), rng.randint(1, 2000), "click")
                                          for _ in range(rng.randint(1, 20))])
                        counts["feedback"] += 1
                except perennial.PerennialError:
                    counts["errors"] += 1
                await asyncio.sleep(rng.uniform(0, 0.05))
        finally:
            await c.close()

    async def watch() -> None:
        start = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            if "settled" not in rss and time.monotonic() - start >= settle:
                rss["settled"] = _rss_kb(srv.proc.pid)
        rss["end"] = _rss_kb(srv.proc.pid)

    async def main() -> None:
        await asyncio.gather(watch(), *(worker(i) for i in range(CONNECTIONS)))

    asyncio.run(main())
    with srv.client() as c:
        st = c.stats()
    growth = (rss["end"] - rss["settled"]) / rss["settled"]
    print("soak: %.0f s, %d connections, %d recommends, %d feedback batches, %d errors, "
          "RSS %d kB after %.0f s -> %d kB at the end (%+.1f%%), server errors_total %d"
          % (SECONDS, CONNECTIONS, counts["recommend"], counts["feedback"], counts["errors"],
             rss["settled"], settle, rss["end"], growth * 100, st["errors_total"]))
    assert counts["errors"] == 0
    assert st["errors_total"] == 0
    assert counts["recommend"] > 0 and counts["feedback"] > 0
    assert growth < 0.05
