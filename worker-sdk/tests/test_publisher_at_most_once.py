"""Publishers send a write at most once: never again once it may have reached Redis.

``ReplyCutter`` forwards the write, swallows Redis's answer, then cuts the connection: Redis
ran the write, and the publisher can't know it. The write must be in Redis once, and the
caller gets ``PublishError`` saying it may or may not have been written. Redis restarted while
the publisher was idle is found before anything is sent: the next push goes out.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio
from worker_harness import FakeGateway, ReplyCutter, create_node_stream

from wsq_devkit import RedisServer, wait_until_async
from wsq_protocol.keys import keys_for
from wsq_worker import AsyncPublisher, Context, Publisher, PublishError, Worker

MARKER = "unique-write-9d4c"
MAYBE = "it may or may not have been written"
USER = "u-at-most-once"

AnyPublisher = Publisher | AsyncPublisher


async def call(publisher: AnyPublisher, write: Callable[[Any], Any]) -> Any:
    """``write(publisher)``: a Publisher's in a thread (the proxy runs on this event loop)."""
    if isinstance(publisher, Publisher):
        return await asyncio.to_thread(write, publisher)
    result = write(publisher)
    assert inspect.isawaitable(result)
    return await result


@pytest.fixture(params=["sync", "async", "sync, client passed in", "async, client passed in"])
async def publisher(
    request: pytest.FixtureRequest, reply_cutter: ReplyCutter, key_prefix: str
) -> AsyncIterator[AnyPublisher]:
    """A Publisher and an AsyncPublisher through the proxy; also on a client passed in, with
    redis-py's own retries (as ``ctx.publisher`` is on the worker's)."""
    url = await reply_cutter.start()
    kind: str = request.param
    if kind == "sync":
        with Publisher(url, key_prefix) as sync_publisher:
            yield sync_publisher
    elif kind == "async":
        async with AsyncPublisher(url, key_prefix) as async_publisher:
            yield async_publisher
    elif kind.startswith("sync"):
        sync_client = redis.Redis.from_url(url, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 3))
        with Publisher(key_prefix=key_prefix, client=sync_client) as sync_publisher:
            yield sync_publisher
        await asyncio.to_thread(sync_client.close)
    else:
        async_client = redis.asyncio.Redis.from_url(
            url, retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 3)
        )
        async with AsyncPublisher(key_prefix=key_prefix, client=async_client) as async_publisher:
            yield async_publisher
        await async_client.aclose()


async def lose_the_answer(
    reply_cutter: ReplyCutter, run: Awaitable[Any], ran: Callable[[], Awaitable[bool]]
) -> Any:
    """Run the write armed with MARKER; once Redis ran it (``ran``), lose its answer and cut the
    connection. What the write returned, or raised."""
    reply_cutter.marker = MARKER.encode()
    running = asyncio.ensure_future(run)
    await asyncio.wait_for(reply_cutter.held.wait(), 10)
    await wait_until_async(ran, message="Redis to run the write")
    reply_cutter.cut_held()
    [outcome] = await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), 20)
    return outcome


def assert_maybe_written(outcome: Any) -> None:
    """``outcome`` is the PublishError saying the write may or may not have been written."""
    assert isinstance(outcome, PublishError), f"expected PublishError, got {outcome!r}"
    assert MAYBE in str(outcome)
    assert outcome.code == "maybe_written"  # what the gateway's HTTP API answers with
    assert isinstance(outcome.__cause__, redis.ConnectionError)


async def marked(gateway: FakeGateway) -> list[dict[str, str]]:
    """The commands on the gateway's node stream that carry MARKER."""
    return [command.fields for command in await gateway.commands() if MARKER in str(command.fields)]


async def written_once(gateway: FakeGateway) -> bool:
    return len(await marked(gateway)) == 1


WRITES: dict[str, Callable[[Any, str, str], Any]] = {
    # (publisher, connection id, text): a write whose command to the gateway carries the text.
    "to": lambda pub, connection_id, text: pub.to(connection_id).send("note", text),
    "to_user": lambda pub, connection_id, text: pub.to_user(USER).send("note", text),
    "disconnect": lambda pub, connection_id, text: pub.to(connection_id).disconnect(4000, text),
    "join": lambda pub, connection_id, text: pub.join(connection_id, text),
}


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_whose_answer_was_lost_is_not_sent_again(
    publisher: AnyPublisher, write: str, reply_cutter: ReplyCutter, gateway: FakeGateway
) -> None:
    connection_id = gateway.new_connection_id()
    await gateway.register(connection_id, user_id=USER)
    make = WRITES[write]
    # A first write: connected, and the scripts are loaded (no NOSCRIPT answer to lose).
    assert await call(publisher, lambda pub: make(pub, connection_id, "warm-up")) in (1, True)
    outcome = await lose_the_answer(
        reply_cutter,
        call(publisher, lambda pub: make(pub, connection_id, MARKER)),
        lambda: written_once(gateway),
    )
    commands = await marked(gateway)
    assert len(commands) == 1, f"written {len(commands)} times"
    assert_maybe_written(outcome)
    assert commands[0]["to"] in (connection_id, USER)
    # The publisher goes on, on a new connection.
    assert await call(publisher, lambda pub: make(pub, connection_id, "later")) in (1, True)
    assert len(await marked(gateway)) == 1
    assert len(await gateway.commands()) == 3


async def test_an_async_batch_whose_answer_was_lost_is_not_sent_again(
    reply_cutter: ReplyCutter, gateway: FakeGateway, key_prefix: str
) -> None:
    """The writes AsyncPublisher sends in one round trip all fail, none is sent twice. (A push
    to a user or a group reads its gateways first: its write goes in a later round trip.)"""
    connection_id = gateway.new_connection_id()
    await gateway.register(connection_id, user_id=USER)
    async with AsyncPublisher(await reply_cutter.start(), key_prefix) as publisher:
        assert await publisher.join(connection_id, "warm-up")
        assert await publisher.to_user(USER).send("note", "warm-up") == 1
        batch = asyncio.gather(
            *(publisher.to(connection_id).send("note", f"{MARKER}-{n}") for n in range(3)),
            publisher.join(connection_id, MARKER),
            return_exceptions=True,
        )

        async def all_written() -> bool:
            return len(await marked(gateway)) == 4

        results = await lose_the_answer(reply_cutter, batch, all_written)
        assert len(await marked(gateway)) == 4  # each once: not sent again
        assert len(results) == 4
        for result in results:
            assert_maybe_written(result)
        assert await publisher.to(connection_id).send("note", "later") == 1
    assert len(await marked(gateway)) == 4
    assert len(await gateway.commands()) == 2 + 4 + 1


async def test_a_push_of_ctx_publisher_whose_answer_was_lost_is_not_sent_again(
    reply_cutter: ReplyCutter, gateway: FakeGateway, key_prefix: str
) -> None:
    """``ctx.publisher`` is an AsyncPublisher on the worker's client: the same at most once."""
    errors: list[PublishError] = []

    async def notify(ctx: Context, data: Any) -> str:
        try:
            await ctx.publisher.to(ctx.connection_id).send("progress", MARKER)
        except PublishError as exc:
            errors.append(exc)
        return "done"

    url = await reply_cutter.start()
    async with Worker({"notify": notify}, redis_url=url, key_prefix=key_prefix, block_ms=100):
        reply_cutter.marker = MARKER.encode()
        await gateway.message(gateway.new_connection_id(), "notify", id="n1")
        await asyncio.wait_for(reply_cutter.held.wait(), 10)
        await wait_until_async(lambda: written_once(gateway), message="the push to be written")
        reply_cutter.cut_held()
        frames = await gateway.wait_for_frames(2)
        await wait_until_async(gateway.backlog_done)
    assert frames == [
        {"action": "progress", "data": MARKER},
        {"action": "notify", "data": "done", "id": "n1"},
    ]
    [error] = errors
    assert MAYBE in str(error)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_redis_restarted_while_idle_is_found_before_the_push_is_sent(
    kind: str, key_prefix: str
) -> None:
    """The connection Redis closed is replaced before sending: no needless PublishError."""
    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
        stream = keys_for(key_prefix).node_stream("gw-b")
        publisher: AnyPublisher = (
            Publisher(server.url, key_prefix) if kind == "sync" else AsyncPublisher(server.url, key_prefix)
        )
        try:
            await create_node_stream(client, key_prefix, "gw-b")  # as the live gateway gw-b does
            assert await call(publisher, lambda pub: pub.to("gw-b.BBBBBBBBBBBBBBBBBBBBBB").send("a", 1)) == 1
            server.stop()
            server.start()
            await client.aclose()  # its connection went with the old process
            client = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
            await client.ping()  # the test's own client: Redis is back
            await create_node_stream(client, key_prefix, "gw-b")  # the gateway makes it again on reconnecting
            assert await call(publisher, lambda pub: pub.to("gw-b.BBBBBBBBBBBBBBBBBBBBBB").send("a", 2)) == 1
            assert await client.xlen(stream) == 1
        finally:
            if isinstance(publisher, Publisher):
                publisher.close()
            else:
                await publisher.aclose()
            await client.aclose()
