"""The sockets this gateway holds: one :class:`Connection` each, indexed by id and user.

Writing to a socket never blocks the caller: a frame goes straight to the socket while
its transport buffer has room, otherwise into the connection's outbox, which a short-lived
task drains. The outbox is bounded in bytes; a client that reads too slowly to keep it
under ``max_pending_bytes`` is closed with 3008, and nobody else waits for it.

What to do with each frame (write, queue, drain, close, drop) is decided without I/O by
:class:`~wsq_gateway.session.Session`, which :class:`Connection` extends with the socket.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

from aiohttp import WSMsgType, web

from wsq_gateway.logs import CONNECTIONS, get_logger
from wsq_gateway.session import DRAIN, QUEUED, SLOW_CONSUMER, Session
from wsq_gateway.wire import wire_text_frame
from wsq_protocol.commands import Command

if TYPE_CHECKING:
    from wsq_gateway.replay import ReplayBuffer
    from wsq_protocol.pipe import CommandTemplate


class Relay(Protocol):
    """Where a session's frames go while its socket is on another gateway (``sessions.py``)."""

    node: str  # that gateway
    epoch: int  # the number of the socket it holds

    def frame(self, numbered: bytes) -> None: ...


log = get_logger(CONNECTIONS)

CLOSE_TIMEOUT_S = 2.0  # how long closing a socket may take: sending the close frame, then its reply
SLOW_CONSUMER_REASON = "client reads too slowly"


class Connection(Session):
    """A :class:`Session` on an aiohttp socket: executes its decisions (the I/O shell)."""

    __slots__ = (
        "_drainer",
        "addr",
        "answer",
        "epoch",
        "expiry",
        "groups",
        "history_reads",
        "home",
        "id",
        "message_head",
        "relay",
        "replay",
        "secret",
        "since_ms",
        "transport",
        "user_id",
        "write_limit",
        "ws",
    )

    def __init__(
        self,
        connection_id: str,
        user_id: str | None,
        addr: str,
        since_ms: int,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
    ) -> None:
        super().__init__()  # held: pushes wait in the outbox until release($connected)
        self.id = connection_id
        self.user_id = user_id
        self.addr = addr
        self.since_ms = since_ms
        self.ws = ws
        self.transport = transport
        # Bytes the transport may buffer before it pauses writing (its high-water mark).
        self.write_limit = transport.get_write_buffer_limits()[1]
        # With the connect hook: resolved by the worker's accept or refuse command, or with
        # None when the socket is closed first (a drain, say).
        self.answer: asyncio.Future[Command | None] | None = None
        # The task writing the outbox, or closing a slow consumer: kept so it can be cancelled
        # (and is not garbage-collected while it runs).
        self._drainer: asyncio.Task[None] | None = None
        self.message_head: CommandTemplate | None = None  # cached by Inbound.message()
        self.groups: set[str] | None = None  # created on the first join: most connections never join
        self.history_reads = 0  # $history reads running (wsq_gateway.history)
        # Session resume (sessions.py). At its home gateway: the numbered frames kept for a
        # replay and the token's secret (None: resume is off); the number of the socket serving
        # it (one more at each resume); the relay to the gateway holding its socket, if another
        # one does; and, while no socket serves it, the timer ending its window. At a guest
        # gateway (holding the socket of a session homed elsewhere): the home's node.
        self.replay: ReplayBuffer | None = None
        self.secret: str | None = None
        self.epoch = 1
        self.relay: Relay | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.home: str | None = None

    def deliver(self, frame: bytes, max_pending_bytes: int, wire: bytes | None = None) -> None:
        """Write one text frame, in order, without ever waiting on this client.

        ``wire`` is the frame already encoded for the socket (``wire_text_frame``), which a
        fan-out computes once for all its recipients. A resumable session numbers the frame
        and keeps it first (sent while no socket serves it, it waits there for a resume), and
        relays it when its socket is on another gateway.
        """
        replay = self.replay
        if replay is not None:
            frame = replay.stamp(frame, time.monotonic())
            if self.relay is not None:
                self.relay.frame(frame)
                return
            wire = None
        self._deliver(frame, max_pending_bytes, wire)

    def _deliver(self, frame: bytes, max_pending_bytes: int, wire: bytes | None = None) -> None:
        if self.closing or self.ws.closed:
            return
        if self.outbox is None and self._write_now(wire_text_frame(frame) if wire is None else wire):
            return
        pending = self.pending_bytes
        outcome = self.queue(frame, max_pending_bytes)
        if outcome is QUEUED:
            return
        if outcome is DRAIN:
            self._drainer = asyncio.create_task(self._drain())
        elif outcome is SLOW_CONSUMER:
            log.info("slow consumer disconnected", connection_id=self.id, pending=pending + len(frame))
            self._drainer = asyncio.create_task(self._close_socket(SLOW_CONSUMER_REASON))

    def deliver_all(self, frames: list[bytes], max_pending_bytes: int) -> None:
        """``deliver()`` each of ``frames``, in order, in one write to the socket when it has room."""
        replay = self.replay
        if replay is not None:
            now = time.monotonic()
            frames = [replay.stamp(frame, now) for frame in frames]
            if self.relay is not None:
                for frame in frames:
                    self.relay.frame(frame)
                return
        if (
            len(frames) > 1
            and not (self.closing or self.ws.closed)
            and self._write_now(b"".join([wire_text_frame(frame) for frame in frames]))
        ):
            return
        for frame in frames:
            self._deliver(frame, max_pending_bytes)

    def _write_now(self, wire: bytes) -> bool:
        """Write ``wire`` to the socket now if nothing waits in the outbox and the transport has
        room; False (nothing written) otherwise.

        No await, so no other write can come between, and nothing else writes to this socket
        except through here and aiohttp's own control frames, each written whole.
        """
        transport = self.transport
        if self.outbox is not None or transport.get_write_buffer_size() + len(wire) >= self.write_limit:
            return False
        if not transport.is_closing():
            transport.write(wire)
        return True

    def release(self, first_frame: bytes, replayed: list[bytes] | None = None) -> bool:
        """Start delivering: ``first_frame``, the ``replayed`` frames of a resumed session, then
        what was pushed while held; False when closing already (nothing is written)."""
        if not super().release(first_frame, replayed):
            return False
        self._drainer = asyncio.create_task(self._drain())
        return True

    def attach(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        """A resumed session's new socket (on this gateway): held again, its outbox empty (its
        frames are in the replay buffer); the old socket is closed by the caller."""
        if self._drainer is not None:
            self._drainer.cancel()
            self._drainer = None
        self.ws, self.transport = ws, transport
        self.write_limit = transport.get_write_buffer_limits()[1]
        self.held, self.closing, self.close_code = True, False, None
        self.outbox, self.pending_bytes = deque(), 0
        self.epoch += 1

    async def _drain(self) -> None:
        send_frame = self.ws.send_frame
        take = self.take
        try:
            while (frame := take()) is not None:
                await send_frame(frame, WSMsgType.TEXT)  # the outbox's frames go through aiohttp's writer
        except ConnectionError:
            pass
        finally:
            self.drained()
            if self._drainer is asyncio.current_task():
                self._drainer = None

    async def close(self, code: int, reason: str) -> None:
        """Close the socket (idempotent); its reader then emits the disconnect event.

        The close frame is queued behind what the client has not read yet. Writing it may
        wait for room in the socket, and the client's reply may never come (one that
        stopped reading, say): after ``CLOSE_TIMEOUT_S`` in all, or when bytes are still
        unsent, the TCP connection is aborted, so its buffers are freed at once.
        """
        if self.start_closing(code):
            await self._close_socket(reason)

    async def _close_socket(self, reason: str) -> None:
        """The I/O of closing, once the session is closing (with ``close_code``)."""
        code = self.close_code
        assert code is not None
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(None)  # no one waits for a worker's verdict on it any more
        drainer = self._drainer
        if drainer is not None and drainer is not asyncio.current_task():
            drainer.cancel()  # it may be waiting for room in the socket that never comes
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode()[:123], drain=False)
        except TimeoutError:
            pass  # aiohttp has closed the transport; the abort below drops what it still holds
        finally:
            if self.transport.get_write_buffer_size():
                self.transport.abort()


class ConnectionIndex:
    """The connections of this gateway, by connection id, by user id and by group."""

    def __init__(self) -> None:
        self.by_id: dict[str, Connection] = {}
        self.by_user: dict[str, set[Connection]] = {}
        self.by_group: dict[str, set[Connection]] = {}
        # Sockets of sessions homed on other gateways (sessions.py): reached by id only, for
        # what their home relays; never by user, group or broadcast (their home sends those).
        self.guests: dict[str, Connection] = {}

    def __len__(self) -> int:
        return len(self.by_id) + len(self.guests)

    def add(self, conn: Connection) -> None:
        if conn.home is not None:  # a guest: its home routes its user's and groups' frames
            self.guests[conn.id] = conn
            return
        self.by_id[conn.id] = conn
        if conn.user_id is not None:
            self.by_user.setdefault(conn.user_id, set()).add(conn)

    def remove(self, conn: Connection) -> bool:
        """Drop ``conn``; False when it was not here (already removed)."""
        if conn.home is not None:
            if self.guests.get(conn.id) is not conn:
                return False
            del self.guests[conn.id]
            return True
        if self.by_id.pop(conn.id, None) is None:
            return False
        if conn.user_id is not None:
            _discard(self.by_user, conn.user_id, conn)
        for group in conn.groups or ():
            _discard(self.by_group, group, conn)
        return True

    def set_user(self, conn: Connection, user_id: str) -> None:
        """The connect hook gave the connection a (new) user id."""
        if conn.user_id is not None:
            _discard(self.by_user, conn.user_id, conn)
        conn.user_id = user_id
        conn.message_head = None
        self.by_user.setdefault(user_id, set()).add(conn)

    def join(self, conn: Connection, group: str) -> None:
        if conn.groups is None:
            conn.groups = set()
        conn.groups.add(group)
        self.by_group.setdefault(group, set()).add(conn)

    def leave(self, conn: Connection, group: str) -> None:
        if conn.groups is not None:
            conn.groups.discard(group)
        _discard(self.by_group, group, conn)

    def get(self, connection_id: str) -> Connection | None:
        conn = self.by_id.get(connection_id)
        return conn if conn is not None else self.guests.get(connection_id)

    def of_user(self, user_id: str) -> list[Connection]:
        return list(self.by_user.get(user_id, ()))

    def of_group(self, group: str, exclude: str | None = None) -> list[Connection]:
        return [conn for conn in self.by_group.get(group, ()) if conn.id != exclude]

    def all(self) -> list[Connection]:
        """The sessions homed here (broadcast's recipients), without the guests."""
        return list(self.by_id.values())


def _discard(index: dict[str, set[Connection]], key: str, conn: Connection) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(conn)
        if not members:
            del index[key]
