"""Many gateways and workers on one Redis: routing, groups, presence, crash and drain."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest
import redis
from system_harness import JWT_SECRET, Client, GatewayProcess, RedisTarget, StartGateway, StartWorker, token

from wsq_devkit import RedisServer, TcpProxy, wait_until, wait_until_async
from wsq_devkit.redis_cluster import RedisCluster
from wsq_protocol.keys import Keys
from wsq_protocol.routing import slot_of
from wsq_worker import AsyncPublisher

# Fast liveness so a dead gateway is noticed within seconds: 0.5 s heartbeats, 2 s timeout.
FAST = {"WSQ_JWT_SECRET": JWT_SECRET, "WSQ_NODE_HEARTBEAT_S": "0.5", "WSQ_NODE_TIMEOUT_S": "2"}
DEAD_NOTICED_WITHIN_S = 2 + 0.5 + 5  # timeout + heartbeat + slack for a loaded machine


async def connect(session: aiohttp.ClientSession, gateway: GatewayProcess, user: str) -> Client:
    client = await Client.connect(session, gateway.ws_url, params={"token": token(user)})
    await client.receive_until(lambda frame: frame["action"] == "welcome")
    return client


async def next_is(client: Client, publisher: AsyncPublisher, expected: Any) -> None:
    """Assert the client's next frame is ``expected``, then prove nothing else was queued
    before a marker pushed now (so nothing arrived twice)."""
    assert await client.receive() == expected
    await publisher.to(client.connection_id).send("marker", None)
    assert await client.receive() == {"action": "marker", "data": None}


@pytest.fixture
def cluster(start_gateway: StartGateway, start_worker: StartWorker) -> list[GatewayProcess]:
    """Three gateways and two workers."""
    gateways = [start_gateway(**FAST) for _ in range(3)]
    start_worker()
    start_worker()
    return gateways


async def test_user_pushes_reach_only_the_gateways_of_the_user(
    cluster: list[GatewayProcess], session: aiohttp.ClientSession, publisher: AsyncPublisher
) -> None:
    ann1 = await connect(session, cluster[0], "ann")
    ann2 = await connect(session, cluster[1], "ann")
    bob = await connect(session, cluster[2], "bob")
    reached = await publisher.to_user("ann").send("for_ann", 1)
    assert reached == 2, "one command per gateway holding ann's connections, none for the third"
    await next_is(ann1, publisher, {"action": "for_ann", "data": 1})
    await next_is(ann2, publisher, {"action": "for_ann", "data": 1})
    await publisher.to(bob.connection_id).send("marker", None)
    assert await bob.receive() == {"action": "marker", "data": None}, "bob got nothing meant for ann"


async def test_a_group_spread_over_gateways_gets_one_copy_per_member(
    cluster: list[GatewayProcess], session: aiohttp.ClientSession, publisher: AsyncPublisher
) -> None:
    members = [await connect(session, cluster[n % 3], f"m{n}") for n in range(6)]
    outsider = await connect(session, cluster[0], "out")
    for n, member in enumerate(members):
        assert await member.request("join_room", "room:1", id=f"j{n}") == {
            "action": "join_room",
            "data": True,
            "id": f"j{n}",
        }
    assert sorted(await publisher.group_members("room:1")) == sorted(m.connection_id for m in members)

    sender = members[0]
    reply = await sender.request("say_room", {"room": "room:1", "text": "hello"}, id="say")
    assert reply["data"] == 3, "the send reached the three gateways holding members"
    for member in members[1:]:
        await next_is(member, publisher, {"action": "said", "data": {"text": "hello"}})
    # the excluded sender and the outsider received nothing
    for client in (sender, outsider):
        await publisher.to(client.connection_id).send("marker", None)
        assert await client.receive() == {"action": "marker", "data": None}

    # a member that leaves, and one whose socket closes, drop out of the group
    assert (await members[1].request("leave_room", "room:1", id="l"))["data"] is True
    await members[2].close()
    expected = {m.connection_id for m in members} - {members[1].connection_id, members[2].connection_id}

    async def left() -> bool:
        return set(await publisher.group_members("room:1")) == expected

    await wait_until_async(left, timeout=10, message="the group without the two that left")
    await publisher.to_group("room:1").send("after", 1)
    for member in members:
        if member.connection_id in expected:
            await next_is(member, publisher, {"action": "after", "data": 1})


async def test_direct_pushes_cross_gateways_in_order(
    cluster: list[GatewayProcess], session: aiohttp.ClientSession, publisher: AsyncPublisher
) -> None:
    a = await connect(session, cluster[0], "a")
    b = await connect(session, cluster[1], "b")
    assert (await a.request("poke", b.connection_id, id="p"))["data"] == "poked"
    assert await b.receive() == {"action": "poked", "data": {"by": a.connection_id}}
    for n in range(1000):
        await publisher.to(b.connection_id).send("n", n)
    assert [(await b.receive())["data"] for _ in range(1000)] == list(range(1000))


async def test_presence_is_the_same_from_any_process(
    cluster: list[GatewayProcess], session: aiohttp.ClientSession, publisher: AsyncPublisher
) -> None:
    ann1 = await connect(session, cluster[0], "ann")
    ann2 = await connect(session, cluster[2], "ann")
    await ann2.request("join_room", "g1", id="j")
    assert sorted(await publisher.connections("ann")) == sorted([ann1.connection_id, ann2.connection_id])
    assert await publisher.is_online("ann")
    assert not await publisher.is_online("nobody")
    info = await publisher.connection_info(ann2.connection_id)
    assert info is not None
    assert (info.node, info.user_id, info.groups) == (cluster[2].node_id, "ann", frozenset({"g1"}))
    assert abs(info.connected_since.timestamp() - time.time()) < 60
    # the same answers from inside a worker process
    seen = (await ann2.request("presence", None, id="pr"))["data"]
    assert seen == {
        "node": cluster[2].node_id,
        "groups": ["g1"],
        "user_connections": sorted([ann1.connection_id, ann2.connection_id]),
    }


async def test_a_killed_gateway_is_noticed_and_each_lost_connection_gets_one_disconnect(
    cluster: list[GatewayProcess],
    session: aiohttp.ClientSession,
    publisher: AsyncPublisher,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    survivor = await connect(session, cluster[0], "ann")
    lost = [await connect(session, cluster[1], "ann") for _ in range(5)]
    for n, client in enumerate(lost):
        await client.request("join_room", "room:k", id=f"j{n}")
    lost_ids = {c.connection_id for c in lost}

    killed_at = time.monotonic()
    cluster[1].process.signal(signal.SIGKILL)

    def disconnects() -> list[dict[str, Any]] | None:
        seen = [json.loads(x) for x in redis_client.lrange(f"{key_prefix}:test:disconnects", 0, -1)]
        return seen if {s["connection_id"] for s in seen} >= lost_ids else None

    seen = wait_until(
        disconnects, timeout=DEAD_NOTICED_WITHIN_S + 10, message="disconnects of the lost connections"
    )
    assert time.monotonic() - killed_at < DEAD_NOTICED_WITHIN_S + 5
    lost_events = [s for s in seen if s["connection_id"] in lost_ids]
    assert len(lost_events) == len(lost_ids), "exactly one disconnect event per lost connection"
    assert {e["close_code"] for e in lost_events} == {1006}
    assert {e["node"] for e in lost_events} == {cluster[1].node_id}
    assert await publisher.connections("ann") == [survivor.connection_id]
    assert await publisher.group_members("room:k") == []
    for cid in lost_ids:
        assert await publisher.connection_info(cid) is None
    assert redis_client.zscore(f"{key_prefix}:nodes", cluster[1].node_id) is None
    # no second event shows up later either (the survivors keep reaping every 0.5 s)
    await publisher.to(survivor.connection_id).send("marker", None)
    assert await survivor.receive() == {"action": "marker", "data": None}
    again = [json.loads(x) for x in redis_client.lrange(f"{key_prefix}:test:disconnects", 0, -1)]
    assert len([s for s in again if s["connection_id"] in lost_ids]) == len(lost_ids)


async def test_sigterm_drains_with_1012_and_clients_reconnect_elsewhere(
    cluster: list[GatewayProcess],
    session: aiohttp.ClientSession,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    draining = cluster[0]
    clients = [await connect(session, draining, "ann") for _ in range(3)]
    draining.process.signal(signal.SIGTERM)
    for client in clients:
        assert (await client.close_code())[0] == 1012
    assert draining.process.wait(timeout=15) == 0
    assert redis_client.zscore(f"{key_prefix}:nodes", draining.node_id) is None
    again = await connect(session, cluster[1], "ann")
    assert (await again.request("echo", "back", id="e"))["data"] == "back"

    def disconnects() -> list[dict[str, Any]] | None:
        seen = [json.loads(x) for x in redis_client.lrange(f"{key_prefix}:test:disconnects", 0, -1)]
        return seen if len(seen) >= 3 else None

    seen = wait_until(disconnects, timeout=10)
    assert sorted(s["connection_id"] for s in seen) == sorted(c.connection_id for c in clients)
    assert {s["close_code"] for s in seen} == {1012}


@pytest.mark.single_redis  # a proxy in front of one server
async def test_a_gateway_cut_off_from_redis_for_2s_loses_no_direct_push(
    start_gateway: StartGateway,
    session: aiohttp.ClientSession,
    publisher: AsyncPublisher,
    redis_server: RedisServer,
) -> None:
    with TcpProxy(redis_server.port) as proxy:
        gateway = start_gateway(WSQ_REDIS_URL=proxy.url(), **FAST)
        client = await Client.connect(session, gateway.ws_url, params={"token": token("u")})
        await publisher.to(client.connection_id).send("n", -1)
        assert (await client.receive())["data"] == -1
        proxy.cut(2.0)
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < 2.0:  # pushes keep coming while the gateway is cut off
            await publisher.to(client.connection_id).send("n", sent)
            sent += 1
        received = [(await client.receive(timeout=20))["data"] for _ in range(sent)]
        assert received == list(range(sent)), "every push arrived, in order, after the cut"
        assert sent > 10
        await client.close()


@pytest.mark.cluster_redis
async def test_a_master_failing_over_while_clients_round_trip_answers_every_frame_once(
    redis_target: RedisTarget,
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    publisher: AsyncPublisher,
    key_prefix: str,
    request: pytest.FixtureRequest,
) -> None:
    """The master serving a gateway's shard (its partition, its stream, its connections' keys)
    stops and its replica takes over while clients of two gateways keep sending frames with ids:
    no process restarts, every frame gets exactly one answer (its reply, or ``$error`` while the
    slot had no master), and round trips work again on both gateways once the replica serves it."""
    redis_cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    # The default liveness (20 s): FAST's 2 s is shorter than a failover, during which a gateway
    # whose heartbeat's slot has no master would be presumed dead (docs/deploy.md).
    gateways = [start_gateway(WSQ_JWT_SECRET=JWT_SECRET) for _ in range(2)]
    start_worker()
    start_worker()
    keys = Keys(key_prefix)
    victim = redis_cluster.master_of_slot(slot_of(keys.inbound_stream_of(gateways[0].node_id)))
    clients = [await connect(session, gateways[n % 2], f"u{n}") for n in range(4)]
    answers: list[Counter[str]] = [Counter() for _ in clients]
    errors: list[list[dict[str, Any]]] = [[] for _ in clients]
    after_failover: list[int] = [0 for _ in clients]
    failed_over = asyncio.Event()
    stop = asyncio.Event()

    async def round_trip(n: int) -> None:
        client, number = clients[n], 0
        while not stop.is_set():
            frame_id = f"{n}-{number}"
            await client.send("echo", number, id=frame_id)
            answer = await client.receive_until(lambda frame: "id" in frame, timeout=30)
            answers[n][answer["id"]] += 1
            if answer["action"] == "$error":
                errors[n].append(answer)
            elif failed_over.is_set():
                after_failover[n] += 1
            assert answer["id"] == frame_id, "answers come in the order the frames were sent"
            number += 1
            await asyncio.sleep(0.02)  # pacing, below the gateway's rate limit (not a synchronisation)

    async def round_trips_before() -> bool:
        return all(sum(counts.values()) >= 20 for counts in answers)

    async def round_trips_after() -> bool:
        return all(count >= 20 for count in after_failover)

    tasks = [asyncio.create_task(round_trip(n)) for n in range(len(clients))]
    try:
        await wait_until_async(round_trips_before, timeout=30, message="round trips before the failover")
        promoted = await asyncio.to_thread(redis_cluster.fail_over, victim, kill=False)
        failed_over.set()
        assert redis_cluster.master_of_slot(slot_of(keys.inbound_stream_of(gateways[0].node_id))) == promoted
        try:
            await wait_until_async(round_trips_after, timeout=60, message="round trips after the failover")
        finally:
            print("answers after the failover", after_failover, "errors", [len(e) for e in errors])
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.to_thread(redis_cluster.rejoin, victim)
    for n, client in enumerate(clients):
        assert set(answers[n].values()) == {1}, f"client {n}: every frame answered once"
        assert all(error["data"]["code"] == "unavailable" for error in errors[n]), errors[n]
        await publisher.to(client.connection_id).send("marker", None)
        assert await client.receive() == {"action": "marker", "data": None}, "no late second answer"
    for gateway in gateways:
        assert gateway.process.running(), "no restart"
