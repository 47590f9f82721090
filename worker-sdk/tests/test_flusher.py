"""The worker's write batching against the private Redis. The entries acknowledged are in the
inbound partition of gateway gw-f's shard, as the replies to its connections are."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from worker_harness import create_node_stream, str_entries, str_reply

from wsq_devkit import free_port, wait_until_async
from wsq_protocol.keys import Keys
from wsq_worker import PublishError
from wsq_worker.flusher import BestEffort, Flusher
from wsq_worker.publisher import Route, StreamWrite

CONNECTION_ID = "gw-f.q2uE4nK0m5Zr8VtY1xWb7A"


class CountingFlusher(Flusher[str]):
    """A real Flusher that also records the size of each pipeline it sends (pushes, acks), and
    the entries Redis refused a write of (shard, entry id, source, error)."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys) -> None:
        super().__init__(client, keys, "workers", self._record_refused)
        self.batches: list[tuple[int, int]] = []
        self.refused: list[tuple[int, str, str | None, str]] = []

    async def _write(self, sends: list[Any], commits: list[Any]) -> bool:
        self.batches.append((len(sends), len(commits)))
        return await super()._write(sends, commits)

    def _record_refused(self, shard: int, entry_id: str, source: str | None, error: str) -> None:
        self.refused.append((shard, entry_id, source, error))


def write(keys: Keys, number: int, connection_id: str = CONNECTION_ID) -> StreamWrite:
    stream_write = Route.connection(keys, connection_id).send(f'{{"action":"n","data":{number}}}')
    assert isinstance(stream_write, StreamWrite)
    return stream_write


@pytest.fixture
def shard(keys: Keys) -> int:
    """The shard of gw-f, whose inbound partition the entries are in."""
    return keys.shard_of("gw-f")


@pytest.fixture
def inbound(keys: Keys, shard: int) -> str:
    return keys.inbound_stream(shard)


@pytest.fixture
async def flusher(redis_url: str, keys: Keys) -> AsyncIterator[CountingFlusher]:
    client = redis.asyncio.Redis.from_url(redis_url)
    for node in ("gw-f", "gw-g"):  # live gateways: replies to them are written
        await create_node_stream(client, keys.prefix, node)
    flusher = CountingFlusher(client, keys)
    flusher.start()
    yield flusher
    await flusher.close(5)
    await client.aclose()


async def pending_entries(client: redis.asyncio.Redis, inbound: str, count: int) -> list[str]:
    """``count`` entries appended to ``inbound`` and read by a consumer: pending."""
    await client.xgroup_create(inbound, "workers", id="0", mkstream=True)
    entry_ids = [str_reply(await client.xadd(inbound, {"n": str(number)})) for number in range(count)]
    await client.xreadgroup("workers", "c", {inbound: ">"})
    return entry_ids


async def frames_of(client: redis.asyncio.Redis, stream: str) -> list[str]:
    return [fields["frame"] for _, fields in str_entries(await client.xrange(stream))]


async def test_writes_and_acks_of_one_tick_share_one_pipeline(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, keys: Keys, shard: int, inbound: str
) -> None:
    entry_ids = await pending_entries(redis_client, inbound, 50)
    for number, entry_id in enumerate(entry_ids):  # all in the same tick
        flusher.ack(shard, entry_id, (write(keys, number),))
    await flusher.send(write(keys, 50))
    assert flusher.batches == [(1, 50)]
    # The pushes handlers await go first, then each acknowledged entry's writes, in order.
    assert await frames_of(redis_client, keys.node_stream("gw-f")) == [
        f'{{"action":"n","data":{number}}}' for number in (50, *range(50))
    ]
    assert await redis_client.xlen(inbound) == 0
    assert (await redis_client.xpending(inbound, "workers"))["pending"] == 0


async def test_an_entry_is_acknowledged_only_once_redis_took_all_of_its_writes(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, keys: Keys, shard: int, inbound: str
) -> None:
    """A refused write leaves its entry pending (its later writes unsent) and is reported; a
    refused ``BestEffort`` write is only logged; the other entries of the batch go on."""
    taken, refused, best_effort = await pending_entries(redis_client, inbound, 3)
    broken = StreamWrite(keys.dead_letters(shard), {"n": "x"})  # a key of the entries' shard
    await redis_client.set(broken.stream, "not a stream")
    flusher.ack(shard, taken, (write(keys, 1),), "taken")
    flusher.ack(shard, refused, (write(keys, 2), broken, write(keys, 3)), "refused")
    flusher.ack(shard, best_effort, (BestEffort(broken), write(keys, 4)), "best effort")
    await flusher.send(write(keys, 5))  # returns once the batch was written
    assert flusher.batches == [(1, 3)]
    assert await frames_of(redis_client, keys.node_stream("gw-f")) == [
        f'{{"action":"n","data":{number}}}' for number in (5, 1, 2, 4)
    ]
    [(refused_shard, entry_id, source, error)] = flusher.refused
    assert (refused_shard, entry_id, source) == (shard, refused, "refused")
    assert error.startswith("WRONGTYPE")
    [pending] = await redis_client.xpending_range(inbound, "workers", "-", "+", 10)
    assert pending["message_id"] == refused
    assert [entry_id for entry_id, _ in str_entries(await redis_client.xrange(inbound))] == [refused]


async def test_send_returns_once_written(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    await flusher.send(write(keys, 1))
    assert await redis_client.xlen(keys.node_stream("gw-f")) == 1


async def test_close_writes_what_is_queued(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, keys: Keys, shard: int
) -> None:
    for number in range(3):
        flusher.ack(shard, f"1-{number}", (write(keys, number),))
    await flusher.close(5)
    assert await redis_client.xlen(keys.node_stream("gw-f")) == 3
    with pytest.raises(PublishError, match="stopped"):
        await flusher.send(write(keys, 4))


async def test_refused_command_fails_only_its_own_send(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    await redis_client.set(keys.node_stream("gw-f"), "not a stream")
    with pytest.raises(PublishError, match="refused"):
        await flusher.send(write(keys, 1))
    other = Route.connection(keys, "gw-g.q2uE4nK0m5Zr8VtY1xWb7A").send('{"action":"n","data":2}')
    assert isinstance(other, StreamWrite)
    await flusher.send(other)
    assert await redis_client.xlen(keys.node_stream("gw-g")) == 1


async def test_a_write_redis_cant_carry_fails_its_caller_not_the_batch(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, keys: Keys, shard: int, inbound: str
) -> None:
    """A str that is not UTF-8 has no bytes: it raises as it is queued, and the writes and acks
    around it go out (in one batch it would fail them all, and every retry of them)."""
    [entry_id] = await pending_entries(redis_client, inbound, 1)
    unencodable = StreamWrite(keys.node_stream("gw-f"), {"frame": "\ud800"}, None)
    with pytest.raises(UnicodeEncodeError):
        flusher.ack(shard, entry_id, (write(keys, 1), unencodable))
    with pytest.raises(UnicodeEncodeError):
        await flusher.send(unencodable)
    flusher.ack(shard, entry_id, (write(keys, 1),))
    await flusher.send(write(keys, 2))
    assert await frames_of(redis_client, keys.node_stream("gw-f")) == [
        '{"action":"n","data":2}',
        '{"action":"n","data":1}',
    ]
    assert (await redis_client.xpending(inbound, "workers"))["pending"] == 0


async def test_unreachable_redis_fails_sends_and_keeps_replies(keys: Keys) -> None:
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    flusher: Flusher[None] = Flusher(client, keys, "workers")
    flusher.start()
    try:
        flusher.ack(3, "1-0", (write(keys, 1),))
        with pytest.raises(PublishError, match="Redis is unavailable, nothing was sent"):
            await flusher.send(write(keys, 2))

        async def kept_for_retry() -> bool:
            return flusher.backlog == 1 and flusher.pending_acks == [(3, "1-0")]

        await wait_until_async(kept_for_retry)
        await asyncio.wait_for(flusher.close(0.2), 5)  # gives up, without hanging
    finally:
        await client.aclose()


async def test_acks_of_several_partitions_share_one_pipeline_each_in_its_own(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, keys: Keys, shard: int, inbound: str
) -> None:
    """One commit script per shard (its KEYS in that shard's slot), all in the tick's pipeline;
    an entry id may be in two partitions at once: each is acknowledged in its own."""
    other_shard = keys.shard_of("gw-g")
    assert other_shard != shard
    other_inbound = keys.inbound_stream(other_shard)
    [mine] = await pending_entries(redis_client, inbound, 1)
    await redis_client.xgroup_create(other_inbound, "workers", id="0", mkstream=True)
    await redis_client.xadd(other_inbound, {"n": "0"}, id=mine)  # the same id, in the other partition
    theirs = str_reply(await redis_client.xadd(other_inbound, {"n": "1"}))
    await redis_client.xreadgroup("workers", "c", {other_inbound: ">"})
    flusher.ack(shard, mine, (write(keys, 1),))
    flusher.ack(other_shard, mine, (write(keys, 2, "gw-g.q2uE4nK0m5Zr8VtY1xWb7A"),))
    flusher.ack(other_shard, theirs, (write(keys, 3, "gw-g.q2uE4nK0m5Zr8VtY1xWb7A"),))
    await flusher.send(write(keys, 4))
    assert flusher.batches == [(1, 3)]
    assert await frames_of(redis_client, keys.node_stream("gw-f")) == [
        '{"action":"n","data":4}',
        '{"action":"n","data":1}',
    ]
    assert await frames_of(redis_client, keys.node_stream("gw-g")) == [
        '{"action":"n","data":2}',
        '{"action":"n","data":3}',
    ]
    for stream in (inbound, other_inbound):
        assert await redis_client.xlen(stream) == 0
        assert (await redis_client.xpending(stream, "workers"))["pending"] == 0
