"""Client frames no worker takes in time: withdrawn from the stream and answered ``not_taken``.

With ``WSQ_TAKE_TIMEOUT_S`` set, every client frame with an ``id`` this gateway queued is
remembered (its stream entry id, its connection, its ``id``) until a worker reads it. A few
times per deadline the gateway looks at those older than the deadline: the ones the consumer
group has delivered since (their entry id at or below its ``last-delivered-id``) are taken and
forgotten; the others go to ``withdraw.lua``, which, atomically with respect to the workers'
reads, deletes every one still unread and names them. Each named frame is answered with
``$error not_taken``: no worker will ever see it. So a frame with an id gets exactly one
answer, the worker's or this one (docs/guarantees.md, "Frames no worker takes").

The entries are kept in the order Redis gave their ids (one batcher, one pipeline at a time),
so the ones taken are forgotten from the front at every look, due or not: what is remembered
is what waits unread. A frame whose write was in doubt (the connection to Redis failed as it
ran) has no known entry id and is not withdrawn: it waits for a worker as without a deadline.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wsq_gateway.connection import Connection
from wsq_gateway.logs import BROKER, get_logger
from wsq_protocol.cluster import REDIS_FAILURES, AsyncClient
from wsq_protocol.keys import CONSUMER_GROUP
from wsq_protocol.scripts import run, script

log = get_logger(BROKER)

WITHDRAW = script("withdraw")
MAX_PER_CALL = 500  # entry ids per withdraw.lua call
MIN_LOOK_S = 0.05
MAX_LOOK_S = 1.0

OnWithdrawn = Callable[[Connection, str], None]


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a pair that sorts like the ids."""
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


@dataclass(slots=True)
class Waiting:
    """A queued frame with an id, not yet known to be taken."""

    due: float  # loop time past which it is withdrawn if still unread
    entry: tuple[int, int]
    entry_id: str
    conn: Connection
    frame_id: str


class Untaken:
    """The frames with an id this gateway queued that no worker has read yet."""

    def __init__(
        self,
        redis: AsyncClient,
        stream: str,
        timeout_s: float,
        on_withdrawn: OnWithdrawn,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._redis = redis
        self._stream = stream
        self.timeout_s = timeout_s
        self._on_withdrawn = on_withdrawn
        self._clock = clock
        self._waiting: deque[Waiting] = deque()
        self.withdrawn = 0  # frames withdrawn and answered so far

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    def __len__(self) -> int:
        return len(self._waiting)

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def queued(self, conn: Connection, frame_id: str) -> Callable[[list[Any]], None]:
        """The ``on_ran`` of a frame's write: remembers its entry id once Redis gave it."""

        def remember(replies: list[Any]) -> None:
            entry_id = replies[0].decode() if isinstance(replies[0], bytes) else str(replies[0])
            self._waiting.append(
                Waiting(self.now() + self.timeout_s, entry_key(entry_id), entry_id, conn, frame_id)
            )

        return remember

    async def run(self, last_delivered: Callable[[], str | None]) -> None:
        """Look a few times per deadline, with the group's ``last-delivered-id`` as last measured
        (the backlog watch measures it a few times a second)."""
        interval = min(max(self.timeout_s / 4, MIN_LOOK_S), MAX_LOOK_S)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.look(last_delivered())
            except REDIS_FAILURES as exc:  # they stay remembered: the next look tries again
                log.warning("could not withdraw frames no worker took", error=str(exc))

    async def look(self, last_delivered: str | None) -> int:
        """Forget the frames taken, withdraw the ones due; how many were withdrawn. Raises
        what Redis raised (nothing is forgotten then: withdraw.lua may run again safely)."""
        waiting = self._waiting
        if last_delivered is not None:
            delivered = entry_key(last_delivered)
            while waiting and waiting[0].entry <= delivered:
                waiting.popleft()
        now = self.now()
        due: list[Waiting] = []
        for item in waiting:
            if item.due > now or len(due) == MAX_PER_CALL:
                break
            due.append(item)
        if not due:
            return 0
        reply = await run(self._redis, WITHDRAW, [self._stream], [CONSUMER_GROUP, *(i.entry_id for i in due)])
        withdrawn = {e.decode() if isinstance(e, bytes) else str(e) for e in reply}
        for _ in due:
            waiting.popleft()
        for item in due:
            if item.entry_id in withdrawn:
                self.withdrawn += 1
                self._on_withdrawn(item.conn, item.frame_id)
        return len(withdrawn)
