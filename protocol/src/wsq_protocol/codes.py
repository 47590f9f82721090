"""Stable codes and limits of protocol version 1: error codes, close codes, sizes.

Clients see two kinds of failure, both listed in protocol/README.md:

* an ``$error`` frame whose ``data.code`` is an :class:`ErrorCode`; the socket stays open;
* a WebSocket close with a :class:`CloseCode` (or a code of the application's, 3000-4999).
"""

from __future__ import annotations

import enum
from typing import Final

PROTOCOL_VERSION: Final = "1"
"""``v`` of every event and command."""


class ErrorCode(enum.StrEnum):
    """``data.code`` of an ``$error`` frame."""

    # Sent by gateways.
    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    RESERVED_ACTION = "reserved_action"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"
    NO_WORKERS = "no_workers"
    NOT_TAKEN = "not_taken"
    INVALID_DATA = "invalid_data"
    NOT_MEMBER = "not_member"
    # Sent by workers.
    UNKNOWN_ACTION = "unknown_action"
    HANDLER_ERROR = "handler_error"
    HANDLER_FAILED = "handler_failed"


ERROR_CODES: Final = frozenset(code.value for code in ErrorCode)
"""Every error code, as plain ``str``."""


class CloseCode(enum.IntEnum):
    """WebSocket close codes wsq itself uses."""

    NORMAL = 1000
    ABNORMAL_CLOSURE = 1006  # no close frame came: the client or its network vanished (never sent)
    INVALID_TEXT = 1007  # a text frame was not UTF-8 (closed by aiohttp itself)
    POLICY_VIOLATION = 1008  # over WSQ_MAX_CONNECTIONS_PER_USER, found once the user was known
    MESSAGE_TOO_BIG = 1009  # a frame exceeded WSQ_MAX_MESSAGE_BYTES
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # the gateway drains (SIGTERM) or was presumed dead: reconnect
    TRY_AGAIN_LATER = 1013  # the connection could not be registered in Redis
    SLOW_CONSUMER = 3008  # the outgoing buffer passed WSQ_MAX_PENDING_BYTES
    HOOK_FAILED = 3011  # sent through a worker's refuse: its on_connect failed
    SESSION_RESUMED = 3012  # (resume on) another socket resumed the session: this one closes


PARKABLE_CLOSE_CODES: Final = frozenset({1006, 1011, 1012, 1014, 3008})
"""With session resume on: the ends of a socket that park its connection for the window (the
client lost it without closing, or a gateway holding a resumed socket drains: protocol/README.md,
"Session resume"); any other ends it."""


MAX_ACTION_LENGTH: Final = 64
MAX_ID_LENGTH: Final = 64
"""A client frame's ``id``: 1 to 64 characters."""
MAX_GROUP_LENGTH: Final = 128
MAX_USER_ID_BYTES: Final = 256
"""A user id: 1 to 256 bytes of UTF-8 without control characters."""
MAX_REASON_BYTES: Final = 123
"""A close reason: at most 123 bytes of UTF-8 (RFC 6455)."""
MAX_ATTEMPT: Final = 9999
"""The largest ``attempt`` a message event can carry (four digits, schemas/event.schema.json)."""
NODE_STREAM_MAXLEN: Final = 100_000
"""Approximate cap of a node stream (``XADD ... MAXLEN ~``): a vanished gateway can't fill Redis."""
BROADCAST_STREAM_MAXLEN: Final = 1_000
"""Approximate cap of the broadcast stream."""


def is_application_close_code(code: int) -> bool:
    """Whether a worker or publisher may close a socket with ``code``: 1000 or 3000-4999."""
    return code == 1000 or 3000 <= code <= 4999
