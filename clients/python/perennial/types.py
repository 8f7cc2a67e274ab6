"""Value types the Perennial clients take and return."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from .protocol import EVENT_KINDS


def as_int(x: Any, what: str) -> int:
    """``x`` as a Python int: an int, or any integer type that says it is
    one (``__index__``: numpy's integers).  bool, float and str are refused
    (TypeError naming ``what``)."""
    if isinstance(x, bool):
        raise TypeError("%s must be an int, not %r" % (what, x))
    if isinstance(x, int):
        return int(x)
    try:
        return operator.index(x)
    except TypeError:
        raise TypeError("%s must be an int, not %r" % (what, x)) from None

__all__ = ["Event", "EventLike", "Recommendation", "Score", "FeedbackAck", "UpsertResult",
           "ServerInfo", "Snapshot", "to_event"]


@dataclass(frozen=True)
class Event:
    """One feedback event: ``user`` did ``kind`` on ``item``.

    Args:
        user: the user id (1 … 2^63−1).
        item: the item id (1 … 2^63−1).
        kind: ``"view"``, ``"click"`` (default), ``"purchase"`` or ``"rating"``.
        value: for a rating, the rating (0 … 10), required; for the other
            kinds an optional weight (0 … 1000, None or 0 meaning 1).
        timestamp: Unix seconds, an int or a float such as ``time.time()``
            (the fraction is dropped); None (0 on the wire) lets the server use
            its clock.

    Raises:
        ValueError: for an unknown kind, a rating without a value, an id
            outside 0 ... 2^64-1, or a negative or NaN timestamp.
        TypeError: for an id, value or timestamp that is not a number.

    Values the server would refuse (NaN, out of range, id 0) are not checked
    here: the server refuses the whole batch with ``InvalidEvent``.
    """

    user: int
    item: int
    kind: str = "click"
    value: Optional[float] = None
    timestamp: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError("unknown event kind %r (expected one of %s)"
                             % (self.kind, ", ".join(EVENT_KINDS)))
        if self.kind == "rating" and self.value is None:
            raise ValueError("a rating event needs a value (0 ... 10)")
        # (frozen: the converted ids are set through object.__setattr__)
        object.__setattr__(self, "user", as_int(self.user, "Event.user"))
        object.__setattr__(self, "item", as_int(self.item, "Event.item"))
        # Anything that converts to a number is taken (numpy scalars, a
        # Decimal from a database, a 0-d array); bools and text are not.
        if self.value is not None:
            v = _number(self.value, "Event.value", "a number")
            # (The wire holds a 32-bit float: a finite value beyond it could
            # not be encoded, and failed mid-send, after earlier batches of
            # the same call had gone; review finding. NaN and infinities go
            # to the server, which refuses them naming the event.)
            if math.isfinite(v) and abs(v) > _FLOAT32_MAX:
                raise ValueError("Event.value = %r is beyond a 32-bit float (at most %.7g in size)" % (self.value, _FLOAT32_MAX))
        if self.timestamp is not None:
            t = _number(self.timestamp, "Event.timestamp", "Unix seconds (an int or float)")
            if not (0 <= t < 2 ** 63):  # (NaN fails this too)
                raise ValueError("Event.timestamp = %r: Unix seconds from 0 (0 or None: the server's clock)"
                                 % (self.timestamp,))
        # (In range but refused, such as 0 or 2^63, is left to the server,
        # which names the event; these could not even be sent.)
        for what, v in (("user", self.user), ("item", self.item)):
            if not 0 <= v < 2 ** 64:
                raise ValueError("Event.%s = %d: ids are 1 ... 2^63-1" % (what, v))

    def to_wire(self) -> Dict[str, Any]:
        """The event in the protocol's JSON form."""
        return {"user": self.user, "item": self.item, "kind": self.kind,
                "value": 0.0 if self.value is None else float(self.value),
                "timestamp": 0 if self.timestamp is None else int(self.timestamp)}


#: What the feedback methods accept for one event: an Event, a mapping with
#: Event's field names, or a tuple ``(user, item[, kind[, value[, timestamp]]])``.
EventLike = Union[Event, Mapping[str, Any], Tuple[Any, ...], Sequence[Any]]


_FLOAT32_MAX = 3.4028234663852886e38


def _number(v: Any, what: str, expected: str) -> float:
    """``v`` as a float, for a check: TypeError naming ``what`` for a bool,
    text, or anything ``float()`` refuses; ValueError for an int too large
    for any float."""
    if isinstance(v, (bool, str, bytes)):
        raise TypeError("%s must be %s, not %r" % (what, expected, v))
    try:
        return float(v)
    except OverflowError:
        raise ValueError("%s is too large for a float" % what) from None
    except (TypeError, ValueError):
        raise TypeError("%s must be %s, not %r" % (what, expected, v)) from None


def to_event(e: EventLike) -> Event:
    """Turn an :data:`EventLike` into an :class:`Event` (ValueError/TypeError if it cannot)."""
    if isinstance(e, Event):
        return e
    if isinstance(e, Mapping):
        return Event(**e)
    if isinstance(e, (tuple, list)):
        return Event(*e)
    raise TypeError("cannot make an Event of %r" % (e,))


@dataclass(frozen=True)
class Recommendation:
    """One recommended item and its score; lists of them are best first."""

    item: int
    score: float


@dataclass(frozen=True)
class Score:
    """The score of one item for a user; ``known`` is False for an item the server never saw."""

    item: int
    score: float
    known: bool


@dataclass(frozen=True)
class FeedbackAck:
    """The server's acknowledgement of a FEEDBACK batch.

    ``first_seq … last_seq`` are the batch's sequence numbers; ``durable_seq``
    is the highest sequence the server's storage promises to keep;
    ``applied_seq`` the highest the learner had applied when it answered.
    """

    first_seq: int
    last_seq: int
    durable_seq: int
    applied_seq: int


@dataclass(frozen=True)
class UpsertResult:
    """Result of ``upsert_item``: whether the item was new, and whether its text was cut."""

    created: bool
    truncated: bool


class Snapshot(int):
    """Result of ``snapshot``: the log sequence the snapshot covers (the int
    itself, so it compares and formats as the sequence) and ``version``, the
    version's id: ``v<seq>``, or ``v<seq>.<n>`` when a rollback or a RELOAD
    wrote another version at that position first. ``perennial serve
    --from-version`` takes the id; ``"v%d" % seq`` is not always it (after a
    rollback, the plain id names the model rolled back from)."""

    version: str

    def __new__(cls, seq: int, version: str) -> "Snapshot":
        obj = super().__new__(cls, seq)
        obj.version = version
        return obj

    @property
    def seq(self) -> int:
        return int(self)

    def __getnewargs__(self) -> Tuple[int, str]:  # type: ignore[override]
        return (int(self), self.version)

    def __repr__(self) -> str:
        return "Snapshot(seq=%d, version=%r)" % (int(self), self.version)

    def __str__(self) -> str:
        # (As the int it was before it carried the version: "v%s" % seq.)
        return str(int(self))

    # Two versions at one position (a rollback's beside the model rolled
    # back from) are different versions; against a plain int, the sequence.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Snapshot):
            return int(self) == int(other) and self.version == other.version
        return int(self) == other

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(int(self))


@dataclass(frozen=True)
class ServerInfo:
    """The server's HELLO reply: its protocol version, limits and name."""

    protocol_version: int
    max_frame_bytes: int
    max_items: int
    max_events: int
    server_name: str
