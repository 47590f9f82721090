"""Publisher and AsyncPublisher against the private Redis: the exact commands, where they go."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import redis
import redis.asyncio
from worker_harness import (
    CREATE_NODE_STREAM,
    FakeGateway,
    Schemas,
    add_to_index,
    create_node_stream,
    str_entries,
)

from wsq_devkit import RedisServer, free_port
from wsq_protocol.keys import keys_for
from wsq_worker import (
    AsyncPublisher,
    ConnectionInfo,
    ProtocolError,
    Publisher,
    PublishError,
    WsqError,
    speedups,
)
from wsq_worker.constants import BROADCAST_STREAM_MAXLEN, NODE_STREAM_MAXLEN
from wsq_worker.publisher import GatewaysWrite, MembershipWrite, Route, StreamWrite

CONNECTION_A1 = "gw-a_1.q2uE4nK0m5Zr8VtY1xWb7A"
CONNECTION_A2 = "gw-a_1.AAAAAAAAAAAAAAAAAAAAAA"
CONNECTION_B = "gw-b.BBBBBBBBBBBBBBBBBBBBBB"


async def resolve(result: Any) -> Any:
    """The result of a Publisher call, or of an awaited AsyncPublisher call."""
    return await result if inspect.isawaitable(result) else result


@pytest.fixture(params=["sync", "async"])
async def publisher(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> AsyncIterator[Any]:
    """A Publisher and an AsyncPublisher: every test using it runs with both."""
    if request.param == "sync":
        with Publisher(redis_url, key_prefix) as sync_publisher:
            yield sync_publisher
    else:
        async with AsyncPublisher(redis_url, key_prefix) as async_publisher:
            yield async_publisher


async def live(client: redis.asyncio.Redis, key_prefix: str, *nodes: str) -> None:
    """The gateways ``nodes`` are alive: their streams exist (pushes never create one)."""
    for node in nodes:
        await create_node_stream(client, key_prefix, node)


def live_sync(url: str, key_prefix: str, *nodes: str) -> None:
    with redis.Redis.from_url(url) as client:
        for node in nodes:
            client.eval(CREATE_NODE_STREAM, 1, node_stream(key_prefix, node))


async def entries(client: redis.asyncio.Redis, stream: str) -> list[dict[str, str]]:
    return [fields for _, fields in str_entries(await client.xrange(stream))]


def node_stream(key_prefix: str, node: str) -> str:
    return keys_for(key_prefix).node_stream(node)


async def written(client: redis.asyncio.Redis, key_prefix: str) -> list[str]:
    """Every key of the test's prefix but the deployment's number of shards (which the first
    publisher records), sorted."""
    found = cast("list[str]", await client.keys(f"*{key_prefix}*"))
    return sorted(key for key in found if key != keys_for(key_prefix).shards_key)


async def node_streams(client: redis.asyncio.Redis, key_prefix: str) -> list[str]:
    """The node streams of the test's prefix, whatever their shard, sorted."""
    return sorted(cast("list[str]", await client.keys(f"{{{key_prefix}:*}}:node:*:out")))


async def test_to_writes_one_command_to_the_node_stream(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str, schemas: Schemas
) -> None:
    await live(redis_client, key_prefix, "gw-a_1")
    assert await resolve(publisher.to(CONNECTION_A1).send("chat_text", {"text": "hi"})) == 1
    commands = await entries(redis_client, node_stream(key_prefix, "gw-a_1"))
    assert commands == [
        {
            "v": "1",
            "type": "send",
            "target": "connection",
            "to": CONNECTION_A1,
            "frame": '{"action":"chat_text","data":{"text":"hi"}}',
        }
    ]
    schemas.check("command", commands[0])
    assert await written(redis_client, key_prefix) == [node_stream(key_prefix, "gw-a_1")]


async def test_sends_to_one_connection_keep_their_order(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    await live(redis_client, key_prefix, "gw-b")
    for number in range(20):
        await resolve(publisher.to(CONNECTION_B).send("n", number))
    commands = await entries(redis_client, node_stream(key_prefix, "gw-b"))
    assert [json.loads(command["frame"])["data"] for command in commands] == list(range(20))


async def test_to_user_reaches_each_gateway_of_the_user_once(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str, schemas: Schemas
) -> None:
    await live(redis_client, key_prefix, "gw-a_1", "gw-b")
    await add_to_index(redis_client, key_prefix, "u", "42", CONNECTION_A1, CONNECTION_A2, CONNECTION_B)
    assert await resolve(publisher.to_user("42").send("notice", "you have mail")) == 2
    expected = {
        "v": "1",
        "type": "send",
        "target": "user",
        "to": "42",
        "frame": '{"action":"notice","data":"you have mail"}',
    }
    assert await entries(redis_client, node_stream(key_prefix, "gw-a_1")) == [expected]
    assert await entries(redis_client, node_stream(key_prefix, "gw-b")) == [expected]
    schemas.check("command", expected)
    assert await node_streams(redis_client, key_prefix) == sorted(
        [node_stream(key_prefix, "gw-a_1"), node_stream(key_prefix, "gw-b")]
    )


async def test_to_user_without_connections_reaches_nobody(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    assert await resolve(publisher.to_user("nobody").send("notice", 1)) == 0
    assert await written(redis_client, key_prefix) == []


async def test_to_user_goes_to_the_gateways_its_index_counts(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """The gateways are those of the user's count per node ({prefix:user:<id>}:nodes), which
    the gateways and publishers keep beside the user's set: whatever the set holds."""
    keys = keys_for(key_prefix)
    await live(redis_client, key_prefix, "gw-a_1", "gw-b")
    await redis_client.sadd(keys.user_connections("7"), CONNECTION_A1, CONNECTION_B)
    await redis_client.hset(keys.user_nodes("7"), "gw-b", "1")
    assert await resolve(publisher.to_user("7").send("notice", 1)) == 1
    assert await redis_client.xlen(node_stream(key_prefix, "gw-b")) == 1
    assert await redis_client.xlen(node_stream(key_prefix, "gw-a_1")) == 0


async def test_to_user_with_many_connections_reaches_each_gateway_once(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    nodes = ("gw-a_1", "gw-b", "gw-d")
    members = [f"{node}.{n:022d}" for node in nodes for n in range(50)]
    await live(redis_client, key_prefix, *nodes)
    await add_to_index(redis_client, key_prefix, "u", "7", *members)
    assert await resolve(publisher.to_user("7").send("notice", 1)) == 3
    assert await node_streams(redis_client, key_prefix) == sorted(node_stream(key_prefix, n) for n in nodes)
    for node in nodes:
        assert await redis_client.xlen(node_stream(key_prefix, node)) == 1


async def test_broadcast_writes_to_the_broadcast_stream(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str, schemas: Schemas
) -> None:
    assert await resolve(publisher.broadcast().send("announcement", {"text": "maintenance at noon"})) == 1
    commands = await entries(redis_client, f"{key_prefix}:broadcast")
    # examples/valid/command/broadcast.json
    assert commands == [
        {
            "v": "1",
            "type": "send",
            "target": "all",
            "frame": '{"action":"announcement","data":{"text":"maintenance at noon"}}',
        }
    ]
    schemas.check("command", commands[0])


async def test_broadcast_stream_is_capped(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    for number in range(BROADCAST_STREAM_MAXLEN + 500):
        await resolve(publisher.broadcast().send("n", number))
    # MAXLEN ~ trims whole nodes of entries (100 by default), so a little above the cap.
    assert (
        BROADCAST_STREAM_MAXLEN
        <= await redis_client.xlen(f"{key_prefix}:broadcast")
        < BROADCAST_STREAM_MAXLEN + 200
    )


def test_routes_cap_the_streams() -> None:
    keys = keys_for("p")
    disconnect = Route.connection(keys, CONNECTION_B).disconnect()
    assert isinstance(disconnect, StreamWrite)
    assert disconnect.maxlen == NODE_STREAM_MAXLEN == 100_000
    broadcast = Route.everyone(keys).send("{}")
    assert isinstance(broadcast, StreamWrite)
    assert broadcast.maxlen == BROADCAST_STREAM_MAXLEN == 1_000
    for gateways in (Route.group(keys, "room").send("{}"), Route.user(keys, "42").disconnect()):
        assert isinstance(gateways, GatewaysWrite)
        [to_b] = gateways.streams([b"gw-b"])
        assert (to_b.stream, to_b.maxlen, to_b.nomkstream) == (
            keys.node_stream("gw-b"),
            NODE_STREAM_MAXLEN,
            True,
        )
    # The scripts get the cap of the node streams as their third argument.
    for membership_write in (
        MembershipWrite.join(keys, CONNECTION_B, "room"),
        MembershipWrite.leave(keys, CONNECTION_B, "room"),
    ):
        assert membership_write.args("token")[2] == str(NODE_STREAM_MAXLEN)


def test_each_route_writes_to_the_keys_of_its_target() -> None:
    """A connection's push goes to its node's stream (in the node's shard); a user's and a
    group's pushes read their count per node, in the slot of their own; a broadcast has one key."""
    keys = keys_for("p", 16)
    to = Route.connection(keys, CONNECTION_B).send("{}")
    assert isinstance(to, StreamWrite)
    assert to.stream == f"{{p:{keys.shard_of('gw-b')}}}:node:gw-b:out"
    to_user, to_group = Route.user(keys, "42").send("{}"), Route.group(keys, "room").send("{}")
    assert isinstance(to_user, GatewaysWrite)
    assert isinstance(to_group, GatewaysWrite)
    assert (to_user.nodes, to_group.nodes) == ("{p:user:42}:nodes", "{p:group:room}:nodes")
    everyone = Route.everyone(keys).send("{}")
    assert isinstance(everyone, StreamWrite)
    assert everyone.stream == "p:broadcast"


async def test_disconnect_writes_the_command(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str, schemas: Schemas
) -> None:
    await live(redis_client, key_prefix, "gw-b")
    await resolve(publisher.to(CONNECTION_B).disconnect(code=4000, reason="kicked"))
    await resolve(publisher.to(CONNECTION_B).disconnect())
    commands = await entries(redis_client, node_stream(key_prefix, "gw-b"))
    disconnect = {"v": "1", "type": "disconnect", "target": "connection", "to": CONNECTION_B}
    assert commands == [
        disconnect | {"code": "4000", "reason": "kicked"},
        disconnect | {"code": "1000", "reason": ""},
    ]
    for command in commands:
        schemas.check("command", command)


async def test_invalid_arguments_write_nothing(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    with pytest.raises(ValueError, match="close code"):
        await resolve(publisher.to(CONNECTION_B).disconnect(code=1006))
    with pytest.raises(ValueError, match="123 bytes"):
        await resolve(publisher.to(CONNECTION_B).disconnect(code=4000, reason="x" * 124))
    with pytest.raises(ValueError, match='exclude is only for target "group"'):
        await resolve(publisher.to(CONNECTION_B).send("a", 1, exclude=CONNECTION_A1))
    with pytest.raises(ValueError, match='exclude is only for target "group"'):
        await resolve(publisher.to_user("42").send("a", 1, exclude=CONNECTION_A1))
    with pytest.raises(ValueError, match='exclude is only for target "group"'):
        await resolve(publisher.broadcast().send("a", 1, exclude=CONNECTION_A1))
    with pytest.raises(ValueError, match="not a wsq connection id"):
        await resolve(publisher.to_group("room").send("a", 1, exclude="gw-b"))
    with pytest.raises(ValueError, match="close code"):
        await resolve(publisher.to_group("room").disconnect(code=1001))
    with pytest.raises(ValueError, match="action must be"):
        await resolve(publisher.to(CONNECTION_B).send("$error", None))
    with pytest.raises(TypeError):
        await resolve(publisher.to(CONNECTION_B).send("a", object()))
    with pytest.raises(ValueError, match="not a wsq connection id"):
        publisher.to("gw-b")
    with pytest.raises(ValueError, match="user id"):
        publisher.to_user("")
    for group in ("", "room lobby", "g" * 129):
        with pytest.raises(ValueError, match="group name"):
            publisher.to_group(group)
        with pytest.raises(ValueError, match="group name"):
            await resolve(publisher.join(CONNECTION_B, group))
        with pytest.raises(ValueError, match="group name"):
            await resolve(publisher.leave(CONNECTION_B, group))
        with pytest.raises(ValueError, match="group name"):
            await resolve(publisher.group_members(group))
    with pytest.raises(ValueError, match="not a wsq connection id"):
        await resolve(publisher.join("gw-b", "room"))
    with pytest.raises(ValueError, match="not a wsq connection id"):
        await resolve(publisher.connection_info("gw-b"))
    with pytest.raises(ValueError, match="user id"):
        await resolve(publisher.connections(""))
    with pytest.raises(ValueError, match="user id"):
        await resolve(publisher.is_online(""))
    assert await written(redis_client, key_prefix) == []


# One call per way of reaching Redis (each takes ~0.7 s of retries): XADD, each script, a read,
# a pipelined read.
UNREACHABLE_CALLS: dict[str, Callable[[Any], Any]] = {
    "to": lambda pub: pub.to(CONNECTION_B).send("a", 1),
    "to_group": lambda pub: pub.to_group("room").send("a", 1, exclude=CONNECTION_A1),
    "join": lambda pub: pub.join(CONNECTION_B, "room"),
    "leave": lambda pub: pub.leave(CONNECTION_B, "room"),
    "connections": lambda pub: pub.connections("42"),
    "connection_info": lambda pub: pub.connection_info(CONNECTION_B),
}


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_unreachable_redis_raises_publish_error(kind: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    sync_publisher, async_publisher = Publisher(url, "p"), AsyncPublisher(url, "p")
    pub = sync_publisher if kind == "sync" else async_publisher
    try:
        for name, call in UNREACHABLE_CALLS.items():
            started = time.monotonic()
            with pytest.raises(PublishError, match="Redis is unavailable") as raised:
                await resolve(call(pub))
            assert isinstance(raised.value, WsqError)
            assert raised.value.code == "unavailable", name  # the only code worth retrying as is
            assert isinstance(raised.value.__cause__, redis.ConnectionError), name
            assert time.monotonic() - started < 5, f"{name}: publishers should fail fast"
    finally:
        sync_publisher.close()
        await async_publisher.aclose()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_publisher_reconnects_after_a_redis_restart(kind: str, key_prefix: str) -> None:
    with RedisServer() as server:
        live_sync(server.url, key_prefix, "gw-b")
        if kind == "sync":
            with Publisher(server.url, key_prefix) as sync_publisher:
                sync_publisher.to(CONNECTION_B).send("a", 1)
                server.stop()
                with pytest.raises(PublishError):
                    sync_publisher.to(CONNECTION_B).send("a", 2)
                server.start()  # empty: the gateway makes its stream again as it reconnects
                live_sync(server.url, key_prefix, "gw-b")
                sync_publisher.to(CONNECTION_B).send("a", 3)
        else:
            async with AsyncPublisher(server.url, key_prefix) as async_publisher:
                await async_publisher.to(CONNECTION_B).send("a", 1)
                server.stop()
                with pytest.raises(PublishError):
                    await async_publisher.to(CONNECTION_B).send("a", 2)
                server.start()
                live_sync(server.url, key_prefix, "gw-b")
                await async_publisher.to(CONNECTION_B).send("a", 3)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            commands = [fields for _, fields in str_entries(client.xrange(node_stream(key_prefix, "gw-b")))]
        finally:
            client.close()
        assert [json.loads(command["frame"])["data"] for command in commands] == [3]


async def test_redis_refusing_a_command_raises_publish_error(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    await redis_client.set(node_stream(key_prefix, "gw-b"), "not a stream")
    with pytest.raises(PublishError, match="refused"):
        await resolve(publisher.to(CONNECTION_B).send("a", 1))


def test_sync_publisher_is_safe_to_share_between_threads(redis_url: str, key_prefix: str) -> None:
    threads, per_thread = 8, 50
    barrier = threading.Barrier(threads)
    connections = [f"gw-b.{number:022d}" for number in range(threads)]
    publisher: Publisher  # bound by the with below; publish() runs in it

    def publish(connection_id: str) -> None:
        barrier.wait()  # all threads publish at the same time
        for number in range(per_thread):
            publisher.to(connection_id).send("n", number)

    live_sync(redis_url, key_prefix, "gw-b")
    with Publisher(redis_url, key_prefix) as publisher, ThreadPoolExecutor(threads) as pool:
        list(pool.map(publish, connections))

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        commands = [fields for _, fields in str_entries(client.xrange(node_stream(key_prefix, "gw-b")))]
    finally:
        client.close()
    assert len(commands) == threads * per_thread
    for connection_id in connections:
        numbers = [
            json.loads(command["frame"])["data"] for command in commands if command["to"] == connection_id
        ]
        assert numbers == list(range(per_thread)), "each thread's sends keep their order"


def test_from_env_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str
) -> None:
    monkeypatch.setenv("WSQ_REDIS_URL", redis_url)
    monkeypatch.setenv("WSQ_KEY_PREFIX", key_prefix)
    with Publisher.from_env() as publisher:
        assert publisher.key_prefix == key_prefix
        publisher.broadcast().send("a")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xlen(f"{key_prefix}:broadcast") == 1
    finally:
        client.close()


def test_default_prefix_is_wsq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WSQ_KEY_PREFIX", raising=False)
    with Publisher("redis://127.0.0.1:1/0") as publisher:
        assert publisher.key_prefix == "wsq"


def test_publisher_with_a_client_of_its_own_leaves_it_open(redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    live_sync(redis_url, key_prefix, "gw-b")
    try:
        with Publisher(client=client, key_prefix=key_prefix) as publisher:
            publisher.to(CONNECTION_B).send("a")
        assert client.xlen(node_stream(key_prefix, "gw-b")) == 1  # still usable
    finally:
        client.close()
    with pytest.raises(ValueError, match="not both"):
        Publisher(redis_url, client=client)


async def test_async_publisher_with_a_client_of_its_own_leaves_it_open(
    redis_url: str, key_prefix: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    await live(client, key_prefix, "gw-b")
    try:
        async with AsyncPublisher(client=client, key_prefix=key_prefix) as publisher:
            await publisher.to_user("42").send("a")
            await publisher.to(CONNECTION_B).send("a")
        assert await client.xlen(node_stream(key_prefix, "gw-b")) == 1
    finally:
        await client.aclose()


# Groups.

GROUP = "room:lobby"


def group_send(frame: str, exclude: str | None = None) -> dict[str, str]:
    command = {"v": "1", "type": "send", "target": "group", "to": GROUP}
    if exclude is not None:
        command["exclude"] = exclude
    return command | {"frame": frame}


def membership(kind: str, connection_id: str, group: str = GROUP) -> dict[str, str]:
    return {"v": "1", "type": kind, "target": "connection", "to": connection_id, "group": group}


@pytest.fixture
async def members(gateway_on: Callable[[str], FakeGateway], publisher: Any) -> dict[str, Any]:
    """Gateways gw-a_1 (CONNECTION_A1 and CONNECTION_A2) and gw-b (CONNECTION_B), every
    connection registered and in GROUP."""
    gateways = {"gw-a_1": gateway_on("gw-a_1"), "gw-b": gateway_on("gw-b")}
    for connection_id in (CONNECTION_A1, CONNECTION_A2, CONNECTION_B):
        await gateways[connection_id.split(".")[0]].register(connection_id)
        assert await resolve(publisher.join(connection_id, GROUP)) is True
    return gateways


async def test_to_group_reaches_each_gateway_of_the_members_once(
    publisher: Any, members: dict[str, FakeGateway]
) -> None:
    assert await resolve(publisher.to_group(GROUP).send("chat_text", {"text": "hi"})) == 2
    # examples/valid/command/send-group.json
    expected = group_send('{"action":"chat_text","data":{"text":"hi"}}')
    gateway_a, gateway_b = members["gw-a_1"], members["gw-b"]
    assert [c.fields for c in await gateway_a.commands()] == [
        membership("join", CONNECTION_A1),
        membership("join", CONNECTION_A2),
        expected,
    ]
    assert [c.fields for c in await gateway_b.commands()] == [membership("join", CONNECTION_B), expected]


async def test_to_group_with_exclude(publisher: Any, members: dict[str, FakeGateway]) -> None:
    reached = await resolve(
        publisher.to_group(GROUP).send("chat_text", {"text": "hi"}, exclude=CONNECTION_A1)
    )
    assert reached == 2, "each gateway holding a member gets it; the gateway leaves out the excluded one"
    # examples/valid/command/send-group-exclude.json (but with our connection ids)
    expected = group_send('{"action":"chat_text","data":{"text":"hi"}}', exclude=CONNECTION_A1)
    for gateway in members.values():
        assert (await gateway.commands())[-1].fields == expected


async def test_to_group_without_members_reaches_nobody(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    assert await resolve(publisher.to_group("empty").send("a", 1, exclude=CONNECTION_B)) == 0
    assert await written(redis_client, key_prefix) == []


async def test_join_of_an_unregistered_connection_does_nothing(
    publisher: Any,
    gateway_on: Callable[[str], FakeGateway],
    redis_client: redis.asyncio.Redis,
    key_prefix: str,
) -> None:
    assert await resolve(publisher.join(CONNECTION_B, GROUP)) is False
    assert await written(redis_client, key_prefix) == []
    gateway_b = gateway_on("gw-b")
    await gateway_b.register(CONNECTION_B)
    await redis_client.delete(keys_for(key_prefix).connection(CONNECTION_B))  # gone, as after its clean-up
    assert await resolve(publisher.join(CONNECTION_B, GROUP)) is False
    assert await gateway_b.commands() == []
    assert not await redis_client.exists(
        keys_for(key_prefix).group_connections(GROUP), keys_for(key_prefix).connection_groups(CONNECTION_B)
    )


async def test_join_updates_both_sets_and_comes_before_the_next_send(
    publisher: Any,
    gateway_on: Callable[[str], FakeGateway],
    redis_client: redis.asyncio.Redis,
    key_prefix: str,
) -> None:
    gateway_b = gateway_on("gw-b")
    await gateway_b.register(CONNECTION_B)
    assert await resolve(publisher.join(CONNECTION_B, GROUP)) is True
    assert await resolve(publisher.join(CONNECTION_B, "other")) is True
    assert await resolve(publisher.to_group(GROUP).send("chat_text", "hi")) == 1
    assert await redis_client.smembers(keys_for(key_prefix).group_connections(GROUP)) == {CONNECTION_B}
    assert await redis_client.smembers(keys_for(key_prefix).connection_groups(CONNECTION_B)) == {
        GROUP,
        "other",
    }
    # examples/valid/command/join.json, then the send: in this order on the holding gateway's stream.
    assert [c.fields for c in await gateway_b.commands()] == [
        membership("join", CONNECTION_B),
        membership("join", CONNECTION_B, "other"),
        group_send('{"action":"chat_text","data":"hi"}'),
    ]


async def test_join_and_leave_make_the_group_index_agree(
    publisher: Any,
    gateway_on: Callable[[str], FakeGateway],
    redis_client: redis.asyncio.Redis,
    key_prefix: str,
) -> None:
    """join.lua and leave.lua run in the connection's shard and record an intent; the publisher
    then writes the group's set and its count per gateway (their own slot) and settles the
    intent, before join() returns: a push to the group right after reaches the member."""
    keys = keys_for(key_prefix)
    await gateway_on("gw-b").register(CONNECTION_B)
    await gateway_on("gw-a_1").register(CONNECTION_A1)
    assert await resolve(publisher.join(CONNECTION_B, GROUP)) is True
    assert await resolve(publisher.join(CONNECTION_A1, GROUP)) is True
    assert await redis_client.smembers(keys.group_connections(GROUP)) == {CONNECTION_A1, CONNECTION_B}
    assert await redis_client.hgetall(keys.group_nodes(GROUP)) == {"gw-b": "1", "gw-a_1": "1"}
    for node in ("gw-b", "gw-a_1"):
        assert await redis_client.zcard(keys.node_intents(node)) == 0, "settled"
    assert await resolve(publisher.leave(CONNECTION_B, GROUP)) is True
    assert await redis_client.smembers(keys.group_connections(GROUP)) == {CONNECTION_A1}
    assert await redis_client.hgetall(keys.group_nodes(GROUP)) == {"gw-a_1": "1"}
    assert await redis_client.zcard(keys.node_intents("gw-b")) == 0


async def test_join_twice_is_harmless(publisher: Any, gateway_on: Callable[[str], FakeGateway]) -> None:
    gateway_b = gateway_on("gw-b")
    await gateway_b.register(CONNECTION_B)
    assert await resolve(publisher.join(CONNECTION_B, GROUP)) is True
    assert await resolve(publisher.join(CONNECTION_B, GROUP)) is True
    assert await resolve(publisher.group_members(GROUP)) == [CONNECTION_B]
    assert await resolve(publisher.to_group(GROUP).send("a")) == 1


async def test_leave_updates_both_sets_and_writes_the_command(
    publisher: Any, members: dict[str, FakeGateway], redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    assert await resolve(publisher.join(CONNECTION_B, "other")) is True
    assert await resolve(publisher.leave(CONNECTION_B, GROUP)) is True
    assert await redis_client.smembers(keys_for(key_prefix).group_connections(GROUP)) == {
        CONNECTION_A1,
        CONNECTION_A2,
    }
    assert await redis_client.smembers(keys_for(key_prefix).connection_groups(CONNECTION_B)) == {"other"}
    # examples/valid/command/leave.json
    assert (await members["gw-b"].commands())[-1].fields == membership("leave", CONNECTION_B)
    assert await resolve(publisher.to_group(GROUP).send("a")) == 1, "only gw-a_1 has members left"
    assert await resolve(publisher.leave(CONNECTION_B, "other")) is True
    assert not await redis_client.exists(keys_for(key_prefix).connection_groups(CONNECTION_B))


async def test_leave_of_a_non_member_does_nothing(
    publisher: Any, members: dict[str, FakeGateway], redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    before = await members["gw-b"].commands()
    assert await resolve(publisher.leave(CONNECTION_B, "other")) is False
    assert await resolve(publisher.leave(CONNECTION_B, GROUP)) is True
    assert await resolve(publisher.leave(CONNECTION_B, GROUP)) is False
    after = await members["gw-b"].commands()
    assert after[: len(before)] == before
    assert [c.fields for c in after[len(before) :]] == [membership("leave", CONNECTION_B)]
    assert not await redis_client.exists(keys_for(key_prefix).group_connections("other"))


async def test_disconnect_every_target(
    publisher: Any,
    members: dict[str, FakeGateway],
    redis_client: redis.asyncio.Redis,
    key_prefix: str,
    schemas: Schemas,
) -> None:
    await add_to_index(redis_client, key_prefix, "u", "42", CONNECTION_A1, CONNECTION_B)
    assert await resolve(publisher.to_user("42").disconnect(4001, "logged out")) == 2
    assert await resolve(publisher.to_group(GROUP).disconnect(4002)) == 2
    assert await resolve(publisher.broadcast().disconnect(1000, "maintenance")) == 1
    # examples/valid/command/disconnect-user.json
    to_user = {
        "v": "1",
        "type": "disconnect",
        "target": "user",
        "to": "42",
        "code": "4001",
        "reason": "logged out",
    }
    to_group = {"v": "1", "type": "disconnect", "target": "group", "to": GROUP, "code": "4002", "reason": ""}
    for gateway in members.values():
        assert [c.fields for c in await gateway.commands()][-2:] == [to_user, to_group]
    [everyone] = await entries(redis_client, f"{key_prefix}:broadcast")
    assert everyone == {
        "v": "1",
        "type": "disconnect",
        "target": "all",
        "code": "1000",
        "reason": "maintenance",
    }
    schemas.check("command", everyone)


# Shards.


async def test_the_first_publisher_records_its_number_of_shards(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    await resolve(publisher.broadcast().send("a"))
    assert await redis_client.get(keys_for(key_prefix).shards_key) == "16"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_publisher_with_another_number_of_shards_refuses_to_write(
    kind: str, redis_url: str, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """Its keys would not be the gateways': a push would reach nobody, a join change a set no one
    reads. Nothing is written, reads included."""
    await redis_client.set(keys_for(key_prefix).shards_key, "4")
    await live(redis_client, key_prefix, "gw-b")
    calls: list[Callable[[Any], Any]] = [
        lambda pub: pub.to(CONNECTION_B).send("a", 1),
        lambda pub: pub.broadcast().send("a", 1),
        lambda pub: pub.join(CONNECTION_B, GROUP),
    ]
    sync_publisher, async_publisher = Publisher(redis_url, key_prefix), AsyncPublisher(redis_url, key_prefix)
    pub = sync_publisher if kind == "sync" else async_publisher
    try:
        for call in calls:
            with pytest.raises(PublishError, match=r"WSQ_SHARDS=16, but .* uses 4 shards.*nothing was sent"):
                await resolve(call(pub))
        with pytest.raises(PublishError, match="nothing was read"):
            await resolve(pub.connections("42"))
    finally:
        sync_publisher.close()
        await async_publisher.aclose()
    assert await written(redis_client, key_prefix) == [node_stream(key_prefix, "gw-b")]
    assert await redis_client.xlen(node_stream(key_prefix, "gw-b")) == 0


async def test_a_publisher_of_the_deployments_shards_writes_to_their_keys(
    redis_url: str, redis_client: redis.asyncio.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSQ_SHARDS", "4")
    keys = keys_for(key_prefix, 4)
    await redis_client.set(keys.shards_key, "4")
    await redis_client.eval(CREATE_NODE_STREAM, 1, keys.node_stream("gw-b"))
    async with AsyncPublisher(redis_url, key_prefix) as publisher:
        assert publisher.shards == 4
        assert await publisher.to(CONNECTION_B).send("a", 1) == 1
    assert await redis_client.xlen(keys.node_stream("gw-b")) == 1


# Presence.


async def test_presence_answers_from_the_registry(
    publisher: Any, gateway_on: Callable[[str], FakeGateway]
) -> None:
    gateway_a, gateway_b = gateway_on("gw-a_1"), gateway_on("gw-b")
    await gateway_a.register(CONNECTION_A1, user_id="42", addr="198.51.100.1", since_ms=1795852800123)
    await gateway_a.register(CONNECTION_A2)  # anonymous
    await gateway_b.register(CONNECTION_B, user_id="42", addr="198.51.100.2", since_ms=1795852801000)
    assert await resolve(publisher.join(CONNECTION_A1, GROUP)) is True
    assert await resolve(publisher.join(CONNECTION_A1, "team/blue")) is True
    assert await resolve(publisher.join(CONNECTION_A2, GROUP)) is True

    assert await resolve(publisher.connections("42")) == sorted([CONNECTION_A1, CONNECTION_B])
    assert await resolve(publisher.connections("7")) == []
    assert await resolve(publisher.is_online("42")) is True
    assert await resolve(publisher.is_online("7")) is False
    assert await resolve(publisher.group_members(GROUP)) == sorted([CONNECTION_A1, CONNECTION_A2])
    assert await resolve(publisher.group_members("team/blue")) == [CONNECTION_A1]
    assert await resolve(publisher.group_members("nobody")) == []

    info = await resolve(publisher.connection_info(CONNECTION_A1))
    assert info == ConnectionInfo(
        connection_id=CONNECTION_A1,
        node="gw-a_1",
        user_id="42",
        connected_since=datetime(2026, 11, 28, 8, 0, 0, 123000, tzinfo=UTC),  # since: 1795852800123 ms
        addr="198.51.100.1",
        groups=frozenset({GROUP, "team/blue"}),
    )
    anonymous = await resolve(publisher.connection_info(CONNECTION_A2))
    assert (anonymous.user_id, anonymous.node, anonymous.groups) == (None, "gw-a_1", frozenset({GROUP}))
    alone = await resolve(publisher.connection_info(CONNECTION_B))
    assert (alone.user_id, alone.groups, alone.addr) == ("42", frozenset(), "198.51.100.2")
    assert await resolve(publisher.connection_info("gw-c.CCCCCCCCCCCCCCCCCCCCCC")) is None

    assert await resolve(publisher.leave(CONNECTION_A1, "team/blue")) is True
    assert (await resolve(publisher.connection_info(CONNECTION_A1))).groups == frozenset({GROUP})


async def test_connection_info_is_frozen(publisher: Any, gateway_on: Callable[[str], FakeGateway]) -> None:
    await gateway_on("gw-b").register(CONNECTION_B)
    info = await resolve(publisher.connection_info(CONNECTION_B))
    with pytest.raises(AttributeError):
        info.node = "elsewhere"


async def test_connection_info_refuses_a_malformed_registry_entry(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    await redis_client.hset(
        keys_for(key_prefix).connection(CONNECTION_B), mapping={"node": "gw-b", "since": "soon"}
    )
    with pytest.raises(ProtocolError, match="since"):
        await resolve(publisher.connection_info(CONNECTION_B))
    await redis_client.hset(keys_for(key_prefix).connection(CONNECTION_A1), mapping={"since": "1"})
    with pytest.raises(ProtocolError, match="no node"):
        await resolve(publisher.connection_info(CONNECTION_A1))


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_presence_with_a_client_that_decodes_replies(
    kind: str, redis_url: str, key_prefix: str, gateway_on: Callable[[str], FakeGateway]
) -> None:
    await gateway_on("gw-b").register(CONNECTION_B, user_id="42")
    if kind == "sync":
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        with Publisher(client=client, key_prefix=key_prefix) as sync_publisher:
            assert sync_publisher.join(CONNECTION_B, GROUP)
            assert sync_publisher.connections("42") == [CONNECTION_B]
            info = sync_publisher.connection_info(CONNECTION_B)
        client.close()
    else:
        async_client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        async with AsyncPublisher(client=async_client, key_prefix=key_prefix) as async_publisher:
            assert await async_publisher.join(CONNECTION_B, GROUP)
            assert await async_publisher.connections("42") == [CONNECTION_B]
            info = await async_publisher.connection_info(CONNECTION_B)
        await async_client.aclose()
    assert info is not None
    assert (info.node, info.user_id, info.groups) == ("gw-b", "42", frozenset({GROUP}))


async def test_presence_reads_refused_by_redis_raise_publish_error(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    await redis_client.set(keys_for(key_prefix).user_connections("42"), "not a set")
    await redis_client.set(keys_for(key_prefix).connection(CONNECTION_B), "not a hash")
    with pytest.raises(PublishError, match="refused"):
        await resolve(publisher.connections("42"))
    with pytest.raises(PublishError, match="refused"):
        await resolve(publisher.is_online("42"))
    with pytest.raises(PublishError, match="refused"):
        await resolve(publisher.connection_info(CONNECTION_B))


async def test_join_refused_by_redis_raises_publish_error(
    publisher: Any,
    gateway_on: Callable[[str], FakeGateway],
    redis_client: redis.asyncio.Redis,
    key_prefix: str,
) -> None:
    await gateway_on("gw-b").register(CONNECTION_B)
    await redis_client.set(node_stream(key_prefix, "gw-b"), "not a stream")
    with pytest.raises(PublishError, match="refused"):
        await resolve(publisher.join(CONNECTION_B, GROUP))


# AsyncPublisher's batches.


async def test_concurrent_async_pushes_share_round_trips(
    redis_url: str, key_prefix: str, redis_client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    round_trips: list[int] = []
    execute = speedups.RedisPipe.execute

    async def counting(pipe: speedups.RedisPipe, commands: Any) -> list[Any]:
        round_trips.append(len(commands))
        return await execute(pipe, commands)

    await live(redis_client, key_prefix, "gw-b")
    monkeypatch.setattr(speedups.RedisPipe, "execute", counting)
    async with AsyncPublisher(redis_url, key_prefix) as publisher:
        results = await asyncio.gather(*(publisher.to(CONNECTION_B).send("n", n) for n in range(200)))
    assert results == [1] * 200
    assert sum(round_trips) == 200
    assert len(round_trips) <= 3, f"200 pushes awaited together took {len(round_trips)} round trips"
    commands = await entries(redis_client, node_stream(key_prefix, "gw-b"))
    assert [json.loads(command["frame"])["data"] for command in commands] == list(range(200))


async def test_async_pushes_survive_a_script_flush(
    publisher: Any, members: dict[str, FakeGateway], redis_client: redis.asyncio.Redis
) -> None:
    await redis_client.script_flush()  # what a Redis restart does to loaded scripts
    reached = await asyncio.gather(
        resolve(publisher.to_group(GROUP).send("a", 1)),
        resolve(publisher.to(CONNECTION_B).send("b", 2)),
        resolve(publisher.to_user("nobody").send("c", 3)),
    )
    assert list(reached) == [2, 1, 0]
    frames = [c.fields["frame"] for c in await members["gw-b"].commands() if c.fields["type"] == "send"]
    assert sorted(frames) == ['{"action":"a","data":1}', '{"action":"b","data":2}']


async def test_a_refused_async_push_fails_alone(
    redis_url: str, key_prefix: str, redis_client: redis.asyncio.Redis
) -> None:
    await live(redis_client, key_prefix, "gw-b")
    await redis_client.set(node_stream(key_prefix, "gw-a_1"), "not a stream")
    async with AsyncPublisher(redis_url, key_prefix) as publisher:
        refused, sent = await asyncio.gather(
            publisher.to(CONNECTION_A1).send("a", 1),
            publisher.to(CONNECTION_B).send("b", 2),
            return_exceptions=True,
        )
    assert isinstance(refused, PublishError)
    assert isinstance(refused.__cause__, redis.ResponseError)
    assert sent == 1
    assert await redis_client.xlen(node_stream(key_prefix, "gw-b")) == 1


async def test_an_async_write_redis_cant_carry_fails_alone(
    redis_url: str, key_prefix: str, redis_client: redis.asyncio.Redis
) -> None:
    """Pushes validate their text, so this write goes to the batching below them directly: a str
    that is not UTF-8 raises in its own caller, and the pushes awaited with it go out (one batch
    would fail them all)."""
    await live(redis_client, key_prefix, "gw-b")
    async with AsyncPublisher(redis_url, key_prefix) as publisher:
        unencodable = ("XADD", node_stream(key_prefix, "gw-b"), "*", "frame", "\ud800")
        sent_before: int | BaseException
        refused: object  # what _batches.run() returns (Any), or what it raised
        sent_after: int | BaseException
        sent_before, refused, sent_after = await asyncio.gather(
            publisher.to(CONNECTION_B).send("b", 1),
            publisher._batches.run(unencodable[1], unencodable),
            publisher.to(CONNECTION_B).send("b", 2),
            return_exceptions=True,
        )
    assert isinstance(refused, UnicodeEncodeError)
    assert (sent_before, sent_after) == (1, 1)
    commands = await entries(redis_client, node_stream(key_prefix, "gw-b"))
    assert [json.loads(command["frame"])["data"] for command in commands] == [1, 2]


# A gateway that is gone (reaped, or left): its stream was deleted and nothing creates it again.


async def test_a_push_to_a_connection_of_a_gone_gateway_writes_nothing(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    assert await resolve(publisher.to(CONNECTION_B).send("a", 1)) == 0
    assert await resolve(publisher.to(CONNECTION_B).disconnect(4000, "bye")) == 0
    assert await written(redis_client, key_prefix) == []


async def test_to_user_and_to_group_skip_the_gateways_that_are_gone(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    await live(redis_client, key_prefix, "gw-a_1")  # gw-b is gone; its members not forgotten yet
    await add_to_index(redis_client, key_prefix, "u", "42", CONNECTION_A1, CONNECTION_B)
    await add_to_index(redis_client, key_prefix, "g", GROUP, CONNECTION_A1, CONNECTION_B)
    assert await resolve(publisher.to_user("42").send("a", 1)) == 1
    assert await resolve(publisher.to_group(GROUP).send("a", 2)) == 1
    assert await redis_client.xlen(node_stream(key_prefix, "gw-a_1")) == 2
    assert not await redis_client.exists(node_stream(key_prefix, "gw-b"))


async def test_join_and_leave_do_not_create_the_stream_of_a_gone_gateway(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    # Still registered (its gateway died, not reaped yet), its gateway's stream already gone.
    await redis_client.hset(
        keys_for(key_prefix).connection(CONNECTION_B), mapping={"node": "gw-b", "since": "1"}
    )
    assert await resolve(publisher.join(CONNECTION_B, GROUP)) is True
    assert await resolve(publisher.leave(CONNECTION_B, GROUP)) is True
    assert not await redis_client.exists(node_stream(key_prefix, "gw-b"))


async def test_a_group_push_reaches_members_on_gateways_it_had_not_reached(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """Each push reads the group's gateways afresh: a member joined on another gateway meanwhile
    is reached by the next push. Each push is written once to each gateway."""
    await live(redis_client, key_prefix, "gw-a", "gw-b")
    await add_to_index(redis_client, key_prefix, "g", "room", f"gw-a.{'a' * 22}")
    assert await resolve(publisher.to_group("room").send("n", 1)) == 1
    await add_to_index(redis_client, key_prefix, "g", "room", f"gw-b.{'b' * 22}")
    assert await resolve(publisher.to_group("room").send("n", 2)) == 2
    assert await redis_client.xlen(node_stream(key_prefix, "gw-a")) == 2
    assert await redis_client.xlen(node_stream(key_prefix, "gw-b")) == 1
