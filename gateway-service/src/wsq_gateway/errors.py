"""Every error the gateway reports, in one place.

Clients see two kinds of failure, both stable and documented in ``protocol/README.md``:

* an ``$error`` frame whose ``data.code`` is an :class:`ErrorCode`; the socket stays open;
* a WebSocket close with a :class:`CloseCode`.

Exceptions (all derive from :class:`GatewayError`):

* :class:`FrameError` — a client frame was rejected; carries its ``ErrorCode``, a human
  message and the frame's ``id`` when one could be read.
* :class:`AuthenticationError` — the upgrade request had no valid token (HTTP 401).
* :class:`BrokerUnavailable` — Redis could not take a write.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """``data.code`` of an ``$error`` frame."""

    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    RESERVED_ACTION = "reserved_action"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"
    NO_WORKERS = "no_workers"
    # Sent by workers, listed here so the gateway's list is the whole contract.
    UNKNOWN_ACTION = "unknown_action"
    HANDLER_ERROR = "handler_error"
    HANDLER_FAILED = "handler_failed"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway uses."""

    NORMAL = 1000
    INVALID_TEXT = 1007  # a text frame was not UTF-8 (closed by aiohttp itself)
    POLICY_VIOLATION = 1008  # over WSQ_MAX_CONNECTIONS_PER_USER, found once the user was known
    MESSAGE_TOO_BIG = 1009  # a frame exceeded WSQ_MAX_MESSAGE_BYTES
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # the gateway drains (SIGTERM) or was presumed dead: reconnect
    TRY_AGAIN_LATER = 1013  # the connection could not be registered in Redis
    SLOW_CONSUMER = 3008  # the outgoing buffer passed WSQ_MAX_PENDING_BYTES
    HOOK_FAILED = 3011  # sent through a worker's refuse: its on_connect failed


class GatewayError(Exception):
    """Base class of the gateway's exceptions."""


class FrameError(GatewayError):
    """A client frame was rejected."""

    def __init__(self, code: ErrorCode, message: str, frame_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id


class AuthenticationError(GatewayError):
    """The upgrade request carried no valid token."""


class BrokerUnavailable(GatewayError):
    """Redis did not take a write (connection lost, timeout, or an error reply)."""


def close_code_for(exc: BaseException) -> CloseCode:
    """The close code for a connection that ends because of ``exc``."""
    if isinstance(exc, BrokerUnavailable):
        return CloseCode.TRY_AGAIN_LATER
    return CloseCode.INTERNAL_ERROR
