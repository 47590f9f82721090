"""Who consumes this gateway's inbound stream partition: the live workers, and the work they
have not taken yet (workers read every partition, so those of this one are all of them).

Read from Redis's own bookkeeping of the consumer group (``XINFO GROUPS``, ``XINFO
CONSUMERS``), so workers report nothing themselves. Every call a worker makes as a consumer
resets its idle time: it reads with ``XREADGROUP BLOCK`` 1 s, and while all its slots are busy
it refreshes the entries it runs every ``WSQ_CLAIM_IDLE_MS / 3``. A consumer idle for longer
than ``WSQ_WORKER_TIMEOUT_S`` therefore belongs to a worker that is gone (killed, its host
lost) or stuck; while no consumer is fresher than that, client frames are refused with
``$error no_workers`` rather than queued for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wsq_protocol.cluster import REDIS_FAILURES, AsyncClient
from wsq_protocol.keys import CONSUMER_GROUP


@dataclass(frozen=True, slots=True)
class ConsumerState:
    """The inbound stream and its consumer group, as measured at one moment."""

    backlog: int = 0  # entries in the stream: not yet read, or read and not yet acknowledged
    lag: int = 0  # entries no worker has read yet
    pending: int = 0  # entries read by a worker and not yet acknowledged
    live_workers: int = 0  # consumers idle for less than the timeout
    consumers: int = 0  # consumers in the group, live or not


def consumer_state(backlog: int, groups: object, consumers: object, timeout_ms: int) -> ConsumerState:
    """The state from the replies of ``XLEN``, ``XINFO GROUPS`` and ``XINFO CONSUMERS`` (as
    redis-py parses them; an exception instead of a reply when the stream or the group does
    not exist yet: no worker ever read it)."""
    group = _workers_group(groups)
    members = [c for c in consumers if isinstance(c, Mapping)] if isinstance(consumers, list) else []
    live = sum(1 for c in members if _int(c.get("idle"), timeout_ms) < timeout_ms)
    if group is None:
        return ConsumerState(backlog=backlog, lag=backlog, live_workers=live, consumers=len(members))
    pending = _int(group.get("pending"), 0)
    # Redis cannot always tell the lag (deletions inside the unread range): workers delete what
    # they acknowledge, so the stream holds the pending entries and the unread ones.
    lag = group.get("lag")
    unread = lag if isinstance(lag, int) else max(backlog - pending, 0)
    return ConsumerState(
        backlog=backlog, lag=unread, pending=pending, live_workers=live, consumers=len(members)
    )


def _workers_group(groups: object) -> Mapping[str, Any] | None:
    if not isinstance(groups, Sequence):
        return None
    for group in groups:
        if isinstance(group, Mapping) and group.get("name") in (CONSUMER_GROUP, CONSUMER_GROUP.encode()):
            return group
    return None


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) else default


class Consumers:
    """The last :class:`ConsumerState` (measured a few times a second by the backlog watch), and a
    fresh one on demand before a frame is refused for want of workers."""

    def __init__(self, redis: AsyncClient, stream: str, *, timeout_s: float) -> None:
        self._redis = redis
        self._stream = stream  # this gateway's partition of the inbound stream: all its events
        self._timeout_ms = round(timeout_s * 1000)
        self.enabled = timeout_s > 0  # WSQ_WORKER_TIMEOUT_S=0: frames wait for workers, however long
        self.state = ConsumerState()
        self.measured = False  # until the first measure, the state is not known
        self._started = 0  # measures started so far
        self._one_at_a_time = asyncio.Lock()

    @property
    def none_live(self) -> bool:
        """No worker was live at the last measure (or none was taken yet)."""
        return self.enabled and (not self.measured or self.state.live_workers == 0)

    async def measure(self) -> ConsumerState:
        """Measure now; raises RedisError or OSError when Redis does not answer."""
        async with self._one_at_a_time:
            return await self._measure()

    async def confirm_none_live(self) -> bool:
        """True when a measure started after this call finds no live worker (or Redis does not
        answer and the last one found none). Callers that come meanwhile share one measure."""
        asked = self._started
        async with self._one_at_a_time:
            if self._started == asked:  # no measure started since we asked: take one
                # On failure keep the last state: a frame queued now would get `unavailable` anyway.
                with contextlib.suppress(*REDIS_FAILURES):
                    await self._measure()
        return self.none_live

    async def _measure(self) -> ConsumerState:
        self._started += 1
        pipe = self._redis.pipeline(transaction=False)
        pipe.xlen(self._stream)
        pipe.xinfo_groups(self._stream)
        pipe.xinfo_consumers(self._stream, CONSUMER_GROUP)
        length, groups, consumers = await pipe.execute(raise_on_error=False)
        if isinstance(length, BaseException):
            raise length
        self.state = consumer_state(int(length), groups, consumers, self._timeout_ms)
        self.measured = True
        return self.state
