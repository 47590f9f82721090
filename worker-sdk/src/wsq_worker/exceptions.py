"""Every exception wsq_worker raises on purpose, in one tree.

``WsqError``
    Base class: ``except WsqError`` catches everything below.

``ProtocolError(WsqError)``
    Something read from Redis does not follow the wsq protocol (protocol/README.md): an
    inbound event with a wrong ``v``, an unknown ``type``, a missing or malformed field, or a
    ``frame`` that is not a valid client frame (the worker logs it and drops the entry); or a
    connection's registry hash without ``node`` or a numeric ``since`` (``connection_info()``).

``PublishError(WsqError)``
    A publisher (or ``Context.send``, ``.join``, ``.leave``) could not hand a command to
    Redis: Redis is unreachable, timed out or refused the command. The push was not queued;
    the caller may retry later. Presence reads (``connections()``, ``connection_info()``...)
    raise it too when Redis can't answer. The Redis exception is chained as ``__cause__``.

Invalid arguments (a malformed action name, a close code outside 1000 and 3000-4999, a
reason longer than 123 bytes, a malformed connection id or group name, ``exclude`` outside
``to_group()``) raise the builtin ``ValueError``,
and data that JSON can't encode raises ``TypeError``: those are bugs in the calling code,
not conditions to handle at run time.
"""

from __future__ import annotations

__all__ = ["ProtocolError", "PublishError", "WsqError"]


class WsqError(Exception):
    """Base class of the exceptions raised by wsq_worker."""


class ProtocolError(WsqError):
    """Data read from Redis does not follow the wsq protocol."""


class PublishError(WsqError):
    """Redis could not take a command: nothing was sent."""
