"""What the gateway refuses, limits and repairs: origins, token claims, rates, connection
limits, the inbound backlog, and a Redis that lost its data."""

from __future__ import annotations

import aiohttp
import jwt
import pytest
import redis.asyncio as aioredis
from gateway_harness import GatewayFactory, receive_json

from wsq_devkit import wait_until_async

SECRET = "a-test-secret-of-at-least-32-bytes!"


async def handshake_status(gateway_url: str, session: aiohttp.ClientSession, **kwargs: object) -> int:
    try:
        ws = await session.ws_connect(gateway_url, **kwargs)  # type: ignore[arg-type]
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_only_allowed_origins_may_connect(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(allowed_origins="https://app.example.com, https://admin.example.com/")
    url, session = gateway.url(), gateway.session
    assert await handshake_status(url, session, origin="https://app.example.com") == 101
    assert await handshake_status(url, session, origin="https://admin.example.com") == 101
    assert await handshake_status(url, session, origin="https://evil.example.net") == 403
    assert await handshake_status(url, session, origin="null") == 403
    assert await handshake_status(url, session) == 101, "no Origin: not a browser, allowed"


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        ({"sub": "u", "aud": "wsq", "iss": "https://auth.example.com"}, 101),
        ({"sub": "u", "aud": ["other", "wsq"], "iss": "https://auth.example.com"}, 101),
        ({"sub": "u", "aud": "other", "iss": "https://auth.example.com"}, 401),
        ({"sub": "u", "iss": "https://auth.example.com"}, 401),
        ({"sub": "u", "aud": "wsq", "iss": "https://evil.example.net"}, 401),
    ],
)
async def test_audience_and_issuer_are_checked_when_configured(
    start_gateway: GatewayFactory, claims: dict[str, object], status: int
) -> None:
    gateway = await start_gateway(
        jwt_secret=SECRET, jwt_audience="wsq", jwt_issuer="https://auth.example.com"
    )
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert await handshake_status(gateway.url(), gateway.session, params={"token": token}) == status


async def test_frames_over_the_rate_get_rate_limited(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(rate_limit=1.0, rate_burst=5)
    ws, _ = await gateway.connect()
    for n in range(20):
        await ws.send_str(f'{{"action": "$ping", "id": "p{n}"}}')
    answers = [await receive_json(ws) for _ in range(20)]
    pongs = [a["id"] for a in answers if a["action"] == "$pong"]
    limited = [a for a in answers if a["action"] == "$error"]
    assert len(pongs) in (5, 6), "the burst, plus at most one token refilled meanwhile"
    assert {a["data"]["code"] for a in limited} == {"rate_limited"}
    assert {a["id"] for a in limited} | set(pongs) == {f"p{n}" for n in range(20)}
    await ws.close()


async def test_connections_per_user_and_per_address_are_limited(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(jwt_secret=SECRET, max_connections_per_user=2, max_connections_per_addr=3)
    url, session = gateway.url(), gateway.session
    ann = {"token": jwt.encode({"sub": "ann"}, SECRET, algorithm="HS256")}
    bob = {"token": jwt.encode({"sub": "bob"}, SECRET, algorithm="HS256")}
    first, _ = await gateway.connect(params=ann)
    second, _ = await gateway.connect(params=ann)
    assert await handshake_status(url, session, params=ann) == 429
    third, _ = await gateway.connect(params=bob)
    assert await handshake_status(url, session, params=bob) == 429, "the fourth from 127.0.0.1"
    await first.close()

    async def room_again() -> bool:
        return await handshake_status(url, session, params=ann) == 101

    await wait_until_async(room_again, timeout=5, message="a freed slot")
    for ws in (second, third):
        await ws.close()


async def test_a_full_inbound_stream_answers_overloaded(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(max_inbound_backlog=10)
    ws, _ = await gateway.connect()
    # no worker reads: the stream fills up, then the gateway pushes back
    for n in range(30):
        await ws.send_str(f'{{"action": "work", "id": "w{n}"}}')

    async def pushed_back() -> bool:
        await ws.send_str('{"action": "work", "id": "probe"}')
        await ws.send_str('{"action": "$ping", "id": "sync"}')  # answered after any error for the probe
        answers = []
        while (frame := await receive_json(ws))["action"] != "$pong":
            answers.append(frame)
        return any(a["id"] == "probe" and a["data"]["code"] == "overloaded" for a in answers)

    await wait_until_async(pushed_back, timeout=5, interval=0.05, message="overloaded")
    await ws.close()


async def test_after_redis_lost_its_data_the_gateway_registers_its_sockets_again(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(jwt_secret=SECRET, node_heartbeat_s=0.1, node_timeout_s=1)
    ws, hello = await gateway.connect(params={"token": jwt.encode({"sub": "ann"}, SECRET, algorithm="HS256")})
    cid = hello["connection_id"]
    await redis.sadd(gateway.keys.group_connections("g"), cid)
    await redis.sadd(gateway.keys.connection_groups(cid), "g")
    await redis.xadd(
        gateway.keys.node_stream(gateway.node_id),
        {"v": "1", "type": "join", "target": "connection", "to": cid, "group": "g"},
    )
    await redis.xadd(
        gateway.keys.node_stream(gateway.node_id),
        {
            "v": "1",
            "type": "send",
            "target": "connection",
            "to": cid,
            "frame": '{"action":"joined","data":null}',
        },
    )
    assert (await receive_json(ws))["action"] == "joined"
    for key in await redis.keys(f"{gateway.keys.prefix}:*"):  # what a Redis restart without persistence does
        await redis.delete(key)

    async def registered_again() -> bool:
        return bool(await redis.exists(gateway.keys.connection(cid)))

    await wait_until_async(registered_again, timeout=5, message="the registry rebuilt")
    assert await redis.smembers(gateway.keys.user_connections("ann")) == {cid.encode()}
    assert await redis.smembers(gateway.keys.group_connections("g")) == {cid.encode()}
    assert await redis.smembers(gateway.keys.connection_groups(cid)) == {b"g"}
    assert await redis.sismember(gateway.keys.node_connections(gateway.node_id), cid)
    # and pushes still reach the socket
    await redis.xadd(
        gateway.keys.node_stream(gateway.node_id),
        {"v": "1", "type": "send", "target": "group", "to": "g", "frame": '{"action":"still","data":1}'},
    )
    assert await receive_json(ws) == {"action": "still", "data": 1}
    await ws.close()
