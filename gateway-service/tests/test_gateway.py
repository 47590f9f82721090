"""The gateway end to end in one process: real sockets, real Redis, no worker."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import time
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, LineTooLong
from gateway_harness import GatewayFactory, RunningGateway, receive_json, set_members, stream_entries

from wsq_devkit import RedisServer, wait_until_async
from wsq_devkit.contract import is_valid
from wsq_devkit.raw_websocket import CLOSE, TEXT, RawWebSocket, text_of_size
from wsq_devkit.redis_typing import XaddFields, execute_command
from wsq_gateway.logs import MalformedRequestLog
from wsq_gateway.state import GATEWAY
from wsq_gateway.wire import wire_text_frame

SECRET = "a-test-secret-of-at-least-32-bytes!"


def command(target: str, to: str | None, frame: dict[str, Any]) -> XaddFields:
    fields: XaddFields = {
        "v": "1",
        "type": "send",
        "target": target,
        "frame": orjson.dumps(frame).decode(),
    }
    if to is not None:
        fields["to"] = to
    return fields


async def inbound_events(redis: aioredis.Redis, gw: RunningGateway) -> list[dict[str, str]]:
    entries = await stream_entries(redis, gw.keys.inbound_stream_of(gw.node_id))
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


async def wait_for_events(redis: aioredis.Redis, gw: RunningGateway, count: int) -> list[dict[str, str]]:
    async def enough() -> list[dict[str, str]] | None:
        events = await inbound_events(redis, gw)
        return events if len(events) >= count else None

    return await wait_until_async(enough, timeout=5, message=f"{count} inbound events")


async def test_connect_registers_and_emits_a_connect_event(
    gateway: RunningGateway, redis: aioredis.Redis
) -> None:
    ws, hello = await gateway.connect()
    cid = hello["connection_id"]
    assert hello["user_id"] is None
    assert cid.startswith(gateway.node_id + ".")
    assert is_valid("server-frame", {"action": "$connected", "data": hello})

    info = await redis.hgetall(gateway.keys.connection(cid))
    assert info[b"node"] == gateway.node_id.encode()
    assert b"user_id" not in info
    assert await redis.sismember(gateway.keys.node_connections(gateway.node_id), cid)
    (event,) = await wait_for_events(redis, gateway, 1)
    assert event["type"] == "connect"
    assert event["connection_id"] == cid
    assert is_valid("event", event)
    await ws.close()


async def test_the_connect_event_carries_the_request_with_only_the_forwarded_headers(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(forward_headers="Cookie, user-agent")
    url = gateway.url() + "?room=lobby&name=Ada%20L"
    headers = {"Cookie": "session=8f3c2a", "User-Agent": "wsq-test/1", "X-Secret": "not forwarded"}
    ws = await gateway.session.ws_connect(url, headers=headers)
    (event,) = await wait_for_events(redis, gateway, 1)
    assert is_valid("event", event)
    assert orjson.loads(event["request"]) == {
        "path": "/ws",
        "query": "room=lobby&name=Ada%20L",
        "headers": {"cookie": "session=8f3c2a", "user-agent": "wsq-test/1"},
    }
    await ws.close()


async def test_with_no_forwarded_headers_the_request_has_path_and_query_only(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(forward_headers="")
    ws = await gateway.session.ws_connect(gateway.url(), headers={"Cookie": "session=8f3c2a"})
    (event,) = await wait_for_events(redis, gateway, 1)
    assert orjson.loads(event["request"]) == {"path": "/ws", "query": "", "headers": {}}
    await ws.close()


async def test_client_frames_are_queued_verbatim_in_order(
    gateway: RunningGateway, redis: aioredis.Redis
) -> None:
    ws, hello = await gateway.connect()
    frames = [f'{{"action": "chat.say", "data": {{"n": {n}}}, "id": "m{n}"}}' for n in range(50)]
    for text in frames:
        await ws.send_str(text)
    events = await wait_for_events(redis, gateway, 51)
    messages = [e for e in events if e["type"] == "message"]
    assert [e["frame"] for e in messages] == frames
    for event in messages:
        assert event["connection_id"] == hello["connection_id"]
        assert is_valid("event", event)
    await ws.close()


@pytest.mark.parametrize(
    ("sent", "code", "frame_id"),
    [
        ("not json", "invalid_json", None),
        ('{"action": "x", "data": NaN}', "invalid_json", None),
        ("[1, 2]", "invalid_frame", None),
        ('{"data": 1, "id": "a1"}', "invalid_frame", "a1"),
        ('{"action": "no spaces", "id": "a2"}', "invalid_frame", "a2"),
        ('{"action": "x", "id": 12}', "invalid_frame", None),
        ('{"action": "x", "id": "a3", "extra": 1}', "invalid_frame", "a3"),
        ('{"action": "$connected", "id": "a4"}', "reserved_action", "a4"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_usable(
    gateway: RunningGateway, redis: aioredis.Redis, sent: str, code: str, frame_id: str | None
) -> None:
    ws, _ = await gateway.connect()
    await ws.send_str(sent)
    error = await receive_json(ws)
    assert error["action"] == "$error"
    assert error["data"]["code"] == code
    assert error.get("id") == frame_id
    assert is_valid("server-frame", error)
    await ws.send_str('{"action": "$ping", "id": "after"}')
    assert (await receive_json(ws)) == {"action": "$pong", "data": None, "id": "after"}
    events = await inbound_events(redis, gateway)
    assert [e["type"] for e in events] == ["connect"], "a rejected frame must not be queued"
    await ws.close()


async def test_invalid_utf8_and_binary_frames_get_errors(gateway: RunningGateway) -> None:
    ws, _ = await gateway.connect()
    # aiohttp's client can't send broken UTF-8 in a text frame, so write the frame by hand.
    writer = ws._writer
    await writer.send_frame(b'{"action": "x", "data": "\xff\xfe"}', aiohttp.WSMsgType.TEXT)
    assert (await receive_json(ws))["data"]["code"] == "invalid_json"
    await ws.send_bytes(b'{"action": "x"}')
    assert (await receive_json(ws))["data"]["code"] == "invalid_frame"
    await ws.close()


async def test_ping_is_answered_by_the_gateway(gateway: RunningGateway) -> None:
    ws, _ = await gateway.connect()
    await ws.send_str('{"action": "$ping", "data": {"t": 1}, "id": "p"}')
    assert await receive_json(ws) == {"action": "$pong", "data": {"t": 1}, "id": "p"}
    await ws.close()


async def test_oversized_frame_closes_with_1009(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(max_message_bytes=1024)
    ws, _ = await gateway.connect()
    await ws.send_str('{"action": "x", "data": "' + "a" * 2000 + '"}')
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1009


async def raw_client(gateway: RunningGateway) -> tuple[RawWebSocket, str]:
    """A byte-level client past its $connected frame, and its connection id."""
    assert gateway.server.port is not None
    client = await RawWebSocket.connect("127.0.0.1", gateway.server.port, gateway.settings.path)
    opcode, payload = await client.receive()
    hello = orjson.loads(payload)
    assert (opcode, hello["action"]) == (TEXT, "$connected"), hello
    return client, hello["data"]["connection_id"]


async def disconnect_event(redis: aioredis.Redis, gateway: RunningGateway, cid: str) -> dict[str, str]:
    """The connection's one disconnect event, once written (AssertionError if two are)."""

    async def written() -> list[dict[str, str]] | None:
        events = [e for e in await inbound_events(redis, gateway) if e["type"] == "disconnect"]
        ours = [e for e in events if e["connection_id"] == cid]
        return ours or None

    (event,) = await wait_until_async(written, timeout=5, message=f"the disconnect event of {cid}")
    assert is_valid("event", event), event
    return event


async def test_a_frame_of_exactly_the_largest_size_is_accepted_and_one_byte_more_closes_with_1009(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(max_message_bytes=1024)
    client, cid = await raw_client(gateway)
    largest = text_of_size(1024, "big", "largest")
    await client.send(largest)
    await client.send(b'{"action": "$ping", "id": "after"}')  # answered: the socket stayed open
    opcode, payload = await client.receive()
    assert (opcode, orjson.loads(payload)) == (TEXT, {"action": "$pong", "data": None, "id": "after"})
    messages = [e for e in await inbound_events(redis, gateway) if e["type"] == "message"]
    assert [e["frame"].encode() for e in messages] == [largest]

    await client.send(text_of_size(1025, "big", "too-big"))
    assert await client.close_code() == 1009
    assert (await disconnect_event(redis, gateway, cid))["close_code"] == "1009"
    assert len([e for e in await inbound_events(redis, gateway) if e["type"] == "message"]) == 1


@pytest.mark.parametrize(("close_frame", "code"), [(b"\x0f\xa0bye", "4000"), (b"", "1005")])
async def test_a_client_close_frame_gives_its_code_or_1005_without_one(
    gateway: RunningGateway, redis: aioredis.Redis, close_frame: bytes, code: str
) -> None:
    client, cid = await raw_client(gateway)
    await client.send(close_frame, CLOSE)
    assert (await disconnect_event(redis, gateway, cid))["close_code"] == code
    client.writer.close()


async def test_pushes_reach_connection_user_and_everyone(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    secret = SECRET
    gateway = await start_gateway(jwt_secret=secret)
    token_a = jwt.encode({"sub": "alice"}, secret, algorithm="HS256")
    token_b = jwt.encode({"sub": "bob"}, secret, algorithm="HS256")
    a1, hello_a1 = await gateway.connect(params={"token": token_a})
    a2, _ = await gateway.connect(headers={"Authorization": f"Bearer {token_a}"})
    b, hello_b = await gateway.connect(params={"token": token_b})
    assert hello_a1["user_id"] == "alice"
    assert hello_b["user_id"] == "bob"
    node_stream = gateway.keys.node_stream(gateway.node_id)

    await redis.xadd(
        node_stream, command("connection", hello_b["connection_id"], {"action": "direct", "data": 1})
    )
    assert await receive_json(b) == {"action": "direct", "data": 1}

    await redis.xadd(node_stream, command("user", "alice", {"action": "for_alice", "data": 2}))
    assert await receive_json(a1) == {"action": "for_alice", "data": 2}
    assert await receive_json(a2) == {"action": "for_alice", "data": 2}

    await redis.xadd(gateway.keys.broadcast_stream, command("all", None, {"action": "all", "data": 3}))
    for ws in (a1, a2, b):
        assert await receive_json(ws) == {"action": "all", "data": 3}
    # bob got nothing meant for alice: the next frame he sees is the broadcast above, then this one.
    await redis.xadd(
        node_stream, command("connection", hello_b["connection_id"], {"action": "last", "data": 4})
    )
    assert await receive_json(b) == {"action": "last", "data": 4}
    for ws in (a1, a2, b):
        await ws.close()


async def test_pushes_to_one_connection_keep_their_order(
    gateway: RunningGateway, redis: aioredis.Redis
) -> None:
    ws, hello = await gateway.connect()
    stream = gateway.keys.node_stream(gateway.node_id)
    pipe = redis.pipeline(transaction=False)
    for n in range(500):
        pipe.xadd(stream, command("connection", hello["connection_id"], {"action": "n", "data": n}))
    await pipe.execute()
    received = [(await receive_json(ws))["data"] for _ in range(500)]
    assert received == list(range(500))
    # what the gateway has delivered is trimmed from its stream
    await wait_until_async(lambda: _stream_len_at_most(redis, stream, 1), timeout=5, message="trimmed")
    await ws.close()


@pytest.mark.parametrize(
    "bad",
    [
        {b"to": b"\xff"},  # not UTF-8
        {b"type": b"join", b"group": b"\xff", b"frame": None},
        {b"type": b"accept", b"user_id": b"\xfe", b"frame": None},
        {b"target": b"group", b"to": b"g", b"exclude": b"\xff"},
        {b"v": b"9"},  # an unknown version
        # A send whose frame is not a server frame: dropped, on the fast path and the other.
        {b"frame": b"not json"},
        {b"frame": b"\xff"},  # not UTF-8
        {b"frame": b'{"action":"bad"}'},  # no data
        {b"frame": b'[{"action":"bad","data":null}]'},
        {b"frame": b'{"action":"bad","data":null,"extra":1}'},
        {b"frame": b'{"action":"bad space","data":null}'},
        {b"frame": b'{"action":"$error","data":{"code":"nope","message":"m"}}'},
        {b"target": b"all", b"to": None, b"frame": b"<html>"},
        {b"target": b"user", b"frame": b'{"data":1}'},
    ],
)
async def test_a_malformed_command_is_skipped_and_the_next_one_delivered(
    gateway: RunningGateway, redis: aioredis.Redis, bad: dict[bytes, bytes | None]
) -> None:
    ws, hello = await gateway.connect()
    stream = gateway.keys.node_stream(gateway.node_id)
    fields: dict[bytes, bytes | None] = {
        b"v": b"1",
        b"type": b"send",
        b"target": b"connection",
        b"to": hello["connection_id"].encode(),
        b"frame": b'{"action":"bad","data":null}',
    }
    fields.update(bad)
    await redis.xadd(stream, {k: v for k, v in fields.items() if v is not None})
    await redis.xadd(stream, command("connection", hello["connection_id"], {"action": "next", "data": 1}))
    assert await receive_json(ws) == {"action": "next", "data": 1}
    await ws.close()


async def test_the_node_stream_is_trimmed_on_a_timer_not_once_per_read(
    gateway: RunningGateway, redis: aioredis.Redis
) -> None:
    ws, hello = await gateway.connect()
    stream = gateway.keys.node_stream(gateway.node_id)

    async def trims() -> int:
        stats: Any = await redis.info("commandstats")
        return int(stats.get("cmdstat_xtrim", {}).get("calls", 0))

    before, started = await trims(), time.monotonic()
    for n in range(40):  # one entry per read: each push is received before the next is sent
        await redis.xadd(stream, command("connection", hello["connection_id"], {"action": "n", "data": n}))
        assert (await receive_json(ws))["data"] == n
    # Idle from here: the entries read are still trimmed, within TRIM_INTERVAL_S (0.25 s).
    await wait_until_async(lambda: _stream_len_at_most(redis, stream, 1), timeout=5, message="trimmed")
    elapsed = time.monotonic() - started
    # The shared Redis may serve other tests' gateways too: a bound, not an exact count.
    assert await trims() - before <= elapsed / 0.25 + 2 < 40
    await ws.close()


class CountingTransport:
    """A socket transport that records what is written to it."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_frames_for_one_connection_read_together_take_one_write_and_come_before_a_close(
    gateway: RunningGateway, redis: aioredis.Redis
) -> None:
    ws, hello = await gateway.connect()
    cid = hello["connection_id"]
    conn = gateway.server.app[GATEWAY].connections.get(cid)
    assert conn is not None
    counting = CountingTransport(conn.transport)
    conn.transport = counting  # type: ignore[assignment]
    stream = gateway.keys.node_stream(gateway.node_id)
    frames = [{"action": "n", "data": n} for n in range(3)]
    async with redis.pipeline(transaction=True) as atomic:  # one read gets them all
        for frame in frames:
            atomic.xadd(stream, command("connection", cid, frame))
        atomic.xadd(
            stream,
            {
                "v": "1",
                "type": "disconnect",
                "target": "connection",
                "to": cid,
                "code": "4000",
                "reason": "bye",
            },
        )
        await atomic.execute()
    assert [await receive_json(ws) for _ in frames] == frames
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4000)
    assert counting.writes[0] == b"".join(wire_text_frame(orjson.dumps(frame)) for frame in frames)


async def _stream_len_at_most(redis: aioredis.Redis, stream: str, n: int) -> bool:
    return int(await redis.xlen(stream)) <= n


async def test_disconnect_command_closes_with_the_code_and_emits_disconnect(
    gateway: RunningGateway, redis: aioredis.Redis
) -> None:
    ws, hello = await gateway.connect()
    cid = hello["connection_id"]
    await redis.xadd(
        gateway.keys.node_stream(gateway.node_id),
        {
            "v": "1",
            "type": "disconnect",
            "target": "connection",
            "to": cid,
            "code": "4000",
            "reason": "kicked",
        },
    )
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (4000, "kicked")
    events = await wait_for_events(redis, gateway, 2)
    assert events[-1]["type"] == "disconnect"
    assert events[-1]["close_code"] == "4000"
    assert is_valid("event", events[-1])
    assert not await redis.exists(gateway.keys.connection(cid))
    assert not await redis.sismember(gateway.keys.node_connections(gateway.node_id), cid)


async def test_client_close_emits_disconnect_and_clears_the_registry(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(jwt_secret=SECRET)
    ws, hello = await gateway.connect(params={"token": jwt.encode({"sub": "u1"}, SECRET, algorithm="HS256")})
    assert await redis.smembers(gateway.keys.user_connections("u1")) == {hello["connection_id"].encode()}
    await ws.close(code=4321)
    events = await wait_for_events(redis, gateway, 2)
    assert (events[-1]["type"], events[-1]["close_code"], events[-1]["user_id"]) == (
        "disconnect",
        "4321",
        "u1",
    )

    # The user's set is in its own slot: left after the disconnect (an intent settled next).
    async def user_set_cleared() -> bool:
        return not await redis.smembers(gateway.keys.user_connections("u1"))

    await wait_until_async(user_set_cleared, timeout=5, message="the user's set without the connection")


@pytest.mark.parametrize(
    "token",
    [
        None,
        "garbage",
        jwt.encode({"sub": "u"}, "another-secret-of-at-least-32-bytes", algorithm="HS256"),
        jwt.encode({"sub": "u", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256"),
        jwt.encode({"user": "no-sub"}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "u"}, SECRET * 2, algorithm="HS512"),  # algorithm not allowed
        jwt.encode({"sub": "u"}, "", algorithm="none"),
    ],
)
async def test_bad_tokens_are_refused_with_401(start_gateway: GatewayFactory, token: str | None) -> None:
    gateway = await start_gateway(jwt_secret=SECRET)
    params = {"token": token} if token is not None else {}
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await gateway.session.ws_connect(gateway.url(), params=params)
    assert caught.value.status == 401


async def test_health_and_readiness(gateway: RunningGateway) -> None:
    async with gateway.session.get(gateway.url("/healthz")) as resp:
        assert resp.status == 200
    async with gateway.session.get(gateway.url("/readyz")) as resp:
        assert resp.status == 200
        assert (await resp.json())["node"] == gateway.node_id


async def test_without_redis_frames_get_unavailable_and_readyz_fails(start_gateway: GatewayFactory) -> None:
    with RedisServer() as own:
        gateway = await start_gateway(redis_url=own.url, drain_s=0.5)
        ws, _ = await gateway.connect()
        own.stop()
        await ws.send_str('{"action": "x", "id": "lost"}')
        error = await receive_json(ws, timeout=10)
        assert error == {
            "action": "$error",
            "data": {"code": "unavailable", "message": error["data"]["message"]},
            "id": "lost",
        }
        async with gateway.session.get(gateway.url("/readyz")) as resp:
            assert resp.status == 503
        # new sockets can't be registered: refused with 1013, not left hanging
        fresh = await gateway.session.ws_connect(gateway.url())
        msg = await fresh.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1013)
        await ws.close()


async def test_shutdown_closes_sockets_with_1012(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway()
    ws, hello = await gateway.connect()
    closing = asyncio.create_task(gateway.server.close())
    msg = await ws.receive(timeout=10)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1012)
    await closing
    events = await inbound_events(redis, gateway)
    assert events[-1]["type"] == "disconnect"
    assert events[-1]["connection_id"] == hello["connection_id"]
    assert events[-1]["close_code"] == "1012"


async def open_raw_socket(gateway: RunningGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake by hand, on a socket with a tiny receive buffer, that then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = gateway.server.host, gateway.server.port
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {gateway.settings.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    status = await reader.readline()
    assert b" 101 " in status, status
    return reader, writer


def http_server(gateway: RunningGateway) -> web.Server:
    runner = gateway.server.runner
    assert runner is not None
    assert runner.server is not None
    return runner.server


def server_side_of(gateway: RunningGateway, writer: asyncio.StreamWriter) -> web.RequestHandler:
    """The gateway's handler of the TCP connection whose client end is ``writer``."""
    ours = writer.get_extra_info("sockname")
    (handler,) = [
        h
        for h in http_server(gateway).connections
        if h.transport is not None and h.transport.get_extra_info("peername") == ours
    ]
    return handler


async def test_a_client_that_stops_reading_is_closed_with_3008_and_others_keep_receiving(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(max_pending_bytes=64 * 1024)
    _, writer = await open_raw_socket(gateway)
    slow_tcp = server_side_of(gateway, writer)
    fast, fast_hello = await gateway.connect()
    node = gateway.keys.node_connections(gateway.node_id)
    slow_id = next(
        cid.decode() for cid in await set_members(redis, node) if cid.decode() != fast_hello["connection_id"]
    )
    stream = gateway.keys.node_stream(gateway.node_id)
    blob = "x" * 16_000
    closed_after = None
    for n in range(2000):  # up to 32 MB for the slow client, far more than socket buffers hold
        await redis.xadd(stream, command("connection", slow_id, {"action": "big", "data": blob}))
        await redis.xadd(
            stream, command("connection", fast_hello["connection_id"], {"action": "n", "data": n})
        )
        assert (await receive_json(fast))["data"] == n, "the fast client must keep receiving"
        if not await redis.exists(gateway.keys.connection(slow_id)):
            closed_after = n
            break
    assert closed_after is not None, "the slow client was never disconnected"
    events = await wait_for_events(redis, gateway, 3)
    (disconnect,) = [e for e in events if e["type"] == "disconnect"]
    assert (disconnect["connection_id"], disconnect["close_code"]) == (slow_id, "3008")
    server = http_server(gateway)

    async def torn_down() -> bool:
        return slow_tcp not in server.connections

    # The client never reads the close frame: the gateway drops the TCP connection itself.
    await wait_until_async(torn_down, timeout=10, message="the slow client's TCP connection torn down")
    await fast.close()
    writer.close()


async def test_past_the_queue_bound_frames_get_overloaded_and_nothing_is_lost(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(max_queued_frames=5)
    ws, _ = await gateway.connect()
    await wait_for_events(redis, gateway, 1)
    await execute_command(redis, "CLIENT", "PAUSE", "1500", "WRITE")  # Redis stops taking writes for a while
    sent = [f"f{n}" for n in range(40)]
    for frame_id in sent:
        await ws.send_str(f'{{"action": "work", "id": "{frame_id}"}}')
    await ws.send_str('{"action": "$ping", "id": "end"}')  # answered after every error above
    overloaded = set()
    while (frame := await receive_json(ws, timeout=10))["action"] != "$pong":
        assert frame["action"] == "$error", frame
        assert frame["data"]["code"] == "overloaded"
        overloaded.add(frame["id"])
    assert len(overloaded) >= len(sent) - 2 * 5, "at most the bound waits, plus one batch in flight"
    events = await wait_for_events(redis, gateway, 1 + len(sent) - len(overloaded))
    queued = {orjson.loads(e["frame"])["id"] for e in events if e["type"] == "message"}
    assert queued | overloaded == set(sent), "every frame was either queued or answered overloaded"
    assert not queued & overloaded
    await ws.close()


def test_malformed_request_records_are_dropped_but_other_errors_keep_their_traceback() -> None:
    def record(exc: BaseException, addr: str) -> logging.LogRecord:
        return logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            "",
            0,
            "Error handling request from %s",
            (addr,),
            (type(exc), exc, None),
        )

    malformed = MalformedRequestLog(every_s=60.0, max_addresses=2)
    too_long = LineTooLong("Status line", "8190", "9000")
    assert not malformed.filter(record(too_long, "198.51.100.1"))  # dropped (one info line instead)
    assert not malformed.filter(record(BadStatusLine("GET\x00"), "198.51.100.1"))
    assert malformed._dropped == {"198.51.100.1": 1}
    assert malformed.filter(record(RuntimeError("a bug"), "198.51.100.1"))  # kept as it is
    for n in range(2, 10):  # many addresses: memory stays bounded
        malformed.filter(record(too_long, f"198.51.100.{n}"))
    assert len(malformed._logged_at) <= 2
