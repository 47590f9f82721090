"""Publisher and AsyncPublisher against the private Redis: the exact commands, where they go."""

from __future__ import annotations

import inspect
import json
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import redis.asyncio

from wsq_devkit import RedisServer, free_port
from wsq_worker import AsyncPublisher, Publisher, PublishError, WsqError
from wsq_worker.constants import BROADCAST_STREAM_MAXLEN, NODE_STREAM_MAXLEN
from wsq_worker.publisher import Route

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


async def entries(client: redis.asyncio.Redis, stream: str) -> list[dict[str, str]]:
    return [fields for _, fields in await client.xrange(stream)]


async def test_to_writes_one_command_to_the_node_stream(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str, schemas: Any
) -> None:
    assert await resolve(publisher.to(CONNECTION_A1).send("chat_text", {"text": "hi"})) == 1
    commands = await entries(redis_client, f"{key_prefix}:node:gw-a_1:out")
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
    assert await redis_client.keys(f"{key_prefix}:*") == [f"{key_prefix}:node:gw-a_1:out"]


async def test_sends_to_one_connection_keep_their_order(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    for number in range(20):
        await resolve(publisher.to(CONNECTION_B).send("n", number))
    commands = await entries(redis_client, f"{key_prefix}:node:gw-b:out")
    assert [json.loads(command["frame"])["data"] for command in commands] == list(range(20))


async def test_to_user_reaches_each_gateway_of_the_user_once(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str, schemas: Any
) -> None:
    await redis_client.sadd(f"{key_prefix}:user:42:conns", CONNECTION_A1, CONNECTION_A2, CONNECTION_B)
    assert await resolve(publisher.to_user("42").send("notice", "you have mail")) == 2
    expected = {
        "v": "1",
        "type": "send",
        "target": "user",
        "to": "42",
        "frame": '{"action":"notice","data":"you have mail"}',
    }
    assert await entries(redis_client, f"{key_prefix}:node:gw-a_1:out") == [expected]
    assert await entries(redis_client, f"{key_prefix}:node:gw-b:out") == [expected]
    schemas.check("command", expected)
    assert sorted(await redis_client.keys(f"{key_prefix}:node:*")) == [
        f"{key_prefix}:node:gw-a_1:out",
        f"{key_prefix}:node:gw-b:out",
    ]


async def test_to_user_without_connections_reaches_nobody(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    assert await resolve(publisher.to_user("nobody").send("notice", 1)) == 0
    assert await redis_client.keys(f"{key_prefix}:*") == []


async def test_to_user_skips_malformed_connection_ids(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    await redis_client.sadd(f"{key_prefix}:user:7:conns", "no-dot", ".x", CONNECTION_B)
    assert await resolve(publisher.to_user("7").send("notice", 1)) == 1
    assert await redis_client.keys(f"{key_prefix}:node:*") == [f"{key_prefix}:node:gw-b:out"]


async def test_broadcast_writes_to_the_broadcast_stream(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str, schemas: Any
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
    assert Route.connection("p", CONNECTION_B).disconnect().maxlen == NODE_STREAM_MAXLEN == 100_000
    assert Route.everyone("p").send("{}").maxlen == BROADCAST_STREAM_MAXLEN == 1_000


async def test_disconnect_writes_the_command(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str, schemas: Any
) -> None:
    await resolve(publisher.to(CONNECTION_B).disconnect(code=4000, reason="kicked"))
    await resolve(publisher.to(CONNECTION_B).disconnect())
    commands = await entries(redis_client, f"{key_prefix}:node:gw-b:out")
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
    with pytest.raises(ValueError, match="one connection"):
        await resolve(publisher.to_user("42").disconnect())
    with pytest.raises(ValueError, match="one connection"):
        await resolve(publisher.broadcast().disconnect())
    with pytest.raises(ValueError, match="action must be"):
        await resolve(publisher.to(CONNECTION_B).send("$error", None))
    with pytest.raises(TypeError):
        await resolve(publisher.to(CONNECTION_B).send("a", object()))
    with pytest.raises(ValueError, match="not a wsq connection id"):
        publisher.to("gw-b")
    with pytest.raises(ValueError, match="user id"):
        publisher.to_user("")
    assert await redis_client.keys(f"{key_prefix}:*") == []


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_unreachable_redis_raises_publish_error(kind: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    if kind == "sync":
        with Publisher(url, "p") as sync_publisher:
            with pytest.raises(PublishError, match="Redis is unavailable") as raised:
                sync_publisher.to(CONNECTION_B).send("a", 1)
            with pytest.raises(PublishError, match="Redis is unavailable"):
                sync_publisher.to_user("42").send("a", 1)
    else:
        async with AsyncPublisher(url, "p") as async_publisher:
            with pytest.raises(PublishError, match="Redis is unavailable") as raised:
                await async_publisher.to(CONNECTION_B).send("a", 1)
            with pytest.raises(PublishError, match="Redis is unavailable"):
                await async_publisher.to_user("42").send("a", 1)
    assert isinstance(raised.value, WsqError)
    assert isinstance(raised.value.__cause__, redis.ConnectionError)
    assert time.monotonic() - started < 5, "publishers should fail fast"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_publisher_reconnects_after_a_redis_restart(kind: str, key_prefix: str) -> None:
    with RedisServer() as server:
        if kind == "sync":
            with Publisher(server.url, key_prefix) as sync_publisher:
                sync_publisher.to(CONNECTION_B).send("a", 1)
                server.stop()
                with pytest.raises(PublishError):
                    sync_publisher.to(CONNECTION_B).send("a", 2)
                server.start()
                sync_publisher.to(CONNECTION_B).send("a", 3)
        else:
            async with AsyncPublisher(server.url, key_prefix) as async_publisher:
                await async_publisher.to(CONNECTION_B).send("a", 1)
                server.stop()
                with pytest.raises(PublishError):
                    await async_publisher.to(CONNECTION_B).send("a", 2)
                server.start()
                await async_publisher.to(CONNECTION_B).send("a", 3)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            commands = [fields for _, fields in client.xrange(f"{key_prefix}:node:gw-b:out")]
        finally:
            client.close()
        assert [json.loads(command["frame"])["data"] for command in commands] == [3]


async def test_redis_refusing_a_command_raises_publish_error(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    await redis_client.set(f"{key_prefix}:node:gw-b:out", "not a stream")
    with pytest.raises(PublishError, match="refused"):
        await resolve(publisher.to(CONNECTION_B).send("a", 1))


def test_sync_publisher_is_safe_to_share_between_threads(redis_url: str, key_prefix: str) -> None:
    threads, per_thread = 8, 50
    barrier = threading.Barrier(threads)
    connections = [f"gw-b.{number:022d}" for number in range(threads)]

    def publish(connection_id: str) -> None:
        barrier.wait()  # all threads publish at the same time
        for number in range(per_thread):
            publisher.to(connection_id).send("n", number)

    with Publisher(redis_url, key_prefix) as publisher, ThreadPoolExecutor(threads) as pool:
        list(pool.map(publish, connections))

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        commands = [fields for _, fields in client.xrange(f"{key_prefix}:node:gw-b:out")]
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
    try:
        with Publisher(client=client, key_prefix=key_prefix) as publisher:
            publisher.to(CONNECTION_B).send("a")
        assert client.xlen(f"{key_prefix}:node:gw-b:out") == 1  # still usable
    finally:
        client.close()
    with pytest.raises(ValueError, match="not both"):
        Publisher(redis_url, client=client)


async def test_async_publisher_with_a_client_of_its_own_leaves_it_open(
    redis_url: str, key_prefix: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        async with AsyncPublisher(client=client, key_prefix=key_prefix) as publisher:
            await publisher.to_user("42").send("a")
            await publisher.to(CONNECTION_B).send("a")
        assert await client.xlen(f"{key_prefix}:node:gw-b:out") == 1
    finally:
        await client.aclose()
