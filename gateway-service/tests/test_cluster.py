"""Groups, connection clean-up and gateway liveness, in process against a real Redis."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from gateway_harness import (
    GatewayFactory,
    RunningGateway,
    receive_json,
    set_members,
    stream_entries,
)

from wsq_devkit import wait_until_async
from wsq_devkit.contract import is_valid
from wsq_devkit.redis_typing import BytesEntry, XaddFields, execute_command
from wsq_gateway.broker import liveness
from wsq_gateway.broker.registry import forget
from wsq_gateway.state import GATEWAY
from wsq_protocol.keys import REAPED_TTL_S, Keys
from wsq_protocol.membership import Intent, new_token, settle
from wsq_protocol.scripts import run, script

JOIN = script("join")

FAST = {"node_heartbeat_s": 0.1, "node_timeout_s": 0.5}


def send_to_group(group: str, frame: dict[str, Any], exclude: str | None = None) -> XaddFields:
    fields: XaddFields = {
        "v": "1",
        "type": "send",
        "target": "group",
        "to": group,
        "frame": orjson.dumps(frame).decode(),
    }
    if exclude is not None:
        fields["exclude"] = exclude
    return fields


def direct(cid: str, data: int) -> XaddFields:
    return {
        "v": "1",
        "type": "send",
        "target": "connection",
        "to": cid,
        "frame": f'{{"action":"d","data":{data}}}',
    }


async def join(redis: aioredis.Redis, gw: RunningGateway, cid: str, group: str) -> None:
    """What a publisher's join does: join.lua (the connection's groups, the command to the
    holding gateway, an intent), then the group's set (wsq_protocol.membership)."""
    keys, node = gw.keys, gw.node_id
    script_keys = [
        keys.connection(cid),
        keys.connection_groups(cid),
        keys.node_stream(node),
        keys.node_intents(node),
    ]
    command = ["v", "1", "type", "join", "target", "connection", "to", cid, "group", group]
    reply = await run(redis, JOIN, script_keys, [cid, group, 100_000, new_token(), *command])
    assert reply[0] == 1
    assert await settle(redis, keys, node, [Intent.parse(reply[1])]) == []


async def events_of(redis: aioredis.Redis, keys: Keys, kind: str) -> list[dict[str, str]]:
    """The events of type ``kind`` of every shard's inbound stream."""
    events = []
    for stream in keys.inbound_streams():
        for _, fields in await stream_entries(redis, stream):
            events.append({k.decode(): v.decode() for k, v in fields.items()})
    return [event for event in events if event["type"] == kind]


async def test_group_sends_reach_members_once_except_the_excluded(
    gateway: RunningGateway, redis: aioredis.Redis
) -> None:
    members = [await gateway.connect() for _ in range(3)]
    outsider, outsider_hello = await gateway.connect()
    for _, hello in members:
        await join(redis, gateway, hello["connection_id"], "room:1")
    sender = members[0][1]["connection_id"]
    stream = gateway.keys.node_stream(gateway.node_id)
    await redis.xadd(stream, send_to_group("room:1", {"action": "said", "data": 1}, exclude=sender))
    for ws, _ in members[1:]:
        assert await receive_json(ws) == {"action": "said", "data": 1}
    # the excluded sender and the outsider got nothing: their next frame is this direct one
    for ws, cid in ((members[0][0], sender), (outsider, outsider_hello["connection_id"])):
        await redis.xadd(stream, direct(cid, 0))
        assert await receive_json(ws) == {"action": "d", "data": 0}
    await redis.xadd(stream, send_to_group("room:1", {"action": "said", "data": 2}))
    for ws, _ in members:
        assert await receive_json(ws) == {"action": "said", "data": 2}
    # leave: no more group frames
    leaver = members[2][1]["connection_id"]
    leave: XaddFields = {
        "v": "1",
        "type": "leave",
        "target": "connection",
        "to": leaver,
        "group": "room:1",
    }
    await redis.xadd(stream, leave)
    await redis.xadd(stream, send_to_group("room:1", {"action": "said", "data": 3}))
    await redis.xadd(stream, direct(leaver, 9))
    assert await receive_json(members[2][0]) == {"action": "d", "data": 9}
    for ws, _ in members:
        await ws.close()
    await outsider.close()


async def test_a_closing_connection_leaves_its_groups_atomically(
    gateway: RunningGateway, redis: aioredis.Redis
) -> None:
    ws, hello = await gateway.connect()
    cid = hello["connection_id"]
    for group in ("a", "b"):
        await join(redis, gateway, cid, group)
    await ws.close()

    async def forgotten() -> bool:
        return not await redis.exists(gateway.keys.connection(cid), gateway.keys.connection_groups(cid))

    await wait_until_async(forgotten, timeout=5, message="the connection forgotten")

    async def left_groups() -> bool:  # the groups' sets follow (other slots): see "Indexes"
        return not await redis.exists(*(gateway.keys.group_connections(group) for group in ("a", "b")))

    await wait_until_async(left_groups, timeout=5, message="the groups' sets without it")
    assert not await redis.exists(gateway.keys.node_intents(gateway.node_id)), "every intent settled"
    (event,) = await events_of(redis, gateway.keys, "disconnect")
    assert event["connection_id"] == cid
    assert is_valid("event", event)


async def test_forgetting_twice_emits_one_disconnect_event(
    gateway: RunningGateway, redis: aioredis.Redis
) -> None:
    ws, hello = await gateway.connect()
    cid = hello["connection_id"]
    first = await forget(redis, gateway.keys, cid, 4000)
    await ws.close()  # the gateway's own clean-up runs the same script again

    async def gone() -> bool:
        return cid not in [
            c.decode() for c in await set_members(redis, gateway.keys.node_connections(gateway.node_id))
        ]

    await wait_until_async(gone, timeout=5)
    # a marker event after the gateway's clean-up: once it is there, nothing else can follow
    await redis.xadd(gateway.keys.inbound_stream_of(gateway.node_id), {"type": "marker"})

    async def marker_seen() -> list[BytesEntry] | None:
        entries = await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id))
        return entries if entries[-1][1].get(b"type") == b"marker" else None

    await wait_until_async(marker_seen, timeout=5)
    disconnects = await events_of(redis, gateway.keys, "disconnect")
    assert first == 1
    assert [(e["connection_id"], e["close_code"]) for e in disconnects] == [(cid, "4000")]


async def register_fake_node(
    redis: aioredis.Redis, keys: Keys, node: str, count: int, heartbeat_ms: int
) -> list[str]:
    """What a gateway that then died would have left in Redis."""
    cids = [f"{node}.{n:022d}" for n in range(count)]
    pipe = redis.pipeline(transaction=False)
    for n, cid in enumerate(cids):
        pipe.hset(
            keys.connection(cid),
            mapping={"node": node, "since": "1", "addr": "10.0.0.1", "user_id": f"u{n % 3}"},
        )
        pipe.sadd(keys.node_connections(node), cid)
        pipe.sadd(keys.user_connections(f"u{n % 3}"), cid)
        pipe.hincrby(keys.user_nodes(f"u{n % 3}"), node, 1)
        pipe.sadd(keys.group_connections("everyone"), cid)
        pipe.hincrby(keys.group_nodes("everyone"), node, 1)
        pipe.sadd(keys.connection_groups(cid), "everyone")
    pipe.zadd(keys.nodes, {node: heartbeat_ms})
    pipe.set(keys.node_heartbeat(node), heartbeat_ms)
    await pipe.execute()
    return cids


async def test_survivors_reap_a_dead_gateway_once(
    start_gateway: GatewayFactory, redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    dead = await register_fake_node(redis, keys, "dead-node", 1200, heartbeat_ms=1)  # long ago
    # two survivors reap concurrently: still exactly one event per connection
    first = await start_gateway(**FAST)
    second = await start_gateway(**FAST)

    async def reaped() -> bool:
        return not await redis.zscore(keys.nodes, "dead-node") and not await redis.exists(
            keys.node_connections("dead-node")
        )

    await wait_until_async(reaped, timeout=10, message="the dead gateway reaped")
    events = await events_of(redis, keys, "disconnect")
    assert sorted(e["connection_id"] for e in events) == sorted(dead)
    for event in events[:5]:
        assert event["close_code"] == "1006"
        assert event["node"] == "dead-node"
        assert is_valid("event", event)
    assert not await redis.exists(keys.group_connections("everyone"), keys.group_nodes("everyone"))
    for user in ("u0", "u1", "u2"):
        assert not await redis.exists(keys.user_connections(user), keys.user_nodes(user))
    assert not await redis.exists(keys.node_intents("dead-node"), keys.node_heartbeat("dead-node"))
    assert await redis.zscore(keys.nodes, first.node_id) is not None
    assert await redis.zscore(keys.nodes, second.node_id) is not None


async def test_a_member_of_the_node_set_that_is_not_utf8_does_not_stop_the_heartbeat(
    start_gateway: GatewayFactory, redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    await redis.zadd(keys.nodes, {b"\xff\xfe": 1})  # not a gateway's: stale, and not UTF-8
    gateway = await start_gateway(**FAST)

    async def junk_removed() -> bool:
        return await redis.zscore(keys.nodes, b"\xff\xfe") is None

    await wait_until_async(junk_removed, timeout=10, message="the junk member removed")
    # The heartbeat goes on: this gateway's score moves, and a dead gateway is still reaped.
    first = await redis.zscore(keys.nodes, gateway.node_id)
    dead = await register_fake_node(redis, keys, "dead-node", 3, heartbeat_ms=1)

    async def heartbeat_and_reaped() -> bool:
        score = await redis.zscore(keys.nodes, gateway.node_id)
        reaped = await redis.zscore(keys.nodes, "dead-node") is None
        return score is not None and first is not None and score > first and reaped

    await wait_until_async(heartbeat_and_reaped, timeout=10, message="a later heartbeat and the reap")
    events = await events_of(redis, keys, "disconnect")
    assert sorted(e["connection_id"] for e in events) == sorted(dead)


async def test_a_gateway_that_was_reaped_closes_its_sockets_with_1012(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(**FAST)
    ws, _ = await gateway.connect()
    await redis.set(gateway.keys.node_reaped(gateway.node_id), "1")  # what a reaper leaves
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1012)
    fresh, _ = await gateway.connect()  # and it carries on
    await fresh.close()


async def test_the_reaped_flag_expires_after_an_hour(
    start_gateway: GatewayFactory, redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    await register_fake_node(redis, keys, "dead-node", 2, heartbeat_ms=1)  # long ago
    await start_gateway(**FAST)

    async def reaped() -> bool:
        return await redis.zscore(keys.nodes, "dead-node") is None

    await wait_until_async(reaped, timeout=10, message="the dead gateway reaped")
    # Long enough for the dead gateway, should it come back, to read it at its next heartbeat;
    # gone after that, so that crashed gateways leave nothing for good.
    assert REAPED_TTL_S - 60 < await redis.ttl(keys.node_reaped("dead-node")) <= REAPED_TTL_S == 3600


async def test_a_gateway_missing_from_redis_after_longer_away_than_the_flag_lives_closes_its_sockets(
    start_gateway: GatewayFactory, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow heartbeat: the test runs the one that matters itself.
    gateway = await start_gateway(node_heartbeat_s=30, node_timeout_s=61)
    ws, hello = await gateway.connect()
    cid, keys = hello["connection_id"], gateway.keys
    # What survivors did while this gateway was away: the connection forgotten (its disconnect
    # event written) and the gateway out of the set; the reaped flag has expired since.
    await forget(redis, keys, cid, 1006)
    await redis.zrem(keys.nodes, gateway.node_id)
    await redis.delete(keys.node_heartbeat(gateway.node_id))  # drop_node.lua's
    an_hour_later = time.time() + REAPED_TTL_S
    monkeypatch.setattr(liveness, "time", SimpleNamespace(time=lambda: an_hour_later), raising=False)

    await gateway.server.app[GATEWAY].liveness.tick()
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1012)
    # Not written back into the registry, and no second disconnect event.
    assert not await redis.exists(keys.connection(cid))
    assert await set_members(redis, keys.node_connections(gateway.node_id)) == set()
    assert [e["connection_id"] for e in await events_of(redis, keys, "disconnect")] == [cid]


async def test_a_live_gateways_stream_exists_from_its_start_and_comes_back_at_its_heartbeat(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    # Workers and publishers append to node streams with NOMKSTREAM (a dead gateway's is never
    # made again): a live gateway's must exist, before anything is pushed to it.
    gateway = await start_gateway(**FAST)
    stream = gateway.keys.node_stream(gateway.node_id)
    assert (await redis.type(stream), await redis.xlen(stream)) == (b"stream", 0)
    await redis.delete(stream)  # lost: an operator's DEL, say

    async def there_again() -> bool:
        return bool(await redis.exists(stream))

    await wait_until_async(there_again, timeout=5, message="the stream made again by a heartbeat")


async def test_after_redis_lost_its_data_the_reply_to_the_next_frame_reaches_the_client(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway()  # the default heartbeat: not within this test
    keys = gateway.keys
    ws, hello = await gateway.connect()
    cid = hello["connection_id"]
    # What an empty restart does: the data gone, every connection dropped.
    async for key in redis.scan_iter(f"{keys.prefix}:*"):
        await redis.delete(key)
    await execute_command(redis, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    async def queued() -> bool:
        # A frame sent on the killed socket is answered unavailable: send another, until one is queued.
        await ws.send_str('{"action": "x"}')
        return bool(await events_of(redis, keys, "message"))

    await wait_until_async(queued, timeout=10, interval=0.2, message="a frame's event")
    # A worker's reply, as it writes it: NOMKSTREAM.
    reply = direct(cid, 7)
    assert await redis.xadd(keys.node_stream(gateway.node_id), reply, nomkstream=True) is not None
    while (frame := await receive_json(ws))["action"] == "$error":
        assert frame["data"]["code"] == "unavailable"
    assert frame == {"action": "d", "data": 7}


async def test_a_restarted_node_id_forgets_what_its_previous_process_left(
    start_gateway: GatewayFactory, redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    left = await register_fake_node(redis, keys, "edge-1", 3, heartbeat_ms=10**15)  # looks alive
    await start_gateway(node_id="edge-1", **FAST)
    events = await events_of(redis, keys, "disconnect")
    assert sorted(e["connection_id"] for e in events) == left
    assert not await redis.exists(keys.node_connections("edge-1"))


async def test_drain_leaves_the_set_of_live_gateways(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(**FAST)
    assert await redis.zscore(gateway.keys.nodes, gateway.node_id) is not None
    await gateway.server.close()
    assert await redis.zscore(gateway.keys.nodes, gateway.node_id) is None


async def test_a_connection_joined_behind_its_gateways_back_is_forgotten_with_its_groups(
    gateway: RunningGateway, redis: aioredis.Redis
) -> None:
    # The group is in the registry but the gateway never read the join command: forget.lua reads
    # the connection's groups itself, so they are left all the same. Exactly one disconnect
    # event, and the group's set is cleaned after it.
    ws, hello = await gateway.connect()
    cid = hello["connection_id"]
    await redis.sadd(gateway.keys.group_connections("unheard"), cid)
    await redis.sadd(gateway.keys.connection_groups(cid), "unheard")
    await ws.close()

    async def forgotten() -> bool:
        return not await redis.exists(gateway.keys.connection(cid))

    await wait_until_async(forgotten, timeout=5, message="the connection forgotten")

    async def cleaned() -> bool:
        keys = gateway.keys
        return not await redis.exists(keys.group_connections("unheard"), keys.connection_groups(cid))

    await wait_until_async(cleaned, timeout=5, message="the group's set without it")
    assert [e["connection_id"] for e in await events_of(redis, gateway.keys, "disconnect")] == [cid]


async def test_a_new_gateway_takes_a_node_id_in_the_shard_with_the_fewest_live_gateways(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix, 4)
    (now_s, _) = await redis.time()
    live = {f"gw-{n}": now_s * 1000 for n in range(40)}
    dead = {f"dead-{n}": 1 for n in range(40)}  # long gone: not counted
    await redis.zadd(keys.nodes, {**live, **dead})
    load = [0] * 4
    for node in live:
        load[keys.shard_of(node)] += 1
    for _ in range(8):
        node = await liveness.pick_node_id(redis, keys, timeout_s=20)
        assert load[keys.shard_of(node)] == min(load), (node, load)
        load[keys.shard_of(node)] += 1
        await redis.zadd(keys.nodes, {node: now_s * 1000})
