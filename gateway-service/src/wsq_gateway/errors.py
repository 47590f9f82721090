"""Every error the gateway reports, in one place.

Clients see two kinds of failure, both stable and documented in ``protocol/README.md``:

* an ``$error`` frame whose ``data.code`` is an ``ErrorCode``; the socket stays open;
* a WebSocket close with a ``CloseCode``.

Both enums are the protocol core's (``wsq_protocol.codes``), as is ``FrameError`` — a client
frame was rejected; it carries its ``ErrorCode``, a human message and the frame's ``id`` when
one could be read.

The gateway's own exceptions (all derive from :class:`GatewayError`):

* :class:`AuthenticationError` — the upgrade request had no valid token (HTTP 401).
* :class:`BrokerUnavailable` — Redis could not take a write.
"""

from __future__ import annotations

from wsq_protocol.codes import CloseCode


class GatewayError(Exception):
    """Base class of the gateway's exceptions."""


class AuthenticationError(GatewayError):
    """The upgrade request carried no valid token."""


class BrokerUnavailable(GatewayError):
    """Redis did not take a write (connection lost, timeout, or an error reply)."""


def close_code_for(exc: BaseException) -> CloseCode:
    """The close code for a connection that ends because of ``exc``."""
    if isinstance(exc, BrokerUnavailable):
        return CloseCode.TRY_AGAIN_LATER
    return CloseCode.INTERNAL_ERROR
