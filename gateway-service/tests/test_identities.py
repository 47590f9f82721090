"""Identities and request text checked at the edge: what can't be a user id, an address or text
is refused (HTTP 401, close 3011) or made text, and never reaches Redis as a value it can't
carry (a lone surrogate has no UTF-8)."""

from __future__ import annotations

import asyncio

import aiohttp
import jwt
import orjson
import pytest
import redis.asyncio as aioredis
from gateway_harness import GatewayFactory, RunningGateway, stream_entries

from wsq_devkit import wait_until_async
from wsq_devkit.redis_typing import XaddFields
from wsq_protocol.codes import MAX_USER_ID_BYTES
from wsq_protocol.ids import user_id_problem

SECRET = "a-test-secret-of-at-least-32-bytes!"


def signed(sub: object) -> str:
    return jwt.encode({"sub": sub}, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "user_id",
    ["ann", "é" * (MAX_USER_ID_BYTES // 2), "user@example.com", "https://idp.example/u/42", "日本"],
)
def test_usable_user_ids(user_id: str) -> None:
    assert user_id_problem(user_id) is None


@pytest.mark.parametrize(
    "user_id",
    ["", "\ud800", "a\udcffb", "x" * (MAX_USER_ID_BYTES + 1), "é" * 129, "a\nb", "\x00", "a\x7fb", "\x85"],
)
def test_unusable_user_ids(user_id: str) -> None:
    assert user_id_problem(user_id) is not None


@pytest.mark.parametrize("per_user_cap", [0, 3])
@pytest.mark.parametrize(
    "sub",
    ["\ud800", "x" * (MAX_USER_ID_BYTES + 1), "ann\r\nX-Injected: 1"],
    ids=["surrogate", "long", "crlf"],
)
async def test_a_signed_token_whose_sub_is_no_usable_user_id_gets_401(
    start_gateway: GatewayFactory, redis: aioredis.Redis, sub: str, per_user_cap: int
) -> None:
    gateway = await start_gateway(jwt_secret=SECRET, max_connections_per_user=per_user_cap)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gateway.session.ws_connect(gateway.url(), params={"token": signed(sub)})
    assert refused.value.status == 401
    assert await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id)) == []
    ws, hello = await gateway.connect(params={"token": signed("ann")})  # the next one is served
    assert hello["user_id"] == "ann"
    assert await gateway.ready()
    await ws.close()


async def raw_upgrade(gateway: RunningGateway, headers: bytes) -> bytes:
    """The status line of an upgrade request sent byte for byte (aiohttp's client would encode
    header values as UTF-8)."""
    assert gateway.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.server.port)
    writer.write(
        b"GET " + gateway.settings.path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + headers
        + b"\r\n"
    )
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return status


async def test_a_bearer_token_that_is_not_ascii_gets_401(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(jwt_secret=SECRET)
    status = await raw_upgrade(gateway, b"Authorization: Bearer \xff\xfe." + signed("ann").encode() + b"\r\n")
    assert status.startswith(b"HTTP/1.1 401 "), status


async def test_a_cookie_that_is_not_utf8_is_forwarded_with_replacement_characters(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway()
    status = await raw_upgrade(gateway, b"Cookie: session=a\xffb\r\n")
    assert status.startswith(b"HTTP/1.1 101 "), status

    async def request() -> bytes | None:
        events = await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id))
        return events[0][1][b"request"] if events else None

    forwarded = orjson.loads(await wait_until_async(request, timeout=5, message="the connect event"))
    assert forwarded["headers"] == {"cookie": "session=a\ufffdb"}


async def test_a_forwarded_address_that_is_no_address_is_not_taken(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    """Behind a trusted proxy the client's own X-Forwarded-For text is not an address: the
    right-most address a trusted proxy wrote is used instead (here the proxy itself)."""
    gateway = await start_gateway(trusted_proxies="127.0.0.0/8")
    status = await raw_upgrade(gateway, b"X-Forwarded-For: not-an-ip\xff, 127.0.0.5\r\n")
    assert status.startswith(b"HTTP/1.1 101 "), status

    async def addr() -> bytes | None:
        events = await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id))
        return events[0][1][b"addr"] if events else None

    assert await wait_until_async(addr, timeout=5, message="the connect event") == b"127.0.0.5"
    ws, _ = await gateway.connect()  # the gateway's Redis writes go on
    await ws.close()


@pytest.mark.parametrize("user_id", ["", "x" * (MAX_USER_ID_BYTES + 1), "a\tb"], ids=["empty", "long", "tab"])
async def test_a_connect_hook_naming_an_unusable_user_id_closes_with_3011(
    start_gateway: GatewayFactory, redis: aioredis.Redis, user_id: str
) -> None:
    """The worker SDK refuses such an on_connect answer itself (3011): the gateway holds other
    writers of the node stream to the same rule."""
    gateway = await start_gateway(connect_hook=True)
    ws = await gateway.session.ws_connect(gateway.url())

    async def connect_id() -> bytes | None:
        events = await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id))
        return events[0][1][b"connection_id"] if events else None

    cid = (await wait_until_async(connect_id, timeout=5, message="the connect event")).decode()
    fields: XaddFields = {"v": "1", "type": "accept", "target": "connection", "to": cid, "user_id": user_id}
    await redis.xadd(gateway.keys.node_stream(gateway.node_id), fields)
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 3011)
    ws2 = await gateway.session.ws_connect(gateway.url())  # and the gateway goes on
    await ws2.close()
    assert not await redis.exists(gateway.keys.user_connections(user_id or "x"))
