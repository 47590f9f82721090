"""The worker's write batching against the private Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from worker_harness import create_node_stream, str_entries, str_reply

from wsq_devkit import free_port, wait_until_async
from wsq_worker import PublishError
from wsq_worker.flusher import Flusher
from wsq_worker.publisher import Route, StreamWrite

CONNECTION_ID = "gw-f.q2uE4nK0m5Zr8VtY1xWb7A"


class CountingFlusher(Flusher):
    """A real Flusher that also records the size of each pipeline it sends."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.batches: list[tuple[int, int]] = []

    async def _write(self, writes: list[Any], acks: list[str]) -> None:
        self.batches.append((len(writes), len(acks)))
        await super()._write(writes, acks)


def write(key_prefix: str, number: int) -> StreamWrite:
    stream_write = Route.connection(key_prefix, CONNECTION_ID).send(f'{{"action":"n","data":{number}}}')
    assert isinstance(stream_write, StreamWrite)
    return stream_write


@pytest.fixture
async def flusher(redis_url: str, key_prefix: str) -> AsyncIterator[CountingFlusher]:
    client = redis.asyncio.Redis.from_url(redis_url)
    for node in ("gw-f", "gw-g"):  # live gateways: replies to them are written
        await create_node_stream(client, key_prefix, node)
    flusher = CountingFlusher(client, f"{key_prefix}:inbound", "workers")
    flusher.start()
    yield flusher
    await flusher.close(5)
    await client.aclose()


async def test_writes_and_acks_of_one_tick_share_one_pipeline(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    inbound = f"{key_prefix}:inbound"
    await redis_client.xgroup_create(inbound, "workers", id="0", mkstream=True)
    entry_ids = [str_reply(await redis_client.xadd(inbound, {"n": str(number)})) for number in range(50)]
    await redis_client.xreadgroup("workers", "c", {inbound: ">"})  # now pending
    for number, entry_id in enumerate(entry_ids):  # all in the same tick
        flusher.queue(write(key_prefix, number))
        flusher.ack(entry_id)
    await flusher.send(write(key_prefix, 50))
    assert flusher.batches == [(51, 50)]
    frames = [
        fields["frame"] for _, fields in str_entries(await redis_client.xrange(f"{key_prefix}:node:gw-f:out"))
    ]
    assert frames == [f'{{"action":"n","data":{number}}}' for number in range(51)]
    assert await redis_client.xlen(inbound) == 0
    assert (await redis_client.xpending(inbound, "workers"))["pending"] == 0


async def test_send_returns_once_written(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    await flusher.send(write(key_prefix, 1))
    assert await redis_client.xlen(f"{key_prefix}:node:gw-f:out") == 1


async def test_close_writes_what_is_queued(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    for number in range(3):
        flusher.queue(write(key_prefix, number))
    await flusher.close(5)
    assert await redis_client.xlen(f"{key_prefix}:node:gw-f:out") == 3
    with pytest.raises(PublishError, match="stopped"):
        await flusher.send(write(key_prefix, 4))


async def test_refused_command_fails_only_its_own_send(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    await redis_client.set(f"{key_prefix}:node:gw-f:out", "not a stream")
    with pytest.raises(PublishError, match="refused"):
        await flusher.send(write(key_prefix, 1))
    other = Route.connection(key_prefix, "gw-g.q2uE4nK0m5Zr8VtY1xWb7A").send('{"action":"n","data":2}')
    assert isinstance(other, StreamWrite)
    await flusher.send(other)
    assert await redis_client.xlen(f"{key_prefix}:node:gw-g:out") == 1


async def test_a_write_redis_cant_carry_fails_its_caller_not_the_batch(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """A str that is not UTF-8 has no bytes: it raises as it is queued, and the writes and acks
    around it go out (in one batch it would fail them all, and every retry of them)."""
    inbound = f"{key_prefix}:inbound"
    await redis_client.xgroup_create(inbound, "workers", id="0", mkstream=True)
    entry_id = str_reply(await redis_client.xadd(inbound, {"n": "1"}))
    await redis_client.xreadgroup("workers", "c", {inbound: ">"})
    unencodable = StreamWrite(f"{key_prefix}:node:gw-f:out", {"frame": "\ud800"}, None)
    flusher.queue(write(key_prefix, 1))
    with pytest.raises(UnicodeEncodeError):
        flusher.queue(unencodable)
    with pytest.raises(UnicodeEncodeError):
        await flusher.send(unencodable)
    flusher.ack(entry_id)
    await flusher.send(write(key_prefix, 2))
    frames = [
        fields["frame"] for _, fields in str_entries(await redis_client.xrange(f"{key_prefix}:node:gw-f:out"))
    ]
    assert frames == ['{"action":"n","data":1}', '{"action":"n","data":2}']
    assert (await redis_client.xpending(inbound, "workers"))["pending"] == 0


async def test_unreachable_redis_fails_sends_and_keeps_replies(key_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    flusher = Flusher(client, f"{key_prefix}:inbound", "workers")
    flusher.start()
    try:
        flusher.queue(write(key_prefix, 1))
        flusher.ack("1-0")
        with pytest.raises(PublishError, match="Redis is unavailable"):
            await flusher.send(write(key_prefix, 2))

        async def kept_for_retry() -> bool:
            return flusher.backlog == 2

        await wait_until_async(kept_for_retry)
        await asyncio.wait_for(flusher.close(0.2), 5)  # gives up, without hanging
    finally:
        await client.aclose()
