"""Exceptions raised by the Perennial client.

Every exception the client raises on purpose derives from
:class:`PerennialError`::

    PerennialError
    ├── ConnectionError      the TCP connection failed or was closed
    ├── TimeoutError         no answer within the client's timeout
    ├── ProtocolError        bytes that break the wire protocol
    └── ServerError          the server answered with an ERROR frame
        ├── InvalidEvent     INVALID_EVENT (detail = index of the bad event)
        ├── InvalidArgument  INVALID_ARGUMENT
        ├── UnknownScorer    UNKNOWN_SCORER
        ├── Unauthorized     UNAUTHORIZED
        ├── NotSupported     NOT_SUPPORTED
        ├── Busy             BUSY
        ├── CapacityExceeded CAPACITY (detail = index of the event with the new id)
        └── Recovering       RECOVERING (detail = the replay's estimated ms left)

``ConnectionError`` and ``TimeoutError`` also derive from the builtins of the
same name, so ``except OSError`` and ``except builtins.TimeoutError`` catch
them too.
"""

from __future__ import annotations

import builtins
from typing import Dict, Optional, Type

__all__ = [
    "PerennialError",
    "ConnectionError",
    "TimeoutError",
    "ProtocolError",
    "ServerError",
    "InvalidEvent",
    "InvalidArgument",
    "UnknownScorer",
    "Unauthorized",
    "NotSupported",
    "Busy",
    "CapacityExceeded",
    "Recovering",
    "ServerTimeout",
    "ERROR_CODES",
    "ERROR_NAMES",
    "FATAL_CODES",
    "error_from_reply",
]

#: Error code numbers by name (PROTOCOL.md, "ERROR").
ERROR_CODES: Dict[str, int] = {
    "MALFORMED_FRAME": 1,
    "FRAME_TOO_LARGE": 2,
    "UNSUPPORTED_VERSION": 3,
    "UNKNOWN_OPCODE": 4,
    "MALFORMED_PAYLOAD": 5,
    "INVALID_ARGUMENT": 6,
    "INVALID_EVENT": 7,
    "UNKNOWN_SCORER": 8,
    "UNAUTHORIZED": 9,
    "NOT_SUPPORTED": 10,
    "TIMEOUT": 11,
    "SHUTTING_DOWN": 12,
    "STORAGE": 13,
    "INTERNAL": 14,
    "BUSY": 15,
    "CAPACITY": 16,
    "RECOVERING": 17,
}

#: Error code names by number.
ERROR_NAMES: Dict[int, str] = {v: k for k, v in ERROR_CODES.items()}

#: Codes after which the server always closes the connection.  (TIMEOUT is
#: fatal only for an unfinished frame; a server error reply tells which by
#: closing the connection.)
FATAL_CODES = frozenset({1, 2, 3, 15})


def code_name(code: int) -> str:
    """The name of error ``code``, or ``"CODE_<n>"`` for a number this client does not know."""
    return ERROR_NAMES.get(code, "CODE_%d" % code)


class PerennialError(Exception):
    """Base class of every error raised by the Perennial client."""


class ConnectionError(PerennialError, builtins.ConnectionError):
    """The connection could not be opened, broke, or was closed by the server."""


class TimeoutError(PerennialError, builtins.TimeoutError):
    """The server did not answer within the client's ``timeout``.

    The connection is closed when this is raised, because a reply may still be
    on its way; the next call opens a new connection.
    """


class ProtocolError(PerennialError):
    """Bytes that do not follow the wire protocol.

    Raised by :mod:`perennial.protocol` when decoding a frame or payload fails,
    and by the clients when the server's reply does not match the request.

    Attributes:
        code: the protocol error code number (see PROTOCOL.md), 0 for a
            client-side mismatch that has no protocol code.
        code_name: the code's name, e.g. ``"MALFORMED_PAYLOAD"``.
        fatal: True when the stream cannot be resynchronised (the connection
            must be closed).
        detail: code-specific detail (the event index for INVALID_EVENT).
        request_id: the request id from the frame header when it was
            readable, else 0.
        consumed: bytes of input the offending frame occupied (0 when fatal):
            a receiver skips them and carries on with the next frame.
    """

    def __init__(
        self,
        message: str,
        code_name: str = "MALFORMED_PAYLOAD",
        *,
        fatal: bool = False,
        detail: int = 0,
        request_id: int = 0,
        consumed: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code_name = code_name
        self.code = ERROR_CODES.get(code_name, 0)
        self.fatal = fatal
        self.detail = detail
        self.request_id = request_id
        self.consumed = consumed

    def __repr__(self) -> str:
        return "ProtocolError(%r, %r, fatal=%r, detail=%r, request_id=%r)" % (
            self.message, self.code_name, self.fatal, self.detail, self.request_id)


class ServerError(PerennialError):
    """The server refused a request with an ERROR frame.

    Attributes:
        code: the error code number.
        code_name: its name, e.g. ``"UNKNOWN_SCORER"``.
        detail: code-specific detail (0 unless documented otherwise).
        message: the server's human-readable message.
        fatal: True when the server closed the connection after this error.
    """

    def __init__(self, code: int, code_name: str, detail: int, message: str,
                 *, fatal: bool = False) -> None:
        super().__init__("%s (%d): %s" % (code_name, code, message) if message
                         else "%s (%d)" % (code_name, code))
        self.code = code
        self.code_name = code_name
        self.detail = detail
        self.message = message
        self.fatal = fatal

    def __repr__(self) -> str:
        return "%s(code=%r, code_name=%r, detail=%r, message=%r)" % (
            type(self).__name__, self.code, self.code_name, self.detail, self.message)


class InvalidEvent(ServerError):
    """A FEEDBACK event was refused; ``detail`` is its 0-based index.

    The whole batch was refused: none of its events was accepted.
    """


class InvalidArgument(ServerError):
    """A request field is outside its range (k = 0, id 0, a list too long, ...)."""


class UnknownScorer(ServerError):
    """The named scorer is not loaded on the server."""


class Unauthorized(ServerError):
    """Missing or wrong token, or an admin operation the server does not allow."""


class NotSupported(ServerError):
    """The operation is not available on this server."""


class Busy(ServerError):
    """The server has too many connections; it closed this one."""


class CapacityExceeded(ServerError):
    """A FEEDBACK event or UPSERT_ITEM would add a user or item id beyond the
    server's bound (``limits.max_user_ids`` / ``limits.max_item_ids``);
    ``detail`` is the event's 0-based index (0 for an upsert).

    Nothing of the request was accepted; events of known ids still are.
    """


class Recovering(ServerError):
    """The server is replaying its log after a restart and refused a write
    (an upsert, a deletion, RELOAD, SNAPSHOT, or feedback past what it
    accepts during one replay: what its learner queue would hold), the
    connection's first after holding it for its ``limits.wait_ms``, later
    ones at once;
    ``detail`` is the replay's estimated
    milliseconds left (0 when not known yet). Nothing of the request was
    accepted, so sending it again cannot apply it twice: the client's calls
    do so by themselves for up to ``recovery_wait`` seconds before raising
    this. Reads are answered during the replay.
    """


class ServerTimeout(ServerError, TimeoutError):
    """The server answered TIMEOUT: a read waited longer than the server's
    ``limits.wait_ms`` for the learner (``min_applied_seq``, or this
    connection's earlier feedback), or a frame was left unfinished.

    Both a :class:`ServerError` (with the server's code and message) and a
    :class:`TimeoutError`, so ``except TimeoutError`` catches every timeout.
    """


_CLASSES: Dict[str, Type[ServerError]] = {
    "TIMEOUT": ServerTimeout,
    "INVALID_EVENT": InvalidEvent,
    "INVALID_ARGUMENT": InvalidArgument,
    "UNKNOWN_SCORER": UnknownScorer,
    "UNAUTHORIZED": Unauthorized,
    "NOT_SUPPORTED": NotSupported,
    "BUSY": Busy,
    "CAPACITY": CapacityExceeded,
    "RECOVERING": Recovering,
}


def error_from_reply(code: int, detail: int, message: str,
                     fatal: Optional[bool] = None) -> ServerError:
    """Build the :class:`ServerError` (subclass) for an ERROR reply."""
    name = code_name(code)
    if fatal is None:
        fatal = code in FATAL_CODES
    return _CLASSES.get(name, ServerError)(code, name, detail, message, fatal=fatal)
