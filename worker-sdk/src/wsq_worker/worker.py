"""The worker: reads events from the inbound stream and runs the application's handlers."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import secrets
import signal
import socket
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import FrameType, TracebackType
from typing import Any, NamedTuple, Self, TypeAlias, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff

from wsq_worker import constants, delivery, preflight, speedups
from wsq_worker.context import Context
from wsq_worker.exceptions import (
    ProtocolError,
    PublishError,
    RedisUnusableError,
    Refuse,
    Retry,
    WorkerFailedError,
)
from wsq_worker.flusher import BestEffort, CommitWrite, Flusher, PackedWrite
from wsq_worker.protocol import (
    HANDLER_ERROR,
    HANDLER_FAILED,
    MAX_ATTEMPT,
    UNKNOWN_ACTION,
    Event,
    accept_command,
    checked_reply_frame,
    decode_event,
    error_frame,
    is_action_name,
    node_of,
    refuse_command,
    send_command,
    text_fields,
)
from wsq_worker.publisher import AsyncPublisher, StreamWrite

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

_MAX_READ_COUNT = 100
_MIN_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0
_CONNECT_TIMEOUT_S = 5.0
_COMMAND_TIMEOUT_S = 10.0
_MOVE_DUE_EVERY_S = 0.25
_MOVE_DUE_BATCH = 100
_KEEP_ALIVE_BATCH = 1000
# A consumer idle for this many times max(claim_idle_ms, block_ms) is a dead worker's: a live one
# reads every block_ms, and refreshes its entries every claim_idle_ms / 3 while it cannot read.
_STALE_CONSUMER_FACTOR = 3
# A history read of the largest id but one: it returns nothing (no entry can be pending after
# it), and resets the consumer's idle time. On Redis 7.0 a blocking read that gets no entry does
# not: a quiet worker would look dead to the gateways (and to other workers) after a while.
_TOUCH_ID = "18446744073709551615-18446744073709551614"
# The connect hook's answers: on_connect returned False; on_connect failed (an exception, a
# return value that means nothing, or its attempts used up). 1011, the WebSocket code for a
# server error, is not a code a refuse command may carry (1000 or 3000-4999): 3011 is wsq's.
REFUSED = (4003, "refused")
HOOK_FAILED = (3011, "connect hook failed")


class Worker:
    """Runs handlers for the events the gateways append to ``{prefix}:inbound``.

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

    ``redis_url`` and ``key_prefix`` default to ``WSQ_REDIS_URL`` and ``WSQ_KEY_PREFIX``.
    ``shutdown_timeout`` bounds the wait for in-flight handlers when stopping; ``block_ms`` is
    how long one read waits for events (and so the longest ``stop()`` waits for the read).
    """

    def __init__(
        self,
        actions: Mapping[str, Handler] | None = None,
        *,
        default: Handler | None = None,
        on_connect: LifecycleHandler | None = None,
        on_disconnect: LifecycleHandler | None = None,
        every: Mapping[float, Periodic] | None = None,
        concurrency: int = 100,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        consumer_name: str | None = None,
        shutdown_timeout: float = 30.0,
        block_ms: int = 1000,
        claim_idle_ms: int | None = None,
        max_attempts: int | None = None,
        max_dead_letters: int | None = None,
    ) -> None:
        self.actions = dict(actions or {})
        for name, handler in self.actions.items():
            if not is_action_name(name):
                raise ValueError(f"action must be 1-64 letters, digits or _ . : -, not {name!r}")
            _check_callable(handler, f"handler of {name!r}")
        self.default = _check_callable(default, "default")
        self.on_connect = _check_callable(on_connect, "on_connect")
        self.on_disconnect = _check_callable(on_disconnect, "on_disconnect")
        self.every = dict(every or {})
        for interval, periodic in self.every.items():
            if not interval > 0:
                raise ValueError(f"every: intervals are positive numbers of seconds, not {interval!r}")
            _check_callable(periodic, f"every[{interval!r}]")
        self.concurrency = concurrency
        self.redis_url = redis_url or constants.redis_url_from_env()
        self.key_prefix = key_prefix or constants.key_prefix_from_env()
        self.consumer_name = consumer_name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.shutdown_timeout = shutdown_timeout
        self.block_ms = block_ms
        self.claim_idle_ms = constants.claim_idle_ms_from_env() if claim_idle_ms is None else claim_idle_ms
        self.max_attempts = constants.max_attempts_from_env() if max_attempts is None else max_attempts
        self.max_dead_letters = (
            constants.max_dead_letters_from_env() if max_dead_letters is None else max_dead_letters
        )
        self._running: _Run | None = None
        self._stop_requested = False

    @property
    def stale_consumer_ms(self) -> int:
        """How long a consumer of the group is idle before this worker removes it (if it holds
        no pending entry): far longer than a live worker is, and than entries wait to be claimed."""
        return _STALE_CONSUMER_FACTOR * max(self.claim_idle_ms, self.block_ms)

    # Running and stopping.

    def run(self) -> None:
        """Run until SIGINT or SIGTERM, then finish in-flight handlers and return (on uvloop
        when the ``fast`` extra is installed)."""
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

    def _start(self) -> _Run:
        if self._running is not None:
            raise RuntimeError("this worker is already running")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.block_ms < 1:
            raise ValueError(f"block_ms must be at least 1, not {self.block_ms}")
        if self.claim_idle_ms < 1:
            raise ValueError(f"claim_idle_ms must be at least 1, not {self.claim_idle_ms}")
        if not 1 <= self.max_attempts <= MAX_ATTEMPT:
            raise ValueError(f"max_attempts must be 1-{MAX_ATTEMPT}, not {self.max_attempts}")
        if self.max_dead_letters < 0:
            raise ValueError(f"max_dead_letters must be 0 (no cap) or more, not {self.max_dead_letters}")
        self._running = _Run(self)
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


class _Run:
    """The state of one ``run_async()``: clients, in-flight tasks and the read loop."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.slot_freed = asyncio.Event()
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        """Handler tasks by inbound entry id."""
        self.lost: set[str] = set()
        """In-flight entries another worker claimed (this one was presumed dead)."""
        self.periodic: set[asyncio.Task[None]] = set()
        self.keep_alive: asyncio.Task[None] | None = None
        self.failure: tuple[str, BaseException | None] | None = None
        """The first background task that ended unexpectedly (its name), and its exception."""
        self.inbound = constants.inbound_stream(worker.key_prefix)
        self.delayed = constants.delayed(worker.key_prefix)
        self.claim_cursor = "0-0"
        group, name = constants.CONSUMER_GROUP, worker.consumer_name
        self.touch = ("XREADGROUP", "GROUP", group, name, "COUNT", "1", "STREAMS", self.inbound, _TOUCH_ID)
        """A read that returns nothing but resets this consumer's idle time (see _TOUCH_ID)."""
        self.reply_templates: dict[str, _ReplyTemplate] = {}
        """The packed head of a reply's ``XADD``, by gateway node."""
        retry = redis.asyncio.retry.Retry(redis.backoff.ExponentialBackoff(cap=1.0, base=0.05), 3)
        self.client = speedups.async_redis(
            worker.redis_url,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            retry=retry,
        )
        # Reads block for block_ms: on a connection of their own, with no retry but ours.
        self.reader = speedups.async_redis(
            worker.redis_url,
            single_connection_client=True,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=worker.block_ms / 1000 + _COMMAND_TIMEOUT_S,
            retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0),
        )
        self.read_pipe = speedups.RedisPipe(self.reader)  # XREADGROUP, replies raw
        self.publisher = AsyncPublisher(client=self.client, key_prefix=worker.key_prefix)
        self.flusher: Flusher[_Entry] = Flusher(
            self.client, self.inbound, constants.CONSUMER_GROUP, on_refused=self._refused
        )
        self.claim_script = self.reader.register_script(delivery.CLAIM_SCRIPT)
        self.keep_alive_script = self.client.register_script(delivery.KEEP_ALIVE_SCRIPT)
        self.move_due_script = self.client.register_script(delivery.MOVE_DUE_SCRIPT)
        self.forget_stale_script = self.client.register_script(delivery.FORGET_STALE_SCRIPT)
        self.executor = ThreadPoolExecutor(max_workers=worker.concurrency, thread_name_prefix="wsq-handler")

    def request_stop(self) -> None:
        self.stopping.set()
        self.slot_freed.set()

    async def main(self) -> None:
        worker = self.worker
        try:
            self._watch(self.flusher.start())
            for interval, periodic in worker.every.items():
                name = f"wsq-every-{interval:g}s-{getattr(periodic, '__qualname__', 'fn')}"
                self.periodic.add(
                    self._watch(asyncio.create_task(self._run_periodic(interval, periodic), name=name))
                )
            self.periodic.add(self._watch(asyncio.create_task(self._move_due_retries(), name="wsq-delayed")))
            self.periodic.add(
                self._watch(asyncio.create_task(self._forget_stale_consumers(), name="wsq-stale-consumers"))
            )
            # Until the last ack is written, not only until stop(): in-flight entries stay ours.
            self.keep_alive = self._watch(asyncio.create_task(self._keep_alive(), name="wsq-keep-alive"))
            await self._read_until_stopped()
            await self._finish_in_flight()
            if self.failure is not None:
                name, error = self.failure
                what = f"died ({error!r})" if error is not None else "returned"
                raise WorkerFailedError(f"the worker's background task {name} {what}: it stopped") from error
        finally:
            self.request_stop()  # from here on the background tasks end on purpose
            try:
                for task in {*self.in_flight.values(), *self.periodic}:  # only left when cancelled
                    task.cancel()
                await self.flusher.close(max(worker.shutdown_timeout, 1.0))
                if self.keep_alive is not None:
                    self.keep_alive.cancel()
                    await asyncio.wait({self.keep_alive})
                await self._forget_consumer()
                await self.read_pipe.aclose()
                await self.reader.aclose()
                await self.client.aclose()
            finally:
                # Threads still running a plain def handler can't be stopped: they finish on their own.
                self.executor.shutdown(wait=False, cancel_futures=True)
                worker._finished()
                logger.info("worker %s stopped", worker.consumer_name)

    def _watch(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """No background task may end unnoticed: one that dies (or returns while the worker
        runs) is logged at once with its traceback, and stops the worker, whose run raises
        WorkerFailedError. Not restarted in place: a bug that killed it once would again."""
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None and self.stopping.is_set():
            return
        logger.error(
            "background task %s %s: stopping the worker",
            task.get_name(),
            "died" if error is not None else "returned, which it never should",
            exc_info=error,
        )
        if self.failure is None and not self.stopping.is_set():
            self.failure = (task.get_name(), error)
            self.request_stop()

    # Reading the inbound stream.

    async def _read_until_stopped(self) -> None:
        """Read new entries, and claim idle ones every ``claim_idle_ms / 2``, as slots are free."""
        worker = self.worker
        backoff = _MIN_BACKOFF_S
        has_group = False
        next_claim = self.loop.time()  # at once: entries of a worker that died before we started
        # This consumer's idle time was reset by a read that got entries just now, so the next
        # read needs no touch (see _TOUCH_ID).
        fresh = False
        while not self.stopping.is_set():
            free_slots = worker.concurrency - len(self.in_flight)
            if free_slots <= 0:
                fresh = False
                self.slot_freed.clear()
                await self.slot_freed.wait()
                continue
            count = min(free_slots, _MAX_READ_COUNT)
            try:
                if not has_group:
                    problem = None if self.ready.is_set() else await preflight.server_problem(self.client)
                    if problem is not None:
                        raise RedisUnusableError(f"{_safe_url(worker.redis_url)}: {problem}")
                    await self._create_group()
                    has_group = True
                if self.loop.time() >= next_claim:
                    fresh = False
                    more = await self._claim(count)
                    next_claim = self.loop.time() + (0 if more else worker.claim_idle_ms / 2000)
                    continue
                # Not interrupted by stop(): the entries it returns are ours to handle, or they
                # would stay pending forever. So stopping takes up to block_ms.
                block_ms = min(worker.block_ms, int((next_claim - self.loop.time()) * 1000))
                read = (
                    "XREADGROUP",
                    "GROUP",
                    constants.CONSUMER_GROUP,
                    worker.consumer_name,
                    "COUNT",
                    count,
                    "BLOCK",
                    max(block_ms, 1),  # 0 would block for ever
                    "STREAMS",
                    self.inbound,
                    ">",
                )
                if fresh:
                    fresh = False
                    (response,) = await self.read_pipe.execute([read])
                else:  # the touch's reply tells nothing the read's does not
                    _, response = await self.read_pipe.execute([self.touch, read])
                if isinstance(response, redis.ResponseError):
                    raise response
            except RedisUnusableError:
                raise
            except redis.ResponseError as exc:
                self._raise_if_unusable(exc)
                if "NOGROUP" in str(exc):  # the stream was deleted (FLUSHALL, a Redis restart...)
                    logger.warning("the consumer group is gone (%s): creating it again", exc)
                    has_group = False
                else:
                    logger.error("reading %s failed: %s; retrying in %.1fs", self.inbound, exc, backoff)
                    await self._sleep_unless_stopped(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            except Exception as exc:  # Redis unreachable, or anything else: never crash the worker
                self._raise_if_unusable(exc)
                logger.error("Redis is unavailable (%s): retrying in %.1fs", exc, backoff)
                await self._sleep_unless_stopped(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            backoff = _MIN_BACKOFF_S
            for entry_id, fields in _stream_entries(response):
                fresh = True
                self._start_handler(entry_id, fields, delivered=1)

    def _raise_if_unusable(self, exc: Exception) -> None:
        """Before the worker first reads, a permanent error (a wrong password, a replica...)
        stops it with RedisUnusableError; later ones (a failover, say) are retried."""
        if self.ready.is_set():
            return
        problem = preflight.permanent_problem(exc)
        if problem is not None:
            raise RedisUnusableError(f"{_safe_url(self.worker.redis_url)}: {problem}") from exc

    async def _claim(self, count: int) -> bool:
        """Claim and start up to ``count`` entries idle for ``claim_idle_ms``; True if there may be more."""
        worker = self.worker
        response = await self.claim_script(
            keys=[self.inbound],
            args=[
                constants.CONSUMER_GROUP,
                worker.consumer_name,
                worker.claim_idle_ms,
                self.claim_cursor,
                count,
            ],
        )
        self.claim_cursor, claimed = delivery.parse_claim(response)
        if claimed:
            logger.warning(
                "claimed %d entries idle for more than %d ms (their worker died or is stuck): "
                "running them again",
                len(claimed),
                worker.claim_idle_ms,
            )
        for entry in claimed:
            self._start_handler(entry.entry_id, entry.fields, entry.delivered)
        return len(claimed) == count or self.claim_cursor != "0-0"

    def _start_handler(self, entry_id: str, fields: Mapping[bytes, bytes] | None, delivered: int) -> None:
        if entry_id in self.in_flight:  # claimed back from ourselves (a keep-alive came late): running
            return
        self.in_flight[entry_id] = asyncio.create_task(self._handle_entry(entry_id, fields, delivered))

    async def _create_group(self) -> None:
        # From id 0, not $: events appended before the first worker started are handled too.
        try:
            await self.client.xgroup_create(self.inbound, constants.CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # Listed in XINFO CONSUMERS from now on, not only once it got its first entry, so
        # operators (and tests) see a worker as soon as it reads.
        await self.client.xgroup_createconsumer(
            self.inbound, constants.CONSUMER_GROUP, self.worker.consumer_name
        )
        if not self.ready.is_set():
            self.ready.set()
            logger.info(
                "worker %s reading %s (concurrency %d, %d actions%s)",
                self.worker.consumer_name,
                self.inbound,
                self.worker.concurrency,
                len(self.worker.actions),
                " and a default handler" if self.worker.default else "",
            )

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Wait ``seconds`` (a back-off or a period, not a synchronisation); True if stopped meanwhile."""
        if seconds > 0 and not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        return self.stopping.is_set()

    async def _finish_in_flight(self) -> None:
        in_flight = {*self.in_flight.values(), *self.periodic}
        if not in_flight:
            return
        timeout = self.worker.shutdown_timeout
        if self.in_flight:
            logger.info("waiting for %d in-flight handlers (up to %.0fs)", len(self.in_flight), timeout)
        _, still_running = await asyncio.wait(in_flight, timeout=timeout)
        if still_running:
            logger.error(
                "%d handlers still running after shutdown_timeout (%.0fs): cancelled; "
                "their events stay pending in Redis, unacknowledged, until another worker claims them",
                len(still_running),
                timeout,
            )
            for task in still_running:
                task.cancel()
            await asyncio.wait(still_running)

    async def _forget_consumer(self) -> None:
        """Remove this consumer from the group, unless entries are still pending for it."""
        try:
            pending = await self.client.xpending_range(
                self.inbound, constants.CONSUMER_GROUP, "-", "+", 1, consumername=self.worker.consumer_name
            )
            if not pending:
                await self.client.xgroup_delconsumer(
                    self.inbound, constants.CONSUMER_GROUP, self.worker.consumer_name
                )
        except redis.RedisError as exc:
            logger.debug("could not remove consumer %s: %s", self.worker.consumer_name, exc)

    # Handling one event.

    async def _handle_entry(
        self, entry_id: str, raw_fields: Mapping[bytes, bytes] | None, delivered: int
    ) -> None:
        """Run the entry's handler (or dead-letter it), then acknowledge it with its writes,
        whatever happened: if Redis refuses one of them, ``_refused()`` runs it again."""
        try:
            entry = self._entry(entry_id, raw_fields, delivered)
            writes: tuple[CommitWrite, ...] = ()
            try:
                if entry is None:
                    pass
                elif entry.attempt > self.worker.max_attempts:
                    writes = self._give_up(entry, _gone_error(entry, delivered), attempts=entry.attempt - 1)
                elif entry.event.type == "message":
                    writes = await self._handle_message(entry)
                else:
                    writes = await self._dispatch_lifecycle(entry)
            except Exception:
                logger.exception("failed to handle inbound entry %s", entry_id)
            # The reply, dead letter or retry and the ack: one script, in the next pipeline.
            self.flusher.ack(entry_id, writes, entry)
        finally:
            # Here rather than in a done callback: one loop callback less per event. (A task
            # cancelled before its first step never gets here: only a stopping worker does that.)
            del self.in_flight[entry_id]
            self.lost.discard(entry_id)
            self.slot_freed.set()

    @staticmethod
    def _entry(entry_id: str, raw_fields: Mapping[bytes, bytes] | None, delivered: int) -> _Entry | None:
        """The entry to run; None for one deleted from the stream while pending, or malformed
        (logged). ``delivered`` is how often the consumer group handed the entry out (this time
        included), so its attempt is the event's own plus its redeliveries."""
        if raw_fields is None:
            return None
        try:
            event = decode_event(raw_fields)
        except ProtocolError as exc:
            logger.error("dropped inbound entry %s: %s", entry_id, exc)
            return None
        return _Entry(entry_id, raw_fields, event, event.attempt + delivered - 1)

    async def _dispatch_lifecycle(self, entry: _Entry) -> tuple[CommitWrite, ...]:
        worker, event = self.worker, entry.event
        ctx = self._context(event, entry.attempt)
        if event.hook:
            return (await self._connect_hook(ctx),)
        if event.type == "connect":
            await self._run_hook(worker.on_connect, ctx, "on_connect")
        else:
            await self._run_hook(worker.on_disconnect, ctx, "on_disconnect")
        return ()

    async def _handle_message(self, entry: _Entry) -> tuple[CommitWrite, ...]:
        """The message's writes: its reply (or error), or its retry or dead letter."""
        event = entry.event
        assert event.action is not None
        handler = self.worker.actions.get(event.action, self.worker.default)
        if handler is None:
            message = f'no handler for action "{event.action}"'
            return (self._frame_write(event.connection_id, error_frame(UNKNOWN_ACTION, message, event.id)),)
        try:
            result = await self._call(handler, self._context(event, entry.attempt), event.data)
        except Retry as retry:
            return self._retry(entry, retry)
        except PublishError as exc:  # a write of the event was not taken: as a refused reply
            attempts = f"{entry.attempt} of {self.worker.max_attempts}"
            return self._run_again(entry, f"a write of attempt {attempts} failed: PublishError: {exc}")
        except Exception:
            logger.exception(
                'handler of action "%s" failed (connection %s)', event.action, event.connection_id
            )
            return (
                self._frame_write(
                    event.connection_id, error_frame(HANDLER_ERROR, "the handler failed", event.id)
                ),
            )
        if event.id is None:
            return ()
        try:
            frame = checked_reply_frame(event.action, result, event.id)
        except (TypeError, ValueError):
            logger.exception(
                'handler of action "%s" returned a value JSON can\'t encode (connection %s)',
                event.action,
                event.connection_id,
            )
            frame = error_frame(HANDLER_ERROR, "the handler failed", event.id).encode()
        return (self._connection_write(event.connection_id, frame),)

    async def _run_hook(self, hook: LifecycleHandler | None, ctx: Context, name: str) -> None:
        if hook is None:
            return
        try:
            await self._call(hook, ctx)
        except Refuse as refuse:
            logger.error(
                "on_connect raised Refuse(%s) for connection %s, but the gateway does not run the "
                "connect hook (WSQ_CONNECT_HOOK): the connection stays open",
                refuse,
                ctx.connection_id,
            )
        except Exception:
            logger.exception("%s failed (connection %s)", name, ctx.connection_id)

    async def _connect_hook(self, ctx: Context) -> StreamWrite:
        """Run ``on_connect`` for a connection the gateway holds; its answer: accept or refuse."""
        connection_id, on_connect = ctx.connection_id, self.worker.on_connect
        if on_connect is None:
            answer = accept_command(connection_id)
        else:
            try:
                result = await self._call(on_connect, ctx)
            except Refuse as refuse:
                logger.info("on_connect refused connection %s: %s", connection_id, refuse)
                answer = refuse_command(connection_id, refuse.code, refuse.reason)
            except Exception:
                logger.exception("on_connect failed (connection %s): refusing it", connection_id)
                answer = refuse_command(connection_id, *HOOK_FAILED)
            else:
                answer = _hook_answer(connection_id, result)
        return self._command_write(connection_id, answer)

    def _retry(self, entry: _Entry, retry: Retry) -> tuple[CommitWrite, ...]:
        """The message in the delayed set as its next attempt, or its dead letter."""
        event, attempt, max_attempts = entry.event, entry.attempt, self.worker.max_attempts
        if attempt >= max_attempts:
            error = f"Retry raised at attempt {attempt} of {max_attempts}"
            cause = retry.__cause__ or retry.__context__
            if cause is not None:
                error += f", after {type(cause).__name__}: {cause}"
            return self._give_up(entry, error, attempts=attempt)
        logger.info(
            'action "%s" (connection %s) asked for a retry: attempt %d of %d in %gs',
            event.action,
            event.connection_id,
            attempt + 1,
            max_attempts,
            retry.delay,
        )
        return (self._delayed_write(entry, round(retry.delay * 1000)),)

    def _delayed_write(self, entry: _Entry, delay_ms: int) -> delivery.DelayedWrite:
        """The message's next attempt, due in ``delay_ms``."""
        member = delivery.delayed_member(entry.entry_id, text_fields(entry.raw_fields), entry.attempt + 1)
        return delivery.DelayedWrite(self.delayed, member, delay_ms)

    def _refused(self, entry_id: str, entry: _Entry | None, error: str) -> None:
        """Redis refused a write of the entry (the flusher logged it), which is still pending:
        a message runs again as its next attempt, as after a crash; an event that can't carry
        an attempt (or whose retry or late dead letter was refused too) is left pending, and
        claimed once idle."""
        if entry is None or entry.event.type != "message" or entry.attempt > self.worker.max_attempts:
            logger.error(
                "inbound entry %s stays pending: it is claimed and runs again once idle for %d ms, "
                "as when its worker dies",
                entry_id,
                self.worker.claim_idle_ms,
            )
            return
        error = f"Redis refused a write of attempt {entry.attempt} of {self.worker.max_attempts}: {error}"
        # Not this entry again if these writes are refused too (source None): left pending.
        self.flusher.ack(entry_id, self._run_again(entry, error), None)

    def _run_again(self, entry: _Entry, error: str) -> tuple[CommitWrite, ...]:
        """A message a write of which failed: its next attempt in the delayed set, due in
        ``claim_idle_ms`` (as if its worker had died), or its dead letter after the last one."""
        event, attempt, max_attempts = entry.event, entry.attempt, self.worker.max_attempts
        if attempt >= max_attempts:
            return self._give_up(entry, error, attempts=attempt)
        logger.error(
            'action "%s" (connection %s, entry %s): %s; running it again as attempt %d in %d ms',
            event.action,
            event.connection_id,
            entry.entry_id,
            error,
            attempt + 1,
            self.worker.claim_idle_ms,
        )
        return (self._delayed_write(entry, self.worker.claim_idle_ms),)

    def _give_up(self, entry: _Entry, error: str, *, attempts: int) -> tuple[CommitWrite, ...]:
        """The entry's dead letter, then (if Redis takes it) what tells the client (its gateway,
        for a hook)."""
        event, worker = entry.event, self.worker
        dead = delivery.dead_letter(
            text_fields(entry.raw_fields), error=error, attempts=attempts, worker=worker.consumer_name
        )
        # MAXLEN ~: at least the newest max_dead_letters are kept (a few more, as Redis trims
        # whole nodes of its listpacks).
        cap = worker.max_dead_letters or None
        dead_letter = StreamWrite(constants.dead_letters(worker.key_prefix), dead, cap)
        what = f'action "{event.action}"' if event.type == "message" else f"{event.type} event"
        logger.error(
            "%s (connection %s, entry %s) failed after %d attempts, moved to the dead letters: %s",
            what,
            event.connection_id,
            entry.entry_id,
            attempts,
            error,
        )
        # Best effort: it may go to the very key that refused the writes of the attempts.
        if event.type == "message":
            message = f"the message failed after {attempts} attempt{'' if attempts == 1 else 's'}"
            frame = self._frame_write(event.connection_id, error_frame(HANDLER_FAILED, message, event.id))
            return (dead_letter, BestEffort(frame))
        if event.hook:
            answer = self._command_write(
                event.connection_id, refuse_command(event.connection_id, *HOOK_FAILED)
            )
            return (dead_letter, BestEffort(answer))
        return (dead_letter,)

    # At least once: keeping in-flight entries, moving due retries.

    async def _keep_alive(self) -> None:
        """Every ``claim_idle_ms / 3``, reset the idle time of the entries this worker holds."""
        worker = self.worker
        while True:
            await asyncio.sleep(worker.claim_idle_ms / 3000)  # a period, not a synchronisation
            in_flight = list(self.in_flight)
            held = in_flight + self.flusher.pending_acks
            if not held:
                continue
            refreshed: set[str] = set()
            try:
                for ids in delivery.chunks(held, _KEEP_ALIVE_BATCH):
                    answer = await self.keep_alive_script(
                        keys=[self.inbound], args=[constants.CONSUMER_GROUP, worker.consumer_name, *ids]
                    )
                    refreshed.update(entry_id.decode() for entry_id in answer)
            except redis.RedisError as exc:
                logger.warning("could not keep %d in-flight entries: %s", len(held), exc)
                continue
            for entry_id in in_flight:
                if entry_id not in refreshed and entry_id in self.in_flight and entry_id not in self.lost:
                    self.lost.add(entry_id)
                    logger.warning(
                        "inbound entry %s was claimed by another worker while its handler ran here "
                        "(this worker was presumed dead): it may run twice",
                        entry_id,
                    )

    async def _move_due_retries(self) -> None:
        """Every 0.25 s, move the due messages of the delayed set into the inbound stream."""
        keys = [self.delayed, self.inbound]
        while not await self._sleep_unless_stopped(_MOVE_DUE_EVERY_S):
            try:
                moved = _MOVE_DUE_BATCH
                while moved == _MOVE_DUE_BATCH:
                    moved, malformed = delivery.parse_move(
                        await self.move_due_script(keys=keys, args=[_MOVE_DUE_BATCH])
                    )
                    for member in malformed:
                        logger.error("dropped a malformed member of %s: %r", self.delayed, member)
            except redis.RedisError as exc:  # the read loop reports outages
                logger.debug("could not move due retries: %s", exc)

    async def _forget_stale_consumers(self) -> None:
        """Every ``claim_idle_ms / 2``, remove from the group the consumers of workers that are
        gone: idle for ``stale_consumer_ms`` and holding no pending entry (those are claimed
        first). Else each crash would leave one for ever, in every ``XINFO CONSUMERS`` reply."""
        worker = self.worker
        while not await self._sleep_unless_stopped(worker.claim_idle_ms / 2000):
            try:
                reply = await self.forget_stale_script(
                    keys=[self.inbound],
                    args=[constants.CONSUMER_GROUP, worker.stale_consumer_ms, worker.consumer_name],
                )
            except redis.RedisError as exc:  # no group yet, Redis away: the read loop reports it
                logger.debug("could not look for stale consumers: %s", exc)
                continue
            for name, idle_ms in delivery.parse_forget(reply):
                logger.info(
                    "removed consumer %s from the group: idle for %d ms with no pending entry "
                    "(its worker is gone)",
                    name,
                    idle_ms,
                )

    def _call(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        """What to await: an async function's own coroutine (no wrapper: one frame less per
        event), or a plain one run in the thread pool."""
        if _is_async_callable(fn):
            return fn(*args)  # type: ignore[no-any-return]
        return self._call_in_thread(fn, *args)

    async def _call_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        result = await self.loop.run_in_executor(self.executor, call)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            result = await result
        return result

    def _context(self, event: Event, attempt: int) -> Context:
        connection_id = event.connection_id

        async def send_frame(frame: str) -> None:
            await self.flusher.send(self._connection_write(connection_id, frame.encode()))

        return Context._of_event(event, attempt, self.publisher, send_frame, self.loop)

    def _frame_write(self, connection_id: str, frame: str) -> PackedWrite:
        return self._connection_write(connection_id, frame.encode())

    def _connection_write(self, connection_id: str, frame: bytes) -> PackedWrite:
        """``Route.connection(key_prefix, connection_id).send(frame)``, for an id already checked,
        packed from its node's template (built from ``send_command()`` the first time)."""
        node = connection_id.rpartition(".")[0]
        template = self.reply_templates.get(node)
        if template is None:
            if len(self.reply_templates) >= _MAX_REPLY_TEMPLATES:  # gateways come and go
                self.reply_templates.clear()
            template = self.reply_templates[node] = _reply_template(self.worker.key_prefix, node)
        command = template.command
        return PackedWrite(
            template.stream, command.pack(connection_id.encode(), b"frame", frame), command.arguments
        )

    def _command_write(self, connection_id: str, fields: dict[str, str]) -> StreamWrite:
        """A command for the gateway holding ``connection_id``."""
        return StreamWrite.to_node(self.worker.key_prefix, node_of(connection_id), fields)

    # Periodic functions.

    async def _run_periodic(self, interval: float, fn: Periodic) -> None:
        name = getattr(fn, "__qualname__", repr(fn))
        next_run = self.loop.time() + interval
        while not await self._sleep_unless_stopped(next_run - self.loop.time()):
            try:
                await self._call(fn, self.publisher)
            except Exception:
                logger.exception("periodic function %s failed", name)
            # A fixed rate; after a run longer than the interval, the next one starts at once.
            next_run = max(next_run + interval, self.loop.time())


class _Entry(NamedTuple):
    """An inbound entry being handled: its id, fields (as read), event and attempt."""

    entry_id: str
    raw_fields: Mapping[bytes, bytes]
    event: Event
    attempt: int


def _gone_error(entry: _Entry, delivered: int) -> str:
    """Why an entry past max_attempts was not run: its previous workers died (or it came so)."""
    if delivered > 1:
        return f"the worker running attempt {entry.attempt - 1} died or stopped before finishing it"
    return f"attempt {entry.attempt} is past max_attempts"


def _hook_answer(connection_id: str, result: object) -> dict[str, str]:
    """The command answering a connect hook whose ``on_connect`` returned ``result``."""
    if result is None or result is True:
        return accept_command(connection_id)
    if result is False:
        return refuse_command(connection_id, *REFUSED)
    if isinstance(result, str):
        with contextlib.suppress(ValueError):  # not a usable user id (protocol.check_user_id)
            return accept_command(connection_id, result)
    logger.error(
        "on_connect returned %r for connection %s: expected a user id (1-256 bytes of UTF-8 "
        "without control characters), None, True or False; refusing it",
        result,
        connection_id,
    )
    return refuse_command(connection_id, *HOOK_FAILED)


class _ReplyTemplate(NamedTuple):
    stream: str
    command: speedups.CommandTemplate


def _reply_template(key_prefix: str, node: str) -> _ReplyTemplate:
    """The ``XADD`` of a ``send`` command to one connection of ``node``, packed up to its ``to``."""
    sample = f"{node}.{'x' * 22}"
    write = StreamWrite.to_node(key_prefix, node, send_command("connection", sample, ""))
    stream, command = write.stream, write.command
    if command[-4:] != ("to", sample, "frame", ""):  # send_command's field order changed
        raise AssertionError(f"unexpected send command {command!r}")
    return _ReplyTemplate(stream, speedups.CommandTemplate(command[:-3], 3))


def _stream_entries(response: Any) -> Iterator[tuple[str, Mapping[bytes, bytes] | None]]:
    """(entry id, fields) of a raw XREADGROUP reply, in the RESP2 (list) or RESP3 (map) shape;
    an entry's fields come as a flat list of names and values, or None for a deleted entry."""
    if not response:
        return
    streams = response.items() if isinstance(response, dict) else response
    for _stream, entries in streams:
        for entry_id, flat_fields in entries:
            if flat_fields is None:
                yield entry_id.decode(), None
            else:
                pairs = iter(flat_fields)
                yield entry_id.decode(), dict(zip(pairs, pairs, strict=True))


def _safe_url(url: str) -> str:
    """The Redis URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    _userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}" if sep else url


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    # An object with an ``async def __call__`` counts too. Asked for every event: cached.
    try:
        return _ASYNC_CALLABLES[fn]
    except (KeyError, TypeError):  # TypeError: not hashable, so not cached
        pass
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
    with contextlib.suppress(TypeError):
        _ASYNC_CALLABLES[fn] = is_async
    return is_async


_ASYNC_CALLABLES: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_MAX_REPLY_TEMPLATES = 1024


def _check_callable(fn: _F, what: str) -> _F:
    if fn is not None and not callable(fn):
        raise TypeError(f"{what} must be callable, not {type(fn).__name__}")
    return fn
