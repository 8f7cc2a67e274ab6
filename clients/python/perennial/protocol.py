"""The Perennial wire protocol, version 1 (see ``protocol/PROTOCOL.md``).

This module is the single Python implementation of framing and of the payload
codecs, for both directions and every opcode.  It has no I/O: the clients
feed it bytes and send the bytes it makes.

Payloads are plain dicts in the JSON form of the test vectors
(``protocol/vectors/index.json``), e.g. a RECOMMEND reply is
``{"applied_seq": 7, "items": [[item, score], ...]}``.  Decoding always yields
lists; encoding accepts any sequence.

Validation (the same rules the server applies, listed in index.json):

* header rules, in order, once the 12 header bytes are present: ``length < 8``
  → MALFORMED_FRAME (fatal); ``length > max_frame_bytes`` → FRAME_TOO_LARGE
  (fatal); ``version != 1`` → UNSUPPORTED_VERSION (fatal); then, on the
  complete frame, reserved flag bits → MALFORMED_PAYLOAD and an unknown opcode
  (or ERROR without the REPLY flag) → UNKNOWN_OPCODE;
* payload fields are read and checked in wire order, the first problem wins;
* structural problems → MALFORMED_PAYLOAD: short payload, bytes left over,
  invalid UTF-8, a NaN or infinite float in a reply, a reply flag byte other
  than 0/1, a reply id outside 1 … 2^63−1;
* requests: a well-formed field outside its range → INVALID_ARGUMENT (ids,
  k, list counts, FEEDBACK's n); a count is checked as soon as it is read,
  before its elements;
* FEEDBACK events are checked as each is read → INVALID_EVENT, detail = the
  event's index.

Every failure raises :class:`perennial.errors.ProtocolError` with
``code_name``, ``fatal``, ``detail``, ``request_id`` and ``consumed``.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import ERROR_CODES, ERROR_NAMES, ProtocolError

__all__ = [
    "VERSION",
    "HEADER_SIZE",
    "FLAG_REPLY",
    "MAX_ID",
    "Opcode",
    "Limits",
    "DEFAULT_LIMITS",
    "Frame",
    "FrameDecoder",
    "EVENT_KINDS",
    "EVENT_KIND_NAMES",
    "ProtocolError",
    "encode_payload",
    "decode_payload",
    "encode_frame",
    "encode_request",
    "encode_reply",
    "encode_error",
    "decode_frame",
]

VERSION = 1
HEADER_SIZE = 12
FLAG_REPLY = 0x0001
MAX_ID = 2**63 - 1

_HEADER = struct.Struct("<IBBHI")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F32 = struct.Struct("<f")
_UNSIGNED_BITS = {"<B": 8, "<H": 16, "<I": 32, "<Q": 64}
_EVENT = struct.Struct("<QQBfq")  # 29 bytes, packed (no padding with "<")
_ITEM_SCORE = struct.Struct("<Qf")
_SCORE_KNOWN = struct.Struct("<fB")


class Opcode(enum.IntEnum):
    """Frame opcodes."""

    HELLO = 0x01
    PING = 0x02
    RECOMMEND = 0x03
    SCORE = 0x04
    FEEDBACK = 0x05
    UPSERT_ITEM = 0x06
    STATS = 0x07
    DELETE_ITEMS = 0x08
    DELETE_USERS = 0x09
    RELOAD = 0x10
    SNAPSHOT = 0x11
    SHUTDOWN = 0x12
    ERROR = 0x7F


_OPCODE_VALUES = frozenset(int(o) for o in Opcode)

#: Event kinds by name, and names by number.
EVENT_KINDS: Dict[str, int] = {"view": 1, "click": 2, "purchase": 3, "rating": 4}
EVENT_KIND_NAMES: Dict[int, str] = {v: k for k, v in EVENT_KINDS.items()}

#: The longest RECOMMEND ``session_id``, in bytes: longer is INVALID_ARGUMENT.
MAX_SESSION_ID_BYTES = 256

#: Largest rating value and largest weight of the other kinds.
MAX_RATING = 10.0
MAX_WEIGHT = 1000.0


@dataclass(frozen=True)
class Limits:
    """The limits a decoder enforces (server defaults)."""

    max_frame_bytes: int = 4194304
    max_items: int = 1000
    max_events: int = 10000


DEFAULT_LIMITS = Limits()


@dataclass
class Frame:
    """One decoded (or to-be-encoded) frame.

    ``payload`` is the JSON-form dict of the opcode's request or reply layout,
    chosen by the REPLY bit of ``flags``.
    """

    opcode: int
    request_id: int
    payload: Dict[str, Any] = field(default_factory=dict)
    flags: int = 0
    version: int = VERSION

    @property
    def is_reply(self) -> bool:
        """True when the REPLY flag is set."""
        return bool(self.flags & FLAG_REPLY)

    @property
    def opcode_name(self) -> str:
        """The opcode's name (``"0x42"`` style for an unknown one)."""
        try:
            return Opcode(self.opcode).name
        except ValueError:
            return "0x%02X" % self.opcode

    def to_json(self) -> Dict[str, Any]:
        """The frame in the JSON form used by ``protocol/vectors/index.json``."""
        return {
            "version": self.version,
            "opcode": self.opcode_name,
            "flags": self.flags,
            "request_id": self.request_id,
            "payload": self.payload,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Frame":
        """Build a frame from its JSON form (opcode given by name or number)."""
        op = obj["opcode"]
        opcode = int(Opcode[op]) if isinstance(op, str) else int(op)
        return cls(opcode=opcode, request_id=int(obj["request_id"]),
                   payload=dict(obj.get("payload") or {}), flags=int(obj.get("flags", 0)),
                   version=int(obj.get("version", VERSION)))


# ---------------------------------------------------------------------------
# payload reading


class _Problem(Exception):
    """Raised inside payload decoders; turned into a ProtocolError by decode_payload."""

    def __init__(self, code_name: str, message: str, detail: int = 0) -> None:
        super().__init__(message)
        self.code_name = code_name
        self.message = message
        self.detail = detail


def _malformed(message: str) -> _Problem:
    return _Problem("MALFORMED_PAYLOAD", message)


def _invalid(message: str) -> _Problem:
    return _Problem("INVALID_ARGUMENT", message)


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def _need(self, n: int, what: str, index: int = -1) -> int:
        pos = self.pos
        if pos + n > self.end:
            if index >= 0:
                what = "%s %d" % (what, index)
            raise _malformed("payload ends inside %s (needs %d bytes at offset %d, has %d)"
                             % (what, n, pos, self.end - pos))
        self.pos = pos + n
        return pos

    def remaining(self) -> int:
        return self.end - self.pos

    def u8(self, what: str) -> int:
        return _U8.unpack_from(self.data, self._need(1, what))[0]  # type: ignore[no-any-return]

    def u16(self, what: str) -> int:
        return _U16.unpack_from(self.data, self._need(2, what))[0]  # type: ignore[no-any-return]

    def u32(self, what: str) -> int:
        return _U32.unpack_from(self.data, self._need(4, what))[0]  # type: ignore[no-any-return]

    def u64(self, what: str) -> int:
        return _U64.unpack_from(self.data, self._need(8, what))[0]  # type: ignore[no-any-return]

    def f32(self, what: str) -> float:
        return _F32.unpack_from(self.data, self._need(4, what))[0]  # type: ignore[no-any-return]

    def unpack(self, st: struct.Struct, what: str, index: int = -1) -> Tuple[Any, ...]:
        return st.unpack_from(self.data, self._need(st.size, what, index))

    def text(self, n: int, what: str, index: int = -1) -> str:
        pos = self._need(n, what, index)
        try:
            return self.data[pos:pos + n].decode("utf-8")
        except UnicodeDecodeError as e:
            if index >= 0:
                what = "%s %d" % (what, index)
            raise _malformed("%s is not valid UTF-8 (%s)" % (what, e.reason)) from None

    def str16(self, what: str, index: int = -1) -> str:
        pos = self._need(2, what, index)
        return self.text(_U16.unpack_from(self.data, pos)[0], what, index)

    def str32(self, what: str) -> str:
        return self.text(self.u32(what + " length"), what)

    def finish(self) -> None:
        if self.pos != self.end:
            raise _malformed("%d bytes left over after the payload" % (self.end - self.pos))

    # ids -----------------------------------------------------------------

    def req_id(self, what: str) -> int:
        v = self.u64(what)
        if v == 0 or v > MAX_ID:
            raise _invalid("%s %d is not a valid id (1 ... 2^63-1)" % (what, v))
        return v

    def reply_id(self, what: str) -> int:
        v = self.u64(what)
        if v == 0 or v > MAX_ID:
            raise _malformed("%s %d is not a valid id (1 ... 2^63-1)" % (what, v))
        return v

    def req_ids16(self, what: str, limits: Limits, min_count: int = 0) -> List[int]:
        n = self.u16(what + " count")
        if n > limits.max_items:
            raise _invalid("%s has %d ids, more than max_items %d" % (what, n, limits.max_items))
        if n < min_count:
            raise _invalid("%s must not be empty" % what)
        pos = self._need(8 * n, what)
        ids = list(struct.unpack_from("<%dQ" % n, self.data, pos))
        for i, v in enumerate(ids):
            if v == 0 or v > MAX_ID:
                raise _invalid("%s[%d] = %d is not a valid id (1 ... 2^63-1)" % (what, i, v))
        return ids


def _finite_reply_float(v: float, what: str) -> float:
    if not math.isfinite(v):
        raise _malformed("%s is %r (must be finite)" % (what, v))
    return v


def _flag_byte(v: int, what: str) -> int:
    if v not in (0, 1):
        raise _malformed("%s is %d (must be 0 or 1)" % (what, v))
    return v


def _check_event(i: int, user: int, item: int, kind: int, value: float) -> Optional[str]:
    if user == 0 or user > MAX_ID:
        return "event %d: user %d is not a valid id" % (i, user)
    if item == 0 or item > MAX_ID:
        return "event %d: item %d is not a valid id" % (i, item)
    if kind not in EVENT_KIND_NAMES:
        return "event %d: unknown kind %d" % (i, kind)
    if not math.isfinite(value):
        return "event %d: value %r is not finite" % (i, value)
    if kind == 4:
        if not 0.0 <= value <= MAX_RATING:
            return "event %d: rating %r is outside 0 ... 10" % (i, value)
    elif not 0.0 <= value <= MAX_WEIGHT:
        return "event %d: weight %r is outside 0 ... 1000" % (i, value)
    return None


# request decoders ----------------------------------------------------------


def _dec_empty(r: _Reader, limits: Limits) -> Dict[str, Any]:
    return {}


def _dec_hello_req(r: _Reader, limits: Limits) -> Dict[str, Any]:
    version = r.u16("protocol_version")
    # Checked before the rest: another protocol's HELLO may be laid out otherwise.
    if version != VERSION:
        raise _Problem("UNSUPPORTED_VERSION", "client speaks protocol %d; this server speaks %d" % (version, VERSION))
    return {"protocol_version": version,
            "client_name": r.str16("client_name"),
            "token": r.str16("token")}


def _dec_hello_rep(r: _Reader, limits: Limits) -> Dict[str, Any]:
    return {"protocol_version": r.u16("protocol_version"),
            "max_frame_bytes": r.u32("max_frame_bytes"),
            "max_items": r.u32("max_items"),
            "max_events": r.u32("max_events"),
            "server_name": r.str16("server_name")}


def _dec_recommend_req(r: _Reader, limits: Limits) -> Dict[str, Any]:
    user = r.req_id("user")
    k = r.u16("k")
    if k < 1 or k > limits.max_items:
        raise _invalid("k = %d is outside 1 ... max_items %d" % (k, limits.max_items))
    min_applied_seq = r.u64("min_applied_seq")
    scorer = r.str16("scorer")
    session_id = r.str16("session_id")
    out: Dict[str, Any] = {"user": user, "k": k, "min_applied_seq": min_applied_seq,
                           "scorer": scorer, "session_id": session_id}
    if len(session_id.encode("utf-8", "surrogatepass")) > MAX_SESSION_ID_BYTES:
        raise _invalid("session_id is %d bytes; at most %d"
                       % (len(session_id.encode("utf-8", "surrogatepass")), MAX_SESSION_ID_BYTES))
    out.update({
           "session_items": r.req_ids16("session_items", limits),
           "exclude": r.req_ids16("exclude", limits),
           "candidates": r.req_ids16("candidates", limits)})
    if r.remaining() > 0:  # optional trailing field
        out["shadow_scorer"] = r.str16("shadow_scorer")
    return out


def _dec_recommend_rep(r: _Reader, limits: Limits) -> Dict[str, Any]:
    applied = r.u64("applied_seq")
    n = r.u16("item count")
    items: List[List[Any]] = []
    for i in range(n):
        item, score = r.unpack(_ITEM_SCORE, "item", i)
        if item == 0 or item > MAX_ID:
            raise _malformed("item %d: id %d is not a valid id" % (i, item))
        if not math.isfinite(score):
            _finite_reply_float(score, "score of item %d" % i)
        items.append([item, score])
    return {"applied_seq": applied, "items": items}


def _dec_score_req(r: _Reader, limits: Limits) -> Dict[str, Any]:
    return {"user": r.req_id("user"),
            "scorer": r.str16("scorer"),
            "session_items": r.req_ids16("session_items", limits),
            "items": r.req_ids16("items", limits, min_count=1)}


def _dec_score_rep(r: _Reader, limits: Limits) -> Dict[str, Any]:
    n = r.u16("score count")
    scores: List[List[Any]] = []
    for i in range(n):
        score, known = r.unpack(_SCORE_KNOWN, "score", i)
        if known > 1 or not math.isfinite(score):
            _finite_reply_float(score, "score %d" % i)
            _flag_byte(known, "known of score %d" % i)
        scores.append([score, known])
    return {"scores": scores}


def _dec_feedback_req(r: _Reader, limits: Limits) -> Dict[str, Any]:
    n = r.u32("event count")
    if n < 1 or n > limits.max_events:
        raise _invalid("FEEDBACK has %d events, outside 1 ... max_events %d"
                       % (n, limits.max_events))
    events: List[Dict[str, Any]] = []
    for i in range(n):
        user, item, kind, value, ts = r.unpack(_EVENT, "event", i)
        problem = _check_event(i, user, item, kind, value)
        if problem is not None:
            raise _Problem("INVALID_EVENT", problem, detail=i)
        events.append({"user": user, "item": item, "kind": EVENT_KIND_NAMES[kind],
                       "value": value, "timestamp": ts})
    return {"events": events}


def _dec_feedback_rep(r: _Reader, limits: Limits) -> Dict[str, Any]:
    return {"first_seq": r.u64("first_seq"), "last_seq": r.u64("last_seq"),
            "durable_seq": r.u64("durable_seq"), "applied_seq": r.u64("applied_seq")}


def _dec_upsert_req(r: _Reader, limits: Limits) -> Dict[str, Any]:
    item = r.req_id("item")
    text = r.str32("text")
    n = r.u16("attribute count")
    if n > limits.max_items:
        raise _invalid("attributes: %d, limit is %d" % (n, limits.max_items))
    attrs = [[r.str16("key of attribute", i), r.str16("value of attribute", i)]
             for i in range(n)]
    return {"item": item, "text": text, "attributes": attrs}


def _dec_upsert_rep(r: _Reader, limits: Limits) -> Dict[str, Any]:
    return {"created": _flag_byte(r.u8("created"), "created"),
            "truncated": _flag_byte(r.u8("truncated"), "truncated")}


def _dec_delete_req(r: _Reader, limits: Limits) -> Dict[str, Any]:
    return {"items": r.req_ids16("items", limits, min_count=1)}


def _dec_delete_users_req(r: _Reader, limits: Limits) -> Dict[str, Any]:
    return {"users": r.req_ids16("users", limits, min_count=1)}


def _dec_delete_rep(r: _Reader, limits: Limits) -> Dict[str, Any]:
    return {"deleted": r.u16("deleted")}


def _dec_stats_rep(r: _Reader, limits: Limits) -> Dict[str, Any]:
    n = r.u16("counter count")
    counters = []
    for i in range(n):
        name = r.str16("name of counter", i)
        counters.append([name, r.unpack(_U64, "value of counter", i)[0]])
    return {"counters": counters}


def _dec_snapshot_rep(r: _Reader, limits: Limits) -> Dict[str, Any]:
    return {"seq": r.u64("seq"), "version": r.str16("version")}


def _dec_error(r: _Reader, limits: Limits) -> Dict[str, Any]:
    code = r.u16("code")
    return {"code": ERROR_NAMES.get(code, "CODE_%d" % code),
            "detail": r.u32("detail"),
            "message": r.str16("message")}


_Decoder = Callable[[_Reader, Limits], Dict[str, Any]]

# (opcode, is_reply) -> decoder
_DECODERS: Dict[Tuple[int, bool], _Decoder] = {
    (Opcode.HELLO, False): _dec_hello_req,
    (Opcode.HELLO, True): _dec_hello_rep,
    (Opcode.PING, False): _dec_empty,
    (Opcode.PING, True): _dec_empty,
    (Opcode.RECOMMEND, False): _dec_recommend_req,
    (Opcode.RECOMMEND, True): _dec_recommend_rep,
    (Opcode.SCORE, False): _dec_score_req,
    (Opcode.SCORE, True): _dec_score_rep,
    (Opcode.FEEDBACK, False): _dec_feedback_req,
    (Opcode.FEEDBACK, True): _dec_feedback_rep,
    (Opcode.UPSERT_ITEM, False): _dec_upsert_req,
    (Opcode.UPSERT_ITEM, True): _dec_upsert_rep,
    (Opcode.DELETE_ITEMS, False): _dec_delete_req,
    (Opcode.DELETE_ITEMS, True): _dec_delete_rep,
    (Opcode.DELETE_USERS, False): _dec_delete_users_req,
    (Opcode.DELETE_USERS, True): _dec_delete_rep,
    (Opcode.STATS, False): _dec_empty,
    (Opcode.STATS, True): _dec_stats_rep,
    (Opcode.RELOAD, False): _dec_empty,
    (Opcode.RELOAD, True): _dec_empty,
    (Opcode.SNAPSHOT, False): _dec_empty,
    (Opcode.SNAPSHOT, True): _dec_snapshot_rep,
    (Opcode.SHUTDOWN, False): _dec_empty,
    (Opcode.SHUTDOWN, True): _dec_empty,
    (Opcode.ERROR, True): _dec_error,
}


def decode_payload(opcode: int, reply: bool, data: bytes, limits: Limits = DEFAULT_LIMITS,
                   request_id: int = 0) -> Dict[str, Any]:
    """Decode the payload bytes of ``opcode`` (reply layout when ``reply``).

    Returns the JSON-form dict.  Raises ProtocolError (MALFORMED_PAYLOAD,
    INVALID_ARGUMENT, INVALID_EVENT or UNKNOWN_OPCODE, never fatal; or a
    HELLO's UNSUPPORTED_VERSION, fatal) whose
    ``request_id`` is the given one.
    """
    dec = _DECODERS.get((opcode, bool(reply)))
    if dec is None:
        raise ProtocolError("opcode 0x%02X is not a %s" % (opcode, "reply" if reply else "request"),
                            "UNKNOWN_OPCODE", request_id=request_id)
    r = _Reader(bytes(data))
    try:
        payload = dec(r, limits)
        r.finish()
    except _Problem as p:
        raise ProtocolError(p.message, p.code_name, detail=p.detail, request_id=request_id,
                            fatal=p.code_name == "UNSUPPORTED_VERSION") from None
    return payload


# ---------------------------------------------------------------------------
# payload writing


def _p(st: struct.Struct, what: str, *values: Any) -> bytes:
    try:
        return st.pack(*values)
    except (struct.error, OverflowError, TypeError) as e:
        value = values if len(values) > 1 else values[0]
        bits = _UNSIGNED_BITS.get(st.format)
        if bits is not None and len(values) == 1:
            # Say the range the wire field holds, not struct's wording.
            raise ValueError("%s must be an integer from 0 to %d, not %r"
                             % (what, (1 << bits) - 1, value)) from None
        raise ValueError("cannot encode %s = %r: %s" % (what, value, e)) from None


def _w_u8(v: int, what: str) -> bytes:
    return _p(_U8, what, v)


def _w_u16(v: int, what: str) -> bytes:
    return _p(_U16, what, v)


def _w_u32(v: int, what: str) -> bytes:
    return _p(_U32, what, v)


def _w_u64(v: int, what: str) -> bytes:
    return _p(_U64, what, v)


def _w_f32(v: float, what: str) -> bytes:
    return _p(_F32, what, v)


def _w_text(s: str, st: struct.Struct, what: str) -> bytes:
    if not isinstance(s, str):
        raise TypeError("%s must be a str, not %s" % (what, type(s).__name__))
    b = s.encode("utf-8")
    return _p(st, what + " length", len(b)) + b


def _w_str16(s: str, what: str) -> bytes:
    return _w_text(s, _U16, what)


def _w_str32(s: str, what: str) -> bytes:
    return _w_text(s, _U32, what)


def _w_ids16(ids: Sequence[int], what: str) -> bytes:
    ids = list(ids)
    head = _w_u16(len(ids), what + " count")
    try:
        return head + struct.pack("<%dQ" % len(ids), *ids)
    except (struct.error, OverflowError, TypeError):
        bad = next((i for i in ids if not isinstance(i, int) or not 0 <= i < 1 << 64), None)
        raise ValueError("%s: every id must be an integer from 0 to 2**64-1, not %r"
                         % (what, bad)) from None


def _kind_number(kind: Union[str, int]) -> int:
    if isinstance(kind, str):
        try:
            return EVENT_KINDS[kind]
        except KeyError:
            raise ValueError("unknown event kind %r (view, click, purchase, rating)"
                             % kind) from None
    return int(kind)


def _enc_empty(p: Mapping[str, Any]) -> bytes:
    return b""


def _enc_hello_req(p: Mapping[str, Any]) -> bytes:
    return (_w_u16(p.get("protocol_version", VERSION), "protocol_version")
            + _w_str16(p.get("client_name", ""), "client_name")
            + _w_str16(p.get("token", ""), "token"))


def _enc_hello_rep(p: Mapping[str, Any]) -> bytes:
    return (_w_u16(p["protocol_version"], "protocol_version")
            + _w_u32(p["max_frame_bytes"], "max_frame_bytes")
            + _w_u32(p["max_items"], "max_items")
            + _w_u32(p["max_events"], "max_events")
            + _w_str16(p["server_name"], "server_name"))


def _enc_recommend_req(p: Mapping[str, Any]) -> bytes:
    return (_w_u64(p["user"], "user") + _w_u16(p["k"], "k")
            + _w_u64(p.get("min_applied_seq", 0), "min_applied_seq")
            + _w_str16(p.get("scorer", ""), "scorer")
            + _w_str16(p.get("session_id", ""), "session_id")
            + _w_ids16(p.get("session_items", ()), "session_items")
            + _w_ids16(p.get("exclude", ()), "exclude")
            + _w_ids16(p.get("candidates", ()), "candidates")
            + (_w_str16(p["shadow_scorer"], "shadow_scorer") if p.get("shadow_scorer") else b""))


def _enc_recommend_rep(p: Mapping[str, Any]) -> bytes:
    items = list(p["items"])
    return (_w_u64(p["applied_seq"], "applied_seq") + _w_u16(len(items), "item count")
            + b"".join(_p(_ITEM_SCORE, "item", it[0], it[1]) for it in items))


def _enc_score_req(p: Mapping[str, Any]) -> bytes:
    return (_w_u64(p["user"], "user") + _w_str16(p.get("scorer", ""), "scorer")
            + _w_ids16(p.get("session_items", ()), "session_items")
            + _w_ids16(p["items"], "items"))


def _enc_score_rep(p: Mapping[str, Any]) -> bytes:
    scores = list(p["scores"])
    return _w_u16(len(scores), "score count") + b"".join(
        _p(_SCORE_KNOWN, "score", s[0], int(s[1])) for s in scores)


def _enc_event(e: Mapping[str, Any]) -> bytes:
    value = e.get("value")
    ts = e.get("timestamp")
    return _p(_EVENT, "event", e["user"], e["item"], _kind_number(e.get("kind", "click")),
              0.0 if value is None else float(value), 0 if ts is None else ts)


def _enc_feedback_req(p: Mapping[str, Any]) -> bytes:
    events = list(p["events"])
    return _w_u32(len(events), "event count") + b"".join(_enc_event(e) for e in events)


def _enc_feedback_rep(p: Mapping[str, Any]) -> bytes:
    return (_w_u64(p["first_seq"], "first_seq") + _w_u64(p["last_seq"], "last_seq")
            + _w_u64(p["durable_seq"], "durable_seq") + _w_u64(p["applied_seq"], "applied_seq"))


def _enc_upsert_req(p: Mapping[str, Any]) -> bytes:
    attrs = p.get("attributes") or ()
    if isinstance(attrs, Mapping):
        attrs = list(attrs.items())
    attrs = list(attrs)
    return (_w_u64(p["item"], "item") + _w_str32(p.get("text", ""), "text")
            + _w_u16(len(attrs), "attribute count")
            + b"".join(_w_str16(k, "attribute key") + _w_str16(v, "attribute value")
                       for k, v in attrs))


def _enc_upsert_rep(p: Mapping[str, Any]) -> bytes:
    return _w_u8(int(p["created"]), "created") + _w_u8(int(p["truncated"]), "truncated")


def _enc_delete_req(p: Mapping[str, Any]) -> bytes:
    return _w_ids16(p["items"], "items")


def _enc_delete_users_req(p: Mapping[str, Any]) -> bytes:
    return _w_ids16(p["users"], "users")


def _enc_delete_rep(p: Mapping[str, Any]) -> bytes:
    return _w_u16(p["deleted"], "deleted")


def _enc_stats_rep(p: Mapping[str, Any]) -> bytes:
    counters = p["counters"]
    if isinstance(counters, Mapping):
        counters = list(counters.items())
    counters = list(counters)
    return _w_u16(len(counters), "counter count") + b"".join(
        _w_str16(n, "counter name") + _w_u64(v, "counter value") for n, v in counters)


def _enc_snapshot_rep(p: Mapping[str, Any]) -> bytes:
    return _w_u64(p["seq"], "seq") + _w_str16(p["version"], "version")


def _error_code_number(code: Union[str, int]) -> int:
    if isinstance(code, str):
        if code in ERROR_CODES:
            return ERROR_CODES[code]
        if code.startswith("CODE_") and code[5:].isdigit():
            return int(code[5:])
        raise ValueError("unknown error code %r" % code)
    return int(code)


def _enc_error(p: Mapping[str, Any]) -> bytes:
    return (_w_u16(_error_code_number(p["code"]), "code") + _w_u32(p.get("detail", 0), "detail")
            + _w_str16(p.get("message", ""), "message"))


_ENCODERS: Dict[Tuple[int, bool], Callable[[Mapping[str, Any]], bytes]] = {
    (Opcode.HELLO, False): _enc_hello_req,
    (Opcode.HELLO, True): _enc_hello_rep,
    (Opcode.PING, False): _enc_empty,
    (Opcode.PING, True): _enc_empty,
    (Opcode.RECOMMEND, False): _enc_recommend_req,
    (Opcode.RECOMMEND, True): _enc_recommend_rep,
    (Opcode.SCORE, False): _enc_score_req,
    (Opcode.SCORE, True): _enc_score_rep,
    (Opcode.FEEDBACK, False): _enc_feedback_req,
    (Opcode.FEEDBACK, True): _enc_feedback_rep,
    (Opcode.UPSERT_ITEM, False): _enc_upsert_req,
    (Opcode.UPSERT_ITEM, True): _enc_upsert_rep,
    (Opcode.DELETE_ITEMS, False): _enc_delete_req,
    (Opcode.DELETE_ITEMS, True): _enc_delete_rep,
    (Opcode.DELETE_USERS, False): _enc_delete_users_req,
    (Opcode.DELETE_USERS, True): _enc_delete_rep,
    (Opcode.STATS, False): _enc_empty,
    (Opcode.STATS, True): _enc_stats_rep,
    (Opcode.RELOAD, False): _enc_empty,
    (Opcode.RELOAD, True): _enc_empty,
    (Opcode.SNAPSHOT, False): _enc_empty,
    (Opcode.SNAPSHOT, True): _enc_snapshot_rep,
    (Opcode.SHUTDOWN, False): _enc_empty,
    (Opcode.SHUTDOWN, True): _enc_empty,
    (Opcode.ERROR, True): _enc_error,
}


def encode_payload(opcode: int, reply: bool, payload: Optional[Mapping[str, Any]] = None) -> bytes:
    """Encode ``payload`` (JSON form) with the request or reply layout of ``opcode``.

    Only what cannot be put on the wire is refused (ValueError for a number
    that does not fit its field or an unknown kind / error name, TypeError for
    a wrong type); range rules such as k ≥ 1 are the receiver's business, so
    a client can send what the server will refuse.
    """
    enc = _ENCODERS.get((int(opcode), bool(reply)))
    if enc is None:
        raise ValueError("opcode 0x%02X has no %s layout" % (opcode, "reply" if reply else "request"))
    return enc(payload or {})


def encode_frame(frame: Frame, payload_bytes: Optional[bytes] = None) -> bytes:
    """Encode a whole frame: header and payload.

    ``payload_bytes`` may be given to skip encoding ``frame.payload``.
    Raises ValueError when a field does not fit its wire type.
    """
    if payload_bytes is None:
        payload_bytes = encode_payload(frame.opcode, frame.is_reply, frame.payload)
    length = 8 + len(payload_bytes)
    return _p(_HEADER, "header", length, frame.version, frame.opcode, frame.flags,
              frame.request_id) + payload_bytes


def encode_request(opcode: int, request_id: int,
                   payload: Union[None, Mapping[str, Any], bytes] = None) -> bytes:
    """Encode a request frame (payload as JSON-form dict, or already-encoded bytes)."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        body = bytes(payload)
    else:
        body = encode_payload(opcode, False, payload)
    return _p(_HEADER, "header", 8 + len(body), VERSION, int(opcode), 0, request_id) + body


def encode_reply(opcode: int, request_id: int,
                 payload: Union[None, Mapping[str, Any], bytes] = None) -> bytes:
    """Encode a reply frame (the REPLY flag set)."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        body = bytes(payload)
    else:
        body = encode_payload(opcode, True, payload)
    return _p(_HEADER, "header", 8 + len(body), VERSION, int(opcode), FLAG_REPLY,
              request_id) + body


def encode_error(request_id: int, code: Union[str, int], message: str = "",
                 detail: int = 0) -> bytes:
    """Encode an ERROR reply frame."""
    return encode_reply(Opcode.ERROR, request_id,
                        {"code": code, "detail": detail, "message": message})


# ---------------------------------------------------------------------------
# frame decoding


def decode_frame(buf: Union[bytes, bytearray, memoryview], limits: Limits = DEFAULT_LIMITS,
                 offset: int = 0) -> Optional[Tuple[Frame, int]]:
    """Decode the frame starting at ``buf[offset]``.

    Returns ``(frame, size)`` where ``size`` is the number of bytes the frame
    occupies, or None when more bytes are needed.  Raises ProtocolError:
    fatal for the header rules 1–3 (the stream cannot be resynchronised), not
    fatal otherwise, with ``consumed`` = the frame's size so that a receiver
    can skip it.
    """
    avail = len(buf) - offset
    if avail < HEADER_SIZE:
        return None
    length, version, opcode, flags, rid = _HEADER.unpack_from(buf, offset)
    if length < 8:
        raise ProtocolError("frame length %d is below 8" % length, "MALFORMED_FRAME",
                            fatal=True, request_id=rid)
    if length > limits.max_frame_bytes:
        raise ProtocolError("frame length %d exceeds max_frame_bytes %d"
                            % (length, limits.max_frame_bytes), "FRAME_TOO_LARGE",
                            fatal=True, request_id=rid)
    if version != VERSION:
        raise ProtocolError("protocol version %d is not supported (only %d)" % (version, VERSION),
                            "UNSUPPORTED_VERSION", fatal=True, request_id=rid)
    total = 4 + length
    if avail < total:
        return None
    if flags & ~FLAG_REPLY:
        raise ProtocolError("reserved flag bits set (flags 0x%04X)" % flags, "MALFORMED_PAYLOAD",
                            request_id=rid, consumed=total)
    reply = bool(flags & FLAG_REPLY)
    if opcode not in _OPCODE_VALUES or (opcode == Opcode.ERROR and not reply):
        raise ProtocolError("unknown opcode 0x%02X" % opcode if opcode not in _OPCODE_VALUES
                            else "ERROR is a reply-only opcode", "UNKNOWN_OPCODE",
                            request_id=rid, consumed=total)
    start = offset + HEADER_SIZE
    try:
        payload = decode_payload(opcode, reply, bytes(buf[start:offset + total]), limits, rid)
    except ProtocolError as e:
        e.consumed = total
        raise
    return Frame(opcode=opcode, request_id=rid, payload=payload, flags=flags,
                 version=version), total


class FrameDecoder:
    """Incremental frame decoder for a byte stream.

    ``feed()`` bytes as they arrive, then call ``next_frame()`` until it
    returns None (need more).  A non-fatal ProtocolError skips the offending
    frame, so decoding can go on with the next call; after a fatal one the
    decoder is dead and raises the same error again.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buf = bytearray()
        self._pos = 0
        self._dead: Optional[ProtocolError] = None

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Append received bytes."""
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded (a partial frame)."""
        return len(self._buf) - self._pos

    def next_frame(self) -> Optional[Frame]:
        """The next complete frame, or None when more bytes are needed.

        Raises ProtocolError for a bad frame (see :func:`decode_frame`).
        """
        if self._dead is not None:
            raise self._dead
        try:
            res = decode_frame(self._buf, self.limits, self._pos)
        except ProtocolError as e:
            if e.fatal:
                self._dead = e
            else:
                self._pos += e.consumed
            raise
        if res is None:
            if self._pos == len(self._buf):
                self._buf.clear()
                self._pos = 0
            return None
        frame, size = res
        self._pos += size
        return frame

    def __iter__(self) -> "FrameDecoder":
        return self

    def __next__(self) -> Frame:
        f = self.next_frame()
        if f is None:
            raise StopIteration
        return f
