"""Every exception the client raises. A request settles exactly once: with the reply's data, or
with one of these.

* :class:`WsqClientError` — the base of them all.

  * :class:`ServerError` — the server answered ``$error``: ``code`` is one of protocol/README.md's
    error codes (``handler_error``, ``no_workers``, ``rate_limited``...), ``message`` its text.
  * :class:`RequestTimeout` — no answer within the request's timeout. The server may still run
    it (a reply that comes later is dropped).
  * :class:`ConnectionLost` — the socket closed while the request was in flight: it may or may
    not have run (outcome unknown). Never sent again by the client: the application decides.

    * :class:`SessionLost` — (session resume) the socket was lost with the request in flight,
      and the client came back without the frames it missed (``resumed`` false: a new
      connection; true: the same connection, but the gateway no longer kept them): the reply
      may have been lost.
  * :class:`ClientClosed` — the client is closed (by ``close()``, or for good: a close code or an
    HTTP status it does not reconnect after, or its attempts ran out); ``code`` and ``reason``
    say why.
"""

from __future__ import annotations

__all__ = ["ClientClosed", "ConnectionLost", "RequestTimeout", "ServerError", "SessionLost", "WsqClientError"]


class WsqClientError(Exception):
    """Base class of the client's exceptions."""


class ServerError(WsqClientError):
    """The server answered the request with ``$error``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RequestTimeout(WsqClientError, TimeoutError):
    """No answer came within the request's timeout (the server may still run it)."""


class ConnectionLost(WsqClientError):
    """The socket closed while the request was in flight: whether it ran is unknown."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection lost (close code {code}) before the answer: the outcome is unknown")
        self.code = code
        self.reason = reason


class SessionLost(ConnectionLost):
    """(Session resume) The request was in flight when its socket was lost, and the resume did
    not recover the frames sent meanwhile: its reply may have been lost, whether it ran is
    unknown. ``resumed``: whether the gateway still had the connection (same id, user and
    groups; False: the client is on a new connection). ``code``: the close code of the lost
    socket (1006 when the client abandoned it because a frame was missing)."""

    def __init__(self, code: int, reason: str = "", *, resumed: bool) -> None:
        super().__init__(code, reason)
        self.resumed = resumed
        what = "the same connection without the frames it missed" if resumed else "a new connection"
        self.args = (
            f"connection lost (close code {code}) before the answer, and the client resumed on {what}: "
            "the reply may have been lost, the outcome is unknown",
        )


class ClientClosed(WsqClientError):
    """The client is closed and will not reconnect."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
