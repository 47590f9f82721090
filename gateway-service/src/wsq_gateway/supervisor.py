"""Watches the gateway's background tasks: none may end without the process noticing.

The Redis batcher, the command reader, the heartbeat, the backlog watch and the start-up
task each run for the gateway's whole life (the start-up task until Redis was reached).
One that ends otherwise — an exception, or a return it should never make — leaves a
gateway that looks alive but no longer delivers. So its end is logged at once (with the
traceback), ``/readyz`` answers 503 naming the task, new sockets are refused, and
:attr:`Supervisor.failed` is set: ``serve()`` then drains the gateway (sockets closed with
1012, their disconnect events written while the batcher lives) and the process exits with
status 1, for its orchestrator to start a fresh one. The task is not restarted in place: the
state it held (read positions, queued writes) is suspect, and a bug that killed it once
would kill it again.

A Redis that can never serve wsq (:class:`RedisUnusable`: a cluster node, a replica, a wrong
password) ends the start-up task the same way, logged as one line without a traceback.
"""

from __future__ import annotations

import asyncio

from wsq_gateway.broker.preflight import RedisUnusable
from wsq_gateway.logs import GATEWAY, get_logger

log = get_logger(GATEWAY)


class Supervisor:
    def __init__(self) -> None:
        self.failed = asyncio.Event()  # set when a watched task ended unexpectedly
        self.failed_task: str | None = None  # the first such task's name
        self.reason: str | None = None  # and why, in a few words
        self._stopping = False

    def watch(self, task: asyncio.Task[None], *, finishes: bool = False) -> asyncio.Task[None]:
        """Watch ``task``; ``finishes``: it may return (the start-up task), else only a shutdown
        may end it."""
        task.add_done_callback(lambda done: self._ended(done, finishes))
        return task

    def stopping(self) -> None:
        """The gateway shuts down: the tasks end on purpose from now on."""
        self._stopping = True

    def _ended(self, task: asyncio.Task[None], finishes: bool) -> None:
        if task.cancelled():
            return
        error = task.exception()
        name = task.get_name()
        if error is None and (finishes or self._stopping):
            return
        if isinstance(error, RedisUnusable):
            log.error(f"cannot use this Redis: {error}", task=name)
            reason = f"redis unusable: {error}"
        elif error is None:
            log.error("a background task returned, which it never should: stopping the gateway", task=name)
            reason = "returned"
        else:
            log.error("a background task died: stopping the gateway", task=name, exc_info=error)
            reason = f"{type(error).__name__}: {error}"
        if self._stopping or self.failed_task is not None:
            return  # logged; the gateway is already on its way out
        self.failed_task, self.reason = name, reason
        self.failed.set()
