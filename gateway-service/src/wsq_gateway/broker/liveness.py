"""Gateway liveness: this gateway's heartbeat, and the reaping of gateways that died.

Every ``heartbeat_s`` the gateway writes its heartbeat (in its shard, then its score in
``{prefix}:nodes``) and reaps every gateway whose score there is older than ``timeout_s``:
their connections are forgotten, each with exactly one disconnect event
(``protocol/lua/reap.lua``, one call per connection, which checks the dead node's heartbeat in
its shard), then their users' and groups' sets are left, the dead node's other intents are
settled, and its keys dropped. If this gateway was itself reaped
(it lost Redis for longer than the timeout), its heartbeat says so and ``on_reaped``
closes its sockets, so that the registry matches the sockets again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from wsq_gateway.broker.registry import (
    DROP_NODE,
    HEARTBEAT,
    HEARTBEAT_NEW,
    HEARTBEAT_REAPED,
    NODE_ALIVE,
    REAP,
    REAP_BATCH,
    drop_node_call,
    forgotten_intents,
    heartbeat_call,
    node_keys,
    reap_call,
)
from wsq_gateway.logs import BROKER, get_logger
from wsq_protocol.cluster import REDIS_FAILURES, AsyncClient
from wsq_protocol.ids import new_node_id
from wsq_protocol.keys import REAPED_TTL_S, Keys
from wsq_protocol.membership import Intent, new_token, redis_time_ms, settle, sweep
from wsq_protocol.scripts import run, run_many

log = get_logger(BROKER)

MAX_REAP_RUNS_PER_TICK = 100  # 50,000 connections per node and tick at most
# Away from Redis for this long (wall clock: it counts a suspended host too), a gateway takes a
# heartbeat that finds it missing for a reap whose flag has expired (see REAPED_TTL_S).
PRESUMED_REAPED_AFTER_S = REAPED_TTL_S / 2


async def pick_node_id(redis: AsyncClient, keys: Keys, timeout_s: float) -> str:
    """A new node id in the shard with the fewest live gateways (heartbeat within ``timeout_s``),
    so that gateways spread over the shards, and so over a Redis Cluster's masters."""
    now = await redis_time_ms(redis)
    live: Any = await redis.zrangebyscore(keys.nodes, now - int(timeout_s * 1000), "+inf")
    load = [0] * keys.shards
    for member in live:
        load[keys.shard_of(member.decode(errors="replace"))] += 1
    least = min(load)
    targets = {shard for shard, count in enumerate(load) if count == least}
    while keys.shard_of(node := new_node_id()) not in targets:  # about shards / len(targets) tries
        pass
    return node


class Liveness:
    def __init__(
        self,
        redis: AsyncClient,
        keys: Keys,
        node_id: str,
        *,
        heartbeat_s: float,
        timeout_s: float,
        on_reaped: Callable[[], Awaitable[None]],
        on_registry_lost: Callable[[], Awaitable[None]],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._node = node_id
        self._heartbeat_s = heartbeat_s
        self._timeout_ms = int(timeout_s * 1000)
        self._on_reaped = on_reaped
        self._on_registry_lost = on_registry_lost
        self._last_heartbeat: float | None = None  # time.time() when Redis last took one

    async def start(self) -> None:
        """Forget what a previous process with this node id left, then say we are alive."""
        left = await self._reap(self._node, force=True)
        if left:
            log.warning("forgot connections of a previous process with this node id", connections=left)
        await self._heartbeat()
        self._last_heartbeat = time.time()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self.tick()
            except REDIS_FAILURES as exc:
                log.warning("heartbeat failed", error=str(exc))
            except Exception:  # a bug, or data in Redis we can't read: the heartbeat must go on
                log.exception("heartbeat failed")

    async def tick(self) -> None:
        sent = time.time()
        state: Any = await self._heartbeat()
        if state == HEARTBEAT_NEW and self._away_since(sent) >= PRESUMED_REAPED_AFTER_S:
            # Its reaped flag may have expired meanwhile: writing its connections back would
            # revive connections whose disconnect events were written.
            log.warning("this gateway was away from Redis for long and is missing from it: presumed reaped")
            state = HEARTBEAT_REAPED
        self._last_heartbeat = time.time()
        if state == HEARTBEAT_REAPED:
            log.error("this gateway was presumed dead and its connections forgotten: closing its sockets")
            await self._on_reaped()
        elif state == HEARTBEAT_NEW:
            log.warning(
                "this gateway was missing from Redis (restarted empty?): registering its connections again"
            )
            await self._on_registry_lost()
        cutoff = f"({await redis_time_ms(self._redis) - self._timeout_ms}"
        stale: Any = await self._redis.zrangebyscore(self._keys.nodes, "-inf", cutoff)
        for raw in stale:
            try:
                node = raw.decode()
            except UnicodeDecodeError:  # not a gateway's: node ids are ASCII (WSQ_NODE_ID)
                await self._redis.zrem(self._keys.nodes, raw)
                log.warning("removed a member of the set of gateways that is not a node id", member=repr(raw))
                continue
            if node != self._node:
                forgotten = await self._reap(node, force=False)
                if forgotten:
                    log.warning("reaped a dead gateway", dead_node=node, connections=forgotten)

    def _away_since(self, now: float) -> float:
        """Seconds from the last heartbeat Redis took to ``now`` (at most the time between the
        two writes in Redis: the last one was written before its reply came)."""
        return 0.0 if self._last_heartbeat is None else now - self._last_heartbeat

    async def goodbye(self) -> None:
        """Leave the set of live gateways (after this gateway's sockets were forgotten)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(self._keys.nodes, self._node)
        pipe.delete(*node_keys(self._keys, self._node))
        await pipe.execute()

    async def _heartbeat(self) -> Any:
        """heartbeat.lua in this node's shard, then the same time as its score in
        ``{prefix}:nodes`` (another slot), where reapers look."""
        script_keys, args = heartbeat_call(self._keys, self._node)
        state, now = await run(self._redis, HEARTBEAT, script_keys, args)
        await self._redis.zadd(self._keys.nodes, {self._node: int(now)})
        return int(state)

    async def _reap(self, node: str, *, force: bool) -> int:
        """Forget the connections of ``node`` (while its heartbeat is stale, unless ``force``),
        then leave their users' and groups' sets, settle its other intents and, once nothing
        is left, remove the node. The number of connections forgotten."""
        total = 0
        members = self._keys.node_connections(node)
        for _ in range(MAX_REAP_RUNS_PER_TICK):
            raw: Any = await self._redis.srandmember(members, REAP_BATCH)
            if not raw:
                await sweep(self._redis, self._keys, node, older_than_ms=0)
                if not force:
                    script_keys, args = drop_node_call(self._keys, node, self._timeout_ms)
                    if await run(self._redis, DROP_NODE, script_keys, args):
                        await self._redis.zrem(self._keys.nodes, node)
                break
            forgotten = await self._reap_connections(node, [cid.decode() for cid in raw], force=force)
            if forgotten is None:  # the node's heartbeat is fresh: it is alive
                break
            total += forgotten
        return total

    async def _reap_connections(self, node: str, connection_ids: list[str], *, force: bool) -> int | None:
        """Run ``reap.lua`` for each connection, then leave their users' and groups' sets. None
        when the node is alive."""
        token = new_token()
        calls = [
            (REAP, *reap_call(self._keys, node, self._timeout_ms, cid, token, force=force))
            for cid in connection_ids
        ]
        replies = await run_many(self._redis, calls)
        forgotten, intents = 0, list[Intent]()
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            if reply == NODE_ALIVE:
                return None
            gone = forgotten_intents(reply)
            if gone is not None:
                forgotten += 1
                intents += gone
        await settle(self._redis, self._keys, node, intents, holds=False)
        return forgotten
