"""Blocking client for the Perennial recommendation server."""

from __future__ import annotations

import functools
import os
import selectors
import socket
import threading
import time
import warnings
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple, Type, TypeVar, Union, cast

from . import _commands as _c
from ._commands import Attributes, Command, resolve_reply
from .errors import (ConnectionError, InvalidArgument, InvalidEvent, PerennialError, ProtocolError, Recovering,
                     ServerError, TimeoutError)
from .protocol import (DEFAULT_LIMITS, Frame, FrameDecoder, Limits, encode_request)
from .types import (Event, EventLike, FeedbackAck, Recommendation, Score, ServerInfo, Snapshot,
                    UpsertResult, to_event)

__all__ = ["Client", "Pipeline", "FeedbackStreamer", "REPLY_LIMITS"]

#: Limits used to decode the server's replies: only the frame size matters
#: for replies, and it is generous so that a server with larger limits works.
REPLY_LIMITS = Limits(max_frame_bytes=64 << 20)

_CHUNK = 256 * 1024
_NOTSET: Any = object()

Sink = Callable[[Any], None]


class _Pending:
    __slots__ = ("rid", "cmd", "sink", "result", "reply")

    def __init__(self, rid: int, cmd: Command, sink: Optional[Sink]) -> None:
        self.rid = rid
        self.cmd = cmd
        self.sink = sink
        self.result: Any = _NOTSET
        #: Its reply, once taken from the inbox (kept here, so an
        #: interruption between taking it and settling loses nothing).
        self.reply: Any = None


def _raise_if_error(result: Any) -> Any:
    if isinstance(result, BaseException):
        raise result
    return result


#: Every Client, so a forked child can give each a fresh lock (one held by
#: a thread of the parent would be held for ever in the child).
_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _reset_locks_in_child() -> None:
    for c in list(_clients):
        c._lock = threading.RLock()
        c._depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_in_child)


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _serialised(method: _Method) -> _Method:
    """Run the call holding its client's lock: threads sharing a Client (or
    its pipelines and streamers) take turns on its one connection, each call
    whole, instead of reading each other's replies.  (Typed to return the
    method's own signature, so type checkers still see each method's
    arguments: review finding, helper-89.)"""
    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = self if isinstance(self, Client) else self._client
        with client._lock:
            # The outermost call notes how many close() calls came before
            # it: one from another thread while it runs (when there may be
            # no socket yet to shut down) ends it (`_ensure_connected`).
            client._depth += 1
            if client._depth == 1:
                client._closes_before_call = client._closes
            try:
                return method(self, *args, **kwargs)
            finally:
                client._depth -= 1
    return cast(_Method, locked)


class Client:
    """A blocking connection to one Perennial server.

    The connection is opened on first use (or by :meth:`connect`) and, after
    it broke, opened again by the next call.  When ``hello`` is true (the
    default) the client starts every connection with HELLO, sending ``token``
    and learning the server's limits (:attr:`server_info`).

    Args:
        host, port: where the server listens.
        timeout: seconds to wait for the connection and for each reply
            (None: forever).  On a timeout the call raises
            :class:`perennial.TimeoutError` and the connection is closed.
        admin_timeout: seconds to wait for the reply to :meth:`snapshot`
            and to :meth:`reload`, which may write the whole model first
            (longer the larger the model); the longer of this and
            ``timeout`` applies (None: forever).
        token: one of the server's tokens (a line of its ``auth.token_file``,
            or of ``auth.admin_token_file`` for admin requests), when it has them.
        client_name: sent in HELLO.
        hello: send HELLO when connecting (required when the server has a
            token).
        recovery_wait: seconds a call goes on sending a write again, every
            50 ms, while the server answers :class:`Recovering` (it is
            replaying its log after a restart; nothing of the refused write
            was accepted), after the server's own hold of ``limits.wait_ms``
            on the connection's first write (None: until the replay ends;
            0: raise at once).  Feedback streamers send refused batches
            again the same way (see :class:`FeedbackStreamer`).

    A Client may be shared between threads: their calls take turns on its
    one connection (a lock held for each whole call), so a slow call makes
    the others wait. For concurrency, use one Client per thread, or
    :class:`AsyncClient`, which pipelines many tasks' requests.

    Example::

        with perennial.Client("127.0.0.1", 7878) as c:
            c.feedback([perennial.Event(user=1, item=42)])
            for rec in c.recommend(user=1, k=5):
                print(rec.item, rec.score)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 7878, *,
                 timeout: Optional[float] = 10.0, admin_timeout: Optional[float] = 600.0,
                 token: Optional[str] = None, client_name: str = "perennial-py",
                 hello: bool = True, recovery_wait: Optional[float] = 60.0) -> None:
        self.host = host
        self.recovery_wait = _c.checked_seconds(recovery_wait, "recovery_wait", zero=True)
        self.port = port
        self.timeout = _c.checked_seconds(timeout, "timeout")
        self.admin_timeout = _c.checked_seconds(admin_timeout, "admin_timeout")
        self.token = token
        self.client_name = client_name
        self._hello = hello
        #: The HELLO reply of the current (or last) connection.
        self.server_info: Optional[ServerInfo] = None
        self._sock: Optional[socket.socket] = None
        self._sel: Optional[selectors.BaseSelector] = None
        self._decoder = FrameDecoder(REPLY_LIMITS)
        #: The connection's first bytes from the server (quoted when HELLO fails).
        self._first_bytes = b""
        self._pending: Deque[_Pending] = deque()
        self._inbox: Deque[Union[Frame, ProtocolError]] = deque()
        self._next_rid = 1
        #: The process that opened the connection (see `_forked`).
        self._pid = os.getpid()
        #: Held for each public call (`_serialised`).
        self._lock = threading.RLock()
        #: How many times close() was called, and how many before the
        #: running call took the lock: a call that finds them different
        #: when it connects was closed by another thread (`_ensure_connected`).
        self._closes = 0
        self._closes_before_call = 0
        self._depth = 0
        _clients.add(self)

    def __repr__(self) -> str:
        return "Client(%r, %r, connected=%r)" % (self.host, self.port, self.connected)

    # -- connection --------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._sock is not None

    @property
    def max_events(self) -> int:
        """Most events per FEEDBACK frame: the server's (from HELLO) or the default 10,000."""
        return self.server_info.max_events if self.server_info else DEFAULT_LIMITS.max_events

    @_serialised
    def connect(self) -> "Client":
        """Open the connection now (and send HELLO) instead of on first use.

        Returns the client.  Raises ConnectionError or TimeoutError when the
        server cannot be reached, ServerError (e.g. Unauthorized) when it
        refuses the HELLO.
        """
        self._ensure_connected()
        return self

    def _forked(self) -> bool:
        """Whether this process is a fork of the one that opened the
        connection (a client made at import time, a preloading web server,
        multiprocessing).  Parent and child would share one socket and one
        request numbering, so each could read the other's replies as its
        own: a recommendation for another user (review finding).  The child
        forgets the connection, with the parent's requests, and opens its
        own; closing its copy of the descriptor leaves the parent's open.
        Requests the parent left unanswered (a streamer's batches in flight)
        fail here with ConnectionError: their replies go to the parent."""
        if self._sock is None or self._pid == os.getpid():
            return False
        self._fail_all(ConnectionError("the connection was opened before fork(): its unanswered requests "
                                       "are answered to the parent process"))
        return True

    def close(self) -> None:
        """Close the connection.  Requests still unanswered fail with ConnectionError.

        The client may be used again: the next call reconnects.  Called
        while another thread waits in a call on this client, it shuts the
        connection down first, so that call ends at once with ConnectionError
        instead of the close waiting for it.
        """
        if not self._lock.acquire(blocking=False):
            # (Counted only when a call holds the lock: it noted the count
            # when it took it, so it sees this one.)
            self._closes += 1
            sock = self._sock
            if sock is not None and not self._forked():
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._lock.acquire()
        try:
            if self._forked():
                return
            if self._pending:
                self._fail_all(ConnectionError("connection closed by the client"))
            else:
                self._disconnect()
        finally:
            self._lock.release()

    def __del__(self) -> None:
        # The selector keeps the socket in a reference cycle (selector <->
        # its key map), so without this a dropped client's connection stayed
        # open until the garbage collector ran.
        try:
            self._disconnect()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _disconnect(self) -> None:
        sock, sel = self._sock, self._sel
        self._sock = None
        self._sel = None
        if sel is not None:
            try:
                sel.close()
            except Exception:  # pragma: no cover
                pass
        if sock is not None:
            try:
                sock.close()
            except OSError:  # pragma: no cover
                pass
        self._decoder = FrameDecoder(REPLY_LIMITS)
        self._inbox.clear()

    @property
    def max_frame_bytes(self) -> int:
        """Longest request frame: the server's (from HELLO) or the default 4 MiB."""
        return self.server_info.max_frame_bytes if self.server_info else DEFAULT_LIMITS.max_frame_bytes

    def _ensure_connected(self) -> None:
        self._forked()
        if self._sock is not None and self._pending:
            # Requests sent without waiting (a streamer's batches): take the
            # replies that are already here, so a server that answered them
            # and then closed the idle connection is noticed below.
            self._take_available()
        if self._sock is not None:
            if self._pending or self._alive():
                return
            # The server closed this idle connection (it restarted, or its
            # idle timeout passed): open a new one rather than fail this call.
            self._disconnect()
        if self._pending:
            # (Left by an interruption that closed the connection before
            # they were told: their replies will never come on a new one.)
            self._fail_all(ConnectionError("the connection was closed before a reply came"))
        closes = self._closes_before_call if self._depth else self._closes
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except socket.timeout:
            raise TimeoutError("timed out connecting to %s:%s" % (self.host, self.port)) from None
        except OSError as e:
            raise ConnectionError("cannot connect to %s:%s: %s" % (self.host, self.port, e)) from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not TCP
            pass
        sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        self._sock, self._sel = sock, sel
        if self._closes != closes:
            # Another thread's close() came while this call was connecting,
            # when there was no socket yet for it to shut down: this call
            # ends as it would have on the open connection. (Checked after
            # the socket is published: a close() that saw no socket has
            # counted itself by now, and one that came later shuts it down.)
            self._disconnect()
            raise ConnectionError("connection closed by the client while connecting to %s:%s"
                                  % (self.host, self.port))
        self._pid = os.getpid()
        self._decoder = FrameDecoder(REPLY_LIMITS)
        self._first_bytes = b""
        self._inbox.clear()
        self._next_rid = 1
        if self._hello:
            try:
                result = self._execute([_c.hello(self.client_name, self.token)], connect=False)[0]
            except BaseException:
                # (Interrupted before its HELLO was answered: a connection
                # left open without one would refuse every later call.)
                self._disconnect()
                raise
            if isinstance(result, BaseException):
                self._disconnect()
                raise _c.hello_failed(result, self.host, self.port, self._first_bytes)
            self.server_info = result

    def _alive(self) -> bool:
        """Whether the idle connection is still open: nothing may be waiting
        to be read on it (no request is unanswered), so readable means the
        server closed it (EOF or an error, e.g. SHUTTING_DOWN)."""
        assert self._sock is not None
        try:
            self._sock.recv(1, socket.MSG_PEEK)  # (the socket is non-blocking)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        return False

    def _take_available(self) -> None:
        """Read, without waiting, the replies already received, and settle
        them.  If the server closed the connection after answering every
        pending request, the connection is dropped (the next call opens a
        new one); requests it left unanswered fail with ConnectionError."""
        assert self._sock is not None and self._sel is not None
        try:
            try:
                while self._sock is not None and self._sel.select(0):
                    self._recv()
            except PerennialError as e:
                self._settle()
                if self._pending:
                    self._fail_all(e)
                else:
                    self._disconnect()
                return
            self._settle()
        except BaseException as e:
            self._abandon(e)
            raise

    def _take_rid(self) -> int:
        rid = self._next_rid
        self._next_rid = rid + 1 if rid < 0xFFFFFFFF else 1
        return rid

    # -- I/O engine ----------------------------------------------------------
    #
    # Every request goes into self._pending in send order; received frames go
    # into self._inbox; _settle() pairs them up in order.  _pump() writes and
    # reads at the same time so that a large pipeline cannot deadlock against
    # the server's own backpressure.

    def _pump(self, data: bytes, until: int) -> None:
        sock, sel = self._sock, self._sel
        if sock is None or sel is None:
            raise ConnectionError("not connected")
        view = memoryview(data)
        sent, total = 0, len(data)
        mode = selectors.EVENT_READ
        try:
            while True:
                while sent < total:
                    try:
                        sent += sock.send(view[sent:sent + _CHUNK])
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:
                        raise ConnectionError("sending to %s:%s failed: %s"
                                              % (self.host, self.port, e)) from e
                writing = sent < total
                if not writing and len(self._inbox) >= until:
                    return
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
                if want != mode:
                    sel.modify(sock, want)
                    mode = want
                # (Replies come in request order: the wait is for the
                # oldest request not yet answered.)
                oldest = self._pending[len(self._inbox)].cmd if len(self._inbox) < len(self._pending) else None
                wait = _c.reply_timeout([oldest] if oldest else [], self.timeout, self.admin_timeout)
                ready = sel.select(wait)
                if not ready:
                    raise TimeoutError(_c.no_reply_message(self.host, self.port, wait, oldest))
                for _key, mask in ready:
                    if mask & selectors.EVENT_READ:
                        self._recv()
        finally:
            if mode != selectors.EVENT_READ:
                try:
                    sel.modify(sock, selectors.EVENT_READ)
                except (OSError, ValueError, KeyError):  # pragma: no cover
                    pass

    def _recv(self) -> None:
        assert self._sock is not None
        try:
            chunk = self._sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            raise ConnectionError("receiving from %s:%s failed: %s"
                                  % (self.host, self.port, e)) from e
        if not chunk:
            raise ConnectionError("the server closed the connection")
        if len(self._first_bytes) < 24:
            self._first_bytes += chunk[:24]
        self._decoder.feed(chunk)
        while True:
            try:
                frame = self._decoder.next_frame()
            except ProtocolError as e:
                if e.fatal:
                    raise
                self._inbox.append(e)
                continue
            if frame is None:
                return
            self._inbox.append(frame)

    def _transfer(self, data: bytes, until: int) -> None:
        """Send ``data`` and read until ``until`` replies are in; then settle them.

        An interruption (KeyboardInterrupt, a signal handler's exception)
        may leave a request half written, which would garble every frame
        after it: the connection is closed, its unanswered requests fail
        with ConnectionError (the server may have accepted some), and the
        interruption goes on up. The next call opens a new connection.
        """
        try:
            failure: Optional[PerennialError] = None
            try:
                self._pump(data, until)
            except PerennialError as e:
                failure = e
            self._settle()
            if failure is not None:
                self._fail_all(failure)
        except BaseException as e:
            self._abandon(e)
            raise

    def _abandon(self, interruption: BaseException) -> None:
        """After an interruption anywhere between queuing a request and
        settling its reply: settle what was received, close the
        connection, fail the rest (each request hears one outcome)."""
        self._settle()
        self._fail_all(ConnectionError("interrupted (%s) while talking to %s:%s; the connection was closed"
                                       % (type(interruption).__name__, self.host, self.port)))

    # (Settling and failing hand each request its outcome before taking it
    # off the queue, and skip one that has it already: an interruption in
    # between neither loses an outcome nor delivers one twice.)

    def _settle(self) -> None:
        while self._pending and (self._pending[0].reply is not None or self._inbox):
            p = self._pending[0]
            if p.reply is None:
                p.reply = self._inbox.popleft()
            result, fatal = resolve_reply(p.reply, p.rid, p.cmd)
            if p.result is _NOTSET:
                self._deliver(p, result)
            self._pending.popleft()
            if fatal:
                self._fail_all(ConnectionError("connection closed after an earlier error: %s"
                                               % (result,)))
                return

    def _fail_all(self, exc: BaseException) -> None:
        self._disconnect()
        while self._pending:
            p = self._pending[0]
            if p.result is _NOTSET:
                self._deliver(p, exc)
            self._pending.popleft()

    @staticmethod
    def _deliver(p: _Pending, result: Any) -> None:
        # (The sink first: interrupted inside it, the request is delivered
        # again, and a streamer's sink ignores a second delivery.)
        if p.sink is not None:
            p.sink(result)
        p.result = result

    def _execute(self, cmds: Sequence[Command], connect: bool = True) -> List[Any]:
        """Send ``cmds`` in one write, wait for all replies; results (or exceptions) in order."""
        if connect:
            self._ensure_connected()
        for cmd in cmds:
            _c.check_frame_size(cmd, self.max_frame_bytes)
        mine = [_Pending(self._take_rid(), cmd, None) for cmd in cmds]
        data = b"".join(encode_request(p.cmd.opcode, p.rid, p.cmd.body) for p in mine)
        try:
            self._pending.extend(mine)
            self._transfer(data, len(self._pending))
        except BaseException as e:
            # (Interrupted before _transfer took over: queued, maybe unsent.)
            if any(p.result is _NOTSET for p in mine):
                self._abandon(e)
            raise
        out = []
        for p in mine:
            if p.result is _NOTSET:  # pragma: no cover - defensive
                p.result = ConnectionError("no reply")
            out.append(p.result)
        return out

    def _call(self, cmd: Command) -> Any:
        result = self._execute([cmd])[0]
        if isinstance(result, Recovering):
            result = self._send_again_while_recovering(cmd, result)
        return _raise_if_error(result)

    def _send_again_while_recovering(self, cmd: Command, result: Any) -> Any:
        # (Nothing of a refused write was accepted: sending it again cannot
        # apply it twice. The server held the connection's first write for
        # its limits.wait_ms; it refuses the next ones at once.)
        deadline = None if self.recovery_wait is None else time.monotonic() + self.recovery_wait
        while isinstance(result, Recovering) and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.05)
            result = self._execute([cmd])[0]
        return result

    def _queue_nowait(self, cmd: Command, sink: Sink) -> _Pending:
        """Make ``cmd`` the next request of the connection, unsent; raises
        (and nothing is queued) when the connection cannot be opened or the
        frame is too large. Once queued, ``sink`` hears exactly one
        outcome: the reply, or the failure that ended the connection.
        :meth:`_send_queued` writes it."""
        self._ensure_connected()
        _c.check_frame_size(cmd, self.max_frame_bytes)
        p = _Pending(self._take_rid(), cmd, sink)
        self._pending.append(p)
        return p

    def _send_queued(self, p: _Pending) -> None:
        """Write a request :meth:`_queue_nowait` queued, without waiting."""
        self._transfer(encode_request(p.cmd.opcode, p.rid, p.cmd.body), 0)

    def _wait_one(self) -> None:
        """Wait until the oldest unanswered request has its result."""
        if not self._pending or self._forked():
            return
        if self._sock is None:
            self._fail_all(ConnectionError("not connected"))
            return
        self._transfer(b"", 1)

    # -- commands ------------------------------------------------------------

    @_serialised
    def hello(self) -> ServerInfo:
        """Send HELLO (client name and token); return the server's version, limits and name.

        Raises Unauthorized for a wrong token, ConnectionError/TimeoutError.
        """
        self._ensure_connected()
        info: ServerInfo = self._call(_c.hello(self.client_name, self.token))
        self.server_info = info
        return info

    @_serialised
    def ping(self) -> bool:
        """Round-trip a PING; returns True.  Raises ConnectionError/TimeoutError."""
        return bool(self._call(_c.ping()))

    @_serialised
    def recommend(self, user: int, k: int = 10, *, scorer: Optional[str] = None,
                  session: Optional[Sequence[int]] = None, session_id: Optional[str] = None,
                  exclude: Optional[Iterable[int]] = None,
                  candidates: Optional[Iterable[int]] = None,
                  min_applied_seq: int = 0, shadow: Optional[str] = None) -> List[Recommendation]:
        """Recommend up to ``k`` items for ``user``, best first.

        Args:
            user: the user id.
            k: how many items (1 … the server's max_items).
            scorer: a scorer name; None for the default route's scorer.
            session: the session's recent item ids, most recent last.
            session_id: an opaque session id for session scorers.
            exclude: items never to return (besides the user's own history).
            candidates: if given and non-empty, rank only these items.
            min_applied_seq: wait until the server has learned this feedback
                sequence number (read-your-writes across connections).
            shadow: a second scorer (or route) the server also asks, without
                returning its answer, to compare it live with ``scorer``: see
                the ``shadow_*`` counters of :meth:`stats`.

        Raises:
            ValueError, TypeError: an argument the client can tell is wrong
                before sending (k below 1, a session_id over 256 bytes, ...).
            UnknownScorer: the scorer is not loaded.
            InvalidArgument: k above the server's max_items, an unknown
                id's bound, or a list too long for the server.
            ServerError: e.g. TIMEOUT waiting for ``min_applied_seq``.
        """
        return self._call(_c.recommend(user, k, scorer=scorer, session=session,  # type: ignore[no-any-return]
                                       session_id=session_id, exclude=exclude,
                                       candidates=candidates, min_applied_seq=min_applied_seq,
                                       shadow=shadow))

    @_serialised
    def score(self, user: int, items: Sequence[int], *, scorer: Optional[str] = None,
              session: Optional[Sequence[int]] = None) -> List[Score]:
        """Score ``items`` for ``user``, in the order given.

        ``Score.known`` is False for an item the server has never seen.
        Raises UnknownScorer, InvalidArgument (no items, too many, bad id).
        """
        return self._call(_c.score(user, items, scorer=scorer, session=session))  # type: ignore[no-any-return]

    @_serialised
    def feedback(self, events: Iterable[EventLike]) -> FeedbackAck:
        """Send feedback events and return once the server acknowledged them.

        ``events`` are :class:`Event` objects (or tuples / dicts with its
        fields).  A list longer than the server's ``max_events`` is sent as
        several batches, one after the other; the ack of the last batch is
        returned.  Each batch is all-or-nothing.

        Raises:
            ValueError: empty list, unknown kind, rating without a value.
            InvalidEvent: the server refused a batch; ``detail`` is the index
                of the bad event in ``events`` and ``accepted_events`` how many
                events before its batch were accepted.
        """
        evs = _c.normalize_events(events)
        if not evs:
            raise ValueError("feedback() needs at least one event")
        try:
            self._ensure_connected()  # learn max_events first
        except PerennialError as e:
            # (Nothing sent: none accepted, as a caller reading how far the
            # call got expects; it was None: review finding, helper-94.)
            e.accepted_events = 0  # type: ignore[attr-defined]
            raise
        ack: Optional[FeedbackAck] = None
        offset = 0
        while offset < len(evs):
            batch = _c.batch_at(evs, offset, self.max_events)
            try:
                ack = self._call(_c.feedback(batch))
            except ServerError as e:
                # A RELOAD may have lowered max_events since the HELLO: the
                # batch was refused whole (INVALID_ARGUMENT; FRAME_TOO_LARGE
                # when max_frame_bytes went down with it, and the server
                # closed the connection), so learn the limits and resend it
                # split.
                relearn = isinstance(e, InvalidArgument) or e.code_name == "FRAME_TOO_LARGE"
                if relearn and len(batch) > 1 and self._limit_below(len(batch), offset):
                    continue
                _c.place_in_stream(e, offset)
                raise
            except (ConnectionError, TimeoutError, KeyboardInterrupt) as e:
                mine = _c.mark_unacknowledged(e, offset, len(batch))
                if mine is e:
                    raise
                raise mine from e
            offset += len(batch)
        assert ack is not None
        return ack

    def _limit_below(self, size: int, offset: int) -> bool:
        """feedback(): whether the server's max_events, learned again with a
        HELLO (a RELOAD may have lowered it), is below ``size``. A failing
        HELLO is raised saying how many events were accepted before it
        (review finding, helper-95: it said nothing)."""
        try:
            return self.hello().max_events < size
        except PerennialError as e:
            mine = _c.accepted_before(e, offset)
            if mine is e:
                raise
            raise mine from e

    @_serialised
    def upsert_item(self, item: int, text: str, attributes: Attributes = None) -> UpsertResult:
        """Create or replace an item's text and attributes (a dict or (key, value) pairs).

        Returns whether the item was created and whether its text was
        truncated to the server's ``max_text_bytes``.  Raises InvalidArgument
        for a bad id.
        """
        return self._call(_c.upsert_item(item, text, attributes))  # type: ignore[no-any-return]

    @_serialised
    def delete_items(self, items: Iterable[int]) -> int:
        """Delete items for good: a discontinued product, a withdrawn article.

        The server forgets each item with everything learned about it (its
        row, its text, every user's history entry of it) and never
        recommends it again; the deletion is logged, so it survives a
        crash. Returns how many of the items the server held (ids it did
        not hold are ignored). A later event naming a deleted id does not
        bring it back (the server remembers the latest
        ``lifelong.deleted_items_remembered`` deletions); an upsert does, as
        a new item. The server waits for the learner to
        apply the feedback accepted before it (at most
        ``learner.max_lag_seconds`` or so). Raises InvalidArgument for id 0
        or above 2^63-1, ValueError for an empty list.
        """
        return self._call(_c.delete_items(items))  # type: ignore[no-any-return]

    @_serialised
    def delete_users(self, users: Iterable[int]) -> int:
        """Delete users: a closed account, an erasure request.

        The server forgets each user with everything it holds for them
        alone (their row, history and context, their events in the replay
        buffer); what their events added to whole-stream statistics (item
        popularity, co-occurrences, item rows) stays. The deletion is
        logged, so it survives a crash; the events themselves stay in the
        log until every kept version (``snapshot.keep``) was taken after
        them, and those older versions still hold the user until they are
        pushed out. Returns how many of the users the server held. A deleted id
        sending events again is a new user. Waits for the learner like
        :meth:`delete_items`.
        """
        return self._call(_c.delete_users(users))  # type: ignore[no-any-return]

    @_serialised
    def stats(self) -> Dict[str, int]:
        """Return the server's counters as ``{name: value}``."""
        return self._call(_c.stats())  # type: ignore[no-any-return]

    @_serialised
    def reload(self) -> None:
        """Ask the server to re-read its config file, then refresh
        :attr:`server_info` (the limits may have changed; if the new config
        refuses this client's token, the reload still stands and
        ``server_info`` keeps the old limits).

        A RELOAD that rebuilt, added or removed scorers returns once the
        snapshot tying them to the log is durable, so it survives a crash
        (waited for up to ``admin_timeout``, or ``timeout`` if longer).

        Raises InvalidArgument when the new config is refused (the message
        says why; the old config stays), ServerError STORAGE when it was
        applied but its snapshot failed (the server tries again by itself),
        NotSupported when the server was started without a config file,
        Unauthorized without the admin token.
        """
        try:
            self._call(_c.reload())
        except ServerError as e:
            if e.code_name != "STORAGE":
                raise
            self._refresh_after_reload()    # applied all the same
            raise
        self._refresh_after_reload()

    def _refresh_after_reload(self) -> None:
        if self._hello:
            try:
                self.hello()
            except PerennialError:
                # The reload was applied; only the refresh failed (it
                # rotated the token this client holds, say, or the server
                # is stopping): server_info keeps the limits learned before.
                pass

    @_serialised
    def snapshot(self) -> Snapshot:
        """Ask the server for a snapshot; returns a :class:`Snapshot`: the log
        sequence it covers (an int) with the version's id in ``.version``
        (``v<seq>``, or ``v<seq>.<n>`` when a rollback or a RELOAD wrote
        another version there first; ``perennial versions`` lists them,
        ``perennial serve --from-version`` takes the id). The server writes the whole model first: the reply is waited for up
        to ``admin_timeout`` (or ``timeout``, if longer).
        Raises NotSupported, Unauthorized, STORAGE (it could not be written).
        """
        return self._call(_c.snapshot())  # type: ignore[no-any-return]

    @_serialised
    def shutdown(self) -> None:
        """Ask the server to stop (as on SIGTERM), then close this connection.

        Raises Unauthorized when the server does not allow it.
        """
        try:
            self._call(_c.shutdown())
        finally:
            if not self._pending:
                self._disconnect()

    def pipeline(self) -> "Pipeline":
        """Return a :class:`Pipeline` that queues calls and sends them in one write."""
        return Pipeline(self)

    def streamer(self, window: int = 8, batch_size: int = 1000) -> "FeedbackStreamer":
        """Return a :class:`FeedbackStreamer` for high-rate feedback on this connection."""
        return FeedbackStreamer(self, window=window, batch_size=batch_size)


class Pipeline(_c.PipelineCommands):
    """Queued requests sent in one write; :meth:`execute` returns the results in order.

    Every queuing method (``ping``, ``recommend``, ``score``, ``feedback``,
    ``upsert_item``, ``delete_items``, ``delete_users``, ``stats``, ``reload``, ``snapshot``, ``hello``) returns
    the pipeline, so calls chain::

        results = client.pipeline().ping().recommend(1, k=3).stats().execute()
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._commands: List[Command] = []

    def _queue(self, cmd: Command) -> "Pipeline":
        self._commands.append(cmd)
        return self

    def __len__(self) -> int:
        return len(self._commands)

    def reset(self) -> None:
        """Drop the queued requests."""
        self._commands = []

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], *rest: Any) -> None:
        # As in redis-py, leaving the block drops what was not executed;
        # unlike it, a block that ends normally with requests still queued
        # says so (a `with` around 100,000 queued upserts and no execute()
        # sent nothing, silently).
        if exc_type is None and self._commands:
            warnings.warn("Pipeline left with %d queued requests never sent: call execute() inside the with block"
                          % len(self._commands), RuntimeWarning, stacklevel=2)
        self.reset()

    @_serialised
    def execute(self, raise_on_error: bool = False) -> List[Any]:
        """Send the queued requests and return their results in order.

        A request that failed has its exception object in its place, unless
        ``raise_on_error`` is true: then the first one is raised (after every
        reply was read).  Raises ConnectionError/TimeoutError when the
        connection cannot be opened.  The queue is emptied either way.
        """
        cmds, self._commands = self._commands, []
        if not cmds:
            return []
        results = self._client._execute(cmds)
        for r in results:
            if isinstance(r, ServerInfo):
                self._client.server_info = r
        if raise_on_error:
            for r in results:
                _raise_if_error(r)
        return results


class FeedbackStreamer:
    """Streams feedback in batches without waiting for each acknowledgement.

    Events are buffered into batches of ``batch_size`` (at most the server's
    max_events); each full batch is written at once and at most ``window``
    batches are unacknowledged at a time (when the window is full, the
    streamer reads acks).  :meth:`flush` sends the partial batch and waits
    for every ack.  Used as a context manager it flushes on exit, unless
    the block is left by Ctrl-C (KeyboardInterrupt): then what is buffered
    or in flight stays for an explicit :meth:`flush`.

    A batch the server refuses (e.g. :class:`InvalidEvent`) is raised from the
    next ``send``/``send_many``/``flush`` call, with ``batch_offset`` (stream
    index of the batch's first event) and ``batch_events`` attributes (and
    ``stream_index``, the refused event's index in the stream); its
    events were not accepted, later batches are unaffected.  (A batch refused
    because a RELOAD lowered the server's max_events below its size is not a
    refusal: the streamer learns the new limit and re-sends it split, as
    :meth:`Client.feedback` does.)  When several
    batches were refused by then, the error raised is the first, and its
    ``refused_batches`` lists all of them; :attr:`refused` keeps every
    refusal of the stream (including those that arrive while a ``with``
    block exits because of an error).

    A batch refused :class:`Recovering` (the server replays its log after a
    restart) is not a refusal either: like the client's own calls, the
    streamer sends it again every 50 ms (the next ``send``/``send_many``
    or ``flush`` waits meanwhile) until it is accepted, for up to the
    client's ``recovery_wait`` seconds since the first such refusal after
    an acknowledgement (or after the last such wait ran out); past that,
    the batches refused meanwhile are refused batches as above. (Once a
    batch of a connection waits, the server holds every later one of it
    until the replay ends, so they go again in stream order; a batch
    accepted just as the replay ends can still get in before one refused
    just before.)

    A broken connection (or a reply timeout) is not a refusal: the
    ConnectionError or TimeoutError is raised once, and the batches it cut
    off go to :attr:`unacknowledged` (their outcome is unknown: the server
    may have accepted them before the break; its STATS ``events_accepted``,
    or a read, tells).

    Attributes:
        sent_events: events written to the server.
        acked_events: events the server acknowledged.
        last_ack: the latest :class:`FeedbackAck`.
    """

    def __init__(self, client: Client, window: int = 8, batch_size: int = 1000) -> None:
        window = _c._count(window, "window", 1, 1 << 20)
        batch_size = _c._count(batch_size, "batch_size", 1, 1 << 20)
        self._client = client
        self.window = window
        self.batch_size = batch_size
        self._buffer: List[Event] = []
        self._inflight = 0
        self._offset = 0
        self._errors: Deque[BaseException] = deque()
        # Batches refused as larger than the server's max_events: re-sent
        # split once the new limit is known (stream index, events, error).
        self._oversized: List[Tuple[int, List[Event], BaseException]] = []
        # Their chunks not yet sent again (kept through an interruption).
        self._resend: List[Tuple[int, List[Event], BaseException]] = []
        # Batches refused RECOVERING, to send again (stream index, events,
        # error), and until when (_c.recovery_deadline).
        self._recovering: List[Tuple[int, List[Event], BaseException]] = []
        self._recovery_deadline: Optional[float] = None
        #: Every refused batch's error so far, oldest first (each with
        #: ``batch_offset`` and ``batch_events``).
        self.refused: List[BaseException] = []
        #: Batches (stream index of the first event, count) whose outcome is
        #: unknown: the connection broke or a reply timed out before their
        #: acknowledgement, so the server may have accepted them or not.
        self.unacknowledged: List[Tuple[int, int]] = []
        self.sent_events = 0
        self.acked_events = 0
        self.last_ack: Optional[FeedbackAck] = None
        # The error that left its with block, if one did (said by the
        # warning when it is dropped with events unsent).
        self._left_by: Optional[str] = None

    @property
    def pending_batches(self) -> int:
        """Batches written and not yet acknowledged."""
        return self._inflight

    def __del__(self) -> None:
        _c.warn_if_unsent(self)

    def _on_reply(self, offset: int, batch: List[Event], result: Any) -> None:
        self._inflight -= 1
        if isinstance(result, FeedbackAck):
            self.acked_events += len(batch)
            self.last_ack = result
            self._recovery_deadline = None
        elif isinstance(result, InvalidArgument) and len(batch) > 1:
            self.sent_events -= len(batch)
            self._oversized.append((offset, batch, result))
        elif isinstance(result, Recovering):
            self.sent_events -= len(batch)
            self._recovering.append((offset, batch, result))
            self._recovery_deadline = _c.recovery_deadline(self._recovery_deadline, self._client.recovery_wait,
                                                           time.monotonic())
        else:
            _c.note_stream_failure(result, offset, len(batch), self._errors, self.refused, self.unacknowledged)

    def _raise_errors(self) -> None:
        _c.raise_refusals(self._errors)

    def _send_batch(self) -> None:
        self._client._ensure_connected()  # learn max_events first
        size = min(self.batch_size, self._client.max_events)
        if self._oversized or self._resend or self._recovering or len(self._buffer) < size:
            # Refused batches go again before anything after them, and a
            # partial batch (the last) waits for the replies in flight:
            # smaller than a lowered max_events, it would otherwise be
            # accepted ahead of a refused batch before it in the stream.
            self._drain()
            self._resend_refused()
            size = min(self.batch_size, self._client.max_events)
        self._write(self._offset, self._buffer[:size], from_buffer=True)

    def _write(self, offset: int, batch: List[Event], from_buffer: bool = False, from_resend: bool = False) -> None:
        """Write one batch: the buffer's first events (``from_buffer``) or
        the first chunk to re-send (``from_resend``), which leave their list
        once queued. Raises, with nothing sent, when the connection cannot
        be opened (the batch stays where it was for the next call); once
        queued, its outcome reaches :meth:`_on_reply` (an ack, a refusal, or
        the connection's end, which leaves it unacknowledged), even if the
        write is interrupted. (No call between queuing and leaving the list:
        an interruption cannot come between them.)"""
        while self._inflight >= self.window:
            if not self._client._pending:
                self._resync()
                break
            self._client._wait_one()
        heard = [False]
        n = len(batch)

        def sink(result: Any) -> None:
            # Delivered at most once. (A signal handler runs only where
            # CPython checks for one, at calls and loops: the common path,
            # an ack, updates the counts with no call between the mark and
            # the last count, so an interruption cannot split them.)
            if heard[0]:
                return
            if isinstance(result, FeedbackAck):
                heard[0] = True
                self._inflight -= 1
                self.acked_events += n
                self.last_ack = result
                self._recovery_deadline = None
                return
            heard[0] = True
            self._on_reply(offset, batch, result)
        sink.streamer = self  # type: ignore[attr-defined]

        self._inflight += 1
        self.sent_events += n
        try:
            p = self._client._queue_nowait(_c.feedback(batch), sink)
            if from_buffer:
                del self._buffer[:len(batch)]
                self._offset += len(batch)
            elif from_resend:
                del self._resend[0]
            self._client._send_queued(p)
        except BaseException as e:
            if any(q.sink is sink for q in self._client._pending):
                # Queued and unanswered (maybe half sent): the connection
                # goes, and the batch is unacknowledged (its sink says so).
                self._client._abandon(e)
            elif not heard[0]:
                # Never queued (the connection could not be opened, or an
                # interruption came first): nothing was sent.
                self._inflight -= 1
                self.sent_events -= n
            raise

    def _drain(self) -> None:
        """Wait for the reply to every batch in flight."""
        while self._inflight:
            before = self._inflight
            self._client._wait_one()
            if self._inflight == before and not self._client._pending:  # pragma: no cover
                self._resync()
                break

    def _resync(self) -> None:
        """The count of batches in flight, from the client's queue: an
        interruption landing between two statements of the bookkeeping
        (a window too small to close in Python) can leave it off by one,
        which would shrink the window for good, or wait for a reply that
        is not coming. (The sent count is not recounted: an interruption
        between the two can leave it a batch off.)"""
        self._inflight = sum(1 for q in self._client._pending
                             if getattr(q.sink, "streamer", None) is self and q.result is _NOTSET)

    def _resend_refused(self) -> None:
        # Batches refused RECOVERING go again after 50 ms, in stream order
        # (every reply in flight is in first), until the recovery deadline;
        # then they are refusals.
        # A RELOAD may have lowered max_events since the HELLO: learn the
        # limit; batches above it go again split, in stream order (every
        # reply in flight is in first, so every such refusal is known), and
        # the others' refusals stand. What cannot be sent because the
        # connection broke is a refusal: it was not accepted. An interruption
        # (Ctrl-C) keeps the chunks not yet sent for the next flush, as a
        # cancellation does in the asyncio streamer (review finding,
        # helper-45: they were reported refused, never having been sent).
        try:
            while self._oversized or self._resend or self._recovering:
                self._drain()
                if self._recovering:
                    # (An acknowledgement since the refusal began a new wait.)
                    self._recovery_deadline = _c.recovery_deadline(self._recovery_deadline, self._client.recovery_wait,
                                                                   time.monotonic())
                    if time.monotonic() < self._recovery_deadline:
                        time.sleep(0.05)
                        # (The lists change in one statement with no call in
                        # it: a Ctrl-C cannot land between them and lose the
                        # batches, helper-68.)
                        merged = sorted(self._resend + self._recovering, key=lambda r: r[0])
                        self._resend, self._recovering = merged, []
                    else:
                        # (Refused, and the next refusal waits afresh.)
                        _c.refuse_unsent(self._recovering, self._errors, self.refused, self.unacknowledged)
                        self._recovering, self._recovery_deadline = [], None
                if self._oversized:
                    limit = self._client.hello().max_events
                    self._resend += _c.split_oversized(self._oversized, limit, self._errors, self.refused,
                                                       self.unacknowledged)
                    self._resend.sort(key=lambda r: r[0])
                while self._resend:
                    offset, chunk, _ = self._resend[0]
                    self._write(offset, chunk, from_resend=True)
        except PerennialError:
            _c.refuse_unsent(self._resend + self._oversized + self._recovering, self._errors, self.refused,
                             self.unacknowledged)
            self._resend.clear()
            self._oversized.clear()
            self._recovering.clear()
            raise

    def _full(self) -> bool:
        return len(self._buffer) >= min(self.batch_size, self._client.max_events)

    @property
    def stream_length(self) -> int:
        """Events the stream has taken so far (buffered, in flight or
        settled): the stream index the next event gets. Compared before and
        after a ``send_many`` that raised, it says how many of the call's
        events the stream took; the rest were not taken."""
        return self._offset + len(self._buffer)

    @_serialised
    def send(self, event: EventLike) -> None:
        """Queue one event; writes a batch when one is full.

        Raises ValueError for an invalid event, and a refused earlier batch's
        ServerError.
        """
        self._buffer.append(to_event(event))
        if self._full():
            self._send_batch()
        self._raise_errors()

    @_serialised
    def send_many(self, events: Iterable[EventLike]) -> None:
        """Queue many events; writes every batch that fills up.  Raises as :meth:`send`."""
        for e in events:
            self._buffer.append(to_event(e))
            if self._full():
                self._send_batch()
        self._raise_errors()

    @_serialised
    def flush(self) -> Optional[FeedbackAck]:
        """Send the buffered events and wait for every acknowledgement.

        Returns the last :class:`FeedbackAck` (None if nothing was ever
        sent).  Raises the ServerError of a refused batch, ConnectionError,
        TimeoutError.
        """
        while True:
            while self._buffer:
                self._send_batch()
            self._drain()
            if not self._oversized and not self._resend and not self._recovering:
                break
            self._resend_refused()
        self._raise_errors()
        return self.last_ack

    def __enter__(self) -> "FeedbackStreamer":
        return self

    @_serialised
    def __exit__(self, exc_type: Optional[Type[BaseException]], *rest: Any) -> None:
        if exc_type is None:
            self.flush()
            return
        self._left_by = exc_type.__name__
        # Ctrl-C: no flush, which on a stalled server waited out a reply
        # timeout before the interrupt got through (forever with
        # timeout=None; review finding, helper-47). What is buffered or in
        # flight stays, and `s.flush()` settles it, as `async with` does on
        # cancellation. (sys.exit() and the like still flush: a program
        # ending on purpose expects its events sent.)
        if not issubclass(exc_type, KeyboardInterrupt):
            try:
                self.flush()
            except PerennialError:
                pass
        _c.tell_late_refusals(rest[0] if rest else None, self.refused)
