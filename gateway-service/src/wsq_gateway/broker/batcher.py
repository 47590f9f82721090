"""Batched Redis writes: whatever was queued during one event-loop tick goes out in one
pipeline, so a burst of client frames costs one round trip, not one each.

One pipeline is in flight at a time, which keeps every write in the order it was queued
(a connection's events reach the stream in the order they happened).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wsq_gateway.broker.client import RedisPipe
from wsq_gateway.errors import BrokerUnavailable
from wsq_gateway.logs import BROKER, get_logger

log = get_logger(BROKER)

MAX_BATCH = 1000  # commands in one pipeline
RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass(slots=True)
class Write:
    """One or more Redis commands that succeed or fail together.

    ``on_error`` runs when they fail. A ``durable`` write is instead kept and retried
    (with backoff) until Redis takes it: used for what must not be lost, such as
    disconnect events.
    """

    commands: Sequence[tuple[Any, ...] | bytes]  # bytes: packed already (CommandTemplate)
    on_error: Callable[[BrokerUnavailable], None] | None = None
    durable: bool = False
    done: asyncio.Future[list[Any]] | None = field(default=None)  # resolved with the replies


class RedisBatcher:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._pipe = RedisPipe(redis)
        self._queue: deque[Write] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Writes waiting for the next pipeline."""
        return len(self._queue)

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="wsq-redis-batcher")
        return self._task

    def submit(self, write: Write) -> None:
        self._queue.append(write)
        self._wakeup.set()

    async def submit_and_wait(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Queue commands and wait until Redis took them: their replies, in order; raise
        BrokerUnavailable if not."""
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.submit(Write(commands, done=done))
        return await done

    async def close(self, timeout: float) -> None:
        """Flush what is queued (durable writes get up to ``timeout``), then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.error("gave up flushing writes to Redis", lost=len(self._queue))
        await self._pipe.aclose()

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, size = [], 0
            while self._queue and size < MAX_BATCH:
                write = self._queue.popleft()
                batch.append(write)
                size += len(write.commands)
            batch, commands = self._packed(batch)
            if not batch:
                continue
            try:
                retry = await self._flush(batch, commands)
            except Exception as exc:  # a bug, or a reply we can't read: this batch fails, not the batcher
                log.exception("flushing a batch of writes failed", writes=len(batch))
                with contextlib.suppress(Exception):  # replies may be left unread: the next batch reconnects
                    await self._pipe.aclose()
                retry = self._fail(batch, BrokerUnavailable(f"internal error: {exc!r}"))
            if retry:
                self._queue.extendleft(reversed(retry))
                delay = RETRY_BACKOFF_S[min(failures, len(RETRY_BACKOFF_S) - 1)]
                failures += 1
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _flush(self, batch: list[Write], commands: list[bytes]) -> list[Write]:
        """Send one pipeline; settle every write; return the durable ones to retry."""
        try:
            results = await self._pipe.execute(commands)
        except (RedisError, OSError) as exc:
            log.warning("redis write failed", error=str(exc), writes=len(batch))
            return self._fail(batch, BrokerUnavailable(str(exc)))
        retry: list[Write] = []
        position = 0
        for write in batch:
            count = len(write.commands)
            replies = results[position : position + count]
            errors = [r for r in replies if isinstance(r, Exception)]
            position += count
            if errors:
                log.warning("redis refused a write", error=str(errors[0]))
                retry += self._fail([write], BrokerUnavailable(str(errors[0])))
            elif write.done is not None and not write.done.done():
                write.done.set_result(replies)
        return retry

    def _packed(self, batch: list[Write]) -> tuple[list[Write], list[bytes]]:
        """The writes whose commands could be packed, and those commands in RESP. A write with
        an argument no Redis command can carry (a lone surrogate, say) fails alone, durable or
        not: no retry would ever send it, and it must not take the rest of the batch with it."""
        sendable: list[Write] = []
        commands: list[bytes] = []
        for write in batch:
            try:
                packed = [
                    command if type(command) is bytes else self._pipe.pack(command)  # type: ignore[arg-type]
                    for command in write.commands
                ]
            except Exception as exc:
                log.exception("dropped a write that no Redis command can carry")
                self._fail([replace(write, durable=False)], BrokerUnavailable(f"unwritable value: {exc}"))
                continue
            sendable.append(write)
            commands += packed
        return sendable, commands

    def _fail(self, batch: list[Write], exc: BrokerUnavailable) -> list[Write]:
        retry = []
        for write in batch:
            if write.durable:
                retry.append(write)
                continue
            if write.on_error is not None:
                try:
                    write.on_error(exc)
                except Exception:  # one caller's bug must not stop the writes of all the others
                    log.exception("a write's error callback failed")
            if write.done is not None and not write.done.done():
                write.done.set_exception(exc)
        return retry
