"""Every exception wsq_worker raises on purpose, in one tree.

``WsqError``
    Base class: ``except WsqError`` catches everything below. It, ``ProtocolError`` and
    ``PublishError`` are the protocol core's (``wsq_protocol.errors``), shared with the gateway.

``ProtocolError(WsqError)``
    Something read from Redis does not follow the wsq protocol (protocol/README.md): an
    inbound event with a wrong ``v``, an unknown ``type``, a missing or malformed field, or a
    ``frame`` that is not a valid client frame (the worker logs it and drops the entry); or a
    connection's registry hash without ``node`` or a numeric ``since`` (``connection_info()``).

``PublishError(WsqError)``
    A publisher (or ``Context.send``, ``.join``, ``.leave``) could not hand a command to
    Redis: Redis is unreachable, timed out or refused the command. The push was not queued
    ("nothing was sent"), except when its message says the connection was lost after it was
    sent: it may or may not have been written (pushes and joins are at most once: wsq never
    sends them again by itself). The caller may retry later, if a duplicate is harmless.
    Let through a message handler, it runs the message again as its next attempt (as when
    Redis refuses the reply), and never answers ``handler_error``. Presence reads
    (``connections()``, ``connection_info()``...) raise it too when Redis can't answer. The
    Redis exception is chained as ``__cause__``.

``WorkerFailedError(WsqError)``
    ``Worker.run()`` / ``run_async()`` stopped because the worker can't go on: one of its
    background tasks (the flusher, the keep-alive, the delayed-retry mover, a periodic
    function's loop) ended unexpectedly. The task's traceback was logged when it died; the
    worker then stopped as ``stop()`` does (in-flight handlers get ``shutdown_timeout``) and
    raises this, its cause chained. ``wsq-worker`` exits with status 1: let the supervisor
    (Kubernetes, systemd, compose) start a fresh process.

``RedisUnusableError(WorkerFailedError)``
    The Redis at ``redis_url`` can never serve the worker, however long it waits: a Redis
    Cluster node (``cluster_enabled:1``), a read-only replica, a wrong or missing password, a
    missing ACL permission, a command Redis does not know, a script that does not stay loaded,
    a key of wsq's holding another type. Raised at start-up, before the worker reads (transient
    errors — connection refused, timeouts, ``LOADING`` — are retried with backoff instead); the
    message says which, in one line.

``SettingsError(WsqError, ValueError)``
    A setting is malformed or out of range: a ``WSQ_*`` variable that is not a number (or a
    yes or no), a ``WSQ_REDIS_URL`` (or ``redis_url``) that is not a ``redis://``,
    ``rediss://`` or ``unix://`` URL, a ``max_attempts`` outside 1-9999... Raised by
    ``Worker(...)``, by ``run()``/``run_async()`` at start (for values set after it was made)
    and by ``connection_from_env()``; the message names the setting, in one line, and never
    holds the URL. ``wsq-worker`` prints it and exits with status 2.

Two exceptions are for the application to raise, and the worker to catch. They are not
errors of wsq_worker, so they derive from ``Exception``, not ``WsqError``:

``Retry(delay: float = 0)``
    Raised by a message handler: run this message again in ``delay`` seconds (at least), with
    ``ctx.attempt`` one higher. The entry is acknowledged and a copy waits in
    its shard's ``{prefix:k}:delayed``; once the message used ``max_attempts`` attempts it goes
    to its shard's dead-letter stream ``{prefix:k}:dead`` instead and the client gets ``$error``
    ``handler_failed``. Raised from ``on_connect`` or ``on_disconnect`` it is an error like any
    other (only messages are retried this way).

``Refuse(reason: str = "", code: int = 4003)``
    Raised by ``on_connect`` when the gateway runs the connect hook (``WSQ_CONNECT_HOOK``): the
    connection is refused and closed with ``code`` (1000 or 3000-4999) and ``reason`` (at most
    123 bytes of UTF-8); a bad code or reason raises ``ValueError`` when the ``Refuse`` is made.
    Without the hook the connection is already open: the worker logs an error instead.

Invalid arguments (a malformed action name, a close code outside 1000 and 3000-4999, a
reason longer than 123 bytes, a malformed connection id or group name, ``exclude`` outside
``to_group()``) raise the builtin ``ValueError``,
and data that JSON can't encode raises ``TypeError``: those are bugs in the calling code,
not conditions to handle at run time.
"""

from __future__ import annotations

import math

from wsq_protocol.errors import ProtocolError, PublishError, WsqError
from wsq_protocol.ids import check_close

__all__ = [
    "ProtocolError",
    "PublishError",
    "RedisUnusableError",
    "Refuse",
    "Retry",
    "SettingsError",
    "WorkerFailedError",
    "WsqError",
]


class WorkerFailedError(WsqError):
    """The worker stopped because it can't go on (a background task died, or Redis is unusable)."""


class RedisUnusableError(WorkerFailedError):
    """The Redis the worker was given can never serve it: the message says why."""


class SettingsError(WsqError, ValueError):
    """A setting (a ``WSQ_*`` variable, or the ``Worker`` argument over it) is malformed or out of
    range: the message names it."""


class Retry(Exception):
    """Raised by a message handler: run the message again in ``delay`` seconds."""

    def __init__(self, delay: float = 0) -> None:
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
            or delay < 0
        ):
            raise ValueError(f"Retry delay must be a finite number of seconds >= 0, not {delay!r}")
        super().__init__(delay)
        self.delay = float(delay)

    def __str__(self) -> str:
        return f"retry in {self.delay:g}s"


class Refuse(Exception):
    """Raised by ``on_connect`` under the connect hook: refuse the connection."""

    def __init__(self, reason: str = "", code: int = 4003) -> None:
        check_close(code, reason)
        super().__init__(reason, code)
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return f"{self.code} {self.reason}".rstrip()
