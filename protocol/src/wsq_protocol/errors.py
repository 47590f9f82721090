"""The exceptions of the protocol core: what does not follow protocol/README.md.

``WsqError``
    Base class of every error wsq raises on purpose (the worker SDK's tree,
    ``wsq_worker.exceptions``, derives from it).

``ProtocolError(WsqError)``
    Something read does not follow the wsq protocol: an event, a command or a client frame.

``FrameError(ProtocolError)``
    A client frame was rejected: carries the :class:`~wsq_protocol.codes.ErrorCode` its
    ``$error`` answer gets, a human message and the frame's ``id`` when one could be read.

``CommandError(ProtocolError)``
    An outbound command (from a worker or a publisher) that a gateway cannot run.

``PublishError(WsqError)``
    A publisher (``publishing``: the worker SDK's, the gateway's HTTP API) could not hand a
    command to Redis, or read presence from it: nothing was sent (nothing was read), unless
    its message says the connection was lost after it was sent (it may or may not have been
    written). The worker SDK re-exports it as ``wsq_worker.PublishError``.

Invalid arguments to the encoders (a malformed action, a close code outside 1000 and
3000-4999...) raise the builtin ``ValueError`` or ``TypeError``: bugs of the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsq_protocol.codes import ErrorCode

__all__ = ["CommandError", "FrameError", "ProtocolError", "PublishError", "WsqError"]


class WsqError(Exception):
    """Base class of the errors wsq raises on purpose."""


class ProtocolError(WsqError):
    """Something read does not follow the wsq protocol (protocol/README.md)."""


class FrameError(ProtocolError):
    """A client frame was rejected."""

    def __init__(self, code: ErrorCode, message: str, frame_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id


class CommandError(ProtocolError):
    """An outbound command that does not follow the protocol (a gateway logs and skips it)."""


class PublishError(WsqError):
    """Redis could not take a command: nothing was sent (or, its message says, maybe).

    ``code`` says which, for programs (the gateway's HTTP API answers with it):

    * ``unavailable``: Redis could not be reached or timed out; nothing was sent (or read).
      The only one worth retrying as is.
    * ``refused``: Redis refused the command (out of memory, a read-only replica, ACL...);
      nothing was sent.
    * ``maybe_written``: the connection was lost once the write was sent: it may or may not
      have been written.
    * ``partially_written``: the command went to some of the gateways holding a user or group,
      not all.
    * ``membership_pending``: a join or leave ran, but the group's set could not be written
      (its gateway writes it within a minute).
    * ``shards_mismatch``: this publisher's number of shards is not the deployment's.
    * ``failed``: anything else (a worker that stopped, say).
    """

    def __init__(self, message: str, *, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code
