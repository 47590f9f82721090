"""This gateway's share of keeping users' and groups' sets in line with the registry.

The scripts that change a connection's memberships (``forget.lua``, ``set_user.lua``, the
re-registration after Redis lost its data) record intents in this node's shard; ``Indexes``
then writes each user's or group's set, in its own slot, and settles the intents
(``wsq_protocol.membership``). It runs as one supervised background task: intents queue up while
Redis is away and are made once it answers. Every ``SWEEP_EVERY_S`` it also settles this node's
intents older than ``SWEEP_AGE_MS``: those of a publisher that died between the steps of a
``join``, and any this gateway lost track of (a batch in doubt that had run).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from wsq_gateway.logs import BROKER, get_logger
from wsq_protocol.batching import Backoff
from wsq_protocol.cluster import REDIS_FAILURES
from wsq_protocol.keys import Keys
from wsq_protocol.membership import Intent, settle, sweep

log = get_logger(BROKER)

SWEEP_EVERY_S = 30.0
MAX_SETTLE = 500  # intents settled in one round


class Indexes:
    def __init__(self, redis: Any, keys: Keys, node_id: str) -> None:
        self._redis = redis
        self._keys = keys
        self._node = node_id
        self._gone: list[Intent] = []  # removals: the memberships no longer hold
        self._unknown: list[Intent] = []  # what holds is read first
        self._wake = asyncio.Event()

    @property
    def pending(self) -> int:
        """Intents queued, not settled yet."""
        return len(self._gone) + len(self._unknown)

    def removed(self, intents: Iterable[Intent]) -> None:
        """Memberships of connections that were forgotten: leave their sets."""
        self._gone.extend(intents)
        self._wake.set()

    def changed(self, intents: Iterable[Intent]) -> None:
        """Memberships that changed (or were written again): make their sets say what holds."""
        self._unknown.extend(intents)
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(base=0.1, cap=5.0)
        next_sweep = loop.time() + SWEEP_EVERY_S
        task = asyncio.current_task()
        while True:
            # redis-py can swallow a cancellation that arrives during a command (it disconnects
            # and goes on): a shutdown's cancel must still stop this loop.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            if not self.pending:
                self._wake.clear()
                timeout = max(next_sweep - loop.time(), 0.0)
                with contextlib.suppress(TimeoutError):  # the sweep is due
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            try:
                if self.pending:
                    await self._settle_some()
                if loop.time() >= next_sweep:
                    settled = await sweep(self._redis, self._keys, self._node)
                    if settled:
                        log.info("settled index intents left behind", intents=settled)
                    next_sweep = loop.time() + SWEEP_EVERY_S
            except REDIS_FAILURES as exc:
                delay = backoff.next()
                log.warning("could not update users' and groups' sets", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()

    async def _settle_some(self) -> None:
        gone, self._gone = self._gone[:MAX_SETTLE], self._gone[MAX_SETTLE:]
        try:
            if gone:
                gone = await settle(self._redis, self._keys, self._node, gone, holds=False)
        finally:
            self._unknown.extend(gone)  # left unsettled, or not sent: read what holds next time
        unknown, self._unknown = self._unknown[:MAX_SETTLE], self._unknown[MAX_SETTLE:]
        try:
            unknown = await settle(self._redis, self._keys, self._node, unknown)
        except BaseException:
            self._unknown[:0] = unknown
            raise
        if unknown:
            log.warning("memberships kept changing: left for the sweep", intents=len(unknown))
