"""Type-checked by ``mypy --strict`` in scripts/test.sh, never run.

Each ``type: ignore`` below must be needed: under --strict an unneeded one is
an error, so the check fails if the blocking Client's methods lose their
signatures to its lock decorator (review finding, helper-89: mypy saw every
one as ``(*Any, **Any) -> Any``), or if perennial.ConnectionError and
TimeoutError stop being exported to type checkers.
"""

import perennial


def misuse(c: perennial.Client) -> None:
    c.recommend("user-1")  # type: ignore[arg-type]
    c.recommend(1, k="ten")  # type: ignore[arg-type]
    wrong: str = c.recommend(1)  # type: ignore[assignment]
    count: int = c.stats()  # type: ignore[assignment]
    streamer = c.streamer()
    streamer.send(perennial.Event(1, 2), 3)  # type: ignore[call-arg]


def handled(c: perennial.Client) -> int:
    try:
        return len(c.recommend(1, k=5))
    except (perennial.ConnectionError, perennial.TimeoutError):
        return 0
