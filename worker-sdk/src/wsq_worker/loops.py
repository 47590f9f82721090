"""The loops of one worker run: reading and claiming inbound entries, and the background tasks.

``Run.main()`` checks the Redis (and that its number of shards is the deployment's), creates
the consumer group on every inbound partition, reads new entries and claims idle ones as slots
are free (handing each to the ``Dispatcher``), keeps the entries it holds from being claimed,
moves due retries into the inbound partitions, removes dead workers' consumers and runs the
periodic functions; each background task is supervised. On stop it finishes in-flight
handlers, flushes their writes and closes its clients.

The inbound stream is one partition per shard (``{prefix:k}:inbound``): a gateway appends
every event of its connections to its shard's, in order. A worker reads every partition, with
one reader per group of ``reader_groups()``: one ``XREADGROUP`` over all of them on a single
Redis; on a Redis Cluster, where a command's keys must share a slot, a reader per partition.
The readers share the worker's ``concurrency``; claims, keep-alives, retries and dead letters
are per partition, in its shard's slot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff

from wsq_protocol import action_schemas
from wsq_protocol.batching import Backoff, cancel_and_wait
from wsq_protocol.cluster import REDIS_ERRORS, AsyncClient, async_redis
from wsq_protocol.keys import keys_for
from wsq_protocol.pipe import RedisPipe
from wsq_protocol.scripts import run, run_many, script
from wsq_worker import constants, delivery, preflight
from wsq_worker.dispatch import Dispatcher
from wsq_worker.exceptions import RedisUnusableError, WorkerFailedError
from wsq_worker.publisher import AsyncPublisher

if TYPE_CHECKING:
    from wsq_worker.metrics import WorkerMetrics
    from wsq_worker.worker import Periodic, Worker

__all__ = ["Run", "reader_groups"]

# The worker's logger, as before the worker was split into modules (logging set-ups name it).
logger = logging.getLogger("wsq_worker.worker")

_MAX_READ_COUNT = 100
_CONNECT_TIMEOUT_S = 5.0
_COMMAND_TIMEOUT_S = 10.0
_MOVE_DUE_EVERY_S = 0.25
_MOVE_DUE_BATCH = 100
_RESTORE_SCHEMAS_EVERY_S = 5.0
_KEEP_ALIVE_BATCH = 1000
# A history read of the largest id but one: it returns nothing (no entry can be pending after
# it), and resets the consumer's idle time. On Redis 7.0 a blocking read that gets no entry does
# not: a quiet worker would look dead to the gateways (and to other workers) after a while.
_TOUCH_ID = "18446744073709551615-18446744073709551614"
_CLAIM = script("claim")
_MOVE_DUE = script("move_due")
_DROP_STALE_CONSUMERS = script("drop_stale_consumers")
_PUBLISH_SCHEMAS = script("publish_schemas")

EntryKey = tuple[int, str]
"""An inbound entry: its shard (the partition it is in) and its id there (ids repeat across
partitions)."""


def reader_groups(shards: int, cluster: bool) -> list[list[int]]:
    """The shards whose inbound partitions each reader reads: all of them in one ``XREADGROUP``
    on a single Redis; one reader per shard on a Redis Cluster, where the keys of a multi-key
    command must be in one slot (each shard's keys are in one)."""
    if cluster:
        return [[shard] for shard in range(shards)]
    return [list(range(shards))]


def _reader_client(worker: Worker) -> AsyncClient:
    """A client whose commands may block for ``block_ms``: a reader's (on a single Redis, one
    connection of its own), or on a cluster the readers' (each reads on a pipe of its own)."""
    options: dict[str, Any] = {} if worker.redis_cluster else {"single_connection_client": True}
    return async_redis(
        worker.redis_url,
        cluster=worker.redis_cluster,
        socket_connect_timeout=_CONNECT_TIMEOUT_S,
        socket_timeout=worker.block_ms / 1000 + _COMMAND_TIMEOUT_S,
        retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0),  # no retry but ours
        **options,
    )


class _Reader:
    """Reads (and claims from) the inbound partitions of some shards, on a connection of its own:
    its reads block for ``block_ms``. On a cluster its pipe goes to the master of its one
    shard's slot, and follows that slot when it moves or fails over; its ``client`` is the
    readers' shared one (``owns_client`` False)."""

    def __init__(self, run: Run, shards: list[int], client: AsyncClient | None = None) -> None:
        self.shards = shards
        self.streams = [run.keys.inbound_stream(shard) for shard in shards]
        self.shard_of_stream = {
            stream.encode(): shard for stream, shard in zip(self.streams, shards, strict=True)
        }
        self.owns_client = client is None
        self.client = client or _reader_client(run.worker)
        # XREADGROUP, replies raw; a read lost midway is not sent again (its entries stay
        # pending, claimed back once idle), as on the single client (no retry).
        self.pipe = RedisPipe(self.client, key=self.streams[0], resend=False)
        self.cursors = dict.fromkeys(shards, "0-0")
        """Each partition's ``XAUTOCLAIM`` cursor."""
        self.active = len(shards)
        """How many of its partitions the last read that got entries got them from."""
        group, name = constants.CONSUMER_GROUP, run.worker.consumer_name
        self.touch = (
            *("XREADGROUP", "GROUP", group, name, "COUNT", "1", "STREAMS"),
            *self.streams,
            *[_TOUCH_ID] * len(self.streams),
        )
        """A read that returns nothing but resets this consumer's idle time (see _TOUCH_ID)."""

    def read(self, consumer: str, count: int, block_ms: int) -> tuple[Any, ...]:
        """``XREADGROUP`` of new entries: up to ``count`` from each partition (COUNT is per stream)."""
        return (
            *("XREADGROUP", "GROUP", constants.CONSUMER_GROUP, consumer, "COUNT", count, "BLOCK", block_ms),
            "STREAMS",
            *self.streams,
            *[">"] * len(self.streams),
        )

    async def aclose(self) -> None:
        await self.pipe.aclose()
        if self.owns_client:
            await self.client.aclose()


class Run:
    """The state of one ``run_async()``: clients, in-flight tasks and the loops."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.slot_freed = asyncio.Event()
        self.in_flight: dict[EntryKey, asyncio.Task[None]] = {}
        """Handler tasks by inbound entry."""
        self.queued: collections.deque[tuple[EntryKey, Mapping[bytes, bytes] | None, int]] = (
            collections.deque()
        )
        """Entries read beyond the free slots (a read asks each partition for some): they are
        this worker's, kept alive as running ones, and start as slots free, in order."""
        self.lost: set[EntryKey] = set()
        """In-flight entries another worker claimed (this one was presumed dead)."""
        self.periodic: set[asyncio.Task[None]] = set()
        self.keep_alive: asyncio.Task[None] | None = None
        self.failure: tuple[str, BaseException | None] | None = None
        """The first background task that ended unexpectedly (its name), and its exception."""
        self.keys = keys_for(worker.key_prefix, worker.shards)
        retry = redis.asyncio.retry.Retry(redis.backoff.ExponentialBackoff(cap=1.0, base=0.05), 3)
        self.client = async_redis(
            worker.redis_url,
            cluster=worker.redis_cluster,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            retry=retry,
        )
        self.read_client = _reader_client(worker) if worker.redis_cluster else None
        """The readers' client on a cluster (on a single Redis each reader has its own)."""
        self.readers = [
            _Reader(self, shards, self.read_client)
            for shards in reader_groups(worker.shards, cluster=worker.redis_cluster)
        ]
        self.publisher = AsyncPublisher(
            client=self.client, key_prefix=worker.key_prefix, shards=worker.shards
        )
        self.metrics: WorkerMetrics | None = None
        if worker.metrics_port:  # prometheus-client is optional: imported only when asked for
            self.metrics = importlib.import_module("wsq_worker.metrics").WorkerMetrics(self)
        self.dispatcher = Dispatcher(
            worker, self.client, self.publisher, on_entry_done=self._entry_done, metrics=self.metrics
        )
        self.flusher = self.dispatcher.flusher
        self.keep_alive_script = self.client.register_script(delivery.KEEP_ALIVE_SCRIPT)

    def request_stop(self) -> None:
        self.stopping.set()
        self.slot_freed.set()

    async def main(self) -> None:
        worker = self.worker
        try:
            if self.metrics is not None:
                port = max(worker.metrics_port, 0)  # -1: any free port
                worker.metrics_bound_port = self.metrics.serve(port)
                logger.info("metrics on port %d", worker.metrics_bound_port)
                lag = self.metrics.watch_lag(self._sleep_unless_stopped)
                self.periodic.add(self._watch(asyncio.create_task(lag, name="wsq-metrics-lag")))
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
            if worker.schemas:
                self.periodic.add(
                    self._watch(asyncio.create_task(self._restore_schemas(), name="wsq-schemas"))
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
                    await cancel_and_wait([self.keep_alive])
                await self._forget_consumer()
                for reader in self.readers:
                    await reader.aclose()
                if self.read_client is not None:
                    await self.read_client.aclose()
                await self.client.aclose()
            finally:
                # Threads still running a plain def handler can't be stopped: they finish on their own.
                self.dispatcher.executor.shutdown(wait=False, cancel_futures=True)
                if self.metrics is not None:
                    self.metrics.close()
                    worker.metrics_bound_port = None
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

    # Reading the inbound partitions.

    async def _read_until_stopped(self) -> None:
        """Check the Redis and make the consumer groups, then read with every reader until stopped."""
        if not await self._prepare():
            return
        readers = [
            asyncio.create_task(self._read(reader), name=f"wsq-reader-{n}")
            for n, reader in enumerate(self.readers)
        ]
        try:
            await asyncio.gather(*readers)
        finally:
            await cancel_and_wait(readers)

    async def _prepare(self) -> bool:
        """Check that Redis can serve the worker (``RedisUnusableError`` when it never will: a
        replica, a wrong password, another number of shards...), then create the consumer group
        on every partition, waiting out transient failures. False if stopped meanwhile."""
        worker = self.worker
        backoff = Backoff(base=0.1, cap=5.0)
        while not self.stopping.is_set():
            try:
                problem = await preflight.server_problem(self.client)
                problem = problem or await preflight.shards_problem(self.client, self.keys)
                if problem is not None:
                    raise RedisUnusableError(f"{_safe_url(worker.redis_url)}: {problem}")
                await self._create_groups(range(worker.shards))
                await self._publish_schemas(action_schemas.START)
            except RedisUnusableError:
                raise
            except Exception as exc:  # Redis unreachable, or anything else: never crash the worker
                problem = preflight.permanent_problem(exc)
                if problem is not None:
                    raise RedisUnusableError(f"{_safe_url(worker.redis_url)}: {problem}") from exc
                delay = backoff.next()
                logger.error(
                    "Redis at %s is unavailable (%s): retrying in %.1fs",
                    _safe_url(worker.redis_url),
                    exc,
                    delay,
                )
                await self._sleep_unless_stopped(delay)
                continue
            self.ready.set()
            logger.info(
                "worker %s reading the %d partitions of the inbound stream (%s...) on %s%s; "
                "concurrency %d; actions: %s",
                worker.consumer_name,
                worker.shards,
                self.keys.inbound_stream(0),
                _safe_url(worker.redis_url),
                " (a Redis Cluster)" if worker.redis_cluster else "",
                worker.concurrency,
                _actions_summary(worker),
            )
            return True
        return False

    async def _read(self, reader: _Reader) -> None:
        """Read new entries of the reader's partitions, and claim idle ones every
        ``claim_idle_ms / 2``, as slots are free."""
        worker = self.worker
        backoff = Backoff(base=0.1, cap=5.0)
        has_groups = True
        next_claim = self.loop.time()  # at once: entries of a worker that died before we started
        # This consumer's idle time was reset by a read that got entries just now, so the next
        # read needs no touch (see _TOUCH_ID).
        fresh = False
        while not self.stopping.is_set():
            free_slots = worker.concurrency - len(self.in_flight) - len(self.queued)
            if free_slots <= 0:
                fresh = False
                self.slot_freed.clear()
                await self.slot_freed.wait()
                continue
            try:
                if not has_groups:
                    await self._create_groups(reader.shards)
                    has_groups = True
                if self.loop.time() >= next_claim:
                    fresh = False
                    more = await self._claim(reader, min(free_slots, _MAX_READ_COUNT))
                    next_claim = self.loop.time() + (0 if more else worker.claim_idle_ms / 2000)
                    continue
                # Not interrupted by stop(): the entries it returns are ours to handle, or they
                # would stay pending until claimed. So stopping takes up to block_ms.
                block_ms = min(worker.block_ms, int((next_claim - self.loop.time()) * 1000))
                # COUNT is per partition: the free slots are shared by the partitions each reader
                # had entries from last time, so that on a single Redis one busy partition is
                # read in large batches, and a burst on all of them takes about the free slots
                # (the rest waits in the queue). A cluster's worker has a reader per partition,
                # which all block at once: each asks for its share, so that together they never
                # take more than the free slots, and workers share a burst.
                sharers = sum(other.active for other in self.readers)
                count = max(1, min(free_slots // sharers, _MAX_READ_COUNT))
                read = reader.read(worker.consumer_name, count, max(block_ms, 1))  # 0 would block for ever
                if fresh:
                    fresh = False
                    (response,) = await reader.pipe.execute([read])
                else:  # the touch's reply tells nothing the read's does not
                    _, response = await reader.pipe.execute([reader.touch, read])
                if isinstance(response, redis.ResponseError):
                    raise response
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # a partition was deleted (FLUSHALL, a Redis restart...)
                    logger.warning("a consumer group is gone (%s): creating them again", exc)
                    has_groups = False
                else:
                    delay = backoff.next()
                    logger.error("reading the inbound stream failed: %s; retrying in %.1fs", exc, delay)
                    await self._sleep_unless_stopped(delay)
                continue
            except Exception as exc:  # Redis unreachable, or anything else: never crash the worker
                delay = backoff.next()
                logger.error("Redis is unavailable (%s): retrying in %.1fs", exc, delay)
                await self._sleep_unless_stopped(delay)
                continue
            backoff.reset()
            active: set[int] = set()
            for stream, entry_id, fields in _stream_entries(response):
                fresh = True
                shard = reader.shard_of_stream[stream]
                active.add(shard)
                self._start_handler((shard, entry_id), fields, delivered=1)
            if active:
                reader.active = len(active)

    async def _claim(self, reader: _Reader, count: int) -> bool:
        """Claim and start entries idle for ``claim_idle_ms`` from the reader's partitions, in one
        round trip: up to a share of ``count`` from each (those beyond the free slots queued, as
        a read's); True if there may be more."""
        worker = self.worker
        each = max(1, count // len(reader.shards))
        calls = [
            (
                _CLAIM,
                [stream],
                [
                    constants.CONSUMER_GROUP,
                    worker.consumer_name,
                    worker.claim_idle_ms,
                    reader.cursors[shard],
                    each,
                ],
            )
            for shard, stream in zip(reader.shards, reader.streams, strict=True)
        ]
        replies = await run_many(reader.client, calls)
        more = False
        for shard, stream, reply in zip(reader.shards, reader.streams, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            reader.cursors[shard], claimed = delivery.parse_claim(reply)
            if claimed:
                logger.warning(
                    "claimed %d entries idle for more than %d ms (their worker died or is stuck; %s): "
                    "running them again",
                    len(claimed),
                    worker.claim_idle_ms,
                    stream,
                )
            for entry in claimed:
                self._start_handler((shard, entry.entry_id), entry.fields, entry.delivered)
            more = more or len(claimed) == each or reader.cursors[shard] != "0-0"
        return more

    def _start_handler(self, key: EntryKey, fields: Mapping[bytes, bytes] | None, delivered: int) -> None:
        if key in self.in_flight:  # claimed back from ourselves (a keep-alive came late): running
            return
        if delivered > 1 and any(queued == key for queued, _, _ in self.queued):  # the same: queued
            return
        if self.queued or len(self.in_flight) >= self.worker.concurrency:
            self.queued.append((key, fields, delivered))  # beyond the free slots: starts when one frees
            return
        shard, entry_id = key  # as _start_task(), inline: once per event
        self.in_flight[key] = asyncio.create_task(
            self.dispatcher.handle_entry(shard, entry_id, fields, delivered)
        )

    def _start_task(self, key: EntryKey, fields: Mapping[bytes, bytes] | None, delivered: int) -> None:
        shard, entry_id = key
        self.in_flight[key] = asyncio.create_task(
            self.dispatcher.handle_entry(shard, entry_id, fields, delivered)
        )

    def _entry_done(self, shard: int, entry_id: str) -> None:
        """The dispatcher queued the entry's writes and ack: its slot is free, for the next
        queued entry if there is one."""
        key = (shard, entry_id)
        del self.in_flight[key]
        self.lost.discard(key)
        while self.queued:
            queued_key, fields, delivered = self.queued.popleft()
            if queued_key not in self.in_flight:
                self._start_task(queued_key, fields, delivered)
                break
        self.slot_freed.set()

    async def _create_groups(self, shards: Iterable[int]) -> None:
        """The consumer group on the partitions of ``shards``, and this worker's consumer in each."""
        # From id 0, not $: events appended before the first worker started are handled too.
        group, name = constants.CONSUMER_GROUP, self.worker.consumer_name
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            stream = self.keys.inbound_stream(shard)
            pipe.xgroup_create(stream, group, id="0", mkstream=True)
            # Listed in XINFO CONSUMERS from now on, not only once it got its first entry, so
            # operators (and tests) see a worker as soon as it reads.
            pipe.xgroup_createconsumer(stream, group, name)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Wait ``seconds`` (a back-off or a period, not a synchronisation); True if stopped meanwhile."""
        if seconds > 0 and not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        return self.stopping.is_set()

    # Stopping.

    async def _finish_in_flight(self) -> None:
        """Wait for the in-flight handlers, and those of the entries queued for them, up to
        ``shutdown_timeout``; then cancel the rest (their entries stay pending)."""
        timeout = self.worker.shutdown_timeout
        if self.in_flight:
            logger.info(
                "waiting for %d in-flight handlers%s (up to %.0fs)",
                len(self.in_flight),
                f" and {len(self.queued)} entries read for them" if self.queued else "",
                timeout,
            )
        deadline = self.loop.time() + timeout
        while running := {task for task in (*self.in_flight.values(), *self.periodic) if not task.done()}:
            left = deadline - self.loop.time()
            if left <= 0:
                break
            await asyncio.wait(running, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if not running:
            return
        logger.error(
            "%d handlers still running after shutdown_timeout (%.0fs): cancelled; "
            "their events (and %d read for them) stay pending in Redis, unacknowledged, until another "
            "worker claims them",
            len(running),
            timeout,
            len(self.queued),
        )
        self.queued.clear()
        await cancel_and_wait(running)

    async def _forget_consumer(self) -> None:
        """Remove this consumer from the group of each partition where no entry is pending for it."""
        group, name = constants.CONSUMER_GROUP, self.worker.consumer_name
        streams = self.keys.inbound_streams()
        try:
            pipe = self.client.pipeline(transaction=False)
            for stream in streams:
                pipe.xpending_range(stream, group, "-", "+", 1, consumername=name)
            pending = await pipe.execute(raise_on_error=False)
            pipe = self.client.pipeline(transaction=False)
            for stream, held in zip(streams, pending, strict=True):
                if not held:  # nothing pending (an error reply: no such group, nothing to remove)
                    pipe.xgroup_delconsumer(stream, group, name)
            await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            logger.debug("could not remove consumer %s: %s", name, exc)

    # At least once: keeping in-flight entries, moving due retries, forgetting dead consumers.

    async def _keep_alive(self) -> None:
        """Every ``claim_idle_ms / 3``, reset the idle time of the entries this worker holds
        (running, queued, or acknowledged but not written yet)."""
        worker = self.worker
        while True:
            await asyncio.sleep(worker.claim_idle_ms / 3000)  # a period, not a synchronisation
            in_flight = list(self.in_flight)
            queued = [key for key, _, _ in self.queued]
            by_shard: dict[int, list[str]] = {}
            for shard, entry_id in (*in_flight, *queued, *self.flusher.pending_acks):
                by_shard.setdefault(shard, []).append(entry_id)
            if not by_shard:
                continue
            refreshed: set[EntryKey] = set()
            try:
                for shard, held in by_shard.items():
                    for ids in delivery.chunks(held, _KEEP_ALIVE_BATCH):
                        answer = await self.keep_alive_script(
                            keys=[self.keys.inbound_stream(shard)],
                            args=[constants.CONSUMER_GROUP, worker.consumer_name, *ids],
                        )
                        refreshed.update((shard, entry_id.decode()) for entry_id in answer)
            except REDIS_ERRORS as exc:
                logger.warning(
                    "could not keep %d in-flight entries: %s", sum(map(len, by_shard.values())), exc
                )
                continue
            for key in in_flight:
                if key not in refreshed and key in self.in_flight and key not in self.lost:
                    self.lost.add(key)
                    logger.warning(
                        "inbound entry %s was claimed by another worker while its handler ran here "
                        "(this worker was presumed dead; shard %d): it may run twice",
                        key[1],
                        key[0],
                    )
            taken = {key for key in queued if key not in refreshed}
            if taken:  # another worker claimed them: they run there
                logger.warning(
                    "%d inbound entries read for this worker were claimed by another one before they "
                    "started here: left to it",
                    len(taken),
                )
                self.queued = collections.deque(item for item in self.queued if item[0] not in taken)

    async def _move_due_retries(self) -> None:
        """Every 0.25 s, move the due messages of each shard's delayed set into its inbound
        partition (one round trip for every shard)."""
        shards = list(range(self.worker.shards))
        while not await self._sleep_unless_stopped(_MOVE_DUE_EVERY_S):
            todo = shards
            try:
                while todo:
                    calls = [
                        (
                            _MOVE_DUE,
                            [self.keys.delayed(shard), self.keys.inbound_stream(shard)],
                            [_MOVE_DUE_BATCH],
                        )
                        for shard in todo
                    ]
                    more = []
                    for shard, reply in zip(todo, await run_many(self.client, calls), strict=True):
                        if isinstance(reply, Exception):
                            logger.debug("could not move the due retries of shard %d: %s", shard, reply)
                            continue
                        moved, malformed = delivery.parse_move(reply)
                        for member in malformed:
                            logger.error(
                                "dropped a malformed member of %s: %r", self.keys.delayed(shard), member
                            )
                        if moved == _MOVE_DUE_BATCH:
                            more.append(shard)
                    todo = more
            except REDIS_ERRORS as exc:  # the read loop reports outages
                logger.debug("could not move due retries: %s", exc)

    async def _forget_stale_consumers(self) -> None:
        """Every ``claim_idle_ms / 2``, remove from the group of each partition the consumers of
        workers that are gone: idle for ``stale_consumer_ms`` and holding no pending entry
        (those are claimed first). Else each crash would leave one for ever, in every ``XINFO
        CONSUMERS`` reply."""
        worker = self.worker
        args = [constants.CONSUMER_GROUP, worker.stale_consumer_ms, worker.consumer_name]
        calls = [(_DROP_STALE_CONSUMERS, [stream], args) for stream in self.keys.inbound_streams()]
        while not await self._sleep_unless_stopped(worker.claim_idle_ms / 2000):
            try:
                replies = await run_many(self.client, calls)
            except REDIS_ERRORS as exc:  # Redis away: the read loop reports it
                logger.debug("could not look for stale consumers: %s", exc)
                continue
            removed: dict[str, int] = {}
            for reply in replies:
                if isinstance(reply, Exception):  # no group yet, say
                    logger.debug("could not look for stale consumers: %s", reply)
                    continue
                for name, idle_ms in delivery.parse_forget(reply):
                    removed[name] = max(idle_ms, removed.get(name, 0))
            for name, idle_ms in removed.items():
                logger.info(
                    "removed consumer %s from the group: idle for %d ms with no pending entry "
                    "(its worker is gone)",
                    name,
                    idle_ms,
                )

    # Action schemas.

    async def _publish_schemas(self, mode: str) -> None:
        """Write the worker's schemas (``mode`` START: the last worker to start wins; RESTORE:
        only into a Redis that lost the hash), and remove those of the actions it handles
        without one. One script call; nothing when there is nothing to say."""
        worker = self.worker
        removed = [action for action in worker.actions if action not in worker.schemas]
        if mode == action_schemas.RESTORE:
            removed = []  # a running worker only puts back what a Redis lost
        if not worker.schemas and not removed:
            return
        args = action_schemas.publish_args(mode, worker.schemas, removed)
        version = await run(self.client, _PUBLISH_SCHEMAS, [self.keys.schemas], args)
        if version:
            logger.info(
                "published the schemas of %s (%s, version %s)",
                ", ".join(sorted(worker.schemas)) or "no action",
                "restored" if mode == action_schemas.RESTORE else "at start",
                version,
            )

    async def _restore_schemas(self) -> None:
        """Every 5 s, write the worker's schemas back if the hash is gone (Redis restarted
        empty, or failed over to a replica that never had it)."""
        while not await self._sleep_unless_stopped(_RESTORE_SCHEMAS_EVERY_S):
            try:
                await self._publish_schemas(action_schemas.RESTORE)
            except REDIS_ERRORS as exc:  # Redis away: the read loop reports it
                logger.debug("could not check the published schemas: %s", exc)

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


def _stream_entries(response: Any) -> Iterator[tuple[bytes, str, Mapping[bytes, bytes] | None]]:
    """(stream, entry id, fields) of a raw XREADGROUP reply, in the RESP2 (list) or RESP3 (map)
    shape; an entry's fields come as a flat list of names and values, or None for a deleted entry."""
    if not response:
        return
    streams = response.items() if isinstance(response, dict) else response
    for stream, entries in streams:
        for entry_id, flat_fields in entries:
            if flat_fields is None:
                yield stream, entry_id.decode(), None
            else:
                pairs = iter(flat_fields)
                yield stream, entry_id.decode(), dict(zip(pairs, pairs, strict=True))


_LISTED_ACTIONS = 20


def _actions_summary(worker: Worker) -> str:
    """The worker's action names (the first few of many), and its default handler if any."""
    names = sorted(worker.actions)
    listed = ", ".join(names[:_LISTED_ACTIONS]) or "none"
    if len(names) > _LISTED_ACTIONS:
        listed += f"... ({len(names)} in all)"
    listed += ", and a default handler" if worker.default else ""
    if worker.schemas:
        listed += f"; schemas: {', '.join(sorted(worker.schemas))}"
    return listed


def _safe_url(url: str) -> str:
    """The Redis URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    _userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}" if sep else url
