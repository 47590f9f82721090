"""The worker and the publishers on a real 3-master Redis Cluster (``redis_cluster=True``, as
``WSQ_REDIS_CLUSTER=1``): a reader per partition on the master of its slot, replies committed in
the shard's slot, pushes to any slot routed to their master, retries, dead letters and their
replay, and a master failing over while events keep coming."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from worker_harness import FakeGateway, Schemas, StartWorker, str_entries, worker_starter

from wsq_devkit import wait_until_async
from wsq_devkit.redis_cluster import RedisCluster
from wsq_protocol.cluster import AsyncClient, async_redis
from wsq_protocol.keys import Keys, keys_for
from wsq_protocol.routing import slot_of
from wsq_worker import AsyncPublisher, Context, Publisher, Retry

PER_MASTER = 2


@pytest.fixture
async def cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[AsyncClient]:
    """The test's own client (str replies)."""
    client = async_redis(redis_cluster.url, cluster=True, decode_responses=True)
    await client.initialize()  # the slot map now: the URL's node may be the master a test stops
    yield client
    await client.aclose()


def master_port(cluster: RedisCluster, keys: Keys, node: str) -> int:
    return cluster.master_of_slot(slot_of(keys.inbound_stream(keys.shard_of(node)))).port


@pytest.fixture
def gateways(
    redis_cluster: RedisCluster, cluster_client: AsyncClient, key_prefix: str, schemas: Schemas
) -> list[FakeGateway]:
    """Gateways of different shards, ``PER_MASTER`` on each master: their events, replies and
    connections' keys are on every master of the cluster."""
    keys = keys_for(key_prefix)
    picked: dict[int, list[str]] = {}
    shards: set[int] = set()
    for number in range(200):
        node = f"gw-c{number}"
        port, shard = master_port(redis_cluster, keys, node), keys.shard_of(node)
        if shard not in shards and len(picked.setdefault(port, [])) < PER_MASTER:
            picked[port].append(node)
            shards.add(shard)
    nodes = [node for nodes in picked.values() for node in nodes]
    assert len(picked) == len(redis_cluster.masters()) == 3
    assert len(nodes) == 3 * PER_MASTER
    return [FakeGateway(cluster_client, key_prefix, schemas, node=node) for node in nodes]  # type: ignore[arg-type]


@pytest.fixture
async def start_cluster_worker(redis_cluster: RedisCluster, key_prefix: str) -> AsyncIterator[StartWorker]:
    async with worker_starter(
        redis_url=redis_cluster.url, redis_cluster=True, key_prefix=key_prefix
    ) as start:
        yield start


async def all_done(gateways: list[FakeGateway]) -> bool:
    return all([await gateway.backlog_done() for gateway in gateways])


async def test_replies_and_pushes_across_every_master(
    start_cluster_worker: StartWorker, gateways: list[FakeGateway]
) -> None:
    """Each message is answered on its gateway's stream (the commit, in its shard's slot), and its
    handler's push to a connection of the next gateway (another slot, often another master)
    arrives there; every partition's entries are acknowledged."""
    peers = {gateway.node: gateways[(n + 1) % len(gateways)] for n, gateway in enumerate(gateways)}
    peer_connection = {gateway.node: peers[gateway.node].new_connection_id() for gateway in gateways}

    async def relay(ctx: Context, data: int) -> int:
        await ctx.publisher.to(peer_connection[ctx.meta.node]).send("relayed", data)
        return data * 10

    for peer in peers.values():
        await peer.create_stream()
    per_gateway = 5
    for n, gateway in enumerate(gateways):
        connection_id = gateway.new_connection_id()
        for number in range(per_gateway):
            await gateway.message(connection_id, "relay", n * 100 + number, id=f"{n}-{number}")
    await start_cluster_worker({"relay": relay})

    await wait_until_async(lambda: all_done(gateways), timeout=30, message="every partition handled")
    for n, gateway in enumerate(gateways):
        frames = await gateway.wait_for_frames(2 * per_gateway)
        replies = [frame for frame in frames if "id" in frame]
        pushes = [frame for frame in frames if frame["action"] == "relayed"]
        assert replies == [
            {"action": "relay", "data": (n * 100 + number) * 10, "id": f"{n}-{number}"}
            for number in range(per_gateway)
        ]
        sender = (n - 1) % len(gateways)
        assert sorted(push["data"] for push in pushes) == [
            sender * 100 + number for number in range(per_gateway)
        ]


async def test_retries_and_dead_letters_stay_in_their_shard_and_replay(
    start_cluster_worker: StartWorker,
    gateways: list[FakeGateway],
    cluster_client: AsyncClient,
    redis_cluster: RedisCluster,
    key_prefix: str,
) -> None:
    attempts: Counter[str] = Counter()
    failing = True

    async def flaky(ctx: Context, data: Any) -> str:
        attempts[ctx.connection_id] += 1
        if failing:
            raise Retry(0.05)
        return "done"

    connections = {gateway.new_connection_id(): gateway for gateway in gateways}
    for connection_id, gateway in connections.items():
        await gateway.message(connection_id, "flaky", id="x")
    worker = await start_cluster_worker({"flaky": flaky}, max_attempts=2, claim_idle_ms=500)

    async def all_dead() -> bool:
        return all([await gateway.client.xlen(gateway.dead) == 1 for gateway in gateways])

    await wait_until_async(all_dead, timeout=30, message="a dead letter in each gateway's shard")
    assert set(attempts.values()) == {2}
    for gateway in gateways:
        [frame] = await gateway.wait_for_frames(1)
        assert (frame["action"], frame["data"]["code"], frame["id"]) == ("$error", "handler_failed", "x")

    failing = False
    options = ["--redis-url", redis_cluster.url, "--redis-cluster", "--key-prefix", key_prefix]
    listed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "wsq_worker", "dead", "list", *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == len(gateways)
    replayed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "wsq_worker", "dead", "replay", "--all", *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == f"replayed {len(gateways)} dead letters into the inbound stream"
    for gateway in gateways:
        frames = await gateway.wait_for_frames(2)
        assert frames[1] == {"action": "flaky", "data": "done", "id": "x"}
        assert not str_entries(await gateway.client.xrange(gateway.dead))
    assert set(attempts.values()) == {3}
    assert worker.redis_cluster


async def test_publishers_reach_users_and_groups_on_every_master(
    start_cluster_worker: StartWorker,
    gateways: list[FakeGateway],
    redis_cluster: RedisCluster,
    key_prefix: str,
) -> None:
    """Presence and pushes to a user (connections on every master) and a group (joined from a
    handler, in each connection's slot, then the group's set in its own), from the blocking and
    the asyncio publisher."""
    connections = []
    for gateway in gateways:
        connection_id = gateway.new_connection_id()
        await gateway.register(connection_id, user_id="ann")
        connections.append(connection_id)

    async def enter(ctx: Context, room: str) -> bool:
        return await ctx.join(room)

    await start_cluster_worker({"enter": enter})
    for gateway, connection_id in zip(gateways, connections, strict=True):
        await gateway.message(connection_id, "enter", "lobby", id="j")
    await wait_until_async(lambda: all_done(gateways), timeout=30, message="joins handled")

    with Publisher(redis_url=redis_cluster.url, redis_cluster=True, key_prefix=key_prefix) as pub:
        assert pub.connections("ann") == sorted(connections)
        assert pub.group_members("lobby") == sorted(connections)
        assert pub.to_user("ann").send("hello", 1) == len(gateways)
        assert pub.to(connections[0]).send("direct", 2) == 1
        info = pub.connection_info(connections[0])
        assert info is not None
        assert info.groups == {"lobby"}
    async with AsyncPublisher(redis_url=redis_cluster.url, redis_cluster=True, key_prefix=key_prefix) as apub:
        assert await apub.to_group("lobby").send("room", 3) == len(gateways)
        assert await apub.leave(connections[1], "lobby")
        assert await apub.group_members("lobby") == sorted(set(connections) - {connections[1]})

    for n, gateway in enumerate(gateways):

        async def pushed(gateway: FakeGateway = gateway) -> list[str] | None:
            sends = [
                command.frame.get("action")
                for command in await gateway.commands()
                if command.fields["type"] == "send"
            ]
            return sends if "room" in sends else None

        sends = await wait_until_async(pushed, timeout=10, message=f"the group's push on {gateway.node}")
        assert sends.count("hello") == sends.count("room") == 1
        assert sends.count("direct") == (1 if n == 0 else 0)


async def test_the_blocking_publisher_joins_and_keeps_history_on_masters_without_the_scripts(
    gateways: list[FakeGateway], redis_cluster: RedisCluster, key_prefix: str
) -> None:
    """After SCRIPT FLUSH on every master (a restart), a blocking Publisher's join (its intent
    settled by run_many, EVAL again) and history (append and read, in the group's slot) work."""
    connection_id = gateways[0].new_connection_id()
    await gateways[0].register(connection_id)
    for master in redis_cluster.masters():
        with redis.Redis(port=master.port) as direct:
            direct.script_flush()
    with Publisher(redis_url=redis_cluster.url, redis_cluster=True, key_prefix=key_prefix) as pub:
        assert pub.join(connection_id, "lobby") is True
        assert pub.group_members("lobby") == [connection_id]
        for n in range(3):
            assert pub.to_group("lobby").send("said", n, history=True, history_size=2) == 1
        assert [entry.data for entry in pub.history("lobby").messages] == [1, 2]


async def test_a_master_failing_over_mid_stream_answers_every_message_once(
    start_cluster_worker: StartWorker,
    gateways: list[FakeGateway],
    redis_cluster: RedisCluster,
    key_prefix: str,
) -> None:
    """The master of a gateway's shard stops (its replica promoted) while messages keep coming:
    the worker's reader and flusher follow the slot to the new master, no process restarts, and
    every message is answered exactly once."""
    handled: Counter[str] = Counter()

    async def echo(ctx: Context, number: int) -> int:
        assert ctx.id is not None
        handled[ctx.id] += 1
        return number

    await start_cluster_worker({"echo": echo})
    keys = keys_for(key_prefix)
    victim = gateways[0]
    master = redis_cluster.master_of_slot(slot_of(victim.inbound))
    connections = {gateway.node: gateway.new_connection_id() for gateway in gateways}
    sent: dict[str, list[str]] = {gateway.node: [] for gateway in gateways}

    async def send_one(gateway: FakeGateway, number: int) -> None:
        frame_id = f"{gateway.node}-{number}"

        async def appended() -> bool:  # the master may be down a moment: try again
            try:
                await gateway.message(connections[gateway.node], "echo", number, id=frame_id)
            except Exception:
                return False
            return True

        await wait_until_async(appended, timeout=30, message=f"message {frame_id} appended")
        sent[gateway.node].append(frame_id)

    failing_over = asyncio.create_task(asyncio.to_thread(redis_cluster.fail_over, master, kill=False))
    number = 0
    while not failing_over.done() or number < 40:
        for gateway in gateways:
            await send_one(gateway, number)
        number += 1
    promoted = await failing_over
    assert promoted.port != master.port
    assert redis_cluster.master_of_slot(slot_of(victim.inbound)).port == promoted.port
    try:

        async def every_message_answered() -> bool:
            for gateway in gateways:
                replies = [command.frame["id"] for command in await gateway.commands()]
                if sorted(replies) != sorted(sent[gateway.node]):
                    return False
            return True

        await wait_until_async(every_message_answered, timeout=30, message="every message answered")
        await wait_until_async(lambda: all_done(gateways), timeout=30, message="every entry acknowledged")
        assert set(handled.values()) == {1}, "each message ran once"
        assert keys.shard_of(victim.node) == victim.shard
    finally:
        await asyncio.to_thread(redis_cluster.rejoin, master)
