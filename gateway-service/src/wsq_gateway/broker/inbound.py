"""What the gateway tells the workers: connections coming and going, and client frames.

Every event goes to the inbound stream through the batcher; the gateway never waits for a
worker. A connection is also recorded in the Redis registry (its hash, its user's set and
this node's set) so that any process can find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wsq_gateway.broker.batcher import RedisBatcher, Write
from wsq_gateway.broker.consumers import Consumers
from wsq_gateway.broker.registry import (
    MAX_STALE_RETRIES,
    REGISTERED,
    forget_command,
    found,
    register_command,
    set_user_command,
)
from wsq_gateway.connection import Connection
from wsq_gateway.errors import BrokerUnavailable
from wsq_gateway.logs import BROKER, get_logger
from wsq_protocol.events import EventType, event_fields
from wsq_protocol.keys import Keys
from wsq_protocol.pipe import CommandTemplate

log = get_logger(BROKER)

BACKLOG_POLL_S = 0.2
OnRejected = Callable[[BrokerUnavailable], None]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Inbound:
    def __init__(
        self,
        batcher: RedisBatcher,
        redis: aioredis.Redis,
        keys: Keys,
        node_id: str,
        *,
        max_queued: int,
        max_backlog: int,
        max_per_user: int = 0,
        worker_timeout_s: float = 0.0,
    ) -> None:
        self._batcher = batcher
        self._redis = redis
        self._keys = keys
        self._node = node_id
        self._max_queued = max_queued
        self._max_backlog = max_backlog
        self._max_per_user = max_per_user
        self.backlog = 0  # events in the inbound stream, as last measured
        self.consumers = Consumers(redis, keys, timeout_s=worker_timeout_s)

    async def watch_backlog(self) -> None:
        """Measure the inbound stream's length (it bounds message()) and its consumers (live
        workers, lag) a few times a second."""
        while True:
            # On failure keep the last measure: the batcher reports Redis failures to clients.
            with contextlib.suppress(RedisError, OSError):
                self.backlog = (await self.consumers.measure()).backlog
            await asyncio.sleep(BACKLOG_POLL_S)

    async def connected(self, conn: Connection, *, hook: bool = False, request: str | None = None) -> bool:
        """Record the connection and emit its connect event; False (nothing written) when its
        user already holds ``max_per_user`` connections. Raise BrokerUnavailable on failure.

        With ``hook`` the event asks a worker to accept or refuse the connection; ``request``
        is the upgrade request (``request_text()``) for the workers' ``on_connect``."""
        event = _flatten(self._event("connect", conn, conn.since_ms, hook=hook, request=request))
        command = register_command(
            self._keys, conn.id, self._node, conn.since_ms, conn.addr, conn.user_id, self._max_per_user, event
        )
        (registered,) = await self._batcher.submit_and_wait(command)
        return bool(registered == REGISTERED)

    async def set_user(self, conn: Connection, previous: str | None) -> bool:
        """Record the user id a worker gave the connection (the connect hook); False (nothing
        written) when that user already holds ``max_per_user`` connections."""
        assert conn.user_id is not None
        command = set_user_command(self._keys, conn.id, conn.user_id, previous, self._max_per_user)
        (recorded,) = await self._batcher.submit_and_wait(command)
        return bool(recorded == REGISTERED)

    def reregister(self, conns: list[Connection]) -> None:
        """Write the registry entries of live connections again (Redis lost its data)."""
        for conn in conns:
            commands = self._registration(conn)
            for group in conn.groups or ():
                commands.append(("SADD", self._keys.group_connections(group), conn.id))
                commands.append(("SADD", self._keys.connection_groups(conn.id), group))
            self._batcher.submit(Write(commands, durable=True))

    def _registration(self, conn: Connection) -> list[tuple[str, ...]]:
        keys = self._keys
        info = {"node": self._node, "since": str(conn.since_ms), "addr": conn.addr}
        commands: list[tuple[str, ...]] = [
            ("SADD", keys.node_connections(self._node), conn.id),
        ]
        if conn.user_id is not None:
            info["user_id"] = conn.user_id
            commands.append(("SADD", keys.user_connections(conn.user_id), conn.id))
        commands.insert(0, ("HSET", keys.connection(conn.id), *_flatten(info)))
        return commands

    def disconnected(self, conn: Connection, close_code: int) -> None:
        """Forget the connection and emit its disconnect event (retried until Redis takes it)."""
        self._forget(conn.id, close_code, self._node, conn.user_id, sorted(conn.groups or ()), 0)

    def _forget(
        self,
        connection_id: str,
        close_code: int,
        node: str,
        user_id: str | None,
        groups: list[str],
        retries: int,
    ) -> None:
        """Queue ``forget.lua`` with the keys of the user and groups the connection is believed
        to have. The gateway learns of joins from its node stream, after Redis ran them: when
        the script finds other groups (or another user), it wrote nothing, and this queues it
        again with what it found, behind the batch."""

        def on_reply(replies: list[Any]) -> None:
            now = found(replies[0])
            if now is None:
                return
            if retries and retries % MAX_STALE_RETRIES == 0:  # sent again until it runs: durable
                log.warning(
                    "the groups of a closed connection keep changing: forgetting it again",
                    connection_id=connection_id,
                    attempts=retries + 1,
                )
            self._forget(connection_id, close_code, now.node, now.user_id, list(now.groups), retries + 1)

        command = forget_command(self._keys, connection_id, close_code, node, user_id, groups)
        self._batcher.submit(Write((command,), durable=True, on_reply=on_reply))

    def message(self, conn: Connection, frame: bytes, on_rejected: OnRejected) -> bool:
        """Queue a validated client frame; False when too many are already waiting."""
        if self._batcher.queued >= self._max_queued or self.backlog >= self._max_backlog:
            return False
        head = conn.message_head
        if head is None:  # the fields every message of this connection shares, packed once
            fields = self._event("message", conn, 0)
            del fields["ts"]
            xadd = ("XADD", self._keys.inbound_stream, "*", *_flatten(fields))
            head = conn.message_head = CommandTemplate((*xadd, "ts"), 3)
        command = head.pack(b"%d" % now_ms(), b"frame", frame)
        self._batcher.submit(Write((command,), on_error=on_rejected))
        return True

    def _event(
        self, kind: EventType, conn: Connection, ts_ms: int, *, hook: bool = False, request: str | None = None
    ) -> dict[str, str]:
        return event_fields(
            kind,
            connection_id=conn.id,
            node=self._node,
            user_id=conn.user_id,
            ts_ms=ts_ms,
            addr=conn.addr,
            hook=hook,
            request=request,
        )


def _flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]
