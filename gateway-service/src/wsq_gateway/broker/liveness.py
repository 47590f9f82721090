"""Gateway liveness: this gateway's heartbeat, and the reaping of gateways that died.

Every ``heartbeat_s`` the gateway writes its heartbeat and reaps every gateway whose
heartbeat is older than ``timeout_s``: their connections are forgotten, each with exactly
one disconnect event (``protocol/lua/reap.lua``, one call per connection: the reaper reads
each connection's user and groups first, and passes their keys). If this gateway was itself reaped
(it lost Redis for longer than the timeout), its heartbeat says so and ``on_reaped``
closes its sockets, so that the registry matches the sockets again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wsq_gateway.broker.registry import (
    DROP_NODE,
    HEARTBEAT,
    HEARTBEAT_NEW,
    HEARTBEAT_REAPED,
    MAX_STALE_RETRIES,
    NODE_ALIVE,
    REAP,
    REAP_BATCH,
    REAPED,
    Found,
    drop_node_call,
    found,
    heartbeat_call,
    read_registered,
    reap_call,
)
from wsq_gateway.logs import BROKER, get_logger
from wsq_protocol.keys import REAPED_TTL_S, Keys

log = get_logger(BROKER)

MAX_REAP_RUNS_PER_TICK = 100  # 50,000 connections per node and tick at most
# Away from Redis for this long (wall clock: it counts a suspended host too), a gateway takes a
# heartbeat that finds it missing for a reap whose flag has expired (see REAPED_TTL_S).
PRESUMED_REAPED_AFTER_S = REAPED_TTL_S / 2


class Liveness:
    def __init__(
        self,
        redis: aioredis.Redis,
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
        # EVALSHA, loading the script again when Redis answers NOSCRIPT (redis-py's Script).
        self._heartbeat_script = redis.register_script(HEARTBEAT.body)
        self._reap_script = redis.register_script(REAP.body)
        self._drop_node_script = redis.register_script(DROP_NODE.body)
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
            except (RedisError, OSError) as exc:
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
        cutoff = f"({await self._redis_time_ms() - self._timeout_ms}"
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
        pipe.delete(
            self._keys.node_stream(self._node),
            self._keys.node_reaped(self._node),
            self._keys.node_sequence(self._node),
        )
        await pipe.execute()

    async def _heartbeat(self) -> Any:
        script_keys, args = heartbeat_call(self._keys, self._node)
        return await self._heartbeat_script(keys=script_keys, args=args)

    async def _reap(self, node: str, *, force: bool) -> int:
        """Forget the connections of ``node`` (while its heartbeat is stale, unless ``force``),
        then, once none is left, remove the node. The number of connections forgotten."""
        total = 0
        members = self._keys.node_connections(node)
        for _ in range(MAX_REAP_RUNS_PER_TICK):
            raw: Any = await self._redis.srandmember(members, REAP_BATCH)
            if not raw:
                if not force:
                    script_keys, args = drop_node_call(self._keys, node, self._timeout_ms)
                    await self._drop_node_script(keys=script_keys, args=args)
                break
            forgotten = await self._reap_connections(node, [cid.decode() for cid in raw], force=force)
            if forgotten is None:  # the node's heartbeat is fresh: it is alive
                break
            total += forgotten
        return total

    async def _reap_connections(self, node: str, connection_ids: list[str], *, force: bool) -> int | None:
        """Run ``reap.lua`` for each connection, with the user and groups read just before
        (and again with what it found, while that was stale). None when the node is alive."""
        registered = await read_registered(self._redis, self._keys, connection_ids)
        # The dead node's own: reap.lua checks that each id is registered to it.
        todo = {
            cid: Found(node, known.user_id, known.groups)
            for cid, known in zip(connection_ids, registered, strict=True)
        }
        forgotten = 0
        for _ in range(MAX_STALE_RETRIES + 1):
            pipe = self._redis.pipeline(transaction=False)
            for cid, known in todo.items():
                script_keys, args = reap_call(
                    self._keys, node, self._timeout_ms, cid, known.user_id, known.groups, force=force
                )
                await self._reap_script(keys=script_keys, args=args, client=pipe)
            replies = await pipe.execute()
            stale: dict[str, Found] = {}
            for (cid, _), reply in zip(todo.items(), replies, strict=True):
                now = found(reply)
                if now is not None:
                    stale[cid] = now
                elif reply == NODE_ALIVE:
                    return None
                elif reply == REAPED:
                    forgotten += 1
            if not stale:
                return forgotten
            todo = stale
        log.error(
            "the groups of connections of a dead gateway kept changing: left for the next reap",
            dead_node=node,
            connections=len(todo),
        )
        return forgotten

    async def _redis_time_ms(self) -> int:
        seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000
