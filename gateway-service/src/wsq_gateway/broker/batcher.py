"""Batched Redis writes: whatever was queued during one event-loop tick goes out in one
pipeline, so a burst of client frames costs one round trip, not one each.

One pipeline is in flight at a time, which keeps every write in the order it was queued
(a connection's events reach the stream in the order they happened).

A batch is never abandoned while its connection lives, so every write's outcome is known
from Redis's own replies (see docs/guarantees.md, "Redis outages"):

* Redis refused a write, or the batch could not be sent: the write failed, certainly.
* Redis stalls (a batch waits longer than ``stall_s``): the gateway is *stalled*. Writes
  not sent yet fail at once (clients get ``unavailable``: certainly not accepted); writes
  someone waits for (registrations) fail too, their clean-up queued behind the batch; the
  batch's other writes wait for Redis's verdict.
* The connection fails once the batch was sent (:class:`WriteInDoubt`): Redis ran all of it
  or none. Each batch is a transaction (``MULTI`` ... ``EXEC``) that also records its
  sequence number (``{prefix:k}:node:{node}:seq``, in the node's slot), so once Redis answers
  again one ``GET`` tells which: the batch is done, or it is sent again. Nothing is written
  twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from wsq_gateway.errors import BrokerUnavailable
from wsq_gateway.logs import BROKER, get_logger
from wsq_protocol.batching import Backoff, TickBatcher
from wsq_protocol.cluster import AsyncClient
from wsq_protocol.pipe import RedisPipe, WriteInDoubt

log = get_logger(BROKER)

MAX_BATCH = 1000  # commands in one pipeline
MULTI, EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"
STALL_S = 5.0  # a batch unanswered this long: Redis is stalled, new writes fail at once
STALLED = "redis is not answering: the write was not sent"


@dataclass(slots=True)
class Write:
    """One or more Redis commands that succeed or fail together.

    ``on_error`` runs when they certainly failed. A ``durable`` write is instead kept and
    retried (with backoff) until Redis takes it: used for what must not be lost, such as
    disconnect events. ``done``, when set, is resolved with the replies (or the error).

    ``on_reply``, when set, is called with the replies once Redis ran the write (a script that
    found its keys stale answers so, and its caller queues a new write: the batch goes on). A
    write with ``on_reply`` must be safe to run twice: when a batch in doubt turns out to have
    run, its replies are lost, so such a write is sent again to get them.

    ``on_ran``, when set, is called with the replies when Redis ran the write and they are
    known; never when a batch in doubt turned out to have run (the write is not sent again).
    """

    commands: Sequence[tuple[Any, ...] | bytes]  # bytes: packed already (CommandTemplate)
    on_error: Callable[[BrokerUnavailable], None] | None = None
    durable: bool = False
    done: asyncio.Future[list[Any]] | None = field(default=None)
    on_reply: Callable[[list[Any]], None] | None = None
    on_ran: Callable[[list[Any]], None] | None = None


class RedisBatcher:
    """The gateway's batched writes: the flush policy of a ``TickBatcher`` (see above)."""

    def __init__(
        self,
        redis: AsyncClient,
        *,
        sequence_key: str,
        scripts: Sequence[str] = (),
        stall_s: float = STALL_S,
        on_connect: tuple[Any, ...] | None = None,
    ) -> None:
        self._redis = redis
        self._sequence_key = sequence_key
        # Every batch's number, recorded by its transaction. Counting from this process's start
        # in microseconds keeps the numbers above an earlier process's with the same node id.
        self._sequence = itertools.count(time.time_ns() // 1000)
        self._in_doubt: tuple[int, list[Write]] | None = None  # a batch Redis ran all or none of
        # On a cluster the pipe follows the master serving the node's slot (every write of a
        # batch is in it); on_connect runs first on each new connection.
        self._pipe = RedisPipe(redis, key=sequence_key, writes=True, on_connect=on_connect)
        self._scripts = tuple(scripts)  # loaded again when Redis answers NOSCRIPT
        self._stall_s = stall_s
        self._queue: deque[Write] = deque()
        # Pauses 0.05 s after a failure, doubling up to 2 s.
        self._batcher = TickBatcher(self, name="wsq-redis-batcher", backoff=Backoff(base=0.05, cap=2.0))
        self._in_flight = 0
        self._watched: tuple[list[Write], float] | None = None  # the batch in flight, and when it stalls
        self._watchdog: asyncio.TimerHandle | None = None
        self.on_batch: Callable[[float, int], None] | None = None
        """Called with the seconds each batch took and its number of writes (metrics)."""
        self.stalled = False
        """Redis did not answer a batch within ``stall_s``, or a batch is being sent again:
        writes that are not durable fail at once instead of queueing."""

    @property
    def queued(self) -> int:
        """Writes waiting for the next pipeline."""
        return len(self._queue)

    @property
    def pending(self) -> int:
        """Writes not settled yet: queued, in the pipeline in flight, or in doubt."""
        in_doubt = 0 if self._in_doubt is None else len(self._in_doubt[1])
        return len(self._queue) + self._in_flight + in_doubt

    def start(self) -> asyncio.Task[None]:
        return self._batcher.start()

    def submit(self, write: Write) -> None:
        """Queue ``write``. Its commands are packed now: one Redis can't take (a bool, an enum, a
        str that is not UTF-8...) raises here, in its caller, durable or not (no retry could
        ever send it), instead of failing every batch it would join."""
        write.commands = [
            command if isinstance(command, bytes) else self._pipe.pack(command) for command in write.commands
        ]
        if self.stalled and not write.durable:
            _settle(write, BrokerUnavailable(STALLED))
            return
        self._queue.append(write)
        self._batcher.wake()

    async def submit_and_wait(self, *commands: tuple[Any, ...] | bytes) -> list[Any]:
        """Queue commands and wait until Redis took them: their replies, in order; raise
        BrokerUnavailable if not (or if Redis stalls before it answers)."""
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.submit(Write(commands, done=done))
        return await done

    async def close(self, timeout: float) -> None:
        """Flush what is queued (durable writes get up to ``timeout``), then stop."""
        if not await self._batcher.close(timeout):
            log.error("gave up flushing writes to Redis", lost=len(self._queue))
        await self._pipe.aclose()

    async def load_scripts(self) -> None:
        """``SCRIPT LOAD`` every script the writes call by ``EVALSHA``."""
        for body in self._scripts:
            await self._redis.script_load(body)

    # The flush policy (wsq_protocol.batching.FlushPolicy).

    def has_work(self) -> bool:
        return self._in_doubt is not None or bool(self._queue)

    async def flush(self) -> bool:
        """Settle the batch in doubt first, if any (False, to pause, while Redis can't tell);
        else send the next batch (False, to pause, when writes must be sent again)."""
        if self._in_doubt is not None:
            return await self._settle_in_doubt()
        batch, size = [], 0
        while self._queue and size < MAX_BATCH:
            write = self._queue.popleft()
            batch.append(write)
            size += len(write.commands)
        commands: list[bytes] = [command for write in batch for command in write.commands]  # type: ignore[misc]
        self._in_flight = len(batch)
        self._watch(batch)
        started = time.perf_counter()
        try:
            retry = await self._flush(batch, commands)
            if self.on_batch is not None:
                self.on_batch(time.perf_counter() - started, len(batch))
        except Exception as exc:  # a bug, or a reply we can't read: this batch fails, not the batcher
            log.exception("flushing a batch of writes failed", writes=len(batch))
            with contextlib.suppress(Exception):  # replies may be left unread: the next batch reconnects
                await self._pipe.aclose()
            retry = self._fail(batch, BrokerUnavailable(f"internal error: {exc!r}"))
        finally:
            self._in_flight = 0
            self._watched = None
        if retry:
            self._queue.extendleft(reversed(retry))
            return False
        self.stalled = False
        return True

    async def _flush(self, batch: list[Write], commands: list[bytes]) -> list[Write]:
        """Send one batch as a transaction; settle every write; return those to send again."""
        sequence = next(self._sequence)
        record = self._pipe.pack(("SET", self._sequence_key, sequence))
        try:
            replies = await self._pipe.execute([MULTI, *commands, record, EXEC])
        except WriteInDoubt as exc:
            log.warning("redis connection failed during a write: finding out whether it ran", error=str(exc))
            self._doubt(sequence, batch, BrokerUnavailable(str(exc)))
            return []
        except (RedisError, OSError) as exc:
            log.warning("redis write failed", error=str(exc), writes=len(batch))
            return self._fail(batch, BrokerUnavailable(str(exc)))
        results = replies[-1]
        if isinstance(results, Exception):  # EXECABORT: a command Redis would not queue; none ran
            refused = next((r for r in replies[1:-1] if isinstance(r, Exception)), results)
            log.warning("redis refused a batch of writes", error=str(refused))
            return self._fail(batch, BrokerUnavailable(str(refused)))
        retry: list[Write] = []
        position, scripts_lost = 0, False
        for write in batch:
            count = len(write.commands)
            replies = results[position : position + count]
            errors = [r for r in replies if isinstance(r, Exception)]
            position += count
            if any(isinstance(error, NoScriptError) for error in errors):
                scripts_lost = True  # not run: Redis lost its scripts (a restart, SCRIPT FLUSH)
                retry.append(write)
            elif errors:
                log.warning("redis refused a write", error=str(errors[0]))
                retry += self._fail([write], BrokerUnavailable(str(errors[0])))
            else:
                if write.done is not None and not write.done.done():
                    write.done.set_result(replies)
                if write.on_reply is not None:
                    _reply(write.on_reply, replies)
                if write.on_ran is not None:
                    _reply(write.on_ran, replies)
        if scripts_lost:
            try:
                await self.load_scripts()
            except (RedisError, OSError) as exc:
                log.warning("could not load the scripts into redis", error=str(exc))
        return retry

    def _watch(self, batch: list[Write]) -> None:
        """Call ``_on_stall`` if ``batch`` is still in flight after ``stall_s``: with one timer for
        many batches (a timer armed and cancelled per batch costs 9-10 µs, two per message at
        light load), which, when it fires early for a later batch, sleeps again until that
        one is due."""
        loop = asyncio.get_running_loop()
        self._watched = (batch, loop.time() + self._stall_s)
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._watched[1], self._check_stall)

    def _check_stall(self) -> None:
        self._watchdog = None
        if self._watched is None:  # nothing in flight: _watch() arms it again
            return
        batch, due = self._watched
        loop = asyncio.get_running_loop()
        if loop.time() < due:
            self._watchdog = loop.call_at(due, self._check_stall)
        else:
            self._watched = None
            self._on_stall(batch)

    def _on_stall(self, batch: list[Write]) -> None:
        """The batch in flight waited ``stall_s``: fail what can still fail, certainly."""
        self.stalled = True
        log.warning("redis is not answering: failing new writes until it does", waiting=len(batch))
        for write in batch:
            if write.done is not None and not write.done.done():
                write.done.set_exception(BrokerUnavailable(STALLED))
        kept = [write for write in self._queue if write.durable]
        for write in self._queue:
            if not write.durable:
                _settle(write, BrokerUnavailable(STALLED))
        self._queue = deque(kept)

    def _doubt(self, sequence: int, batch: list[Write], exc: BrokerUnavailable) -> None:
        """The batch ran all or none: ``_settle_in_doubt()`` finds out before anything else is
        sent. Writes someone waits for (registrations) fail now: their clean-up queues behind."""
        self.stalled = True
        for write in batch:
            if write.done is not None and not write.done.done():
                write.done.set_exception(exc)
        self._in_doubt = (sequence, [write for write in batch if write.done is None])

    async def _settle_in_doubt(self) -> bool:
        """Ask Redis whether the batch in doubt ran (its number is recorded): done, or queued
        to be sent again, in front. False when Redis can't be asked yet."""
        assert self._in_doubt is not None
        sequence, batch = self._in_doubt
        try:
            (recorded,) = await self._pipe.execute([("GET", self._sequence_key)])
        except (RedisError, OSError) as exc:
            log.warning("redis not reachable to settle a write in doubt", error=str(exc))
            return False
        if isinstance(recorded, Exception):
            log.warning("redis refused to tell whether a write ran", error=str(recorded))
            return False
        self._in_doubt = None
        self.stalled = False  # Redis answers again
        if recorded is not None and int(recorded) >= sequence:
            log.info("the write in doubt had run", writes=len(batch))
            # Their replies were lost: those who need them (idempotent writes) run again.
            self._queue.extendleft(reversed([write for write in batch if write.on_reply is not None]))
        else:
            log.info("the write in doubt had not run: sending it again", writes=len(batch))
            self._queue.extendleft(reversed(batch))
        return True

    def _fail(self, batch: list[Write], exc: BrokerUnavailable) -> list[Write]:
        retry = []
        for write in batch:
            if write.durable:
                retry.append(write)
            else:
                _settle(write, exc)
        return retry


def _reply(callback: Callable[[list[Any]], None], replies: list[Any]) -> None:
    """Hand Redis's replies to a write's ``on_reply`` or ``on_ran``."""
    try:
        callback(replies)
    except Exception:  # one caller's bug must not stop the writes of all the others
        log.exception("a write's reply callback failed")


def _settle(write: Write, exc: BrokerUnavailable) -> None:
    """``write`` certainly failed: tell whoever waits for it."""
    if write.on_error is not None:
        try:
            write.on_error(exc)
        except Exception:  # one caller's bug must not stop the writes of all the others
            log.exception("a write's error callback failed")
    if write.done is not None and not write.done.done():
        write.done.set_exception(exc)
