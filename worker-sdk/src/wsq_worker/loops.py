"""The loops of one worker run: reading and claiming inbound entries, and the background tasks.

``Run.main()`` creates the consumer group, reads new entries and claims idle ones as slots
are free (handing each to the ``Dispatcher``), keeps the entries it holds from being claimed,
moves due retries into the inbound stream, removes dead workers' consumers and runs the
periodic functions; each background task is supervised. On stop it finishes in-flight
handlers, flushes their writes and closes its clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff

from wsq_protocol.batching import Backoff
from wsq_protocol.keys import keys_for
from wsq_protocol.pipe import RedisPipe, async_redis
from wsq_worker import constants, delivery, preflight
from wsq_worker.dispatch import Dispatcher
from wsq_worker.exceptions import RedisUnusableError, WorkerFailedError
from wsq_worker.publisher import AsyncPublisher

if TYPE_CHECKING:
    from wsq_worker.worker import Periodic, Worker

# The worker's logger, as before the worker was split into modules (logging set-ups name it).
logger = logging.getLogger("wsq_worker.worker")

_MAX_READ_COUNT = 100
_CONNECT_TIMEOUT_S = 5.0
_COMMAND_TIMEOUT_S = 10.0
_MOVE_DUE_EVERY_S = 0.25
_MOVE_DUE_BATCH = 100
_KEEP_ALIVE_BATCH = 1000
# A history read of the largest id but one: it returns nothing (no entry can be pending after
# it), and resets the consumer's idle time. On Redis 7.0 a blocking read that gets no entry does
# not: a quiet worker would look dead to the gateways (and to other workers) after a while.
_TOUCH_ID = "18446744073709551615-18446744073709551614"


class Run:
    """The state of one ``run_async()``: clients, in-flight tasks and the loops."""

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
        self.inbound = keys_for(worker.key_prefix).inbound_stream
        self.delayed = keys_for(worker.key_prefix).delayed
        self.claim_cursor = "0-0"
        group, name = constants.CONSUMER_GROUP, worker.consumer_name
        self.touch = ("XREADGROUP", "GROUP", group, name, "COUNT", "1", "STREAMS", self.inbound, _TOUCH_ID)
        """A read that returns nothing but resets this consumer's idle time (see _TOUCH_ID)."""
        retry = redis.asyncio.retry.Retry(redis.backoff.ExponentialBackoff(cap=1.0, base=0.05), 3)
        self.client = async_redis(
            worker.redis_url,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            retry=retry,
        )
        # Reads block for block_ms: on a connection of their own, with no retry but ours.
        self.reader = async_redis(
            worker.redis_url,
            single_connection_client=True,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=worker.block_ms / 1000 + _COMMAND_TIMEOUT_S,
            retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0),
        )
        self.read_pipe = RedisPipe(self.reader)  # XREADGROUP, replies raw
        self.publisher = AsyncPublisher(client=self.client, key_prefix=worker.key_prefix)
        self.dispatcher = Dispatcher(worker, self.client, self.publisher, on_entry_done=self._entry_done)
        self.flusher = self.dispatcher.flusher
        self.claim_script = self.reader.register_script(delivery.CLAIM_SCRIPT)
        self.keep_alive_script = self.client.register_script(delivery.KEEP_ALIVE_SCRIPT)
        self.move_due_script = self.client.register_script(delivery.MOVE_DUE_SCRIPT)
        self.forget_stale_script = self.client.register_script(delivery.FORGET_STALE_SCRIPT)

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
                self.dispatcher.executor.shutdown(wait=False, cancel_futures=True)
                worker._finished()
                logger.info("worker %s stopped", worker.consumer_name)

    # Supervision.

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
        backoff = Backoff(base=0.1, cap=5.0)
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
                    delay = backoff.next()
                    logger.error("reading %s failed: %s; retrying in %.1fs", self.inbound, exc, delay)
                    await self._sleep_unless_stopped(delay)
                continue
            except Exception as exc:  # Redis unreachable, or anything else: never crash the worker
                self._raise_if_unusable(exc)
                delay = backoff.next()
                logger.error("Redis is unavailable (%s): retrying in %.1fs", exc, delay)
                await self._sleep_unless_stopped(delay)
                continue
            backoff.reset()
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
        self.in_flight[entry_id] = asyncio.create_task(
            self.dispatcher.handle_entry(entry_id, fields, delivered)
        )

    def _entry_done(self, entry_id: str) -> None:
        """The dispatcher queued the entry's writes and ack: its slot is free."""
        del self.in_flight[entry_id]
        self.lost.discard(entry_id)
        self.slot_freed.set()

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

    # Stopping.

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

    # At least once: keeping in-flight entries, moving due retries, forgetting dead consumers.

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

    # Periodic functions.

    async def _run_periodic(self, interval: float, fn: Periodic) -> None:
        name = getattr(fn, "__qualname__", repr(fn))
        next_run = self.loop.time() + interval
        while not await self._sleep_unless_stopped(next_run - self.loop.time()):
            try:
                await self.dispatcher.call(fn, self.publisher)
            except Exception:
                logger.exception("periodic function %s failed", name)
            # A fixed rate; after a run longer than the interval, the next one starts at once.
            next_run = max(next_run + interval, self.loop.time())


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
