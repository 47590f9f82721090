"""Session resume: a connection that outlives a lost socket (protocol/README.md, "Session resume").

With ``WSQ_RESUME_WINDOW_S`` > 0 every connection is resumable. Its *home* gateway (the node
of its connection id) numbers its frames and keeps them (``replay.py``), and keeps its Redis
registration, groups and user. When its socket is lost (a close code in
``PARKABLE_CLOSE_CODES``) the connection is *parked*: still indexed, so every push to it, its
user or its groups is numbered and kept, and a timer ends it (the disconnect event, with the
lost socket's code) unless a client resumes it first:

* on the home itself: the new socket is attached to the same :class:`Connection`;
* on another gateway, the *guest*: it holds the socket as a guest connection (indexed by id
  only) and asks the home over the node streams (``resume``); the home answers (``resumed``,
  with the frames to replay), then relays every new frame (``relay``); the guest's socket
  ending is told back (``detach``) and the home parks the session again, or ends it.

Each socket serving a session has a number, ``epoch``, one more at every resume: a command
or a socket end quoting an older number is about a socket that was replaced, and changes
nothing. Everything here runs on the event loop without awaiting, except the guest's wait
for its home's answer.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import orjson
from aiohttp import web

from wsq_gateway.broker.peers import Peers
from wsq_gateway.connection import CLOSE_TIMEOUT_S, Connection, ConnectionIndex
from wsq_gateway.logs import CONNECTIONS, get_logger
from wsq_gateway.replay import ReplayBuffer
from wsq_protocol.codes import PARKABLE_CLOSE_CODES, CloseCode
from wsq_protocol.commands import Command, detach_command, relay_command, resume_command, resumed_command
from wsq_protocol.frames import connected_frame, server_frame_problem
from wsq_protocol.ids import new_resume_token, node_of, parse_resume_token

log = get_logger(CONNECTIONS)

__all__ = ["RESUME_ANSWER_TIMEOUT_S", "ResumeRequest", "Sessions", "parse_resume_request"]

RESUME_ANSWER_TIMEOUT_S = 3.0  # a guest waits this long for the home's answer, then starts afresh
REPLACED = "session resumed elsewhere"


class ResumeRequest(NamedTuple):
    """A client's ``?resume=<token>&after=<seq>``."""

    token: str
    connection_id: str
    secret: str
    after: int


def parse_resume_request(query: Mapping[str, str]) -> ResumeRequest | None:
    """The resume request in an upgrade's query (``request.query``), None when it has none;
    ValueError (HTTP 400) when it is malformed."""
    token = query.get("resume")
    if token is None:
        return None
    parsed = parse_resume_token(token)
    if parsed is None:
        raise ValueError("?resume= is not a resume token (give back $connected's resume_token)")
    after_text = query.get("after", "0")
    if not (after_text.isascii() and after_text.isdigit()) or len(after_text) > 18:
        raise ValueError("?after= must be the last seq the client saw: an integer from 0 up")
    return ResumeRequest(token, parsed[0], parsed[1], int(after_text))


class PeerRelay:
    """The frames of a session homed here, for its socket on the guest gateway ``node``."""

    __slots__ = ("_on_missing", "_peers", "connection_id", "epoch", "node")

    def __init__(
        self, peers: Peers, node: str, connection_id: str, epoch: int, on_missing: Callable[[], None]
    ) -> None:
        self._peers = peers
        self.node = node
        self.connection_id = connection_id
        self.epoch = epoch
        self._on_missing = on_missing

    def frame(self, numbered: bytes) -> None:
        self._peers.send(self.node, relay_command(self.connection_id, numbered), self._on_missing)


class Sessions:
    """Parks, resumes and relays the resumable connections of one gateway."""

    def __init__(
        self,
        *,
        node_id: str,
        connections: ConnectionIndex,
        peers: Peers,
        window_s: float,
        buffer_frames: int,
        buffer_bytes: int,
        forget: Callable[[Connection, int], None],
        draining: Callable[[], bool],
    ) -> None:
        self.enabled = window_s > 0
        self.window_s = window_s
        self._node = node_id
        self._connections = connections
        self._peers = peers
        self._buffer_frames = buffer_frames
        self._buffer_bytes = buffer_bytes
        self._forget = forget
        self._draining = draining
        self._closing: set[asyncio.Task[None]] = set()
        self.parked = 0  # sessions homed here with no socket anywhere
        self.count_resume: Callable[[str], None] | None = None  # metrics: each resume's outcome

    # -- a new connection -------------------------------------------------------------------

    def open(self, conn: Connection) -> None:
        """Make a new connection resumable (before it is indexed: the frames pushed to it while
        it is held are numbered too)."""
        if self.enabled:
            conn.secret = new_resume_token(conn.id).rpartition(".")[2]
            conn.replay = ReplayBuffer(self._buffer_frames, self._buffer_bytes, self.window_s)

    def connected(
        self,
        conn: Connection,
        *,
        resumed: bool | None = None,
        recovered: bool = False,
        token: str | None = None,
    ) -> bytes:
        """The ``$connected`` frame of ``conn``'s socket: with its resume token when it is
        resumable (a guest, which keeps no secret, passes the client's ``token``); with
        ``resumed`` and ``recovered`` when the client asked to resume."""
        if conn.secret is not None:
            token = f"{conn.id}.{conn.secret}"
        return connected_frame(
            conn.id,
            conn.user_id,
            resume_token=token,
            resume_window_s=self.window_s if token is not None else None,
            resumed=resumed,
            recovered=recovered,
        )

    # -- a socket ends ----------------------------------------------------------------------

    def ended(self, conn: Connection, epoch: int, code: int) -> None:
        """The socket ``epoch`` of ``conn`` ended with ``code``: park the session or end it."""
        if conn.epoch != epoch:
            return  # replaced by a resume: the session lives on, on its new socket
        if conn.home is not None:
            self._guest_ended(conn, code)
            return
        if (
            conn.replay is not None
            and not conn.held  # released: its client had $connected, and so its token
            and code in PARKABLE_CLOSE_CODES
            and not self._draining()
            and self._connections.by_id.get(conn.id) is conn
        ):
            self._park(conn, code)
        else:
            self._forget(conn, code)

    def _park(self, conn: Connection, code: int) -> None:
        conn.close_code = code  # the code its disconnect event carries if no one resumes it
        conn.closing = True
        conn.expiry = asyncio.get_running_loop().call_later(self.window_s, self._expire, conn, conn.epoch)
        self.parked += 1
        log.debug("parked", connection_id=conn.id, close_code=code, window_s=self.window_s)

    def _unpark(self, conn: Connection) -> None:
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
            self.parked -= 1

    def _expire(self, conn: Connection, epoch: int) -> None:
        if conn.expiry is None or conn.epoch != epoch:
            return
        conn.expiry = None
        self.parked -= 1
        log.debug("resume window passed", connection_id=conn.id, close_code=conn.close_code)
        self._forget(conn, conn.close_code or CloseCode.ABNORMAL_CLOSURE)

    def forgotten(self, conn: Connection) -> None:
        """``conn`` ended for good (Gateway.forget_connection): no timer may end it again."""
        self._unpark(conn)

    def close(self, conn: Connection, code: int) -> bool:
        """End a session homed here whose socket is elsewhere or nowhere (a publisher's
        disconnect, a drain); False when it has a socket here (close that as usual)."""
        relay = conn.relay
        if relay is not None:
            conn.relay = None
            self._peers.send(relay.node, detach_command(conn.id, relay.epoch, code))
            self._forget(conn, code)
            return True
        if conn.expiry is not None:
            self._forget(conn, conn.close_code or code)
            return True
        return False

    # -- resume on the home -----------------------------------------------------------------

    def _session(self, connection_id: str, secret: str, user_id: str | None) -> Connection | None:
        """The session homed here that ``secret`` opens, for a socket of ``user_id``."""
        conn = self._connections.by_id.get(connection_id)
        if conn is None or conn.secret is None or self._draining():
            return None
        if not hmac.compare_digest(conn.secret.encode(), secret.encode()):
            return None
        if user_id is not None and user_id != conn.user_id:
            return None
        return conn

    def _take_over(self, conn: Connection) -> None:
        """A new socket takes the session: the one serving it (here or at a guest) goes, 3012."""
        self._unpark(conn)
        relay = conn.relay
        if relay is not None:
            conn.relay = None
            self._peers.send(relay.node, detach_command(conn.id, relay.epoch, CloseCode.SESSION_RESUMED))
        elif not conn.ws.closed:
            self._close_replaced(conn.ws, conn.transport)

    def _close_replaced(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        async def close() -> None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await ws.close(code=CloseCode.SESSION_RESUMED, message=REPLACED.encode())
            except (TimeoutError, ConnectionError):
                pass
            finally:
                if not transport.is_closing():
                    transport.abort()

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def resume_here(
        self,
        request: ResumeRequest,
        user_id: str | None,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
    ) -> Connection | None:
        """Resume a session homed here on the socket ``ws``: the connection, released with its
        ``$connected`` and its replay; None when refused."""
        conn = self._session(request.connection_id, request.secret, user_id)
        if conn is None:
            self._count("refused")
            return None
        self._take_over(conn)
        assert conn.replay is not None
        frames = conn.replay.after(request.after, time.monotonic())
        conn.attach(ws, transport)
        self._count("recovered" if frames is not None else "unrecovered")
        conn.release(self.connected(conn, resumed=True, recovered=frames is not None), frames)
        log.debug("resumed", connection_id=conn.id, recovered=frames is not None, replayed=len(frames or ()))
        return conn

    def on_resume(self, command: Command) -> None:
        """A guest gateway asks for a session homed here (``resume``)."""
        assert command.to is not None
        assert command.node is not None
        assert command.token is not None
        guest = command.node
        conn = self._session(command.to, command.token, command.user_id)
        if conn is None:
            self._count("refused")
            self._peers.send(guest, resumed_command(command.to, 0))
            return
        self._take_over(conn)
        conn.epoch += 1
        assert conn.replay is not None
        frames = conn.replay.after(command.after, time.monotonic())
        epoch = conn.epoch
        conn.relay = PeerRelay(self._peers, guest, conn.id, epoch, lambda: self._guest_lost(conn, epoch))
        self._count("recovered" if frames is not None else "unrecovered")
        replay = b"[" + b",".join(frames or ()) + b"]"
        self._peers.send(guest, resumed_command(conn.id, epoch, conn.user_id, frames is not None, replay))
        log.debug(
            "resumed on another gateway", connection_id=conn.id, node=guest, recovered=frames is not None
        )

    def on_detach(self, command: Command) -> None:
        """``detach``: at the home, the guest's socket ended; at a guest, the home ended it."""
        assert command.to is not None
        guest = self._connections.guests.get(command.to)
        if guest is not None:
            if guest.epoch == command.epoch:
                self._close_guest(guest, command.code)
            return
        conn = self._connections.by_id.get(command.to)
        if conn is not None and conn.relay is not None and conn.relay.epoch == command.epoch:
            conn.relay = None
            self.ended(conn, conn.epoch, command.code)

    def _guest_lost(self, conn: Connection, epoch: int) -> None:
        """The guest gateway's stream is gone (it stopped or died): its socket went with it."""
        relay = conn.relay
        if relay is not None and relay.epoch == epoch:
            conn.relay = None
            self.ended(conn, epoch, CloseCode.ABNORMAL_CLOSURE)

    def _count(self, outcome: str) -> None:
        if self.count_resume is not None:
            self.count_resume(outcome)

    # -- resume on a guest ------------------------------------------------------------------

    async def resume_elsewhere(self, request: ResumeRequest, guest: Connection, user_id: str | None) -> bool:
        """Ask the session's home for it, ``guest`` (held, indexed) waiting; True when resumed
        (``guest`` released with its ``$connected`` and replay), False when refused or not
        answered in time (``guest`` dropped)."""
        home = node_of(request.connection_id)
        answer = guest.answer = asyncio.get_running_loop().create_future()

        def missing() -> None:
            if not answer.done():
                answer.set_result(None)

        previous = self._connections.guests.get(guest.id)
        if previous is not None:  # the same session's last socket here: replaced
            self._close_guest(previous, CloseCode.SESSION_RESUMED)
        self._connections.add(guest)
        self._peers.send(
            home, resume_command(guest.id, request.secret, request.after, self._node, user_id), missing
        )
        try:
            command = await asyncio.wait_for(answer, RESUME_ANSWER_TIMEOUT_S)
        except TimeoutError:
            command = None
            log.warning(
                "the session's gateway did not answer a resume in time", connection_id=guest.id, node=home
            )
        finally:
            guest.answer = None
        if command is None or command.epoch == 0 or guest.closing:
            self._connections.remove(guest)
            if command is None:  # the home could not count it
                self._count("refused")
            return False
        frames, complete = _replayed(command.frame or b"[]")
        recovered = command.recovered and complete
        guest.epoch = command.epoch
        guest.user_id = command.user_id
        guest.release(self.connected(guest, resumed=True, recovered=recovered, token=request.token), frames)
        return True

    def on_resumed(self, command: Command) -> None:
        """The home's answer to a guest's ``resume``."""
        assert command.to is not None
        guest = self._connections.guests.get(command.to)
        if guest is not None and guest.answer is not None and not guest.answer.done():
            guest.answer.set_result(command)
        elif command.epoch:  # no one waits any more (timed out, gone): give the session back
            self._peers.send(
                node_of(command.to), detach_command(command.to, command.epoch, CloseCode.ABNORMAL_CLOSURE)
            )

    def _guest_ended(self, guest: Connection, code: int) -> None:
        if self._connections.remove(guest) and guest.epoch > 0 and guest.home is not None:
            self._peers.send(guest.home, detach_command(guest.id, guest.epoch, code))

    def _close_guest(self, guest: Connection, code: int) -> None:
        """Close a guest's socket for its home (a takeover, a disconnect): no detach goes back."""
        self._connections.remove(guest)
        if guest.answer is not None and not guest.answer.done():
            guest.answer.set_result(None)
        task = asyncio.create_task(guest.close(code, REPLACED if code == CloseCode.SESSION_RESUMED else ""))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _replayed(frames: bytes) -> tuple[list[bytes], bool]:
    """The frames of a ``resumed`` command, each a server frame with its ``seq``; False when
    one was not (dropped: the replay is not complete)."""
    try:
        items = orjson.loads(frames)
    except orjson.JSONDecodeError:
        return [], False
    if not isinstance(items, list):
        return [], False
    kept: list[bytes] = []
    complete = True
    for item in items:
        frame = orjson.dumps(item)
        if server_frame_problem(frame, stamped=True) is None:
            kept.append(frame)
        else:
            complete = False
    return kept, complete
