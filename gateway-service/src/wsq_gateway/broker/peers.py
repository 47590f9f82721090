"""Writes in other gateways' slots (session resume): commands to their node streams, and the
events of sockets held here for sessions homed there.

A resumed session is served by two gateways: its home (the node of its connection id, which
numbers its frames) and the guest holding the new socket. They talk through each other's
node streams (``resume``, ``resumed``, ``relay``, ``detach``: protocol/README.md, "Session
resume"), and the guest appends its client's frames to the home's inbound partition, so a
worker's reply and its acknowledgement stay in one slot. None of this fits the batcher, whose
transactions stay in this gateway's own slot: one task writes it, per stream in the order
queued, in one pipeline per round, on a pipe bound to that stream's slot (a Redis Cluster's
master of it). A gateway's stream that no longer exists (it stopped, or was reaped) takes
nothing (``NOMKSTREAM``): the command's ``on_failed`` says so. A round Redis refuses is
dropped, logged and told to each write's ``on_failed``: a relayed frame lost so shows as a
gap in ``seq``, and a client resumes to fill it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping

from redis.exceptions import RedisError

from wsq_gateway.logs import BROKER, get_logger
from wsq_protocol.cluster import AsyncClient
from wsq_protocol.codes import NODE_STREAM_MAXLEN
from wsq_protocol.keys import Keys
from wsq_protocol.pipe import RedisPipe

log = get_logger(BROKER)

__all__ = ["Peers"]

MAX_ROUND = 500  # commands to one gateway per pipeline

Fields = Mapping[str, str | bytes]
OnFailed = Callable[[], None] | None
Command = tuple[str | bytes | int, ...] | bytes  # bytes: already packed (CommandTemplate)


class Peers:
    """Writes to streams in other gateways' slots, per stream in the order queued."""

    def __init__(self, redis: AsyncClient, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._queues: dict[str, deque[tuple[Command, OnFailed]]] = {}
        self._pipes: dict[str, RedisPipe] = {}
        self._wake = asyncio.Event()
        self.pending = 0  # writes queued, not written yet

    def send(self, node: str, fields: Fields, on_failed: OnFailed = None) -> None:
        """Queue the command ``fields`` for ``node``'s stream; ``on_failed`` runs if that stream
        is gone or the write failed."""
        stream = self._keys.node_stream(node)
        head = ("XADD", stream, "NOMKSTREAM", "MAXLEN", "~", NODE_STREAM_MAXLEN, "*")
        self.write(stream, (*head, *[item for pair in fields.items() for item in pair]), on_failed)

    def write(self, key: str, command: Command, on_failed: OnFailed = None) -> None:
        """Queue ``command``, whose key is ``key``; ``on_failed`` runs if it failed (or
        answered nil: a ``NOMKSTREAM`` append to a stream that is gone)."""
        self._queues.setdefault(key, deque()).append((command, on_failed))
        self.pending += 1
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queues:
                    for key in list(self._queues):
                        await self._write_round(key)
        finally:
            for pipe in self._pipes.values():
                await pipe.aclose()

    async def _write_round(self, key: str) -> None:
        queue = self._queues[key]
        batch = [queue.popleft() for _ in range(min(len(queue), MAX_ROUND))]
        if not queue:
            del self._queues[key]
        self.pending -= len(batch)
        pipe = self._pipes.get(key)
        if pipe is None:
            pipe = self._pipes[key] = RedisPipe(self._redis, key=key)
        try:
            replies = await pipe.execute([command for command, _ in batch])
        except (RedisError, OSError) as exc:
            log.warning(
                "could not write to another gateway's slot", key=key, writes=len(batch), error=str(exc)
            )
            replies = [None] * len(batch)
        for (_, on_failed), reply in zip(batch, replies, strict=True):
            if (reply is None or isinstance(reply, RedisError)) and on_failed is not None:
                on_failed()
