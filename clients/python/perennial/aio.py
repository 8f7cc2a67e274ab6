"""asyncio client for the Perennial recommendation server."""

from __future__ import annotations

import asyncio
import socket
import warnings
import weakref
from collections import deque
from typing import (Any, Awaitable, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Set, Tuple,
                    Type)

from . import _commands as _c
from ._commands import Attributes, Command, resolve_reply
from .client import REPLY_LIMITS
from .errors import (ConnectionError, InvalidArgument, InvalidEvent, PerennialError, ProtocolError, Recovering,
                     ServerError, TimeoutError, FATAL_CODES, ERROR_CODES)
from .protocol import DEFAULT_LIMITS, FrameDecoder, Opcode, encode_request
from .types import (Event, EventLike, FeedbackAck, Recommendation, Score, ServerInfo, Snapshot,
                    UpsertResult, to_event)

__all__ = ["AsyncClient", "AsyncPipeline", "AsyncFeedbackStreamer"]

_CHUNK = 256 * 1024


def _raise_if_error(result: Any) -> Any:
    if isinstance(result, BaseException):
        raise result
    return result


_ending_tasks: "Set[asyncio.Task[None]]" = set()


def _dispatch_via(client_ref: "weakref.ReferenceType[AsyncClient]", conn: "_Conn") -> bool:
    """The client's `_dispatch` (tests may replace it), without the reader
    holding the client across its awaits."""
    client = client_ref()
    return (client._dispatch if client is not None else AsyncClient._dispatch)(conn)


async def _read_loop(client_ref: "weakref.ReferenceType[AsyncClient]", conn: "_Conn", host: str, port: int) -> None:
    """A connection's reader task: hands each reply to its request's future."""
    failure: BaseException = ConnectionError("the server closed the connection")
    try:
        while True:
            data = await conn.reader.read(_CHUNK)
            if not data:
                break
            if len(conn.first_bytes) < 24:
                conn.first_bytes += data[:24]
            conn.decoder.feed(data)
            if _dispatch_via(client_ref, conn):
                failure = ConnectionError("connection closed after a fatal error")
                break
    except ProtocolError as e:  # fatal framing error in the server's bytes
        failure = e
    except asyncio.CancelledError:
        conn.fail(ConnectionError("connection closed by the client"))
        raise
    except OSError as e:
        failure = ConnectionError("receiving from %s:%s failed: %s" % (host, port, e))
    conn.fail(failure)
    client = client_ref()
    if client is not None and client._conn is conn:
        client._conn = None


class _Conn:
    """One TCP connection: its streams, reply futures in send order, and reader task."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: Deque[Tuple[int, Command, "asyncio.Future[Any]"]] = deque()
        self.decoder = FrameDecoder(REPLY_LIMITS)
        #: The first bytes from the server (quoted when HELLO fails).
        self.first_bytes = b""
        self.next_rid = 1
        self.closed = False
        self.drain_lock = asyncio.Lock()
        self.task: Optional["asyncio.Task[None]"] = None
        #: Unanswered requests that write the model (SNAPSHOT, RELOAD):
        #: while there are none, a reply's wait is the plain timeout, found
        #: without walking the queue (walking it for every waiter made n
        #: concurrent calls take time n²: review finding).
        self.model_writes = 0

    def take_rid(self) -> int:
        rid = self.next_rid
        self.next_rid = rid + 1 if rid < 0xFFFFFFFF else 1
        return rid

    def peer_closed(self) -> bool:
        """With nothing unanswered, whether the server has closed the
        connection (EOF or an error waiting on the socket) even if the reader
        task has not run since: peeks without consuming (on a duplicate of
        the descriptor: asyncio's socket wrapper offers no recv)."""
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return False
        try:
            s = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except (AttributeError, OSError):  # pragma: no cover - no dup here: assume open
            return False
        with s:
            # Non-blocking, whatever socket.setdefaulttimeout says: a socket
            # in timeout mode would wait for data before the recv.
            s.setblocking(False)
            try:
                s.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True
            return True

    def fail(self, exc: BaseException) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.writer.close()
            except Exception:  # pragma: no cover
                pass
        pending = list(self.pending)
        self.pending.clear()
        self.model_writes = 0
        for _rid, _cmd, fut in pending:
            if not fut.done():
                fut.set_result(exc)


class _ConnectMethod:
    """``AsyncClient.connect``: a classmethod on the class, a method on an instance.

    * ``await AsyncClient.connect(host, port, **options)`` makes a client and
      connects it;
    * ``await client.connect()`` connects an existing client.

    Both return the connected client and raise ConnectionError/TimeoutError,
    or the HELLO's ServerError (e.g. Unauthorized).
    """

    def __get__(self, obj: Optional["AsyncClient"], objtype: Optional[type] = None) -> Callable[..., Awaitable["AsyncClient"]]:
        if obj is None:
            cls: Any = objtype

            async def connect_new(host: str = "127.0.0.1", port: int = 7878,
                                  **options: Any) -> "AsyncClient":
                client = cls(host, port, **options)
                await client._ensure_connected()
                return client  # type: ignore[no-any-return]
            connect_new.__doc__ = self.__doc__
            return connect_new

        async def connect() -> "AsyncClient":
            await obj._ensure_connected()
            return obj
        connect.__doc__ = self.__doc__
        return connect


class AsyncClient:
    """An asyncio connection to one Perennial server.

    Same methods as :class:`perennial.Client`, as coroutines.  Any number of
    tasks may call one AsyncClient at the same time: requests are written in
    call order and each reply is handed to its caller (a queue of reply
    futures in send order), so concurrent calls are pipelined on the one
    connection.

    Usage::

        async with perennial.AsyncClient("127.0.0.1", 7878) as c:
            await c.feedback([perennial.Event(1, 42)])
            recs = await c.recommend(1, k=5)

        c = await perennial.AsyncClient.connect("127.0.0.1", 7878)
        ...
        await c.close()

    A timeout raises :class:`perennial.TimeoutError` in the waiting caller,
    and every other request still unanswered on the connection fails with
    it; the connection is closed, and the next call opens a new one.
    """

    connect = _ConnectMethod()

    def __init__(self, host: str = "127.0.0.1", port: int = 7878, *,
                 timeout: Optional[float] = 10.0, admin_timeout: Optional[float] = 600.0,
                 token: Optional[str] = None, client_name: str = "perennial-py",
                 hello: bool = True, recovery_wait: Optional[float] = 60.0) -> None:
        self.host = host
        #: As :class:`perennial.Client`'s ``recovery_wait``.
        self.recovery_wait = _c.checked_seconds(recovery_wait, "recovery_wait", zero=True)
        self.port = port
        self.timeout = _c.checked_seconds(timeout, "timeout")
        self.admin_timeout = _c.checked_seconds(admin_timeout, "admin_timeout")
        self.token = token
        self.client_name = client_name
        self._hello = hello
        #: The HELLO reply of the current (or last) connection.
        self.server_info: Optional[ServerInfo] = None
        self._conn: Optional[_Conn] = None
        self._lock: Optional[asyncio.Lock] = None
        # close() calls so far (a connect that was under way when one came
        # does not stand), and the connect attempts that ended with how the
        # last one timed out (tasks that waited for it share the timeout
        # rather than each waiting out one of their own in turn); the
        # reader tasks not yet ended.
        self._closes = 0
        self._ending: "set[asyncio.Task[None]]" = set()
        self._attempts = 0
        self._last_failure: Optional[BaseException] = None

    def __repr__(self) -> str:
        return "AsyncClient(%r, %r, connected=%r)" % (self.host, self.port, self.connected)

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._conn is not None and not self._conn.closed

    @property
    def max_events(self) -> int:
        """Most events per FEEDBACK frame: the server's (from HELLO) or the default 10,000."""
        return self.server_info.max_events if self.server_info else DEFAULT_LIMITS.max_events

    async def __aenter__(self) -> "AsyncClient":
        await self._ensure_connected()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __del__(self) -> None:
        # A client dropped without close() kept its connection (and its
        # reader task) open until the garbage collector ran (review
        # finding): say so, as asyncio's own transports do, and close it.
        # (The reader holds the client weakly, so this runs as soon as the
        # last reference goes.)
        conn = getattr(self, "_conn", None)
        if conn is None or conn.closed:
            return
        warnings.warn("perennial.AsyncClient dropped with its connection open: use `async with` "
                      "or `await client.close()`", ResourceWarning, source=self)
        try:
            conn.fail(ConnectionError("the client was dropped"))
            if conn.task is not None:
                # (Held until it has ended: a task collected while pending
                # is reported as destroyed.)
                _ending_tasks.add(conn.task)
                conn.task.add_done_callback(_ending_tasks.discard)
                conn.task.cancel()
        except Exception:  # pragma: no cover - the loop is closed already
            pass

    async def close(self) -> None:
        """Close the connection; unanswered requests fail with ConnectionError.

        The client may be used again: the next call reconnects.
        """
        self._closes += 1
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.fail(ConnectionError("connection closed by the client"))
        if conn.task is not None and not conn.task.done():
            conn.task.cancel()
            try:
                await conn.task
            except (asyncio.CancelledError, Exception):
                pass
        try:
            await conn.writer.wait_closed()
        except Exception:
            pass

    # -- connection ----------------------------------------------------------

    async def _ensure_connected(self) -> _Conn:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.pending and conn.peer_closed():
            # The server closed this idle connection (it restarted, or its
            # idle timeout passed): open a new one rather than fail this call.
            conn.fail(ConnectionError("the server closed the connection"))
            self._conn = None
        if conn is not None and not conn.closed:
            return conn
        if self._lock is None:
            self._lock = asyncio.Lock()
        attempts = self._attempts
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            if self._attempts != attempts and self._last_failure is not None:
                raise self._last_failure
            try:
                conn = await self._connect()
            except BaseException as e:
                # (Only a timeout is shared: a refused connect is quick to
                # try again, and may succeed for the next task.)
                self._attempts += 1
                self._last_failure = e if isinstance(e, TimeoutError) else None
                raise
            self._attempts += 1
            self._last_failure = None
            return conn

    async def _connect(self) -> _Conn:
        """Opens a connection and sends HELLO (under the connect lock)."""
        closes = self._closes
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=_CHUNK), self.timeout)
        except asyncio.TimeoutError:
            raise TimeoutError("timed out connecting to %s:%s"
                               % (self.host, self.port)) from None
        except OSError as e:
            raise ConnectionError("cannot connect to %s:%s: %s"
                                  % (self.host, self.port, e)) from e
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass
        conn = _Conn(reader, writer)
        # (The reader holds the client weakly: holding it, it made a cycle
        # that kept a dropped client, and its connection, until the garbage
        # collector ran.)
        conn.task = asyncio.ensure_future(_read_loop(weakref.ref(self), conn, self.host, self.port))
        # (Held until it ends, not only by its connection: asyncio keeps a
        # weak reference to a task, and a dropped connection's reader must
        # still see its end.)
        self._ending.add(conn.task)
        conn.task.add_done_callback(self._ending.discard)
        try:
            if self._hello:
                fut = self._submit(conn, [_c.hello(self.client_name, self.token)])[0]
                await self._drain(conn)
                result = await self._wait(fut)
                if isinstance(result, BaseException):
                    conn.fail(ConnectionError("HELLO failed"))
                    raise _c.hello_failed(result, self.host, self.port, conn.first_bytes)
                self.server_info = result
            if self._closes != closes:
                raise ConnectionError("connection closed by the client")
        except BaseException:
            # (Cancelled, timed out or closed before its HELLO was
            # answered: nothing would own this connection.)
            conn.fail(ConnectionError("connection closed by the client"))
            if conn.task is not None and not conn.task.done():
                conn.task.cancel()
            raise
        self._conn = conn
        return conn

    @staticmethod
    def _dispatch(conn: _Conn) -> bool:
        """Hand every complete frame to its future; True when the connection must close."""
        while True:
            try:
                frame = conn.decoder.next_frame()
            except ProtocolError as e:
                if e.fatal:
                    raise
                item: Any = e
            else:
                if frame is None:
                    return False
                item = frame
            if not conn.pending:
                # unsolicited (e.g. BUSY before any request): fatal errors end the connection
                if not isinstance(item, ProtocolError) and item.opcode == Opcode.ERROR:
                    return ERROR_CODES.get(item.payload["code"], 0) in FATAL_CODES
                return True
            rid, cmd, fut = conn.pending.popleft()
            if cmd.writes_model:
                conn.model_writes -= 1
            result, fatal = resolve_reply(item, rid, cmd)
            if not fut.done():
                fut.set_result(result)
            if fatal:
                return True

    def _submit(self, conn: _Conn, cmds: Sequence[Command]) -> List["asyncio.Future[Any]"]:
        # no await in here: frames are written in the order the futures are queued
        if conn.closed:
            raise ConnectionError("the connection is closed")
        loop = asyncio.get_running_loop()
        futs = []
        parts = []
        max_frame = self.server_info.max_frame_bytes if self.server_info else DEFAULT_LIMITS.max_frame_bytes
        for cmd in cmds:
            _c.check_frame_size(cmd, max_frame)
        for cmd in cmds:
            rid = conn.take_rid()
            fut: "asyncio.Future[Any]" = loop.create_future()
            conn.pending.append((rid, cmd, fut))
            if cmd.writes_model:
                conn.model_writes += 1
            futs.append(fut)
            parts.append(encode_request(cmd.opcode, rid, cmd.body))
        conn.writer.write(b"".join(parts))
        return futs

    async def _drain(self, conn: _Conn) -> None:
        try:
            async with conn.drain_lock:
                await conn.writer.drain()
        except (OSError, RuntimeError) as e:
            conn.fail(ConnectionError("sending to %s:%s failed: %s" % (self.host, self.port, e)))
            if self._conn is conn:
                self._conn = None

    async def _wait(self, fut: "asyncio.Future[Any]") -> Any:
        # (Replies come in request order: this one waits behind every
        # request sent before it and not yet answered, a SNAPSHOT's too.)
        ahead: List[Command] = []
        conn = self._conn
        if conn is not None and conn.model_writes > 0:
            for _rid, cmd, f in conn.pending:
                ahead.append(cmd)
                if f is fut:
                    break
        wait = _c.reply_timeout(ahead, self.timeout, self.admin_timeout)
        # (asyncio.wait, not wait_for: it leaves the reply's future to be
        # settled by its reply when the waiter is cancelled or times out, so
        # a streamer can still learn what became of its batch; and before
        # Python 3.12 wait_for returned a result that came in the same turn
        # as a cancellation, swallowing the cancellation.)
        done, _ = await asyncio.wait({fut}, timeout=wait)
        if fut in done:
            return fut.result()
        waited_for = next((cmd for _rid, cmd, f in conn.pending if f is fut), None) if conn is not None else None
        error = TimeoutError(_c.no_reply_message(self.host, self.port, wait, waited_for))
        # No reply in time: the connection is given up, as the blocking
        # client gives it up, and its other unanswered requests fail with
        # this error at once. Kept open, a dead peer (a NAT or load balancer
        # that dropped it) timed out every later call, for good, with the
        # unanswered requests piling up (review finding). The next call
        # opens a new connection.
        conn = self._conn
        if not fut.done() and conn is not None and any(f is fut for _rid, _cmd, f in conn.pending):
            conn.fail(error)
            self._conn = None
        return error

    async def _execute(self, cmds: Sequence[Command]) -> List[Any]:
        conn = await self._ensure_connected()
        futs = self._submit(conn, cmds)
        await self._drain(conn)
        # The timeout bounds a wait without any reply, as in the blocking
        # client: once one reply did not come in time, the replies after it
        # are not waited for one timeout each (a stalled server would make a
        # pipeline of n requests take n timeouts).
        results: List[Any] = []
        stalled: Optional[BaseException] = None
        for f in futs:
            if stalled is not None and not f.done():
                f.cancel()
                results.append(stalled)
                continue
            r = await self._wait(f)
            # (Only the client's own wait running out: the server's TIMEOUT
            # reply (ServerTimeout, also a TimeoutError) answers its request
            # alone, and the later ones are still answered; review finding.)
            if isinstance(r, TimeoutError) and not isinstance(r, ServerError) and stalled is None:
                stalled = r
            results.append(r)
        return results

    async def _call(self, cmd: Command) -> Any:
        result = (await self._execute([cmd]))[0]
        if isinstance(result, Recovering):
            # (As Client: nothing of a refused write was accepted.)
            loop = asyncio.get_running_loop()
            deadline = None if self.recovery_wait is None else loop.time() + self.recovery_wait
            while isinstance(result, Recovering) and (deadline is None or loop.time() < deadline):
                await asyncio.sleep(0.05)
                result = (await self._execute([cmd]))[0]
        return _raise_if_error(result)

    # -- commands ------------------------------------------------------------

    async def hello(self) -> ServerInfo:
        """Send HELLO; return the server's version, limits and name (see Client.hello)."""
        info: ServerInfo = await self._call(_c.hello(self.client_name, self.token))
        self.server_info = info
        return info

    async def ping(self) -> bool:
        """Round-trip a PING; returns True.  Raises ConnectionError/TimeoutError."""
        return bool(await self._call(_c.ping()))

    async def recommend(self, user: int, k: int = 10, *, scorer: Optional[str] = None,
                        session: Optional[Sequence[int]] = None,
                        session_id: Optional[str] = None,
                        exclude: Optional[Iterable[int]] = None,
                        candidates: Optional[Iterable[int]] = None,
                        min_applied_seq: int = 0, shadow: Optional[str] = None) -> List[Recommendation]:
        """Recommend up to ``k`` items for ``user``, best first (see Client.recommend).

        Raises ValueError or TypeError (an argument wrong before sending, such
        as k below 1), UnknownScorer, InvalidArgument, ServerError.
        """
        return await self._call(_c.recommend(  # type: ignore[no-any-return]
            user, k, scorer=scorer, session=session, session_id=session_id, exclude=exclude,
            candidates=candidates, min_applied_seq=min_applied_seq, shadow=shadow))

    async def score(self, user: int, items: Sequence[int], *, scorer: Optional[str] = None,
                    session: Optional[Sequence[int]] = None) -> List[Score]:
        """Score ``items`` for ``user`` in order (see Client.score).  Raises UnknownScorer, InvalidArgument."""
        return await self._call(_c.score(user, items, scorer=scorer, session=session))  # type: ignore[no-any-return]

    async def feedback(self, events: Iterable[EventLike]) -> FeedbackAck:
        """Send feedback events; return the (last batch's) ack once acknowledged.

        Lists longer than the server's max_events go as several batches.
        Raises ValueError (empty list, bad event) and InvalidEvent (``detail``
        = index in ``events``), as Client.feedback.
        """
        evs = _c.normalize_events(events)
        if not evs:
            raise ValueError("feedback() needs at least one event")
        try:
            await self._ensure_connected()  # learn max_events first
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
                ack = await self._call(_c.feedback(batch))
            except ServerError as e:
                # A RELOAD may have lowered max_events since the HELLO: the
                # batch was refused whole (INVALID_ARGUMENT; FRAME_TOO_LARGE
                # when max_frame_bytes went down with it, and the server
                # closed the connection), so learn the limits and resend it
                # split.
                relearn = isinstance(e, InvalidArgument) or e.code_name == "FRAME_TOO_LARGE"
                if relearn and len(batch) > 1 and await self._limit_below(len(batch), offset):
                    continue
                _c.place_in_stream(e, offset)
                raise
            except (ConnectionError, TimeoutError, KeyboardInterrupt, asyncio.CancelledError) as e:
                mine = _c.mark_unacknowledged(e, offset, len(batch))
                if mine is e:
                    raise
                raise mine from e
            offset += len(batch)
        assert ack is not None
        return ack

    async def _limit_below(self, size: int, offset: int) -> bool:
        """As Client._limit_below."""
        try:
            return (await self.hello()).max_events < size
        except PerennialError as e:
            mine = _c.accepted_before(e, offset)
            if mine is e:
                raise
            raise mine from e

    async def upsert_item(self, item: int, text: str,
                          attributes: Attributes = None) -> UpsertResult:
        """Create or replace an item's text and attributes (see Client.upsert_item)."""
        return await self._call(_c.upsert_item(item, text, attributes))  # type: ignore[no-any-return]

    async def delete_items(self, items: Iterable[int]) -> int:
        """Delete items for good (see Client.delete_items); returns how many the server held."""
        return await self._call(_c.delete_items(items))  # type: ignore[no-any-return]

    async def delete_users(self, users: Iterable[int]) -> int:
        """Delete users (see Client.delete_users); returns how many the server held."""
        return await self._call(_c.delete_users(users))  # type: ignore[no-any-return]

    async def stats(self) -> Dict[str, int]:
        """Return the server's counters as ``{name: value}``."""
        return await self._call(_c.stats())  # type: ignore[no-any-return]

    async def reload(self) -> None:
        """Ask the server to re-read its config file, then refresh
        :attr:`server_info` (see Client.reload).  Raises InvalidArgument
        (config refused, the old one stays), ServerError STORAGE (applied,
        its snapshot failed), NotSupported, Unauthorized."""
        try:
            await self._call(_c.reload())
        except ServerError as e:
            if e.code_name != "STORAGE":
                raise
            await self._refresh_after_reload()    # applied all the same
            raise
        await self._refresh_after_reload()

    async def _refresh_after_reload(self) -> None:
        if self._hello:
            try:
                await self.hello()
            except PerennialError:
                pass  # applied; only the refresh failed (see Client.reload)

    async def snapshot(self) -> Snapshot:
        """Ask for a snapshot; returns a :class:`Snapshot` (the sequence it covers, and ``.version``,
        the version's id).  Raises NotSupported, Unauthorized."""
        return await self._call(_c.snapshot())  # type: ignore[no-any-return]

    async def shutdown(self) -> None:
        """Ask the server to stop, then close this connection.  Raises Unauthorized."""
        try:
            await self._call(_c.shutdown())
        finally:
            await self.close()

    def pipeline(self) -> "AsyncPipeline":
        """Return an :class:`AsyncPipeline`: queued calls sent in one write."""
        return AsyncPipeline(self)

    def streamer(self, window: int = 8, batch_size: int = 1000) -> "AsyncFeedbackStreamer":
        """Return an :class:`AsyncFeedbackStreamer` on this client."""
        return AsyncFeedbackStreamer(self, window=window, batch_size=batch_size)


class AsyncPipeline(_c.PipelineCommands):
    """Queued requests sent in one write; ``await execute()`` returns results in order.

    Queuing methods are plain (not coroutines) and return the pipeline.
    """

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._commands: List[Command] = []

    def _queue(self, cmd: Command) -> "AsyncPipeline":
        self._commands.append(cmd)
        return self

    def __len__(self) -> int:
        return len(self._commands)

    def reset(self) -> None:
        """Drop the queued requests."""
        self._commands = []

    async def execute(self, raise_on_error: bool = False) -> List[Any]:
        """Send the queued requests; return their results (exceptions in place) in order.

        With ``raise_on_error`` the first failure is raised instead.  Raises
        ConnectionError/TimeoutError when the connection cannot be opened.
        """
        cmds, self._commands = self._commands, []
        if not cmds:
            return []
        results = await self._client._execute(cmds)
        for r in results:
            if isinstance(r, ServerInfo):
                self._client.server_info = r
        if raise_on_error:
            for r in results:
                _raise_if_error(r)
        return results


class AsyncFeedbackStreamer:
    """asyncio version of :class:`perennial.client.FeedbackStreamer`.

    ``await send(e)``, ``await send_many(events)``, ``await flush()``;
    ``async with`` flushes on exit.  At most ``window`` batches are
    unacknowledged at a time.  Refused batches are raised and kept as in
    the blocking streamer (``refused_batches``, :attr:`refused`), batches
    refused as larger than a lowered max_events are re-sent split, and
    batches refused :class:`Recovering` are sent again every 50 ms for up to
    the client's ``recovery_wait``, as there.
    """

    def __init__(self, client: AsyncClient, window: int = 8, batch_size: int = 1000) -> None:
        window = _c._count(window, "window", 1, 1 << 20)
        batch_size = _c._count(batch_size, "batch_size", 1, 1 << 20)
        self._client = client
        self.window = window
        self.batch_size = batch_size
        self._buffer: List[Event] = []
        self._inflight: Deque[Tuple["asyncio.Future[Any]", int, List[Event]]] = deque()
        self._offset = 0
        self._errors: Deque[BaseException] = deque()
        # Batches refused as larger than the server's max_events (see
        # FeedbackStreamer): re-sent split once the new limit is known; the
        # chunks still to send (kept through a cancellation).
        self._oversized: List[Tuple[int, List[Event], BaseException]] = []
        self._resend: List[Tuple[int, List[Event], BaseException]] = []
        # Batches refused RECOVERING to send again, and until when (see
        # FeedbackStreamer).
        self._recovering: List[Tuple[int, List[Event], BaseException]] = []
        self._recovery_deadline: Optional[float] = None
        #: Every refused batch's error so far (see FeedbackStreamer.refused).
        self.refused: List[BaseException] = []
        #: Batches whose outcome is unknown (see FeedbackStreamer.unacknowledged).
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
        return len(self._inflight)

    def __del__(self) -> None:
        _c.warn_if_unsent(self)

    async def _collect_one(self) -> None:
        # (The batch leaves the list of those in flight only once its
        # outcome is known: a cancelled wait leaves it there, to be
        # collected by the next flush.)
        fut, offset, batch = self._inflight[0]
        result = await self._client._wait(fut)
        if not self._inflight or self._inflight[0][0] is not fut:
            return  # (collected meanwhile by another waiter)
        self._inflight.popleft()
        # (No reply in time: `_wait` gave the connection up, so the other
        # batches in flight fail at once with this same error, one error
        # naming them all, not one timeout each.)
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
                                                           asyncio.get_running_loop().time())
        else:
            _c.note_stream_failure(result, offset, len(batch), self._errors, self.refused, self.unacknowledged)
            if not isinstance(result, ServerError):
                # A broken connection settles every batch still in flight on
                # it with the same error: all are collected now, so that the
                # error is raised once, naming them all, as the blocking
                # streamer raises it (review finding, helper-94: collected one
                # by one, it was raised again by each later call, its
                # unacknowledged_batches growing after it was caught).
                while self._inflight and self._inflight[0][0].done() and self._inflight[0][0].result() is result:
                    _fut, later, cut = self._inflight.popleft()
                    _c.note_stream_failure(result, later, len(cut), self._errors, self.refused, self.unacknowledged)

    def _size(self) -> int:
        return min(self.batch_size, self._client.max_events)

    async def _send_batch(self) -> None:
        await self._client._ensure_connected()  # learn max_events first
        size = self._size()
        if self._oversized or self._resend or self._recovering or len(self._buffer) < size:
            # (As FeedbackStreamer._send_batch: refused batches first, and a
            # partial one after the replies in flight.)
            await self._drain()
            await self._resend_refused()
            size = self._size()
        batch = self._buffer[:size]

        def taken() -> None:
            # (Out of the buffer once submitted, not before: a cancellation
            # while the batch waits for room or a connection keeps it.)
            del self._buffer[:len(batch)]
            self._offset += len(batch)
        await self._write(self._offset, batch, submitted=taken)

    async def _write(self, offset: int, batch: List[Event],
                     submitted: Optional[Callable[[], Any]] = None) -> None:
        while len(self._inflight) >= self.window:
            await self._collect_one()
        conn = await self._client._ensure_connected()
        fut = self._client._submit(conn, [_c.feedback(batch)])[0]
        self._inflight.append((fut, offset, batch))
        self.sent_events += len(batch)
        if submitted is not None:
            submitted()    # (in flight now: its reply will say what became of it)
        await self._client._drain(conn)

    async def _drain(self) -> None:
        while self._inflight:
            await self._collect_one()

    async def _resend_refused(self) -> None:
        # (As FeedbackStreamer._resend_refused. A chunk leaves `_resend`
        # once submitted, before its write is awaited: a cancellation there
        # must not also report it refused: review finding, helper-37. A
        # cancellation keeps the chunks not yet sent for the next flush:
        # review finding, helper-44.)
        try:
            while self._oversized or self._resend or self._recovering:
                await self._drain()
                if self._recovering:
                    # (An acknowledgement since the refusal began a new wait.)
                    now = asyncio.get_running_loop().time()
                    self._recovery_deadline = _c.recovery_deadline(self._recovery_deadline, self._client.recovery_wait, now)
                    if now < self._recovery_deadline:
                        await asyncio.sleep(0.05)
                        merged = sorted(self._resend + self._recovering, key=lambda r: r[0])
                        self._resend, self._recovering = merged, []
                    else:
                        # (Refused, and the next refusal waits afresh.)
                        _c.refuse_unsent(self._recovering, self._errors, self.refused, self.unacknowledged)
                        self._recovering, self._recovery_deadline = [], None
                if self._oversized:
                    limit = (await self._client.hello()).max_events
                    self._resend += _c.split_oversized(self._oversized, limit, self._errors, self.refused,
                                                       self.unacknowledged)
                    self._resend.sort(key=lambda r: r[0])
                while self._resend:
                    offset, chunk, _ = self._resend[0]
                    await self._write(offset, chunk, submitted=lambda: self._resend.pop(0))
        except asyncio.CancelledError:
            raise
        except BaseException:
            _c.refuse_unsent(self._resend + self._oversized + self._recovering, self._errors, self.refused,
                             self.unacknowledged)
            self._resend.clear()
            self._oversized.clear()
            self._recovering.clear()
            raise

    def _raise_errors(self) -> None:
        _c.raise_refusals(self._errors)

    @property
    def stream_length(self) -> int:
        """As :attr:`FeedbackStreamer.stream_length`."""
        return self._offset + len(self._buffer)

    async def send(self, event: EventLike) -> None:
        """Queue one event; writes a batch when one is full.  Raises like Client's streamer."""
        self._buffer.append(to_event(event))
        if len(self._buffer) >= self._size():
            await self._send_batch()
        self._raise_errors()

    async def send_many(self, events: Iterable[EventLike]) -> None:
        """Queue many events, writing every batch that fills up."""
        for e in events:
            self._buffer.append(to_event(e))
            if len(self._buffer) >= self._size():
                await self._send_batch()
        self._raise_errors()

    async def flush(self) -> Optional[FeedbackAck]:
        """Send what is buffered, wait for every ack; return the last FeedbackAck."""
        while True:
            while self._buffer:
                await self._send_batch()
            await self._drain()
            if not self._oversized and not self._resend and not self._recovering:
                break
            await self._resend_refused()
        self._raise_errors()
        return self.last_ack

    async def __aenter__(self) -> "AsyncFeedbackStreamer":
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], *rest: Any) -> None:
        if exc_type is None:
            await self.flush()
            return
        self._left_by = exc_type.__name__
        if issubclass(exc_type, asyncio.CancelledError):
            # Cancelled: no flush (it could wait out timeouts); what is
            # buffered or in flight stays, and `await s.flush()` settles it.
            _c.tell_late_refusals(rest[0] if rest else None, self.refused)
        else:
            try:
                await self.flush()
            except PerennialError:
                pass
            _c.tell_late_refusals(rest[0] if rest else None, self.refused)
