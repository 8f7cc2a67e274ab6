"""Request builders and reply parsers shared by the sync and async clients."""

from __future__ import annotations

import copy
import numbers
import warnings
from collections import abc
from dataclasses import dataclass
from typing import Deque, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import (ERROR_CODES, FATAL_CODES, CapacityExceeded, ConnectionError, InvalidEvent, ProtocolError, ServerError,
                     TimeoutError, error_from_reply)
from .protocol import MAX_SESSION_ID_BYTES, VERSION, Frame, Opcode, encode_payload
from .types import (Event, EventLike, as_int, FeedbackAck, Recommendation, Score, ServerInfo, Snapshot,
                    UpsertResult, to_event)

Attributes = Union[Mapping[str, str], Iterable[Tuple[str, str]], None]


@dataclass
class Command:
    """One request: its opcode, encoded payload, and how to turn the reply into a result."""

    opcode: int
    body: bytes
    parse: Callable[[Dict[str, Any]], Any]
    events: int = 0  # FEEDBACK: how many events the batch carries
    #: SNAPSHOT and RELOAD: the reply comes once the server has written the
    #: whole model, which takes longer the larger the model is, so the
    #: client waits ``admin_timeout`` for it rather than ``timeout``.
    writes_model: bool = False


#: The server's default ``limits.wait_ms``, in seconds.
SERVER_DEFAULT_WAIT_S = 5.0


def no_reply_message(host: str, port: int, wait: Optional[float], cmd: Optional[Command] = None) -> str:
    """What a TimeoutError for the reply to ``cmd`` says: with a wait
    shorter than the server's default ``limits.wait_ms``, that the server
    may hold a request that long (review finding, helper-91: a timeout
    under it ended a write's wait for a log replay with no word of why);
    not of PING, HELLO or STATS, which it never holds."""
    message = "no reply from %s:%s within %s s" % (host, port, wait)
    never_held = cmd is not None and cmd.opcode in (Opcode.PING, Opcode.HELLO, Opcode.STATS)
    if wait is not None and wait < SERVER_DEFAULT_WAIT_S and not never_held:
        message += ("; the server may hold a request up to its limits.wait_ms (%g s by default) before it answers"
                    " (a write while it replays its log after a restart, a read until this connection's earlier"
                    " feedback is learned): keep the client's timeout above it" % SERVER_DEFAULT_WAIT_S)
    return message



def reply_timeout(waiting: Iterable[Command], timeout: Optional[float],
                  admin_timeout: Optional[float]) -> Optional[float]:
    """Seconds to wait for a reply (None: forever) that comes after the
    replies to ``waiting`` (replies come in request order, so a request
    queued behind a SNAPSHOT waits for the model to be written too):
    ``timeout``, or, when one of them writes the model, the longer of it
    and ``admin_timeout``."""
    if not any(cmd.writes_model for cmd in waiting):
        return timeout
    if timeout is None or admin_timeout is None:
        return None
    return max(timeout, admin_timeout)


_OPCODE_NAMES = {int(o): o.name for o in Opcode}


def check_frame_size(cmd: Command, max_frame_bytes: int) -> None:
    """Refuse, before anything is sent, a request the server would refuse.

    A frame longer than the server's ``max_frame_bytes`` (from HELLO) is a
    fatal error for the server, which closes the connection while the client
    is still sending: the client would only see "connection reset".
    """
    length = 8 + len(cmd.body)
    if length > max_frame_bytes:
        raise ProtocolError("%s request of %d bytes exceeds the server's max_frame_bytes (%d); nothing was sent"
                            % (_OPCODE_NAMES.get(cmd.opcode, cmd.opcode), length + 4, max_frame_bytes),
                            "FRAME_TOO_LARGE")


def raise_refusals(errors: "Deque[BaseException]") -> None:
    """A streamer's failed batches since the last call: raises the first,
    its ``refused_batches`` listing every refused one among them (and
    clears ``errors``)."""
    if not errors:
        return
    failed = list(errors)
    errors.clear()
    first = failed[0]
    refused = [e for e in failed if isinstance(e, ServerError)]
    try:
        first.refused_batches = refused  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover
        pass
    others = len(refused) - (1 if any(first is e for e in refused) else 0)
    if others > 0 and first.args and isinstance(first.args[0], str) and "refused_batches" not in first.args[0]:
        # (A log of str(e) would otherwise say nothing of the others: review
        # finding, helper-94.)
        said = " (%d other batch(es) of the stream refused too: see refused_batches)" % others
        first.args = (first.args[0] + said,) + first.args[1:]
        if isinstance(first, ServerError):
            first.message += said
    raise first


def note_stream_failure(result: Any, offset: int, n: int, errors: "Deque[BaseException]",
                        refused: List[BaseException], unacknowledged: List[Tuple[int, int]]) -> None:
    """A streamer's batch of ``n`` events from stream index ``offset`` got
    no acknowledgement.  A ServerError is a refusal: none of the batch was
    accepted.  Anything else (the connection broke, a reply timed out) came
    before the server's answer, which may have accepted the batch or not:
    its (offset, n) goes to ``unacknowledged``, never counted as refused,
    and the error (shared by every batch it cut off) is raised once."""
    if isinstance(result, ServerError):
        mark_stream_refusal(result, offset, n)
        errors.append(result)
        refused.append(result)
        return
    unacknowledged.append((offset, n))
    if isinstance(result, BaseException):
        # (The batches this error cut off: one error is shared by all of them.)
        try:
            cut = result.__dict__.setdefault("unacknowledged_batches", [])
            cut.append((offset, n))
        except AttributeError:  # pragma: no cover
            pass
    if not any(result is e for e in errors):
        errors.append(result)


def recovery_deadline(current: Optional[float], wait: Optional[float], now: float) -> float:
    """Until when a streamer sends batches refused RECOVERING again:
    ``wait`` seconds (the client's ``recovery_wait``; None: no end) after
    the first refusal since the last acknowledgement (``current``, None
    when there is none)."""
    if current is not None:
        return current
    return float("inf") if wait is None else now + wait


def tell_late_refusals(exc: Optional[BaseException], refused: List[BaseException]) -> None:
    """A refusal leaving a streamer's ``with`` block learns of the refusals
    that arrived after it was raised (``refused``: all of the stream's)."""
    if exc is not None and any(exc is e for e in refused):
        try:
            exc.refused_batches = list(refused)  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover
            pass


def place_in_stream(e: ServerError, offset: int) -> None:
    """A FEEDBACK list sent as several batches had the batch starting at
    ``offset`` refused: ``accepted_events`` = offset, an InvalidEvent's
    or CapacityExceeded's ``detail`` becomes the index in the whole list, and the message (which
    speaks of the batch) says so."""
    e.accepted_events = offset  # type: ignore[attr-defined]
    if offset == 0:
        return
    if isinstance(e, (InvalidEvent, CapacityExceeded)):
        e.detail += offset
    e.message = ("in the batch of events from index %d (the %d events before it were accepted): %s"
                 % (offset, offset, e.message))
    e.args = ("%s (%d): %s" % (e.code_name, e.code, e.message),)


def accepted_before(e: BaseException, offset: int) -> BaseException:
    """A FEEDBACK list's call failed between batches (re-learning the
    server's limits): ``accepted_events`` = offset, every batch before it
    acknowledged and nothing of the next one sent or accepted.  A copy for
    a shared connection error or timeout, as in :func:`mark_unacknowledged`
    (raise it ``from e``)."""
    if isinstance(e, (ConnectionError, TimeoutError)):
        e = copy.copy(e)
    try:
        e.accepted_events = offset  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - an exception without a __dict__
        pass
    return e


def mark_unacknowledged(e: BaseException, offset: int, size: int) -> BaseException:
    """A FEEDBACK list sent as several batches lost its connection (or
    timed out, or was interrupted) with the batch at ``offset`` (``size``
    events) sent and not acknowledged: ``accepted_events`` = offset (every
    batch before it was acknowledged) and ``unacknowledged`` = (offset,
    size), a batch the server may or may not have accepted.  Without them
    a caller could only resend the whole list, and count the acknowledged
    batches twice (review finding).

    Returns the exception to raise: for a lost connection or a timeout a
    copy of ``e`` (raise it ``from e``), since the same exception object is
    given to every request that was waiting on the connection, and
    concurrent feedback() calls would overwrite each other's positions
    (review finding); an interrupt or a cancellation is this caller's own."""
    e = accepted_before(e, offset)
    try:
        e.unacknowledged = (offset, size)  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - an exception without a __dict__
        pass
    return e


def split_oversized(oversized: "List[Tuple[int, List[Event], BaseException]]", limit: int,
                    errors: "Deque[BaseException]", refused: List[BaseException],
                    unacknowledged: List[Tuple[int, int]]) -> "List[Tuple[int, List[Event], BaseException]]":
    """A streamer's batches refused as larger than max_events (stream
    index, events, error), now that the limit is `limit`: those above it come
    back as chunks of at most `limit` to send again, in stream order; the
    others' refusals stand.  Empties `oversized`."""
    chunks: "List[Tuple[int, List[Event], BaseException]]" = []
    for offset, batch, error in sorted(oversized, key=lambda r: r[0]):
        if len(batch) <= limit:
            note_stream_failure(error, offset, len(batch), errors, refused, unacknowledged)
        else:
            chunks += [(offset + i, batch[i:i + limit], error) for i in range(0, len(batch), limit)]
    oversized.clear()
    return chunks


def refuse_unsent(unsent: "List[Tuple[int, List[Event], BaseException]]", errors: "Deque[BaseException]",
                  refused: List[BaseException], unacknowledged: List[Tuple[int, int]]) -> None:
    """Chunks a streamer could not send again (the connection broke): not
    accepted, so refusals, each with an error of its own (one object would
    carry only the last chunk's place)."""
    for offset, chunk, error in sorted(unsent, key=lambda r: r[0]):
        note_stream_failure(own_copy(error), offset, len(chunk), errors, refused, unacknowledged)


def own_copy(e: BaseException) -> BaseException:
    """A server error of its own, with the same code and message, for a
    refusal that several batches share (each gets its own place in the
    stream); other errors as they are."""
    if isinstance(e, ServerError):
        return type(e)(e.code, e.code_name, e.detail, e.message, fatal=e.fatal)
    return e


def warn_if_unsent(streamer: Any) -> None:
    """Called when a streamer is dropped: events it buffered, or refused
    batches it still had to send again, were never sent, and a warning says
    so rather than drop them silently (review finding, helper-71). A
    warning, not a flush: a finaliser must not wait on the network."""
    try:
        unsent = len(streamer._buffer) + sum(len(batch) for lst in (streamer._oversized, streamer._resend,
                                                                   streamer._recovering) for _, batch, _ in lst)
    except Exception:  # pragma: no cover - a half-built streamer, interpreter shutdown
        return
    if not unsent:
        return
    name = type(streamer).__name__
    left_by = getattr(streamer, "_left_by", None)
    if left_by is not None:
        # (Its with block was left by an error, and the flush there failed
        # or was not tried: "use it in a with block" would point the wrong
        # way. Review finding, helper-94.)
        advice = ("its with block was left by %s before they could be sent; call flush() on it again "
                  "(once the server answers)" % left_by)
    else:
        advice = "flush() it (or use it in %s block)" % ("an async with" if name.startswith("Async") else "a with")
    warnings.warn("%s dropped with %d events never sent: %s before letting it go" % (name, unsent, advice),
                  RuntimeWarning, stacklevel=3)


def mark_stream_refusal(e: BaseException, offset: int, n: int) -> None:
    """A streamer's batch of ``n`` events from stream index ``offset`` was
    refused: ``batch_offset``/``batch_events`` say which, and for an error
    naming an event (InvalidEvent, CapacityExceeded) ``stream_index`` and
    ``detail`` are that event's index in the stream, which the message also
    gives (``detail`` as for ``Client.feedback``, whose errors give the
    index in the whole list: review finding, helper-71, it was the index in
    the batch here)."""
    try:
        e.batch_offset = offset  # type: ignore[attr-defined]
        e.batch_events = n  # type: ignore[attr-defined]
        if isinstance(e, (InvalidEvent, CapacityExceeded)):
            e.detail += offset
            e.stream_index = e.detail  # type: ignore[union-attr]
            e.message = "stream index %d (batch of %d events from index %d, none of them accepted): %s" % (
                e.detail, n, offset, e.message)
            e.args = ("%s (%d): %s" % (e.code_name, e.code, e.message),)
    except AttributeError:  # pragma: no cover
        pass


def _ids(v: Optional[Iterable[int]], what: str) -> List[int]:
    if v is None:
        return []
    if isinstance(v, (str, bytes)) or not isinstance(v, abc.Iterable):
        raise TypeError("%s must be a sequence of %s ids (ints), not %r"
                        % (what, "user" if what == "users" else "item", v))
    out = []
    for x in v:
        if type(x) is not int:
            try:
                x = as_int(x, what)
            except TypeError:
                raise TypeError("%s must contain ints, not %r" % (what, x)) from None
        if not 0 <= x < 2 ** 64:
            raise ValueError("%s holds %d: ids are 1 ... 2^63-1" % (what, x))
        out.append(x)
    return out


def _user(v: int, what: str = "user") -> int:
    """An id argument: an int (TypeError otherwise) that fits the wire.
    (0 and 2^63 ... 2^64-1 fit, and the server refuses them by name.)"""
    x = as_int(v, what)
    if not 0 <= x < 2 ** 64:
        raise ValueError("%s = %d: ids are 1 ... 2^63-1" % (what, x))
    return x


def _count(v: int, what: str, low: int, high: int) -> int:
    """A count argument such as k: an int (TypeError otherwise; True is
    not 1) from low to high (ValueError otherwise)."""
    x = as_int(v, what)
    if not low <= x <= high:
        raise ValueError("%s = %d: it must be from %d to %d" % (what, x, low, high))
    return x


def checked_seconds(v: Optional[float], what: str, *, zero: bool = False) -> Optional[float]:
    """A duration argument: None (no limit) or a finite number of seconds,
    above 0 (at least 0 with ``zero``); TypeError or ValueError naming
    ``what`` otherwise (review finding, helper-71: ``timeout=0`` failed
    later as "Operation now in progress", ``timeout="5"`` deep in socket)."""
    if v is None:
        return None
    # (Any real number but bool: numpy's too.)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError("%s must be a number of seconds or None, not %r" % (what, v))
    f = float(v)
    if not (f >= 0 if zero else f > 0) or f != f or f == float("inf"):
        raise ValueError("%s = %r: it must be a finite number of seconds %s, or None for no limit"
                         % (what, v, "of at least 0" if zero else "above 0"))
    return f


def _shown(v: Any) -> str:
    """``v`` as an error message quotes it: its repr, cut to 40 characters."""
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def checked_text(v: str, what: str, most: Optional[int] = None) -> str:
    """A string argument: a str that UTF-8 can encode (a lone surrogate,
    from a badly decoded file, cannot), at most ``most`` bytes of it."""
    if not isinstance(v, str):
        raise TypeError("%s must be a str, not %r" % (what, v))
    try:
        size = len(v.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError("%s cannot be sent as UTF-8: %r at index %d is a lone surrogate (text decoded "
                         "with errors='surrogateescape'?)" % (what, v[e.start], e.start)) from None
    if most is not None and size > most:
        raise ValueError("%s is %d bytes (UTF-8); at most %d" % (what, size, most))
    return v




def hello_failed(e: BaseException, host: str, port: int, first_bytes: bytes) -> BaseException:
    """The error to raise when a new connection's HELLO got no proper answer.

    A ServerError (a wrong token) is the server's own answer and is raised
    as it is.  Otherwise the peer did not answer like a Perennial server (a
    web server's "HTTP/1.1 400" read as a frame length, silence, a close),
    and the error, of the same class, says so and quotes its first bytes."""
    if isinstance(e, ServerError) or not isinstance(e, (TimeoutError, ProtocolError, ConnectionError)):
        return e
    if first_bytes:
        message = ("%s:%s did not answer HELLO like a Perennial server (%s; its first bytes were %r): "
                   "is a Perennial server listening there?" % (host, port, e, first_bytes[:24]))
    else:
        # (Silence or a close is also a Perennial server stopped, killed or
        # restarting: not called a foreign one, helper-89.)
        message = ("%s:%s accepted the connection but sent no answer to HELLO (%s): the server there "
                   "may be stopping, restarting or stalled, or not a Perennial server"
                   % (host, port, e))
    if isinstance(e, ProtocolError):
        return ProtocolError(message, e.code_name, fatal=True)
    return type(e)(message)


def hello(client_name: str, token: Optional[str]) -> Command:
    body = encode_payload(Opcode.HELLO, False, {"protocol_version": VERSION,
                                                "client_name": client_name,
                                                # (Surrounding whitespace is not part of a
                                                # token, as in the server's token files: a
                                                # token read from a file keeps its newline.)
                                                "token": (token or "").strip()})

    def parse(p: Dict[str, Any]) -> ServerInfo:
        return ServerInfo(p["protocol_version"], p["max_frame_bytes"], p["max_items"],
                          p["max_events"], p["server_name"])
    return Command(Opcode.HELLO, body, parse)


def ping() -> Command:
    return Command(Opcode.PING, b"", lambda p: True)


def recommend(user: int, k: int = 10, *, scorer: Optional[str] = None,
              session: Optional[Sequence[int]] = None, session_id: Optional[str] = None,
              exclude: Optional[Iterable[int]] = None, candidates: Optional[Iterable[int]] = None,
              min_applied_seq: int = 0, shadow: Optional[str] = None) -> Command:
    body = encode_payload(Opcode.RECOMMEND, False, {
        "user": _user(user), "k": _count(k, "k", 1, 65535),
        "min_applied_seq": _count(min_applied_seq, "min_applied_seq", 0, 2 ** 64 - 1),
        "scorer": scorer or "",
        "session_id": checked_text(session_id, "session_id", MAX_SESSION_ID_BYTES) if session_id is not None else "",
        "session_items": _ids(session, "session"), "exclude": _ids(exclude, "exclude"),
        "candidates": _ids(candidates, "candidates"), "shadow_scorer": shadow or ""})

    def parse(p: Dict[str, Any]) -> List[Recommendation]:
        return [Recommendation(item, score) for item, score in p["items"]]
    return Command(Opcode.RECOMMEND, body, parse)


def score(user: int, items: Sequence[int], *, scorer: Optional[str] = None,
          session: Optional[Sequence[int]] = None) -> Command:
    item_list = _ids(items, "items")
    body = encode_payload(Opcode.SCORE, False, {
        "user": _user(user), "scorer": scorer or "",
        "session_items": _ids(session, "session"), "items": item_list})

    def parse(p: Dict[str, Any]) -> List[Score]:
        scores = p["scores"]
        if len(scores) != len(item_list):
            raise ProtocolError("SCORE reply has %d scores for %d items"
                                % (len(scores), len(item_list)), "MALFORMED_PAYLOAD")
        return [Score(item, s, bool(known)) for item, (s, known) in zip(item_list, scores)]
    return Command(Opcode.SCORE, body, parse)


def _ack(p: Dict[str, Any]) -> FeedbackAck:
    return FeedbackAck(p["first_seq"], p["last_seq"], p["durable_seq"], p["applied_seq"])


def normalize_events(events: Iterable[EventLike]) -> List[Event]:
    if isinstance(events, (Event, Mapping)):
        raise TypeError("feedback() takes a list of events; wrap a single event in a list")
    return [to_event(e) for e in events]


def feedback(events: Sequence[Event]) -> Command:
    body = encode_payload(Opcode.FEEDBACK, False, {"events": [e.to_wire() for e in events]})
    return Command(Opcode.FEEDBACK, body, _ack, events=len(events))


def upsert_item(item: int, item_text: str, attributes: Attributes = None) -> Command:
    if attributes is None:
        attrs: List[Tuple[str, str]] = []
    elif isinstance(attributes, Mapping):
        attrs = list(attributes.items())
    else:
        # (Each element a (key, value) pair, named when it is not: unpacking
        # 'kv' said only "not enough values to unpack", and 'ab' was stored
        # as a='b': review finding, helper-89.)
        if isinstance(attributes, (str, bytes)) or not isinstance(attributes, abc.Iterable):
            raise TypeError("attributes must be a mapping or a sequence of (key, value) pairs, not %r"
                            % (attributes,))
        attrs = []
        for a in attributes:
            if isinstance(a, (str, bytes)) or not isinstance(a, abc.Sequence) or len(a) != 2:
                raise TypeError("attributes must hold (key, value) pairs, not %r" % (a,))
            attrs.append((a[0], a[1]))
    # (The wire holds each key and value in at most 65,535 bytes; said so,
    # naming the key, rather than as an encoder's length error: review
    # finding, helper-94.)
    attrs = [(checked_text(k, "attribute key %s" % _shown(k), 0xFFFF), checked_text(v, "attribute %s" % _shown(k), 0xFFFF))
             for k, v in attrs]
    body = encode_payload(Opcode.UPSERT_ITEM, False, {
        "item": _user(item, "item"), "text": checked_text(item_text, "text"), "attributes": attrs})

    def parse(p: Dict[str, Any]) -> UpsertResult:
        return UpsertResult(bool(p["created"]), bool(p["truncated"]))
    return Command(Opcode.UPSERT_ITEM, body, parse)


def _deletion(opcode: Opcode, field: str, ids: Iterable[int]) -> Command:
    id_list = _ids(ids, field)
    if not id_list:
        raise ValueError("delete_%s() needs at least one id" % field)
    body = encode_payload(opcode, False, {field: id_list})
    return Command(opcode, body, lambda p: int(p["deleted"]))


def delete_items(items: Iterable[int]) -> Command:
    return _deletion(Opcode.DELETE_ITEMS, "items", items)


def delete_users(users: Iterable[int]) -> Command:
    return _deletion(Opcode.DELETE_USERS, "users", users)


def stats() -> Command:
    return Command(Opcode.STATS, b"", lambda p: {name: value for name, value in p["counters"]})


def reload() -> Command:
    return Command(Opcode.RELOAD, b"", lambda p: None, writes_model=True)


def snapshot() -> Command:
    return Command(Opcode.SNAPSHOT, b"", lambda p: Snapshot(p["seq"], p["version"]), writes_model=True)


def shutdown() -> Command:
    return Command(Opcode.SHUTDOWN, b"", lambda p: None)


def batch_at(events: List[Event], offset: int, size: int) -> List[Event]:
    """The FEEDBACK batch starting at ``offset`` under a max_events of ``size``."""
    return events[offset:offset + max(1, size)]


class PipelineCommands:
    """The queuing methods shared by Pipeline and AsyncPipeline.

    Each method queues one request and returns the pipeline, so calls chain:
    ``p.ping().recommend(1).stats()``.  Argument errors (ValueError,
    TypeError) are raised when the call is queued.
    """

    def _queue(self, cmd: Command) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def hello(self, client_name: Optional[str] = None, token: Optional[str] = None) -> Any:
        """Queue a HELLO, by default with the client's name and token (it
        went without them, and a server with a token refused it: review
        finding); its result is a :class:`ServerInfo`, which also becomes
        the client's ``server_info``."""
        client = getattr(self, "_client", None)
        name = client_name or getattr(client, "client_name", None) or "perennial-py"
        return self._queue(hello(name, token if token is not None else getattr(client, "token", None)))

    def ping(self) -> Any:
        """Queue a PING; its result is True."""
        return self._queue(ping())

    def recommend(self, user: int, k: int = 10, *, scorer: Optional[str] = None,
                  session: Optional[Sequence[int]] = None, session_id: Optional[str] = None,
                  exclude: Optional[Iterable[int]] = None,
                  candidates: Optional[Iterable[int]] = None, min_applied_seq: int = 0,
                  shadow: Optional[str] = None) -> Any:
        """Queue a RECOMMEND; its result is a list of :class:`Recommendation`."""
        return self._queue(recommend(user, k, scorer=scorer, session=session,
                                     session_id=session_id, exclude=exclude,
                                     candidates=candidates, min_applied_seq=min_applied_seq,
                                     shadow=shadow))

    def score(self, user: int, items: Sequence[int], *, scorer: Optional[str] = None,
              session: Optional[Sequence[int]] = None) -> Any:
        """Queue a SCORE; its result is a list of :class:`Score`."""
        return self._queue(score(user, items, scorer=scorer, session=session))

    def feedback(self, events: Iterable[EventLike]) -> Any:
        """Queue one FEEDBACK batch (not split); its result is a :class:`FeedbackAck`.

        Raises ValueError for an empty batch or an invalid event (see Event).
        """
        evs = normalize_events(events)
        if not evs:
            raise ValueError("feedback() needs at least one event")
        return self._queue(feedback(evs))

    def upsert_item(self, item: int, text: str, attributes: Attributes = None) -> Any:
        """Queue an UPSERT_ITEM; its result is an :class:`UpsertResult`."""
        return self._queue(upsert_item(item, text, attributes))

    def delete_items(self, items: Iterable[int]) -> Any:
        """Queue a DELETE_ITEMS; its result is how many of the items the server held."""
        return self._queue(delete_items(items))

    def delete_users(self, users: Iterable[int]) -> Any:
        """Queue a DELETE_USERS; its result is how many of the users the server held."""
        return self._queue(delete_users(users))

    def stats(self) -> Any:
        """Queue a STATS; its result is a dict of counters."""
        return self._queue(stats())

    def reload(self) -> Any:
        """Queue a RELOAD; its result is None."""
        return self._queue(reload())

    def snapshot(self) -> Any:
        """Queue a SNAPSHOT; its result is a :class:`Snapshot`: the sequence it covers, with ``.version``."""
        return self._queue(snapshot())


def _error_code(name: str) -> int:
    if name in ERROR_CODES:
        return ERROR_CODES[name]
    if name.startswith("CODE_") and name[5:].isdigit():
        return int(name[5:])
    return 0


def _unauthorized_hint(opcode: int) -> str:
    """What a caller changes when the server refuses a request UNAUTHORIZED:
    the server's message speaks of HELLO, which this client sends itself."""
    if opcode == Opcode.HELLO:
        return ("the client sends its token= argument: give it one of the tokens (one a line) in the server's "
                "auth.token_file, or in auth.admin_token_file")
    with_token = "a client made with token= one of the tokens in the server's %s, and hello=True, the default"
    if opcode in (Opcode.RELOAD, Opcode.SNAPSHOT):
        return "admin requests need " + with_token % "auth.admin_token_file"
    if opcode == Opcode.SHUTDOWN:
        return ("SHUTDOWN needs " + with_token % "auth.admin_token_file"
                + ", or a server with server.allow_shutdown = true")
    return "use " + with_token % "auth.token_file"


def resolve_reply(item: Union[Frame, ProtocolError], request_id: int,
                  cmd: Command) -> Tuple[Any, bool]:
    """Match one received frame (or a non-fatal decode error) to the request it answers.

    Returns ``(result, fatal)``: ``result`` is the parsed result or an
    exception instance; ``fatal`` tells that the connection can no longer be
    used (the server closes it, or the reply stream is out of step).
    """
    if isinstance(item, ProtocolError):
        return item, item.fatal
    frame = item
    if frame.opcode == Opcode.ERROR:
        p = frame.payload
        code = _error_code(p["code"])
        fatal = code in FATAL_CODES
        if not fatal and frame.request_id != request_id:
            return ProtocolError("ERROR reply for request id %d while waiting for %d"
                                 % (frame.request_id, request_id), "UNEXPECTED_REPLY",
                                 fatal=True, request_id=frame.request_id), True
        message = p["message"]
        if code == ERROR_CODES["UNAUTHORIZED"]:
            message = "%s (%s)" % (message, _unauthorized_hint(cmd.opcode)) if message else _unauthorized_hint(cmd.opcode)
        return error_from_reply(code, p["detail"], message, fatal), fatal
    if frame.request_id != request_id:
        return ProtocolError("reply for request id %d while waiting for %d"
                             % (frame.request_id, request_id), "UNEXPECTED_REPLY",
                             fatal=True, request_id=frame.request_id), True
    if frame.opcode != cmd.opcode:
        return ProtocolError("%s reply to a %s request" % (frame.opcode_name,
                                                          Opcode(cmd.opcode).name),
                             "UNEXPECTED_REPLY", fatal=True,
                             request_id=frame.request_id), True
    try:
        return cmd.parse(frame.payload), False
    except ProtocolError as e:
        e.request_id = request_id
        return e, False
