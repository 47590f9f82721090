"""Session resume (protocol/README.md, "Session resume") against an in-process fake gateway that
speaks the spec: ``$connected`` with a resume token, ``seq`` on every later frame, parking on a
lost socket, ``?resume=&after=`` answered with ``resumed``/``recovered`` and a replay, a takeover
closing the older socket with 3012. The client drops duplicates, resumes on a gap with the last
seq it handled, keeps or fails the requests in flight by what the gateway answers, stops on a
3012 of its current socket, and behaves as without resume when it is off on either side."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from wsq_client import Backoff, Client, ConnectionLost, SessionLost, StateChange
from wsq_devkit import wait_until_async

pytestmark = pytest.mark.single_redis  # no Redis at all: one run is enough

FAST = Backoff(base=0.01, cap=0.05)
Answer = Literal["recover", "lost", "new"]


def _id22() -> str:
    return secrets.token_urlsafe(16)  # 22 base64url characters


@dataclass(eq=False)
class Session:
    """One connection of the fake gateway: its id, token, numbered frames and current socket."""

    connection_id: str = field(default_factory=lambda: f"fake.{_id22()}")
    token: str = ""
    sent: list[dict[str, Any]] = field(default_factory=list)  # every frame numbered, in order
    socket: ServerConnection | None = None
    hold: bool = False  # number and keep frames, but do not write them (lost on the way)

    def __post_init__(self) -> None:
        self.token = f"{self.connection_id}.{_id22()}"


@dataclass(eq=False)
class Socket:
    """One socket the fake gateway accepted: the query it came with, what it received."""

    ws: ServerConnection
    query: str
    session: Session
    received: list[dict[str, Any]] = field(default_factory=list)

    @property
    def params(self) -> dict[str, str]:
        return {key: values[-1] for key, values in parse_qs(self.query, keep_blank_values=True).items()}


class FakeGateway:
    """Enough of a wsq gateway with ``WSQ_RESUME_WINDOW_S`` > 0 for the client. ``offer_resume``
    False: a gateway with resume off (no token, no seq). ``answer``: how resumes are answered
    (``recover``: resumed and replayed; ``lost``: resumed, frames not kept; ``new``: a new
    connection). ``refuse_resume``: HTTP 400 to every resume; ``unavailable``: 503 to all.
    Frames with an ``id`` are echoed back as their reply, unless ``reply`` is False."""

    def __init__(self) -> None:
        self.offer_resume = True
        self.answer: Answer = "recover"
        self.refuse_resume = False
        self.unavailable = False  # HTTP 503 to every handshake (counted in refused)
        self.refused = 0
        self.reply = True
        self.sessions: dict[str, Session] = {}
        self.sockets: list[Socket] = []
        self.server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    def socket_of(self, client: Client) -> Socket:
        """The fake's end of the client's current socket."""
        return next(s for s in reversed(self.sockets) if s.session.connection_id == client.connection_id)

    async def send(
        self, session: Session, action: str, data: Any = None, frame_id: str | None = None
    ) -> None:
        """A frame of the session: numbered, kept, written to its socket unless it is held."""
        frame: dict[str, Any] = {"action": action, "data": data}
        if frame_id is not None:
            frame["id"] = frame_id
        if self.offer_resume:
            frame["seq"] = len(session.sent) + 1
            session.sent.append(frame)
        if session.socket is not None and not session.hold:
            await session.socket.send(json.dumps(frame))

    async def lose(self, session: Session, action: str, data: Any = None) -> None:
        """A frame of the session that is numbered and kept but never reaches the client."""
        hold, session.hold = session.hold, True
        await self.send(session, action, data)
        session.hold = hold

    async def raw(self, socket: Socket, frame: dict[str, Any]) -> None:
        """Write ``frame`` as it is (any seq) to one socket."""
        await socket.ws.send(json.dumps(frame))

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.unavailable:
            self.refused += 1
            return connection.respond(503, "not ready\n")
        if self.refuse_resume and "resume" in parse_qs(urlsplit(request.path).query):
            return connection.respond(400, "bad resume token\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = urlsplit(ws.request.path).query
        params = {key: values[-1] for key, values in parse_qs(query).items()}
        hello: dict[str, Any]
        found = self.sessions.get(params.get("resume", ""))
        if found is not None and self.answer != "new":
            session = found
            old = session.socket
            if old is not None:  # a takeover: the older socket is closed with 3012
                await old.close(3012, "session resumed elsewhere")
            recovered = self.answer == "recover"
            hello = {"resumed": True, "recovered": recovered}
            replay = [f for f in session.sent if f["seq"] > int(params["after"])] if recovered else []
        else:
            session = Session()
            self.sessions[session.token] = session
            hello = {"resumed": False, "recovered": False} if "resume" in params else {}
            replay = []
        if self.offer_resume:
            hello |= {"resume_token": session.token, "resume_window_s": 30}
        socket = Socket(ws, query, session)
        self.sockets.append(socket)
        session.socket = ws
        hello |= {"connection_id": session.connection_id, "user_id": None}
        await ws.send(json.dumps({"action": "$connected", "data": hello}))
        for frame in replay:
            await ws.send(json.dumps(frame))
        try:
            async for message in ws:
                frame = json.loads(message)
                socket.received.append(frame)
                if "id" in frame and self.reply:
                    await self.send(session, frame["action"], frame.get("data"), frame["id"])
        except ConnectionClosed:
            pass
        finally:
            if session.socket is ws:
                session.socket = None  # parked (a lost socket) or ended

    def cut(self, socket: Socket) -> None:
        """The network drops the socket: no close frame either way (the client sees 1006)."""
        socket.ws.transport.abort()


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    async with serve(fake._handle, "127.0.0.1", 0, process_request=fake._process_request) as server:
        fake.server = server
        yield fake


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Clients closed at the end of the test."""
    started: list[Client] = []
    yield started
    for client in started:
        await client.close()


async def until(condition: Callable[[], object], message: str) -> None:
    async def check() -> bool:
        return bool(condition())

    await wait_until_async(check, timeout=5, message=message)


async def connected(
    clients: list[Client], url: str, **options: Any
) -> tuple[Client, list[StateChange], list[Any]]:
    """A connected client, the state changes it reports and the pushes ``p`` it gets."""
    client = Client(url, backoff=FAST, request_timeout=5, **options)
    clients.append(client)
    changes: list[StateChange] = []
    pushes: list[Any] = []
    client.on_state(changes.append)
    client.on("p", pushes.append)
    await client.connect()
    return client, changes, pushes


def opens(changes: list[StateChange]) -> list[StateChange]:
    return [change for change in changes if change.state == "open"]


async def test_duplicate_frames_are_dropped_and_last_seq_follows(
    gateway: FakeGateway, clients: list[Client]
) -> None:
    client, _, pushes = await connected(clients, gateway.url)
    socket = gateway.socket_of(client)
    assert client.resumable
    assert client.last_seq == 0
    for seq in (1, 2, 3):
        await gateway.send(socket.session, "p", seq)  # numbered seq
        for again in range(1, seq + 1):  # then every frame so far once more (a replay's overlap)
            await gateway.raw(socket, {"action": "p", "data": again, "seq": again})
    assert await client.request("echo", "after") == "after"  # seq 4: every push before it is in
    assert pushes == [1, 2, 3], "each seq handled once, in order"
    assert client.last_seq == 4
    assert len(gateway.sockets) == 1, "duplicates are no reason to resume"


async def test_a_gap_abandons_the_socket_and_resumes_after_the_last_seq_handled(
    gateway: FakeGateway, clients: list[Client]
) -> None:
    client, changes, pushes = await connected(clients, gateway.url)
    first = gateway.socket_of(client)
    session = first.session
    await gateway.send(session, "p", 1)
    await gateway.lose(session, "p", 2)  # numbered 2, never written
    await gateway.send(session, "p", 3)  # written: the client sees 3 after 1
    await until(lambda: len(gateway.sockets) == 2, "a resume on a second socket")
    second = gateway.sockets[1]
    assert second.params["resume"] == session.token
    assert second.params["after"] == "1", "resumes after the last seq it handled, not the one it skipped"
    await until(lambda: pushes == [1, 2, 3], "2 and 3 replayed, once, in order")
    assert first.ws.close_code == 3012, "the takeover closed the abandoned socket with 3012"
    assert first.received == [], "nothing more was sent on the abandoned socket"
    assert await client.request("echo", "still here") == "still here"
    assert client.state == "open"
    assert client.connection_id == session.connection_id
    assert client.last_seq == 4
    assert len(gateway.sockets) == 2, "the 3012 of the abandoned socket caused no reconnection"
    assert "closed" not in [change.state for change in changes]
    assert [(o.resumed, o.recovered) for o in opens(changes)] == [(None, None), (True, True)]


async def test_a_resume_keeps_the_url_query_and_sends_resume_and_after(
    gateway: FakeGateway, clients: list[Client]
) -> None:
    client, _, pushes = await connected(clients, f"{gateway.url}?token=abc.def&room=lobby")
    socket = gateway.socket_of(client)
    for n in (1, 2, 3):
        await gateway.send(socket.session, "p", n)
    await until(lambda: client.last_seq == 3, "three frames handled")
    gateway.cut(socket)
    await until(lambda: len(gateway.sockets) == 2 and client.state == "open", "resumed")
    assert gateway.sockets[0].query == "token=abc.def&room=lobby"
    assert gateway.sockets[1].query == f"token=abc.def&room=lobby&resume={socket.session.token}&after=3"
    assert pushes == [1, 2, 3]


async def test_recovered_keeps_requests_in_flight_and_delivers_their_replayed_replies(
    gateway: FakeGateway, clients: list[Client]
) -> None:
    client, changes, pushes = await connected(clients, gateway.url)
    socket = gateway.socket_of(client)
    session = socket.session
    await gateway.send(session, "p", 1)
    await until(lambda: pushes == [1], "the first push")
    session.hold = True  # from now on the network loses what the gateway writes
    in_flight = asyncio.ensure_future(client.request("work", "result"))
    await until(lambda: len(session.sent) == 2, "the gateway answered (seq 2), the answer lost")
    await gateway.send(session, "p", 3)  # seq 3, lost too
    gateway.cut(socket)
    session.hold = False
    assert await in_flight == "result", "the reply came in the replay"
    await until(lambda: pushes == [1, 3], "the push sent meanwhile, replayed")
    assert gateway.sockets[1].params["after"] == "1"
    assert client.connection_id == session.connection_id
    assert client.last_seq == 3
    reconnecting = [change for change in changes if change.state == "reconnecting"]
    assert reconnecting
    assert reconnecting[0].code == 1006
    assert opens(changes)[-1].resumed is True
    assert opens(changes)[-1].recovered is True


async def test_resumed_without_recovery_fails_requests_in_flight_and_numbering_goes_on(
    gateway: FakeGateway, clients: list[Client]
) -> None:
    client, changes, pushes = await connected(clients, gateway.url)
    socket = gateway.socket_of(client)
    session = socket.session
    gateway.answer = "lost"
    session.hold = True
    in_flight = asyncio.ensure_future(client.request("work", "result"))
    await until(lambda: len(session.sent) == 1, "answered, and the answer lost")
    await gateway.send(session, "p", "lost")  # seq 2, never seen by the client
    gateway.cut(socket)
    session.hold = False
    with pytest.raises(SessionLost) as lost:
        await in_flight
    assert isinstance(lost.value, ConnectionLost), "an except ConnectionLost still catches it"
    assert lost.value.resumed is True
    assert lost.value.code == 1006
    assert "reply may have been lost" in str(lost.value)
    await until(lambda: client.state == "open", "open again")
    assert (opens(changes)[-1].resumed, opens(changes)[-1].recovered) == (True, False)
    assert client.connection_id == session.connection_id, "the same connection"
    await gateway.send(session, "p", "next")  # seq 3 after the client's 0: numbering goes on
    assert await client.request("echo", 1) == 1
    assert pushes == ["next"]
    assert client.last_seq == 4
    assert len(gateway.sockets) == 2, "the jump in numbering after a lost resume is no gap"


async def test_resumed_false_is_a_new_connection_and_fails_requests_in_flight(
    gateway: FakeGateway, clients: list[Client]
) -> None:
    client, changes, _ = await connected(clients, gateway.url)
    socket = gateway.socket_of(client)
    old_id = client.connection_id
    gateway.answer = "new"
    gateway.reply = False
    in_flight = asyncio.ensure_future(client.request("work"))
    await until(lambda: socket.received, "the request reached the gateway")
    await gateway.send(socket.session, "p", 1)
    await until(lambda: client.last_seq == 1, "seq 1 handled")
    gateway.cut(socket)
    with pytest.raises(SessionLost) as lost:
        await in_flight
    assert lost.value.resumed is False
    await until(lambda: client.state == "open", "open again")
    assert client.connection_id != old_id
    assert (opens(changes)[-1].resumed, opens(changes)[-1].recovered) == (False, False)
    assert client.last_seq == 0, "a new connection numbers from 1 again"
    gateway.reply = True
    assert await client.request("echo", "fresh") == "fresh"
    assert client.last_seq == 1
    assert gateway.sockets[1].params["resume"] == socket.session.token
    assert gateway.sockets[1].params["after"] == "1"


async def test_a_refused_resume_token_starts_a_new_connection(
    gateway: FakeGateway, clients: list[Client]
) -> None:
    client, changes, _ = await connected(clients, gateway.url)
    socket = gateway.socket_of(client)
    gateway.refuse_resume = True
    gateway.reply = False
    in_flight = asyncio.ensure_future(client.request("work"))
    await until(lambda: socket.received, "the request reached the gateway")
    gateway.cut(socket)
    with pytest.raises(SessionLost):
        await in_flight
    await until(lambda: client.state == "open", "open again, on a new connection")
    assert "resume" not in gateway.sockets[-1].params
    assert client.connection_id != socket.session.connection_id
    assert (opens(changes)[-1].resumed, opens(changes)[-1].recovered) == (False, False)


async def test_3012_on_the_current_socket_closes_the_client(
    gateway: FakeGateway, clients: list[Client]
) -> None:
    client, changes, _ = await connected(clients, gateway.url)
    session = gateway.socket_of(client).session
    gateway.reply = False
    in_flight = asyncio.ensure_future(client.request("work"))
    await until(lambda: gateway.socket_of(client).received, "the request reached the gateway")
    # Someone else resumes the session with its token: the gateway hands it over.
    async with ws_connect(f"{gateway.url}?resume={session.token}&after=0") as intruder:
        hello = json.loads(await intruder.recv())
        assert hello["data"]["resumed"] is True
        with pytest.raises(ConnectionLost) as lost:
            await in_flight
        assert lost.value.code == 3012
        await until(lambda: client.state == "closed", "the client stopped")
    assert changes[-1].state == "closed"
    assert changes[-1].code == 3012
    assert "reconnecting" not in [change.state for change in changes]
    assert len(gateway.sockets) == 2, "no reconnection: the client's socket and the intruder's"
    assert not client.resumable


async def test_resume_off_behaves_as_before(gateway: FakeGateway, clients: list[Client]) -> None:
    client, changes, pushes = await connected(clients, gateway.url, resume=False)
    socket = gateway.socket_of(client)
    assert not client.resumable
    for seq in (1, 1, 3):  # a duplicate and a gap: handled as they come
        await gateway.raw(socket, {"action": "p", "data": seq, "seq": seq})
    await until(lambda: pushes == [1, 1, 3], "every frame handled")
    assert len(gateway.sockets) == 1, "no resume on a gap"
    gateway.reply = False
    in_flight = asyncio.ensure_future(client.request("work"))
    await until(lambda: socket.received, "the request reached the gateway")
    gateway.cut(socket)
    with pytest.raises(ConnectionLost) as lost:
        await in_flight
    assert not isinstance(lost.value, SessionLost), "failed at the cut, as before"
    await until(lambda: client.state == "open", "reconnected")
    assert "resume" not in gateway.sockets[1].params
    assert client.connection_id != socket.session.connection_id
    assert [(o.resumed, o.recovered) for o in opens(changes)] == [(None, None), (None, None)]


async def test_a_gateway_without_resume_gets_the_old_behaviour(
    gateway: FakeGateway, clients: list[Client]
) -> None:
    gateway.offer_resume = False
    client, changes, pushes = await connected(clients, gateway.url)
    socket = gateway.socket_of(client)
    assert not client.resumable
    await gateway.send(socket.session, "p", 1)
    await until(lambda: pushes == [1], "a push without seq")
    assert client.last_seq == 0
    gateway.reply = False
    in_flight = asyncio.ensure_future(client.request("work"))
    await until(lambda: socket.received, "the request reached the gateway")
    gateway.cut(socket)
    with pytest.raises(ConnectionLost) as lost:
        await in_flight
    assert not isinstance(lost.value, SessionLost)
    assert lost.value.code == 1006
    await until(lambda: client.state == "open", "reconnected")
    assert "resume" not in gateway.sockets[1].params
    assert [(o.resumed, o.recovered) for o in opens(changes)] == [(None, None), (None, None)]


async def test_requests_waiting_for_the_connection_are_sent_after_the_resume(
    gateway: FakeGateway, clients: list[Client]
) -> None:
    client, _, _ = await connected(clients, gateway.url)
    socket = gateway.socket_of(client)
    gateway.unavailable = True
    gateway.cut(socket)
    await until(lambda: gateway.refused >= 1, "a resume attempt refused")
    waiting = asyncio.ensure_future(client.request("echo", "queued"))
    await until(lambda: gateway.refused >= 2, "another attempt refused, the request waiting")
    assert not waiting.done()
    gateway.unavailable = False
    assert await waiting == "queued"
    assert gateway.sockets[1].params["resume"] == socket.session.token
    assert gateway.sockets[1].received == [
        {"action": "echo", "data": "queued", "id": gateway.sockets[1].received[0]["id"]}
    ]
    assert socket.received == [], "nothing was written to the lost socket"
    assert client.connection_id == socket.session.connection_id


async def test_history_sends_a_history_request_and_returns_the_reply(
    gateway: FakeGateway, clients: list[Client]
) -> None:
    """``history()`` is a ``$history`` request (the fake gateway echoes each request's data)."""
    client, _, _ = await connected(clients, gateway.url)
    assert await client.history("room:1", since="1700000000000-0", limit=5) == {
        "group": "room:1",
        "since": "1700000000000-0",
        "limit": 5,
    }
    assert await client.history("room:1") == {"group": "room:1", "since": None}
    sent = [frame for frame in gateway.sockets[-1].received if frame["action"] == "$history"]
    assert len(sent) == 2
