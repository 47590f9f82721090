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

Invalid arguments to the encoders (a malformed action, a close code outside 1000 and
3000-4999...) raise the builtin ``ValueError`` or ``TypeError``: bugs of the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsq_protocol.codes import ErrorCode

__all__ = ["CommandError", "FrameError", "ProtocolError", "WsqError"]


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
