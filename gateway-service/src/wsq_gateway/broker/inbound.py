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

from redis.exceptions import RedisError

from wsq_gateway.broker.batcher import RedisBatcher, Write
from wsq_gateway.broker.consumers import Consumers
from wsq_gateway.broker.indexes import Indexes
from wsq_gateway.broker.peers import Peers
from wsq_gateway.broker.registry import (
    CONNECTION_GONE,
    REGISTERED,
    forget_command,
    forgotten_intents,
    intend_command,
    register_command,
    set_user_command,
)
from wsq_gateway.connection import Connection
from wsq_gateway.errors import BrokerUnavailable
from wsq_gateway.logs import BROKER, get_logger
from wsq_protocol.cluster import REDIS_FAILURES, AsyncClient
from wsq_protocol.events import EventType, event_fields
from wsq_protocol.keys import Keys
from wsq_protocol.membership import Intent, new_token, reserve
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
        redis: AsyncClient,
        keys: Keys,
        node_id: str,
        *,
        max_queued: int,
        max_backlog: int,
        max_per_user: int = 0,
        worker_timeout_s: float = 0.0,
        stall_after_s: float = 0.0,
    ) -> None:
        self._batcher = batcher
        self._redis = redis
        self._keys = keys
        self._node = node_id
        self._inbound_stream = keys.inbound_stream_of(node_id)
        self.indexes = Indexes(redis, keys, node_id)
        self.peers: Peers | None = None  # writes in other gateways' slots (session resume)
        self._max_queued = max_queued
        self._max_backlog = max_backlog
        self._max_per_user = max_per_user
        self.backlog = 0  # events in the inbound stream, as last measured
        self.consumers = Consumers(
            redis, self._inbound_stream, timeout_s=worker_timeout_s, stall_after_s=stall_after_s
        )

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
        token = ""
        if conn.user_id is not None:
            token = new_token()
            if not await self._reserve(Intent("u", conn.id, token, conn.user_id)):
                return False
        command = register_command(
            self._keys, conn.id, self._node, conn.since_ms, conn.addr, conn.user_id, token, event
        )
        try:
            (registered,) = await self._batcher.submit_and_wait(command)
        except BrokerUnavailable:
            if conn.user_id is not None:  # it may have run or not: the reservation settles either way
                self.indexes.changed([Intent("u", conn.id, token, conn.user_id)])
            raise
        if registered != REGISTERED:
            assert conn.user_id is not None
            self.indexes.changed([Intent("u", conn.id, token, conn.user_id)])
            raise BrokerUnavailable("the connection's reservation in its user's set was lost: try again")
        return True

    async def set_user(self, conn: Connection, previous: str | None) -> bool:
        """Record the user id a worker gave the connection (the connect hook); False (nothing
        written) when that user already holds ``max_per_user`` connections."""
        assert conn.user_id is not None
        intent = Intent("u", conn.id, new_token(), conn.user_id)
        if not await self._reserve(intent):
            return False
        command = set_user_command(self._keys, conn.id, conn.user_id, previous, intent.token)
        try:
            (recorded,) = await self._batcher.submit_and_wait(command)
        except BrokerUnavailable:
            self.indexes.changed([intent])
            raise
        if isinstance(recorded, list):  # recorded, and the previous user's set is to be left
            self.indexes.changed([Intent.parse(member) for member in recorded[1:]])
        elif recorded == CONNECTION_GONE:  # reaped meanwhile: it stays forgotten
            self.indexes.changed([intent])
        elif recorded != REGISTERED:
            self.indexes.changed([intent])
            raise BrokerUnavailable("the connection's reservation in its user's set was lost: try again")
        return True

    async def _reserve(self, intent: Intent) -> bool:
        """Reserve the connection's place in its user's set (an intent first, in this node's
        shard, then the set, in the user's slot, within the limit). False when the user is full
        (its intent is settled behind). Raise BrokerUnavailable on failure."""
        await self._batcher.submit_and_wait(intend_command(self._keys, self._node, [intent]))
        try:
            reserved = await reserve(self._redis, self._keys, intent, self._max_per_user)
        except REDIS_FAILURES as exc:
            self.indexes.changed([intent])
            raise BrokerUnavailable(str(exc)) from exc
        if not reserved:
            self.indexes.removed([intent])
        return reserved

    def reregister(self, conns: list[Connection]) -> None:
        """Write the registry entries of live connections again (Redis lost its data), then
        their users' and groups' sets (intents, made by ``indexes``)."""
        keys = self._keys
        token = new_token()
        for conn in conns:
            info = {"node": self._node, "since": str(conn.since_ms), "addr": conn.addr}
            intents = [Intent("g", conn.id, token, group) for group in sorted(conn.groups or ())]
            if conn.user_id is not None:
                info["user_id"] = conn.user_id
                intents.append(Intent("u", conn.id, token, conn.user_id))
            commands: list[tuple[Any, ...]] = [
                ("HSET", keys.connection(conn.id), *_flatten(info)),
                ("SADD", keys.node_connections(self._node), conn.id),
            ]
            if conn.groups:
                commands.append(("SADD", keys.connection_groups(conn.id), *sorted(conn.groups)))
            if intents:
                commands.append(intend_command(keys, self._node, intents))
            self._batcher.submit(Write(commands, durable=True, on_reply=self._settle_later(intents)))

    def _settle_later(self, intents: list[Intent]) -> Callable[[list[Any]], None]:
        return lambda _replies: self.indexes.changed(intents) if intents else None

    def disconnected(self, conn: Connection, close_code: int) -> None:
        """Forget the connection and emit its disconnect event (retried until Redis takes it);
        its user's and groups' sets follow (``indexes``)."""

        def on_reply(replies: list[Any]) -> None:
            intents = forgotten_intents(replies[0])
            if intents:
                self.indexes.removed(intents)

        command = forget_command(self._keys, conn.id, close_code, new_token())
        self._batcher.submit(Write((command,), durable=True, on_reply=on_reply))

    def message(
        self,
        conn: Connection,
        frame: bytes,
        on_rejected: OnRejected,
        on_ran: Callable[[list[Any]], None] | None = None,
    ) -> bool:
        """Queue a validated client frame; False when too many are already waiting. ``on_ran``
        gets the reply of its ``XADD`` (its entry id) once Redis ran it."""
        if self._batcher.queued >= self._max_queued or self.backlog >= self._max_backlog:
            return False
        if conn.home is not None:
            return self._guest_message(conn, frame, on_rejected)
        command = self._message_command(conn, self._inbound_stream, frame)
        self._batcher.submit(Write((command,), on_error=on_rejected, on_ran=on_ran))
        return True

    def _message_command(self, conn: Connection, stream: str, frame: bytes) -> bytes:
        """The ``XADD`` of ``frame``'s message event to ``stream``, packed; the fields every
        message of the connection shares are packed once (``conn.message_head``)."""
        head = conn.message_head
        if head is None:
            fields = self._event("message", conn, 0)
            del fields["ts"]
            xadd = ("XADD", stream, "*", *_flatten(fields))
            head = conn.message_head = CommandTemplate((*xadd, "ts"), 3)
        return head.pack(b"%d" % now_ms(), b"frame", frame)

    def _guest_message(self, conn: Connection, frame: bytes, on_rejected: OnRejected) -> bool:
        """A frame of a socket held here for a session homed on ``conn.home`` (sessions.py):
        appended to the home's inbound partition, so the worker's reply (to the home's node
        stream) and its acknowledgement are in one slot."""
        peers = self.peers
        if peers is None or peers.pending >= self._max_queued:
            return False
        assert conn.home is not None
        stream = self._keys.inbound_stream_of(conn.home)
        command = self._message_command(conn, stream, frame)
        peers.write(stream, command, lambda: on_rejected(BrokerUnavailable("redis did not take the frame")))
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
