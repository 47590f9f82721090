"""Batches the worker's Redis writes: replies, pushes and acks, in one pipeline per event-loop tick.

Everything queued while the previous pipeline was in flight goes out in the next one, so a busy
worker makes one round trip for many events. Within a pipeline the writes come first, in the
order they were queued (``XADD``s of replies, pushes and dead letters, and the scripts putting
retries in the delayed set), then one ``XACK`` and one ``XDEL`` for every acknowledged entry: an
event is never acknowledged before its reply, its dead letter or its retry is written.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import redis
import redis.asyncio

from wsq_worker.delivery import DELAY_SCRIPT, DelayedWrite
from wsq_worker.exceptions import PublishError
from wsq_worker.publisher import StreamWrite, publish_error
from wsq_worker.speedups import RedisPipe

__all__ = ["Flusher", "FlusherWrite", "PackedWrite"]

logger = logging.getLogger("wsq_worker.flusher")

_MIN_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0


class PackedWrite(NamedTuple):
    """A write to ``key`` packed in RESP already: an ``XADD`` (the replies, from a
    ``speedups.CommandTemplate``), or any ``FlusherWrite`` once queued."""

    key: str
    command: bytes


FlusherWrite = StreamWrite | PackedWrite | DelayedWrite


class Flusher:
    """Queues ``StreamWrite``s, ``DelayedWrite``s and acks of inbound entries, and writes them in batches.

    Replies and acks (``queue()``, ``ack()``) are kept and retried while Redis is unavailable;
    ``send()`` waits for its own write and raises ``PublishError`` instead.
    """

    def __init__(self, client: redis.asyncio.Redis, inbound_stream: str, group: str) -> None:
        self._pipe = RedisPipe(client)
        self._inbound_stream = inbound_stream
        self._group = group
        self._writes: list[tuple[PackedWrite, asyncio.Future[None] | None]] = []
        self._acks: list[str] = []
        self._writing_acks: list[str] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="wsq-flusher")
        return self._task

    def queue(self, write: FlusherWrite) -> None:
        """Write soon; retried until it succeeds or the worker stops. A write no Redis command can
        carry (a str that is not UTF-8) raises here, in its caller, not in the batch."""
        self._writes.append((self._packed(write), None))
        self._wakeup.set()

    async def send(self, write: StreamWrite | PackedWrite) -> None:
        """Write in the next batch and wait for it; ``PublishError`` if Redis can't take it."""
        if self._closing or self._task is None or self._task.done():
            raise PublishError("the worker has stopped: nothing was sent")
        packed = self._packed(write)
        done = asyncio.get_running_loop().create_future()
        self._writes.append((packed, done))
        self._wakeup.set()
        await done

    def _packed(self, write: FlusherWrite) -> PackedWrite:
        # Packed as it is queued: an argument that can't be packed would otherwise fail the
        # whole batch, and then every retry of it, for good.
        if isinstance(write, PackedWrite):
            return write
        if isinstance(write, DelayedWrite):  # rare: a retry
            command = ("EVAL", DELAY_SCRIPT, 1, write.key, write.delay_ms, write.member)
            return PackedWrite(write.key, self._pipe.pack(command))
        return PackedWrite(write.stream, self._pipe.pack(write.command))

    def ack(self, entry_id: str) -> None:
        """``XACK`` and ``XDEL`` the inbound entry, after every write queued before."""
        self._acks.append(entry_id)
        self._wakeup.set()

    @property
    def backlog(self) -> int:
        return len(self._writes) + len(self._acks)

    @property
    def pending_acks(self) -> list[str]:
        """The entries acknowledged here but not yet in Redis (queued, or being written)."""
        return [*self._writing_acks, *self._acks]

    async def close(self, timeout: float) -> None:
        """Flush what is queued, for up to ``timeout`` seconds, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is None or self._task.done():
            return
        try:
            await asyncio.wait_for(self._task, timeout)
        except TimeoutError:
            logger.error(
                "gave up writing to Redis at shutdown: %d replies/pushes and %d acks were not written",
                len(self._writes),
                len(self._acks),
            )

    async def _run(self) -> None:
        try:
            await self._write_batches()
        finally:
            # Stopped (or gave up at shutdown): nobody may wait forever for a write.
            for _, done in self._writes:
                if done is not None and not done.done():
                    done.set_exception(PublishError("the worker stopped before the push was written"))
            await self._pipe.aclose()

    async def _write_batches(self) -> None:
        backoff = _MIN_BACKOFF_S
        while True:
            if not self._writes and not self._acks:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            writes, self._writes = self._writes, []
            acks, self._acks = self._acks, []
            self._writing_acks = acks
            try:
                await self._write(writes, acks)
            except Exception as exc:  # Redis unreachable (or a bug): the flusher must go on
                if isinstance(exc, redis.RedisError):
                    self._requeue(writes, acks, functools.partial(publish_error, exc))
                    logger.error(
                        "Redis is unavailable (%s): retrying %d writes in %.1fs", exc, self.backlog, backoff
                    )
                else:
                    self._requeue(
                        writes, acks, functools.partial(PublishError, f"writing to Redis failed: {exc!r}")
                    )
                    logger.exception(
                        "writing to Redis failed: retrying %d writes in %.1fs", self.backlog, backoff
                    )
                # A retry delay: the batch waits for Redis either way.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            except BaseException:
                self._writes[:0] = writes
                self._acks[:0] = acks
                raise
            else:
                backoff = _MIN_BACKOFF_S
            finally:
                self._writing_acks = []

    async def _write(
        self, writes: list[tuple[PackedWrite, asyncio.Future[None] | None]], acks: list[str]
    ) -> None:
        commands: list[tuple[Any, ...] | bytes] = [write.command for write, _ in writes]
        if acks:
            commands.append(("XACK", self._inbound_stream, self._group, *acks))
            commands.append(("XDEL", self._inbound_stream, *acks))
        results = await self._pipe.execute(commands)
        for (write, done), result in zip(writes, results, strict=False):
            if isinstance(result, Exception):
                # Redis refused this one command (wrong key type, out of memory...): not retried.
                logger.error("Redis refused a write to %s: %s", write.key, result)
                if done is not None and not done.done():
                    done.set_exception(
                        publish_error(result) if isinstance(result, redis.RedisError) else result
                    )
            elif done is not None and not done.done():
                done.set_result(None)
        for result in results[len(writes) :]:
            if isinstance(result, Exception):
                logger.error("Redis refused to acknowledge inbound entries: %s", result)

    def _requeue(
        self,
        writes: list[tuple[PackedWrite, asyncio.Future[None] | None]],
        acks: list[str],
        error: Callable[[], PublishError],
    ) -> None:
        """Put replies and acks back in front of the queue; fail the writes someone waits for."""
        self._writing_acks = []
        kept = []
        for write, done in writes:
            if done is None:
                kept.append((write, done))
            elif not done.done():
                done.set_exception(error())  # one exception object per waiter
        self._writes[:0] = kept
        self._acks[:0] = acks
