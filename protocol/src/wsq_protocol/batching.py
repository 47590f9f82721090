"""One tick batcher for every batched Redis writer, and the one backoff they pause with.

The gateway's writes (client frames, registrations), the worker's (replies and acks) and an
``AsyncPublisher``'s (pushes awaited together) all work the same way: whatever is queued while
one batch is in flight goes out as the next batch, in one round trip, sent by one task so
that writes keep their order. :class:`TickBatcher` is that loop: it waits for work, asks its
policy to flush, pauses with :class:`Backoff` when the policy says Redis was unavailable, and
drains at close.

What a failure means differs, and is the policy's (:class:`FlushPolicy`): the gateway keeps
durable writes and settles a batch in doubt from its recorded number, the worker sends its
acks again with a check that they are still pending, a publisher fails its callers at once
(pushes are at most once). A policy owns its queue and its pipe; the batcher owns the task.

:func:`cancel_and_wait` ends the other background loops at shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from redis.backoff import ExponentialBackoff

__all__ = ["Backoff", "FlushPolicy", "TickBatcher", "cancel_and_wait"]


class Backoff:
    """Pauses between attempts while Redis is unavailable: redis-py's ``ExponentialBackoff``
    (``base`` doubled at each failure, up to ``cap`` seconds), with the failures counted here."""

    __slots__ = ("_backoff", "failures")

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self._backoff = ExponentialBackoff(cap=cap, base=base)
        self.failures = 0

    def next(self) -> float:
        """The pause before the next attempt, one failure more."""
        delay: float = self._backoff.compute(self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """An attempt succeeded: the next failure pauses ``base`` again."""
        self.failures = 0


class FlushPolicy(Protocol):
    """What one batched writer queues, and what its failures mean."""

    def has_work(self) -> bool:
        """Something waits to be written (queued, or a batch in doubt to settle)."""
        ...

    async def flush(self) -> bool:
        """Write the next batch and settle what it can. False when Redis was unavailable and
        something must be written again: the batcher pauses (backoff) before the next flush."""
        ...


class TickBatcher:
    """Runs ``policy.flush()`` whenever it has work, one batch at a time, in one task."""

    def __init__(
        self,
        policy: FlushPolicy,
        *,
        name: str,
        backoff: Backoff | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        linger: bool = True,
    ) -> None:
        """``on_stop`` runs when the task ends, however it ends (to fail whoever still waits).
        ``linger=False``: the task ends whenever nothing is left to write, and ``wake()`` starts
        another (for a writer with no lifetime of its own, such as a publisher's)."""
        self._linger = linger
        self._policy = policy
        self._on_stop = on_stop
        self._name = name
        self._backoff = backoff if backoff is not None else Backoff()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.closing = False
        """``close()`` was called: the task ends once nothing is left to write."""

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name=self._name)
        return self._task

    def wake(self) -> None:
        """Something was queued: flush it in the next batch."""
        self._wakeup.set()
        if not self._linger and not self.running:
            self.start()

    async def close(self, timeout: float) -> bool:
        """Flush what is left for up to ``timeout`` seconds, then stop: False when it gave up
        (the task was cancelled with writes left)."""
        self.closing = True
        self._wakeup.set()
        if self._task is None or self._task.done():
            return True
        try:
            await asyncio.wait_for(self._task, timeout)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        try:
            await self._flush_until_closed()
        finally:
            if self._on_stop is not None:
                await self._on_stop()

    async def _flush_until_closed(self) -> None:
        policy = self._policy
        while True:
            if not policy.has_work():
                if self.closing or not self._linger:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if await policy.flush():
                self._backoff.reset()
            else:
                await asyncio.sleep(self._backoff.next())  # a retry delay: Redis is unavailable


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], *, again_every_s: float = 0.1) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again, every
    ``again_every_s``, any that goes on: one whose cancellation was swallowed below it (a
    client library that catches ``CancelledError`` mid-command and retries) would otherwise
    run its loop on, and a shutdown that waits for it would wait for ever."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_every_s)
