"""What publishers and workers tell the gateway: frames to deliver and sockets to close.

One task reads this node's stream and the broadcast stream with ``XREAD BLOCK``: in one read
on a single Redis, in two (a reader each, on a connection each) on a Redis Cluster, where the
two streams live in different slots. It remembers the last entry it read in each, so when its
Redis connection drops it resumes where it stopped and loses nothing; entries it has handled
are trimmed from the node stream, at most every ``TRIM_INTERVAL_S`` (one ``XTRIM`` per read
would double the gateway's Redis round trips at light load).

Publishers in any language write these commands, so none is trusted: a command the gateway
can't run, or a ``send`` whose frame is not a server frame (checked once per command, however
many recipients it has: one JSON parse), is dropped, counted in
``wsq_gateway_commands_dropped_total{reason}`` and logged at most once per reason every
``DROP_LOG_INTERVAL_S`` (a flood of bad commands is not a flood of log lines).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from wsq_gateway.broker.batcher import RedisBatcher, Write
from wsq_gateway.broker.registry import ensure_stream_command
from wsq_gateway.connection import Connection, ConnectionIndex
from wsq_gateway.logs import BROKER, get_logger
from wsq_gateway.metrics import GatewayMetrics
from wsq_gateway.wire import wire_text_frame
from wsq_protocol.batching import Backoff
from wsq_protocol.cluster import AsyncClient
from wsq_protocol.commands import Command, connection_send, decode_command
from wsq_protocol.errors import CommandError
from wsq_protocol.frames import server_frame_problem
from wsq_protocol.keys import Keys
from wsq_protocol.pipe import RedisPipe

if TYPE_CHECKING:
    from wsq_gateway.sessions import Sessions

log = get_logger(BROKER)

# How a disconnect command closes a connection (Gateway.close_connection: wherever its socket is).
Close = Callable[[Connection, int, str], Coroutine[Any, Any, None]]

READ_COUNT = 1000
BLOCK_MS = 5000
TRIM_INTERVAL_S = 0.25
DROP_LOG_INTERVAL_S = 10.0


class DropLog:
    """Logs dropped commands: the first of a reason at once, then at most one line per reason
    every ``interval_s``, carrying how many were dropped for it since the last line."""

    __slots__ = ("_interval", "_last", "_unlogged")

    def __init__(self, interval_s: float = DROP_LOG_INTERVAL_S) -> None:
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def drop(self, reason: str, error: str) -> bool:
        """Note one dropped command; True when it was logged."""
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return False
        self._last[reason] = now
        log.warning(
            "dropped a command",
            reason=reason,
            error=error,
            dropped_since_last_log=self._unlogged.pop(reason, 0) + 1,
            next_log_in_s=self._interval,
        )
        return True


class Outbound:
    def __init__(
        self,
        redis: AsyncClient,
        batcher: RedisBatcher,
        keys: Keys,
        node_id: str,
        connections: ConnectionIndex,
        max_pending_bytes: int,
        *,
        split_reads: bool = False,
        metrics: GatewayMetrics | None = None,
        sessions: Sessions,
        close: Close,
    ) -> None:
        self._metrics = metrics
        self._sessions = sessions
        self._close = close
        self._redis = redis
        self._batcher = batcher
        self._connections = connections
        self._max_pending = max_pending_bytes
        self._node_stream = keys.node_stream(node_id)
        self._broadcast_stream = keys.broadcast_stream
        self._positions: dict[str, str] = {}
        self._trim_due: float | None = None  # when the node stream's handled entries go
        self._closing: set[asyncio.Task[None]] = set()
        self._corked: dict[Connection, list[bytes]] = {}  # frames for one connection, in order
        self._drop_log = DropLog()
        # Each XREAD BLOCK on a connection of its own. The node stream's, reconnecting first after
        # a Redis restart, makes this gateway's stream again if Redis lost it (writers never
        # create it).
        ensure = ensure_stream_command(keys, node_id)
        streams = [self._node_stream, self._broadcast_stream]
        groups = [[stream] for stream in streams] if split_reads else [streams]
        self._readers = [
            (RedisPipe(redis, key=group[0], on_connect=ensure if self._node_stream in group else None), group)
            for group in groups
        ]

    async def start_positions(self) -> None:
        """Read from here on: everything new in the node stream, the broadcast from now."""
        latest: Any = await self._redis.xrevrange(self._broadcast_stream, count=1)
        self._positions = {
            self._node_stream: "0-0",
            self._broadcast_stream: latest[0][0].decode() if latest else "0-0",
        }

    async def run(self) -> None:
        try:
            await asyncio.gather(
                *(self._read_until_cancelled(pipe, streams) for pipe, streams in self._readers)
            )
        finally:
            for pipe, _ in self._readers:
                await pipe.aclose()

    async def _read_until_cancelled(self, pipe: RedisPipe, streams: list[str]) -> None:
        backoff = Backoff(base=0.05, cap=2.0)  # between failed reads
        loop = asyncio.get_running_loop()
        trims = self._node_stream in streams
        while True:
            block_ms = BLOCK_MS
            if trims and self._trim_due is not None:
                wait_s = self._trim_due - loop.time()
                if wait_s <= 0:
                    self._trim()
                else:  # idle or not, the trim is not put off beyond its time
                    block_ms = max(1, min(BLOCK_MS, int(wait_s * 1000)))
            positions = [self._positions[stream] for stream in streams]
            read = ("XREAD", "COUNT", READ_COUNT, "BLOCK", block_ms, "STREAMS", *streams, *positions)
            try:
                (response,) = await pipe.execute([read])
                if isinstance(response, RedisError):  # an error reply (WRONGTYPE...)
                    raise response
            except (RedisError, OSError) as exc:
                delay = backoff.next()
                log.warning("reading commands from redis failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if not response:  # None: nothing new within BLOCK_MS
                continue
            # A map in RESP3 (redis-py 8's default), a list of [stream, entries] in RESP2.
            for raw_stream, entries in response.items() if isinstance(response, dict) else response:
                stream = raw_stream.decode()
                sends = 0
                for _entry_id, flat_fields in entries:
                    send = connection_send(flat_fields)
                    if send is not None:  # the usual case, a reply: no field map to build
                        problem = server_frame_problem(send[1])
                        if problem is None:
                            sends += 1
                            self._cork(*send)
                        else:
                            self._drop(*problem)
                        continue
                    pairs = iter(flat_fields)
                    self._handle(dict(zip(pairs, pairs, strict=True)))
                self._uncork()
                if sends and self._metrics is not None:
                    self._metrics.sends.inc(sends)
                self._positions[stream] = entries[-1][0].decode()
                if stream == self._node_stream and self._trim_due is None:
                    self._trim_due = loop.time() + TRIM_INTERVAL_S

    def _trim(self) -> None:
        """Done with everything up to the last entry read: trim it (the last one stays)."""
        self._trim_due = None
        trim = ("XTRIM", self._node_stream, "MINID", self._positions[self._node_stream])
        self._batcher.submit(Write((trim,)))

    def _handle(self, fields: dict[bytes, bytes]) -> None:
        try:
            command = decode_command(fields)
        except CommandError as exc:
            self._drop("malformed", str(exc))
            return
        if command.type in ("send", "relay"):  # checked once, whatever the number of recipients
            assert command.frame is not None
            problem = server_frame_problem(command.frame, stamped=command.type == "relay")
            if problem is not None:
                self._drop(*problem)
                return
        if self._metrics is not None:
            self._metrics.commands[command.type].inc()
        if command.type == "relay" or (command.type == "send" and command.target == "connection"):
            assert command.to is not None
            assert command.frame is not None
            self._cork(command.to, command.frame)
            return
        self._uncork()  # what came before this command is written before it acts
        if command.type == "send":
            assert command.frame is not None
            wire = wire_text_frame(command.frame)  # encoded once, whatever the number of recipients
            targets = self._targets(command)
            for conn in targets:
                conn.deliver(command.frame, self._max_pending, wire)
            if self._metrics is not None:
                self._metrics.frames_out.inc(len(targets))
        elif command.type == "disconnect":
            for conn in self._targets(command):
                task = asyncio.create_task(self._close(conn, command.code, command.reason))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        elif command.type in ("accept", "refuse"):
            assert command.to is not None
            waiting = self._connections.get(command.to)
            if waiting is not None and waiting.answer is not None and not waiting.answer.done():
                waiting.answer.set_result(command)
        elif command.type in ("resume", "resumed", "detach"):  # between gateways: sessions.py
            if not self._sessions.enabled:
                self._drop("malformed", f"{command.type}: session resume is off on this gateway")
            elif command.type == "resume":
                self._sessions.on_resume(command)
            elif command.type == "resumed":
                self._sessions.on_resumed(command)
            else:
                self._sessions.on_detach(command)
        else:  # join / leave: the registry in Redis is already updated by the sender
            assert command.to is not None
            assert command.group is not None
            member = self._connections.get(command.to)
            if member is None:
                return
            if command.type == "join":
                self._connections.join(member, command.group)
            else:
                self._connections.leave(member, command.group)

    def _drop(self, reason: str, error: str) -> None:
        """A command not run: counted, and logged unless its reason was logged just now."""
        if self._metrics is not None:
            self._metrics.commands["malformed"].inc()
            self._metrics.commands_dropped[reason].inc()
        self._drop_log.drop(reason, error)

    def _cork(self, to: str, frame: bytes) -> None:
        """Replies and pushes to one connection wait until the end of the read (or the next
        other command), so the frames a connection gets in one read take one write."""
        conn = self._connection(to)
        if conn is not None:
            self._corked.setdefault(conn, []).append(frame)

    def _uncork(self) -> None:
        """Write the frames held for single connections, one write per connection."""
        if self._corked:
            count = 0
            for conn, frames in self._corked.items():
                conn.deliver_all(frames, self._max_pending)
                count += len(frames)
            self._corked.clear()
            if self._metrics is not None:
                self._metrics.frames_out.inc(count)

    def _targets(self, command: Command) -> list[Connection]:
        if command.target == "connection":
            assert command.to is not None
            conn = self._connection(command.to)
            return [] if conn is None else [conn]
        if command.target == "user":
            assert command.to is not None
            return self._connections.of_user(command.to)
        if command.target == "group":
            assert command.to is not None
            return self._connections.of_group(command.to, command.exclude)
        return self._connections.all()

    def _connection(self, connection_id: str) -> Connection | None:
        conn = self._connections.get(connection_id)
        if conn is None:  # gone meanwhile (or never here): the command is dropped
            log.debug("command for an unknown connection", connection_id=connection_id)
        return conn
