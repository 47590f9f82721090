"""Who consumes this gateway's inbound stream partition: the live workers, and the work they
have not taken yet (workers read every partition, so those of this one are all of them).

Read from Redis's own bookkeeping of the consumer group (``XINFO GROUPS``, ``XINFO
CONSUMERS``), so workers report nothing themselves. Every call a worker makes as a consumer
resets its idle time: it reads with ``XREADGROUP BLOCK`` 1 s, and while all its slots are busy
it refreshes the entries it runs every ``WSQ_CLAIM_IDLE_MS / 3``. A consumer idle for longer
than ``WSQ_WORKER_TIMEOUT_S`` therefore belongs to a worker that is gone (killed, its host
lost) or stuck; while no consumer is fresher than that, client frames are refused with
``$error no_workers`` rather than queued for nobody.

Live workers may still take nothing: every slot of every worker busy with slow handlers, or
handlers stuck. The group's ``last-delivered-id`` moves with every entry a worker reads, so
while entries wait unread (``lag`` above 0) and it has not moved for ``WSQ_STALL_AFTER_S``,
the workers are *stalled*: reported (``/readyz``, ``wsq_gateway_workers_stalled``), frames
still accepted. It clears as soon as a worker reads one entry, or nothing waits any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
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
    last_delivered: str | None = None  # the group's last-delivered-id: moves with every read


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
    delivered = group.get("last-delivered-id")
    return ConsumerState(
        backlog=backlog,
        lag=unread,
        pending=pending,
        live_workers=live,
        consumers=len(members),
        last_delivered=delivered.decode() if isinstance(delivered, bytes) else _str(delivered),
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


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def oldest_unread_ms(entries: object) -> int | None:
    """The time (ms, Redis's clock) at which the oldest unread entry was added: its id's first
    part, from the reply of ``XRANGE`` after the last-delivered-id, ``COUNT 1``."""
    if not isinstance(entries, list) or not entries:
        return None
    entry = entries[0]
    entry_id = entry[0] if isinstance(entry, (list, tuple)) and entry else None
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    if not isinstance(entry_id, str):
        return None
    millis, _, _ = entry_id.partition("-")
    return int(millis) if millis.isdigit() else None


class Consumers:
    """The last :class:`ConsumerState` (measured a few times a second by the backlog watch), and a
    fresh one on demand before a frame is refused for want of workers."""

    def __init__(
        self,
        redis: AsyncClient,
        stream: str,
        *,
        timeout_s: float,
        stall_after_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._stream = stream  # this gateway's partition of the inbound stream: all its events
        self._timeout_ms = round(timeout_s * 1000)
        self.enabled = timeout_s > 0  # WSQ_WORKER_TIMEOUT_S=0: frames wait for workers, however long
        self.state = ConsumerState()
        self.measured = False  # until the first measure, the state is not known
        self._started = 0  # measures started so far
        self._one_at_a_time = asyncio.Lock()
        self._stall_after_s = stall_after_s  # 0: never stalled
        self._clock = clock
        self._progress_at = 0.0  # clock time of the last measure that saw a read, or nothing unread
        self.stalled = False  # live workers, entries unread, and none read for WSQ_STALL_AFTER_S
        self.oldest_unread_age_s: float | None = None  # age of the oldest unread entry, if any

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
        state = consumer_state(int(length), groups, consumers, self._timeout_ms)
        oldest: int | None = None
        if state.lag > 0:  # a second round trip only while entries wait unread
            after = "-" if state.last_delivered is None else f"({state.last_delivered}"
            oldest = oldest_unread_ms(await self._redis.xrange(self._stream, after, "+", count=1))
        self._observe(state)
        self.oldest_unread_age_s = None if oldest is None else max(time.time() - oldest / 1000, 0.0)
        self.state = state
        self.measured = True
        return state

    def _observe(self, state: ConsumerState) -> None:
        """Track the workers' progress (a read moves last-delivered-id) and decide ``stalled``."""
        now = self._clock()
        previous = self.state if self.measured else None
        if previous is None or state.lag == 0 or state.last_delivered != previous.last_delivered:
            self._progress_at = now
        # WSQ_WORKER_TIMEOUT_S=0 counts no consumer as live: then any consumer stands for a worker.
        workers = state.live_workers if self.enabled else state.consumers
        self.stalled = (
            self._stall_after_s > 0
            and workers > 0
            and state.lag > 0
            and now - self._progress_at >= self._stall_after_s
        )
