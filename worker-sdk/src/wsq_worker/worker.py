"""The worker: reads events from the inbound stream and runs the application's handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable, Mapping
from types import FrameType, TracebackType
from typing import Any, Self, TypeAlias, TypeVar

from wsq_protocol.keys import MAX_SHARDS
from wsq_worker import speedups
from wsq_worker.context import Context
from wsq_worker.exceptions import SettingsError
from wsq_worker.logs import configure_logging
from wsq_worker.loops import Run
from wsq_worker.preflight import check_metrics_available
from wsq_worker.protocol import MAX_ATTEMPT, is_action_name
from wsq_worker.publisher import AsyncPublisher
from wsq_worker.schemas import declared_schemas
from wsq_worker.settings import WorkerSettings, checked_redis_url, variable_of

__all__ = ["Handler", "LifecycleHandler", "Periodic", "Worker"]

logger = logging.getLogger("wsq_worker.worker")

Handler: TypeAlias = Callable[[Context, Any], Any]
"""``async def handler(ctx, data)`` or ``def handler(ctx, data)``; the return value is the reply."""
LifecycleHandler: TypeAlias = Callable[[Context], Any]
"""``on_connect(ctx)`` / ``on_disconnect(ctx)``, ``async def`` or plain ``def``.

Under the gateway's connect hook the return value of ``on_connect`` decides: a non-empty ``str``
accepts the connection with that user id, ``None`` or ``True`` accepts it as it is, ``False``
refuses it (close code 4003), and ``raise Refuse(reason, code)`` refuses it with those."""
Periodic: TypeAlias = Callable[[AsyncPublisher], Any]
"""``fn(publisher)`` run every N seconds by ``Worker(every={N: fn})``, ``async def`` or plain ``def``."""

_F = TypeVar("_F")

# A consumer idle for this many times max(claim_idle_ms, block_ms) is a dead worker's: a live one
# reads every block_ms, and refreshes its entries every claim_idle_ms / 3 while it cannot read.
_STALE_CONSUMER_FACTOR = 3


class Worker:
    """Runs handlers for the events the gateways append to the inbound stream: every one of its
    partitions, ``{prefix:k}:inbound`` for each shard ``k`` (protocol/README.md, "Slots and shards").

    ``actions`` maps an action name to its handler; ``default`` handles every other action
    (without it they get an ``unknown_action`` error). Handlers are ``async def`` (run on the
    event loop) or plain ``def`` (run in a thread pool of ``concurrency`` threads, so blocking
    code is fine). At most ``concurrency`` events are handled at once.

    ``every={5.0: fn}`` calls ``fn(publisher)`` every 5 seconds in *each* worker process (run
    one process, or make ``fn`` safe to run several times). Its exceptions are logged.

    Delivery is at least once. An entry whose worker died is claimed by another worker once it
    was idle for ``claim_idle_ms`` (default ``WSQ_CLAIM_IDLE_MS``, else 15000) and run again with
    ``ctx.attempt`` one higher; a live worker keeps its entries from being claimed, however long
    its handlers take. A message handler may ``raise Retry(delay)`` to run again later. An event
    is acknowledged only with its writes (its reply...): a message a write of which Redis
    refused, or whose handler let a ``PublishError`` through, runs again as its next attempt
    ``claim_idle_ms`` later (another event stays pending, claimed once idle). A message
    past ``max_attempts`` (default ``WSQ_MAX_ATTEMPTS``, else 3) goes to the dead-letter stream
    and its client gets ``$error`` ``handler_failed``; that stream keeps the newest
    ``max_dead_letters`` (default ``WSQ_MAX_DEAD_LETTERS``, else 10000; 0: all). Any other
    exception is answered with
    ``$error`` ``handler_error`` once, and not retried.

    The consumer a worker killed without stopping (SIGKILL, OOM, a host lost) leaves in the
    consumer group is removed by a live worker once it was idle for ``stale_consumer_ms``
    (``3 * max(claim_idle_ms, block_ms)``: 45 s by default) and holds no pending entry: its
    entries are claimed first, as above. A live worker is never that idle: it reads every
    ``block_ms``, and refreshes its entries every ``claim_idle_ms / 3`` while all its slots are
    busy.

    ``redis_url``, ``key_prefix`` and ``shards`` default to ``WSQ_REDIS_URL``, ``WSQ_KEY_PREFIX``
    and ``WSQ_SHARDS`` (else 16): the gateways' own. ``redis_cluster`` (default
    ``WSQ_REDIS_CLUSTER``, else False) says that ``redis_url`` names a node of a Redis Cluster:
    the worker then reads each shard's partition from the master of its slot. A worker whose
    number of shards is not the one the deployment recorded in Redis refuses to start
    (``RedisUnusableError``).
    ``metrics_port`` (default ``WSQ_METRICS_PORT``, else 0: none) serves Prometheus metrics on
    that port while the worker runs (-1: a free port, then in ``metrics_bound_port``); it needs
    ``pip install 'wsq-worker[metrics]'`` (RuntimeError saying so at start without it).
    ``schemas={"chat.send": {...}}`` declares, per action, the JSON Schema (draft-07; or a
    pydantic model class) its frames' ``data`` must match: the worker publishes them to Redis
    as it starts, and the gateways answer a frame that does not match with ``$error``
    ``invalid_data`` instead of queuing it (protocol/README.md, "Action schemas"). A schema
    that can't be published raises ``SettingsError`` here.
    ``shutdown_timeout`` bounds the wait for in-flight handlers when stopping; ``block_ms`` is
    how long one read waits for events (and so the longest ``stop()`` waits for the read).
    """

    def __init__(
        self,
        actions: Mapping[str, Handler] | None = None,
        *,
        schemas: Mapping[str, object] | None = None,
        default: Handler | None = None,
        on_connect: LifecycleHandler | None = None,
        on_disconnect: LifecycleHandler | None = None,
        every: Mapping[float, Periodic] | None = None,
        concurrency: int = 100,
        redis_url: str | None = None,
        redis_cluster: bool | None = None,
        key_prefix: str | None = None,
        shards: int | None = None,
        consumer_name: str | None = None,
        shutdown_timeout: float = 30.0,
        block_ms: int = 1000,
        claim_idle_ms: int | None = None,
        max_attempts: int | None = None,
        max_dead_letters: int | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.actions = dict(actions or {})
        for name, handler in self.actions.items():
            if not is_action_name(name):
                raise ValueError(f"action must be 1-64 letters, digits or _ . : -, not {name!r}")
            _check_callable(handler, f"handler of {name!r}")
        self.default = _check_callable(default, "default")
        self.schemas = declared_schemas(schemas or {}, self.actions, default is not None)
        """action -> its declared schema, as the canonical JSON text published to Redis."""
        self.on_connect = _check_callable(on_connect, "on_connect")
        self.on_disconnect = _check_callable(on_disconnect, "on_disconnect")
        self.every = dict(every or {})
        for interval, periodic in self.every.items():
            if not interval > 0:
                raise ValueError(f"every: intervals are positive numbers of seconds, not {interval!r}")
            _check_callable(periodic, f"every[{interval!r}]")
        self.concurrency = concurrency
        settings = WorkerSettings.from_env(
            redis_url=redis_url or None,
            redis_cluster=redis_cluster,
            key_prefix=key_prefix or None,
            shards=shards,
            claim_idle_ms=claim_idle_ms,
            max_attempts=max_attempts,
            max_dead_letters=max_dead_letters,
            metrics_port=metrics_port,
        )
        self.redis_url = settings.redis_url
        self.redis_cluster = settings.redis_cluster
        self.key_prefix = settings.key_prefix
        self.shards = settings.shards
        self.consumer_name = consumer_name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.shutdown_timeout = shutdown_timeout
        self.block_ms = block_ms
        self.claim_idle_ms = settings.claim_idle_ms
        self.max_attempts = settings.max_attempts
        self.max_dead_letters = settings.max_dead_letters
        self.metrics_port = settings.metrics_port
        self.metrics_bound_port: int | None = None
        """The port the metrics are served on while the worker runs (``metrics_port``, or the
        one the system picked for ``metrics_port=-1``)."""
        self._running: Run | None = None
        self._stop_requested = False

    @property
    def stale_consumer_ms(self) -> int:
        """How long a consumer of the group is idle before this worker removes it (if it holds
        no pending entry): far longer than a live worker is, and than entries wait to be claimed."""
        return _STALE_CONSUMER_FACTOR * max(self.claim_idle_ms, self.block_ms)

    # Running and stopping.

    def run(self) -> None:
        """Run until SIGINT or SIGTERM, then finish in-flight handlers and return (on uvloop
        when the ``fast`` extra is installed).

        When the process configured no logging (the root logger has no handler), it logs to
        stderr at INFO as ``wsq-worker`` does (``logs.LOG_FORMAT``); an application's own
        logging set-up is left alone. ``run_async()`` never configures logging."""
        configure_logging()
        speedups.run(self._run_until_signalled())

    async def run_async(self) -> None:
        """Run until ``stop()`` is called, then finish in-flight handlers and return."""
        await self._start().main()

    def stop(self) -> None:
        """Stop reading events; ``run()``/``run_async()`` return once in-flight handlers are done.

        Safe to call from any thread and from a signal handler. Called before the worker
        started, it makes the next run stop at once.
        """
        self._stop_requested = True
        running = self._running
        if running is not None:
            # RuntimeError: the loop is already closed, nothing left to stop.
            with contextlib.suppress(RuntimeError):
                running.loop.call_soon_threadsafe(running.request_stop)

    async def __aenter__(self) -> Self:
        """Start ``run_async()`` in a task; return once it reads the inbound stream (Redis is up)."""
        running = self._start()
        running.task = asyncio.create_task(running.main(), name=f"wsq-worker-{self.consumer_name}")
        ready = asyncio.create_task(running.ready.wait())
        await asyncio.wait({running.task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if running.task.done():
            running.task.result()  # raises what made it fail
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        running = self._running
        if running is not None and running.task is not None:  # else it already stopped
            self.stop()
            await running.task

    def _start(self) -> Run:
        if self._running is not None:
            raise RuntimeError("this worker is already running")
        checked_redis_url(self.redis_url)  # SettingsError, as the ranges below
        if self.concurrency < 1:
            raise SettingsError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.block_ms < 1:
            raise SettingsError(f"block_ms must be at least 1, not {self.block_ms}")
        if self.claim_idle_ms < 1:
            raise SettingsError(
                f"claim_idle_ms must be at least 1, not {self.claim_idle_ms} ({variable_of('claim_idle_ms')})"
            )
        if not 1 <= self.max_attempts <= MAX_ATTEMPT:
            raise SettingsError(
                f"max_attempts must be 1-{MAX_ATTEMPT}, not {self.max_attempts} "
                f"({variable_of('max_attempts')})"
            )
        if type(self.shards) is not int or not 1 <= self.shards <= MAX_SHARDS:
            raise SettingsError(
                f"shards must be 1-{MAX_SHARDS}, not {self.shards!r} ({variable_of('shards')})"
            )
        if self.max_dead_letters < 0:
            raise SettingsError(
                f"max_dead_letters must be 0 (no cap) or more, not {self.max_dead_letters} "
                f"({variable_of('max_dead_letters')})"
            )
        if not -1 <= self.metrics_port <= 65535:
            raise SettingsError(
                f"metrics_port must be 0 (none), -1 (any free port) or a port, not {self.metrics_port} "
                f"({variable_of('metrics_port')})"
            )
        if self.metrics_port:
            check_metrics_available()
        self._running = Run(self)
        if self._stop_requested:
            self._running.request_stop()
        return self._running

    def _finished(self) -> None:
        self._running = None
        self._stop_requested = False

    async def _run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # Windows: no loop signal handlers
                signal.signal(signum, self._on_signal_fallback)
        try:
            await self.run_async()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: signal.Signals) -> None:
        if self._stop_requested:
            logger.warning("%s again: already stopping, waiting for in-flight handlers", signum.name)
            return
        logger.info(
            "%s: stopping, finishing in-flight handlers (up to %.0fs)", signum.name, self.shutdown_timeout
        )
        self.stop()

    def _on_signal_fallback(self, signum: int, frame: FrameType | None) -> None:
        self._on_signal(signal.Signals(signum))


def _check_callable(fn: _F, what: str) -> _F:
    if fn is not None and not callable(fn):
        raise TypeError(f"{what} must be callable, not {type(fn).__name__}")
    return fn
