"""Protocol E1, online variant, run through a Perennial server.

E1 is defined in the project's EVALUATION.md ("E1 — Prequential top-10").
This module runs its *online* variant against a running server, with the
blocking :class:`perennial.Client` only, so that the figures measure the
server exactly as a user runs it::

    python3 -m perennial.e1 --data DIR --host 127.0.0.1 --port 7999 [--json OUT]
                            [--scorer cf] [--limit N]

The server should run with ``config/eval-e1.toml`` (a history bound large
enough that every earlier item of a user is excluded, and a long
``limits.wait_ms``) and must start empty: every event it knows must come from
this run.

What happens:

1. ``DIR/ratings.csv`` (``userId,movieId,rating,timestamp``) is read and
   sorted stably by ``(timestamp, user, item)``: N events (only the first
   ``--limit`` of them when given).
2. Warm-up: events ``[0, N//2)`` are sent as FEEDBACK (kind ``rating``,
   value = the rating, timestamp = the rating's timestamp), in stream order,
   in batches of ``--batch`` (5000), each applied by the server's learner
   before the next is sent (reproducible; ``--overlap-warmup`` streams them).
3. Test phase, for every event with index ``>= N//2`` in order: the event is
   *evaluated* when its rating is >= 4.0, its user has an earlier event and
   its item has an earlier event (tracked here, client-side).  An evaluated
   event asks the server for the user's top 10 (the server excludes the
   user's earlier items itself, and ranks among every item it has seen, which
   is exactly the items with an earlier event); hit and NDCG
   (``1 / log2(rank + 1)``) are recorded.  Then the event is revealed as
   FEEDBACK.

Speed without changing a result: the reveals between two evaluated events go
as one FEEDBACK batch right before the next RECOMMEND, and the requests for
``--window`` evaluated events are pipelined on the one connection.  This is
exact because the server handles one connection's frames strictly in order
(a frame that waits holds back every later one), and a RECOMMEND that follows
the connection's acknowledged FEEDBACK waits until the learner applied it: so
each RECOMMEND sees every earlier event and no later one, as in the
one-round-trip-per-event schedule (``--window 1``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from .client import Client
from .types import Event

__all__ = ["Rating", "load_ratings", "Tally", "E1Online", "run_e1", "result_json",
           "format_summary", "main"]

K = 10
POSITIVE = 4.0

#: One rating event: (user, item, rating, timestamp).
Rating = Tuple[int, int, float, int]


def load_ratings(folder: str, limit: Optional[int] = None) -> List[Rating]:
    """Read ``folder/ratings.csv`` into the E1 stream.

    Rows are sorted stably by ``(timestamp, user, item)`` (ties keep file
    order); with ``limit``, only the first ``limit`` events of the sorted
    stream are returned.  Line endings may be LF or CRLF.

    Raises FileNotFoundError when there is no ratings.csv, ValueError for a
    malformed row.
    """
    path = os.path.join(folder, "ratings.csv")
    rows: List[Rating] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return rows
        for line_no, fields in enumerate(reader, start=2):
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            try:
                rows.append((int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3])))
            except (IndexError, ValueError):
                raise ValueError("%s:%d: expected userId,movieId,rating,timestamp, got %r"
                                 % (path, line_no, fields)) from None
    rows.sort(key=lambda r: (r[3], r[0], r[1]))  # list.sort is stable
    if limit is not None:
        rows = rows[:max(0, limit)]
    return rows


@dataclass
class Tally:
    """Top-10 hits and NDCG over evaluated events."""

    count: int = 0
    hits: int = 0
    ndcg_sum: float = 0.0

    def record(self, rank: Optional[int]) -> None:
        """Record one evaluated event; ``rank`` from 1, None for a miss."""
        self.count += 1
        if rank is not None and rank <= K:
            self.hits += 1
            self.ndcg_sum += 1.0 / math.log2(rank + 1)

    @property
    def hr(self) -> float:
        return self.hits / self.count if self.count else 0.0

    @property
    def ndcg(self) -> float:
        return self.ndcg_sum / self.count if self.count else 0.0

    def json(self) -> Dict[str, Any]:
        return {"hr10": round(self.hr, 6), "ndcg10": round(self.ndcg, 6), "count": self.count}


@dataclass
class E1Online:
    """The outcome of one online E1 run."""

    dataset: str
    scorer: str
    via: str
    events: int
    warmup: int
    tenth_size: int
    total: Tally = field(default_factory=Tally)
    tenths: List[Tally] = field(default_factory=lambda: [Tally() for _ in range(10)])
    warmup_seconds: float = 0.0
    seconds: float = 0.0
    #: The target's rank (1 … 10, None for a miss) per evaluated event, with
    #: the event's stream index: for checks and comparisons.
    ranks: List[Tuple[int, Optional[int]]] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _tenth_size(n: int) -> int:
    return max(1, (n - n // 2) // 10)


def run_e1(client: Client, ratings: Sequence[Rating], *, scorer: str = "cf",
           dataset: str = "", batch_size: int = 5000, window: int = 64,
           overlap_warmup: bool = False,
           progress: Optional[Callable[[str], None]] = None) -> E1Online:
    """Run E1 (online) over ``ratings`` (in stream order) through ``client``'s server.

    The server must be empty when this starts.  ``window`` is how many
    evaluated events' requests are pipelined per round trip (1 = one round
    trip per evaluated event; results are identical).  ``progress`` gets a
    line now and then.

    The warm-up sends one batch of ``batch_size`` events at a time and waits
    until the learner applied it before the next, so the server learns the
    same way on every run.  With ``overlap_warmup`` the batches are streamed
    (8 in flight) while the learner works: faster, but the server may admit
    events ahead of the learner by a timing-dependent amount, and a scorer
    whose learning depends on that (cf's uniform negative sampling reads the
    admitted item count) then gives slightly different figures run to run.

    Raises the client's errors (e.g. TimeoutError, UnknownScorer).
    """
    if window < 1:
        raise ValueError("window must be at least 1")
    n = len(ratings)
    warm = n // 2
    tenth_size = _tenth_size(n)
    out = E1Online(dataset=dataset, scorer=scorer, via="%s:%s" % (client.host, client.port),
                   events=n, warmup=warm, tenth_size=tenth_size)
    say = progress or (lambda s: None)
    t0 = time.perf_counter()

    client.connect()
    max_events = client.max_events
    batch_size = max(1, min(batch_size, max_events))

    seen_users: Set[int] = set()
    seen_items: Set[int] = set()

    def event(r: Rating) -> Event:
        return Event(r[0], r[1], "rating", r[2], r[3])

    # -- warm-up: events [0, N//2) in batches -------------------------------
    if warm and overlap_warmup:
        with client.streamer(window=8, batch_size=batch_size) as s:
            for r in ratings[:warm]:
                s.send(event(r))
    elif warm:
        for start in range(0, warm, batch_size):
            chunk = ratings[start:min(warm, start + batch_size)]
            client.feedback([event(r) for r in chunk])
            # A SCORE after this connection's FEEDBACK waits until the learner
            # applied it: the next batch is admitted only then.
            client.score(chunk[-1][0], [chunk[-1][1]], scorer=scorer)
    for r in ratings[:warm]:
        seen_users.add(r[0])
        seen_items.add(r[1])
    if warm:
        say("warm-up: %d events sent%s in %.1f s"
            % (warm, "" if overlap_warmup else " and applied", time.perf_counter() - t0))
    out.warmup_seconds = time.perf_counter() - t0

    # -- test phase ------------------------------------------------------------
    pipe = client.pipeline()
    # per queued request: None for a FEEDBACK, else (stream index, target item)
    queued: List[Optional[Tuple[int, int]]] = []
    queued_recs = 0
    reveals: List[Event] = []

    def execute() -> None:
        nonlocal queued, queued_recs
        if not queued:
            return
        results = pipe.execute()
        for meta, res in zip(queued, results):
            if isinstance(res, BaseException):
                raise res
            if meta is None:
                continue
            idx, target = meta
            rank: Optional[int] = None
            for pos, rec in enumerate(res[:K]):
                if rec.item == target:
                    rank = pos + 1
                    break
            out.total.record(rank)
            out.tenths[min(9, (idx - warm) // tenth_size)].record(rank)
            out.ranks.append((idx, rank))
        queued = []
        queued_recs = 0

    def queue_reveals() -> None:
        nonlocal reveals
        for start in range(0, len(reveals), max_events):
            pipe.feedback(reveals[start:start + max_events])
            queued.append(None)
        reveals = []

    next_report = warm + tenth_size
    for idx in range(warm, n):
        r = ratings[idx]
        user, item, rating = r[0], r[1], r[2]
        if rating >= POSITIVE and user in seen_users and item in seen_items:
            queue_reveals()  # every earlier event goes before this RECOMMEND
            pipe.recommend(user, k=K, scorer=scorer)
            queued.append((idx, item))
            queued_recs += 1
            if queued_recs >= window:
                execute()
        reveals.append(event(r))
        seen_users.add(user)
        seen_items.add(item)
        if idx + 1 >= next_report or idx + 1 == n:
            next_report += tenth_size
            say("test phase: %d/%d events, %d evaluated, HR@10 %.4f (%.1f s)"
                % (idx + 1 - warm, n - warm, out.total.count + queued_recs, out.total.hr,
                   time.perf_counter() - t0))
    # the last reveals: the server ends up knowing the whole stream, and
    # has learned it when this returns (a SCORE after this connection's
    # FEEDBACK waits until the learner applied it; an acknowledged FEEDBACK
    # is only accepted and logged, so a STATS read at once could still
    # miss the last events)
    queue_reveals()
    execute()
    if n:
        client.score(ratings[-1][0], [ratings[-1][1]], scorer=scorer)
    out.seconds = time.perf_counter() - t0
    return out


def result_json(res: E1Online, settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The run as EVALUATION.md's report object."""
    entry = res.total.json()
    entry["tenths"] = [t.json() for t in res.tenths]
    entry["seconds"] = round(res.seconds, 3)
    entry["warmup_seconds"] = round(res.warmup_seconds, 3)
    entry["events_per_second"] = round(res.events_per_second, 1)
    s: Dict[str, Any] = {"via": res.via}
    s.update(settings or {})
    return {"protocol": "e1", "dataset": res.dataset, "events": res.events, "settings": s,
            "results": {"%s/online" % res.scorer: entry}}


def format_summary(res: E1Online) -> str:
    lines = [
        "E1 online via %s  dataset %s  scorer %s" % (res.via, res.dataset, res.scorer),
        "events %d  warm-up %d  test %d  tenth %d events"
        % (res.events, res.warmup, res.events - res.warmup, res.tenth_size),
        "HR@10 %.4f  NDCG@10 %.4f  count %d"
        % (res.total.hr, res.total.ndcg, res.total.count),
        "tenth   HR@10   NDCG@10   count",
    ]
    for i, t in enumerate(res.tenths):
        lines.append("%5d  %6.4f   %7.4f  %6d" % (i + 1, t.hr, t.ndcg, t.count))
    lines.append("elapsed %.1f s (warm-up %.1f s)  %.0f events/s"
                 % (res.seconds, res.warmup_seconds, res.events_per_second))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python3 -m perennial.e1",
        description="Run protocol E1 (online variant) through a running Perennial server.")
    ap.add_argument("--data", required=True, help="MovieLens-shaped folder with ratings.csv")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7878)
    ap.add_argument("--scorer", default="cf", help="scorer to ask for (default: cf)")
    ap.add_argument("--json", metavar="OUT", help="also write the report object to OUT")
    ap.add_argument("--limit", type=int, help="use only the first N events of the stream")
    ap.add_argument("--window", type=int, default=64,
                    help="evaluated events pipelined per round trip (default 64; "
                         "1 = one round trip each; results are the same)")
    ap.add_argument("--batch", type=int, default=5000, help="warm-up FEEDBACK batch size")
    ap.add_argument("--overlap-warmup", action="store_true",
                    help="stream the warm-up batches without waiting for each to be applied "
                         "(faster; figures may vary slightly run to run)")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds to wait for a reply (default 300)")
    ap.add_argument("--token", help="the server's token, if it has one")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--force", action="store_true",
                    help="run on a server that has already accepted events (its figures then "
                         "are not E1's: the model knows more than the protocol's stream)")
    args = ap.parse_args(argv)
    for name, v in (("--limit", args.limit), ("--window", args.window), ("--batch", args.batch)):
        if v is not None and v < 1:
            ap.error("%s must be at least 1, not %d" % (name, v))
    if not args.timeout > 0:
        ap.error("--timeout must be above 0")

    folder = args.data.rstrip("/") or args.data
    ratings = load_ratings(folder, args.limit)
    dataset = os.path.basename(os.path.abspath(folder))
    progress = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    with Client(args.host, args.port, timeout=args.timeout, token=args.token,
                client_name="perennial-e1") as c:
        # E1 starts from an empty model: on a server that learned events
        # already (a second run, say) the stream's users have seen its
        # items, which are then excluded, and the figures came out as
        # zeros without a word (review finding).
        accepted = c.stats().get("events_accepted", 0)
        if accepted and not args.force:
            print("the server at %s:%s has already accepted %d events: E1 needs an empty one "
                  "(start it with a fresh --data-dir), or pass --force" % (args.host, args.port, accepted),
                  file=sys.stderr)
            return 2
        res = run_e1(c, ratings, scorer=args.scorer, dataset=dataset, batch_size=args.batch,
                     window=args.window, overlap_warmup=args.overlap_warmup,
                     progress=progress)
    print(format_summary(res))
    if args.json:
        settings: Dict[str, Any] = {"scorer": args.scorer, "k": K, "window": args.window,
                                    "warmup_batch": args.batch,
                                    "overlap_warmup": args.overlap_warmup}
        if args.limit is not None:
            settings["limit"] = args.limit
        with open(args.json, "w") as f:
            json.dump(result_json(res, settings), f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
