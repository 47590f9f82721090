"""Batched Redis writes: whatever was queued during one event-loop tick goes out in one
pipeline, so a burst of client frames costs one round trip, not one each.

One pipeline is in flight at a time, which keeps every write in the order it was queued
(a connection's events reach the stream in the order they happened).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    def __init__(self, redis: aioredis.Redis, *, on_connect: tuple[Any, ...] | None = None) -> None:
        self._pipe = RedisPipe(redis, on_connect=on_connect)  # run first on each new connection
        self._queue: deque[Write] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Writes waiting for the next pipeline."""
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="wsq-redis-batcher")

    def submit(self, write: Write) -> None:
        """Queue ``write``. Its commands are packed now: one Redis can't take (a bool, an enum...)
        raises ``TypeError`` here, in its caller, instead of failing every batch it would join."""
        write.commands = [
            command if isinstance(command, bytes) else self._pipe.pack(command) for command in write.commands
        ]
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
            retry = await self._flush(batch)
            if retry:
                self._queue.extendleft(reversed(retry))
                delay = RETRY_BACKOFF_S[min(failures, len(RETRY_BACKOFF_S) - 1)]
                failures += 1
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _flush(self, batch: list[Write]) -> list[Write]:
        """Send one pipeline; settle every write; return the durable ones to retry."""
        commands = [command for write in batch for command in write.commands]
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

    def _fail(self, batch: list[Write], exc: BrokerUnavailable) -> list[Write]:
        retry = []
        for write in batch:
            if write.durable:
                retry.append(write)
                continue
            if write.on_error is not None:
                write.on_error(exc)
            if write.done is not None and not write.done.done():
                write.done.set_exception(exc)
        return retry
