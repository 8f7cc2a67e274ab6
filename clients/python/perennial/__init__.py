"""Python client for the Perennial recommendation server.

Blocking::

    import perennial

    with perennial.Client("127.0.0.1", 7878) as c:
        c.feedback([perennial.Event(user=1, item=42, kind="click")])
        print(c.recommend(user=2, k=5))

asyncio::

    async with perennial.AsyncClient("127.0.0.1", 7878) as c:
        print(await c.recommend(user=2, k=5))

The wire protocol itself lives in :mod:`perennial.protocol`.
"""

from .aio import AsyncClient, AsyncFeedbackStreamer, AsyncPipeline
from .client import Client, FeedbackStreamer, Pipeline
from .errors import (Busy, CapacityExceeded, InvalidArgument, InvalidEvent, NotSupported,
                     PerennialError, ProtocolError, Recovering, ServerError, ServerTimeout,
                     Unauthorized, UnknownScorer)
# Exported by name though not in __all__ (below): `import X as X` tells type
# checkers (mypy --strict) that perennial.ConnectionError is meant for users.
from .errors import ConnectionError as ConnectionError
from .errors import TimeoutError as TimeoutError
from .types import Event, FeedbackAck, Recommendation, Score, ServerInfo, Snapshot, UpsertResult

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Client",
    "AsyncClient",
    "Pipeline",
    "AsyncPipeline",
    "FeedbackStreamer",
    "AsyncFeedbackStreamer",
    "Event",
    "Recommendation",
    "Score",
    "FeedbackAck",
    "UpsertResult",
    "ServerInfo",
    "Snapshot",
    "PerennialError",
    # (Not ConnectionError and TimeoutError: `from perennial import *` would
    # replace the builtins of those names, and an `except ConnectionError:`
    # after it would miss other libraries' errors. Use
    # perennial.ConnectionError, which is also the builtin's subclass.)
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
]
