"""The gateway on a real 3-master Redis Cluster (WSQ_REDIS_CLUSTER=true): its writes go to the
master of its shard's slot, it reads its node stream and the broadcast stream (two slots), its
clean-up runs slot by slot, and a master failing over does not stop it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from gateway_harness import GatewayFactory, RunningGateway, receive_json

from wsq_devkit import wait_until_async
from wsq_devkit.redis_cluster import RedisCluster
from wsq_gateway.broker import liveness
from wsq_protocol.cluster import AsyncClient, async_redis
from wsq_protocol.keys import Keys
from wsq_protocol.routing import slot_of


@pytest.fixture
async def cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[AsyncClient]:
    client = async_redis(redis_cluster.url, cluster=True)
    # The slot map now: a client knows only the node of its URL until it reads it, and that
    # node may be the master a test stops.
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
async def cluster_gateway(
    redis_cluster: RedisCluster, start_gateway: GatewayFactory, key_prefix: str
) -> RunningGateway:
    return await start_gateway(
        redis_url=redis_cluster.url, redis_cluster=True, node_heartbeat_s=0.2, node_timeout_s=1.0
    )


def push(cid: str, data: Any) -> dict[str, str]:
    frame = orjson.dumps({"action": "push", "data": data}).decode()
    return {"v": "1", "type": "send", "target": "connection", "to": cid, "frame": frame}


async def entries(client: AsyncClient, stream: str) -> list[dict[bytes, bytes]]:
    found: Any = await client.xrange(stream)
    return [fields for _id, fields in found]


async def test_a_client_frame_lands_in_its_partition_and_pushes_reach_it(
    cluster_gateway: RunningGateway, cluster_client: AsyncClient, redis_cluster: RedisCluster
) -> None:
    gw = cluster_gateway
    keys = Keys(gw.settings.key_prefix, gw.settings.shards)
    ws, connected = await gw.connect()
    cid = connected["connection_id"]
    inbound = keys.inbound_stream_of(gw.node_id)
    # The gateway's keys share one slot, so its transactions and scripts run there.
    assert slot_of(inbound) == slot_of(keys.node_stream(gw.node_id)) == slot_of(keys.connection(cid))

    await ws.send_str('{"action": "echo", "data": 1, "id": "a"}')

    async def message_written() -> bool:
        return [e[b"type"] for e in await entries(cluster_client, inbound)] == [b"connect", b"message"]

    await wait_until_async(message_written, timeout=10, message="connect and message in the partition")

    # A push to the connection (its node's stream) and a broadcast (a stream in another slot).
    await cluster_client.xadd(keys.node_stream(gw.node_id), push(cid, "direct"))  # type: ignore[arg-type]
    assert (await receive_json(ws))["data"] == "direct"
    broadcast = orjson.dumps({"action": "push", "data": "all"}).decode()
    command = {"v": "1", "type": "send", "target": "all", "frame": broadcast}
    await cluster_client.xadd(keys.broadcast_stream, command)  # type: ignore[arg-type]
    assert (await receive_json(ws))["data"] == "all"
    assert slot_of(keys.broadcast_stream) != slot_of(keys.node_stream(gw.node_id))

    await ws.close()

    async def forgotten() -> bool:
        events = [e[b"type"] for e in await entries(cluster_client, inbound)]
        return events[-1:] == [b"disconnect"] and not await cluster_client.exists(keys.connection(cid))

    await wait_until_async(forgotten, timeout=10, message="one disconnect event, the registry cleared")
    types = [e[b"type"] for e in await entries(cluster_client, inbound)]
    assert types.count(b"disconnect") == 1


async def test_the_gateway_rides_out_a_master_failing_over(
    cluster_gateway: RunningGateway, cluster_client: AsyncClient, redis_cluster: RedisCluster
) -> None:
    """The master of the gateway's slot is killed and its replica promoted: the gateway goes on
    writing its clients' frames and delivering pushes, without a restart."""
    gw = cluster_gateway
    keys = Keys(gw.settings.key_prefix, gw.settings.shards)
    inbound = keys.inbound_stream_of(gw.node_id)
    ws, connected = await gw.connect()
    cid = connected["connection_id"]
    master = redis_cluster.master_of_slot(slot_of(inbound))
    try:
        await asyncio.to_thread(redis_cluster.fail_over, master, kill=True)  # the gateway runs meanwhile
        await ws.send_str('{"action": "echo", "data": 2, "id": "after"}')

        async def written() -> bool:
            frames = [e.get(b"frame", b"") for e in await entries(cluster_client, inbound)]
            return any(b'"after"' in frame for frame in frames)

        await wait_until_async(written, timeout=30, message="the frame written on the promoted master")
        await cluster_client.xadd(keys.node_stream(gw.node_id), push(cid, "still here"))  # type: ignore[arg-type]
        assert (await receive_json(ws, timeout=30))["data"] == "still here"
        assert await gw.ready()
    finally:
        await ws.close()
        await asyncio.to_thread(redis_cluster.rejoin, master)


async def test_new_gateways_spread_over_the_masters_not_only_the_shards(
    cluster_client: AsyncClient, redis_cluster: RedisCluster, key_prefix: str
) -> None:
    """The shards' hash tags fall unevenly on the masters; node ids picked one after another
    (each then live) still give every master the same number of gateways."""
    keys = Keys(key_prefix, 16)
    master_of_shard = [
        redis_cluster.master_of_slot(slot_of(keys.inbound_stream(shard))).port for shard in range(keys.shards)
    ]
    per_master = {port: master_of_shard.count(port) for port in set(master_of_shard)}
    assert len(per_master) == 3
    gateways: dict[int, int] = dict.fromkeys(per_master, 0)
    for _ in range(3 * 4):
        node = await liveness.pick_node_id(cluster_client, keys, timeout_s=20)
        gateways[master_of_shard[keys.shard_of(node)]] += 1
        (now_s, _) = await cluster_client.time()
        await cluster_client.zadd(keys.nodes, {node: now_s * 1000})
    assert sorted(gateways.values()) == [4, 4, 4], (gateways, per_master)
