"""What the gateway refuses, limits and repairs: origins, token claims, rates, connection
limits, the inbound backlog, the connect hook, proxies, and a Redis that is late or lost
its data."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import jwt
import pytest
import redis.asyncio as aioredis
from gateway_harness import GatewayFactory, RunningGateway, receive_json, stream_entries

from wsq_devkit import RedisServer, wait_until_async
from wsq_devkit.contract import is_valid
from wsq_devkit.redis_typing import XaddFields, execute_command
from wsq_gateway import admission
from wsq_gateway.admission import Accept, Close, Refusal, Slots, Turns
from wsq_gateway.broker.registry import REGISTERED, RESERVATION_LOST, register_command
from wsq_gateway.errors import BrokerUnavailable
from wsq_gateway.state import GATEWAY
from wsq_protocol.commands import Command
from wsq_protocol.ids import new_connection_id
from wsq_protocol.keys import Keys
from wsq_protocol.membership import INTEND, Intent, new_token
from wsq_protocol.membership import reserve as reserve_in_index
from wsq_protocol.scripts import run

SECRET = "a-test-secret-of-at-least-32-bytes!"


async def handshake_status(gateway_url: str, session: aiohttp.ClientSession, **kwargs: Any) -> int:
    try:
        ws = await session.ws_connect(gateway_url, **kwargs)
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


def test_address_slots_are_taken_at_the_check_and_given_back_once() -> None:
    slots = Slots(2)
    first, second = slots.reserve("10.0.0.1"), slots.reserve("10.0.0.1")
    assert first is not None
    assert second is not None
    assert slots.reserve("10.0.0.1") is None, "full"
    other = slots.reserve("10.0.0.2")
    assert other is not None, "each address has its own"
    first.release()
    first.release()  # a second release gives nothing back
    assert slots.held("10.0.0.1") == 1
    third = slots.reserve("10.0.0.1")
    assert third is not None
    assert slots.reserve("10.0.0.1") is None, "a double release did not free a slot"
    for slot in (second, third, other):
        slot.release()
    assert (slots.total(), slots.held("10.0.0.1")) == (0, 0)
    unlimited = Slots(0)
    assert all(unlimited.reserve("10.0.0.1") for _ in range(1000))
    assert unlimited.held("10.0.0.1") == 1000


ORIGINS = frozenset({"https://app.example.com"})


@pytest.mark.parametrize(
    ("state", "origin", "refusal"),
    [
        ({"draining": True, "started": True}, None, Refusal(503, "the gateway is shutting down")),
        ({"failed": True, "started": True}, None, Refusal(503, "the gateway is shutting down")),
        ({"draining": True, "started": False}, None, Refusal(503, "the gateway is shutting down")),
        ({"started": False}, None, Refusal(503, "the gateway is starting: waiting for Redis")),
        (
            {"started": False},
            "https://evil.example.net",
            Refusal(503, "the gateway is starting: waiting for Redis"),
        ),
        (
            {"started": True},
            "https://evil.example.net",
            Refusal(403, "origin https://evil.example.net is not allowed"),
        ),
        ({"started": True}, "null", Refusal(403, "origin null is not allowed")),
        ({"started": True}, "https://app.example.com/", None),
        ({"started": True}, None, None),
    ],
)
def test_the_gate_refuses_in_order_shutting_down_then_starting_then_origin(
    state: dict[str, bool], origin: str | None, refusal: Refusal | None
) -> None:
    flags = {"draining": False, "failed": False, **state}
    assert admission.gate(**flags, origin=origin, origins=ORIGINS) == refusal


def test_the_gate_lets_any_origin_through_when_none_is_configured() -> None:
    assert (
        admission.gate(draining=False, failed=False, started=True, origin="https://x.example", origins=None)
        is None
    )


def test_the_users_limit_refuses_at_the_limit_not_below_it() -> None:
    assert admission.user_refusal(1, 2) is None
    assert admission.user_refusal(2, 2) == Refusal(429, "this user holds too many connections")
    assert admission.user_refusal(5, 2) == Refusal(429, "this user holds too many connections")
    assert admission.user_refusal(5, 0) is None, "0: no limit"
    assert admission.user_refusal(None, 2) is None, "Redis could not count: the registration decides"
    assert admission.limited_user("ann", 2) == "ann"
    assert admission.limited_user("ann", 0) is None, "no limit: no turn to take"
    assert admission.limited_user(None, 2) is None, "anonymous: no turn"


def test_after_the_upgrade_a_full_user_closes_with_1008_and_a_lost_redis_with_1013() -> None:
    assert admission.registration_close(True) is None
    assert admission.registration_close(False) == Close(1008, "this user holds too many connections")
    assert admission.broker_close(BrokerUnavailable("gone")) == Close(
        1013, "redis unavailable, try again later"
    )


def accept(user_id: str | None) -> Command:
    return Command(type="accept", target="connection", to="gw.c", user_id=user_id)


def test_the_connect_hooks_answer_decides_the_connection() -> None:
    refuse = Command(type="refuse", target="connection", to="gw.c", code=4003, reason="banned")
    assert admission.hook_verdict(None, "ann") is None, "closed while waiting"
    assert admission.hook_verdict(refuse, "ann") == Close(4003, "banned")
    assert admission.hook_verdict(accept(None), "ann") == Accept(None), "keeps the token's user"
    assert admission.hook_verdict(accept("ann"), "ann") == Accept(None), "the same user: nothing to record"
    assert admission.hook_verdict(accept("bob"), "ann") == Accept("bob")
    assert admission.hook_verdict(accept("bob"), None) == Accept("bob")
    for unusable in ("", "x" * 257, "ann\x00"):
        bad = admission.hook_verdict(accept(unusable), "ann")
        assert isinstance(bad, Close), unusable
        assert (bad.code, bad.reason) == (3011, "connect hook failed: it named an unusable user id")
        assert bad.problem, "why, for the log"


async def test_one_admission_per_user_at_a_time_in_arrival_order() -> None:
    turns = Turns()
    first_may_go, three_entered = asyncio.Event(), asyncio.Event()
    entered: list[str] = []

    async def admit(name: str, user: str | None) -> None:
        async with turns.turn(user):
            entered.append(name)
            if len(entered) == 3:
                three_entered.set()
            if name == "ann-1":
                await first_may_go.wait()

    tasks = [asyncio.create_task(admit(f"ann-{n}", "ann")) for n in range(1, 4)]
    tasks += [asyncio.create_task(admit("bob-1", "bob")), asyncio.create_task(admit("anon", None))]
    cancelled = asyncio.create_task(admit("ann-4", "ann"))
    await asyncio.wait_for(three_entered.wait(), timeout=5)
    assert sorted(entered) == ["ann-1", "anon", "bob-1"], "ann's others wait for ann-1's turn"
    cancelled.cancel()  # a client that leaves while it waits for its turn
    first_may_go.set()
    await asyncio.gather(*tasks)
    assert entered[3:] == ["ann-2", "ann-3"]
    assert cancelled.cancelled()
    assert len(turns) == 0, "no lock left behind"


async def test_every_way_an_upgrade_ends_gives_its_address_slot_back(start_gateway: GatewayFactory) -> None:
    """Opened then closed, refused by the user's limit, abandoned mid-handshake, or failed to
    register: each gives its address's slot back, once."""
    with RedisServer() as own:
        gateway = await start_gateway(
            redis_url=own.url,
            jwt_secret=SECRET,
            max_connections_per_user=1,
            max_connections_per_addr=1,
            drain_s=0.5,
        )
        state = gateway.server.app[GATEWAY]
        url, session = gateway.url(), gateway.session
        ann = {"token": jwt.encode({"sub": "ann"}, SECRET, algorithm="HS256")}

        async def slots_free() -> bool:
            return state.addr_slots.total() == 0 and len(state.user_turns) == 0

        ws, _ = await gateway.connect(params=ann)
        assert state.addr_slots.held("127.0.0.1") == 1
        assert await handshake_status(url, session, params=ann) == 429
        await ws.close()
        await wait_until_async(slots_free, timeout=5, message="the closed socket's slot back")

        async with aioredis.Redis.from_url(own.url) as direct:  # ann holds a socket on another gateway
            await direct.sadd(gateway.keys.user_connections("ann"), "gw-other.q2uE4nK0m5Zr8VtY1xWb7A")
            assert await handshake_status(url, session, params=ann) == 429
            assert await slots_free(), "refused by the user's limit"
            await direct.delete(gateway.keys.user_connections("ann"))

        host, port = gateway.server.host, gateway.server.port
        for _ in range(5):  # clients that leave in the middle of their handshake
            _, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET {gateway.settings.path}?token={ann['token']} HTTP/1.1\r\nHost: {host}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
            )
            writer.transport.abort()
        await wait_until_async(slots_free, timeout=5, message="abandoned handshakes' slots back")

        own.stop()  # the registration fails: closed with 1013
        fresh = await session.ws_connect(url, params=ann)
        msg = await fresh.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1013)
        await wait_until_async(slots_free, timeout=5, message="the unregistered socket's slot back")
        assert len(state.connections) == 0


async def test_the_users_limit_is_checked_atomically_when_reserving_and_registering_needs_the_reservation(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """The check before the upgrade can race with other handshakes of the same user (on this
    gateway or another); the reservation in the user's set checks again, atomically (it is one
    script in the user's slot), and a registration whose reservation is gone writes nothing."""
    keys = Keys(key_prefix)
    event = ["v", "1", "type", "connect"]
    held = [new_connection_id("gw-other"), new_connection_id("gw-other")]

    async def reserve(cid: str, limit: int) -> Intent:
        intent = Intent("u", cid, new_token(), "ann")
        await run(redis, INTEND, [keys.node_intents("gw")], [intent.member])
        if not await reserve_in_index(redis, keys, intent, limit):
            raise AssertionError("full")
        return intent

    async def register(cid: str, token: str) -> int:
        command = register_command(keys, cid, "gw", 1, "10.0.0.1", "ann", token, event)
        return int(await execute_command(redis, *command))

    await redis.sadd(keys.user_connections("ann"), *held)
    full = Intent("u", new_connection_id("gw"), new_token(), "ann")
    assert not await reserve_in_index(redis, keys, full, 2)
    assert await redis.smembers(keys.user_connections("ann")) == {cid.encode() for cid in held}

    cid = new_connection_id("gw")
    reservation = await reserve(cid, 3)
    assert await redis.sismember(keys.user_connections("ann"), cid)
    assert await redis.hget(keys.user_nodes("ann"), "gw") == b"1"
    assert await register(cid, "not-the-token") == RESERVATION_LOST
    assert not await redis.exists(
        keys.connection(cid), keys.node_connections("gw"), keys.inbound_stream_of("gw")
    )
    assert await register(cid, reservation.token) == REGISTERED
    assert await redis.hget(keys.connection(cid), "user_id") == b"ann"
    assert await redis.xlen(keys.inbound_stream_of("gw")) == 1
    assert not await redis.exists(keys.node_intents("gw")), (
        "the reservation's intent is settled by the registration"
    )
    assert await reserve(new_connection_id("gw"), 0), "0: no limit"


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


async def wait_for_connect_event(redis: aioredis.Redis, gateway: RunningGateway) -> dict[str, str]:
    async def event() -> dict[str, str] | None:
        for _, fields in await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id)):
            decoded = {k.decode(): v.decode() for k, v in fields.items()}
            if decoded["type"] == "connect":
                return decoded
        return None

    return await wait_until_async(event, timeout=5, message="the connect event")


async def answer(redis: aioredis.Redis, gateway: RunningGateway, fields: XaddFields) -> None:
    await redis.xadd(gateway.keys.node_stream(gateway.node_id), {"v": "1", "target": "connection", **fields})


async def test_connect_hook_accepts_and_sets_the_user(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(connect_hook=True)
    ws = await gateway.session.ws_connect(gateway.url())
    await ws.send_str('{"action": "early", "id": "e"}')  # sent before the answer: read only after it
    event = await wait_for_connect_event(redis, gateway)
    assert event["hook"] == "1"
    assert is_valid("event", event)
    cid = event["connection_id"]
    await answer(redis, gateway, {"type": "accept", "to": cid, "user_id": "ann"})
    hello = await receive_json(ws)
    assert hello == {"action": "$connected", "data": {"connection_id": cid, "user_id": "ann"}}
    assert await redis.smembers(gateway.keys.user_connections("ann")) == {cid.encode()}
    assert (await redis.hget(gateway.keys.connection(cid), "user_id")) == b"ann"
    entries = await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id))
    assert [fields[b"type"] for _, fields in entries] == [b"connect", b"message"]
    await ws.close()


async def test_connect_hook_refusal_closes_with_the_workers_code(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(connect_hook=True)
    ws = await gateway.session.ws_connect(gateway.url())
    cid = (await wait_for_connect_event(redis, gateway))["connection_id"]
    await answer(redis, gateway, {"type": "refuse", "to": cid, "code": "4003", "reason": "banned"})
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4003, "banned")

    async def disconnected() -> bool:
        types = [
            fields[b"type"]
            for _, fields in await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id))
        ]
        return types == [b"connect", b"disconnect"]

    await wait_until_async(disconnected, timeout=5, message="exactly one disconnect event")


async def test_connect_hook_naming_a_full_user_closes_with_1008(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    """The connect hook is the only place the user is known: its accept is refused when that
    user already holds WSQ_MAX_CONNECTIONS_PER_USER connections."""
    gateway = await start_gateway(connect_hook=True, max_connections_per_user=1)
    first = await gateway.session.ws_connect(gateway.url())
    first_id = (await wait_for_connect_event(redis, gateway))["connection_id"]
    await answer(redis, gateway, {"type": "accept", "to": first_id, "user_id": "ann"})
    assert (await receive_json(first))["action"] == "$connected"

    second = await gateway.session.ws_connect(gateway.url())

    async def second_connect() -> str | None:
        ids = [
            f[b"connection_id"].decode()
            for _, f in await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id))
        ]
        return next((cid for cid in ids if cid != first_id), None)

    second_id = await wait_until_async(second_connect, timeout=5, message="the second connect event")
    await answer(redis, gateway, {"type": "accept", "to": second_id, "user_id": "ann"})
    msg = await second.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (
        aiohttp.WSMsgType.CLOSE,
        1008,
        "this user holds too many connections",
    )

    async def disconnected() -> list[tuple[bytes, bytes | None]] | None:
        entries = [f for _, f in await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id))]
        seen = [
            (f[b"type"], f.get(b"close_code")) for f in entries if f[b"connection_id"] == second_id.encode()
        ]
        return seen if len(seen) == 2 else None

    assert await wait_until_async(disconnected, timeout=5) == [(b"connect", None), (b"disconnect", b"1008")]
    assert await redis.smembers(gateway.keys.user_connections("ann")) == {first_id.encode()}
    await first.close()


async def test_connect_hook_without_an_answer_closes_with_1013(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(connect_hook=True, connect_timeout_s=0.3)
    ws = await gateway.session.ws_connect(gateway.url())
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1013)


async def test_client_address_comes_from_trusted_proxies_only(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    forwarded = {"X-Forwarded-For": "198.51.100.4, 203.0.113.9"}
    trusting = await start_gateway(trusted_proxies="127.0.0.0/8, 203.0.113.9")
    ws, hello = await trusting.connect(headers=forwarded)
    assert await redis.hget(trusting.keys.connection(hello["connection_id"]), "addr") == b"198.51.100.4"
    await ws.close()
    plain = await start_gateway()
    ws, hello = await plain.connect(headers=forwarded)
    assert await redis.hget(plain.keys.connection(hello["connection_id"]), "addr") == b"127.0.0.1"
    await ws.close()


async def test_the_gateway_serves_health_before_redis_is_up(start_gateway: GatewayFactory) -> None:
    late = RedisServer()
    try:
        gateway = await start_gateway(redis_url=late.url, wait_ready=False, drain_s=0.5)
        async with gateway.session.get(gateway.url("/healthz")) as resp:
            assert resp.status == 200
        async with gateway.session.get(gateway.url("/readyz")) as resp:
            assert resp.status == 503
        assert await handshake_status(gateway.url(), gateway.session) == 503
        late.start()
        await wait_until_async(gateway.ready, timeout=15, message="ready once Redis is up")
        ws, _ = await gateway.connect()
        await ws.close()
    finally:
        late.close()
