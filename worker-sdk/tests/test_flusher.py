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
from wsq_worker.flusher import BestEffort, Flusher
from wsq_worker.publisher import Route, StreamWrite

CONNECTION_ID = "gw-f.q2uE4nK0m5Zr8VtY1xWb7A"


class CountingFlusher(Flusher[str]):
    """A real Flusher that also records the size of each pipeline it sends (pushes, acks), and
    the entries Redis refused a write of (entry id, source, error)."""

    def __init__(self, client: redis.asyncio.Redis, inbound: str) -> None:
        super().__init__(client, inbound, "workers", self._record_refused)
        self.batches: list[tuple[int, int]] = []
        self.refused: list[tuple[str, str | None, str]] = []

    async def _write(self, sends: list[Any], commits: list[Any]) -> None:
        self.batches.append((len(sends), len(commits)))
        await super()._write(sends, commits)

    def _record_refused(self, entry_id: str, source: str | None, error: str) -> None:
        self.refused.append((entry_id, source, error))


def write(key_prefix: str, number: int) -> StreamWrite:
    stream_write = Route.connection(key_prefix, CONNECTION_ID).send(f'{{"action":"n","data":{number}}}')
    assert isinstance(stream_write, StreamWrite)
    return stream_write


@pytest.fixture
async def flusher(redis_url: str, key_prefix: str) -> AsyncIterator[CountingFlusher]:
    client = redis.asyncio.Redis.from_url(redis_url)
    for node in ("gw-f", "gw-g"):  # live gateways: replies to them are written
        await create_node_stream(client, key_prefix, node)
    flusher = CountingFlusher(client, f"{key_prefix}:inbound")
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
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    inbound = f"{key_prefix}:inbound"
    entry_ids = await pending_entries(redis_client, inbound, 50)
    for number, entry_id in enumerate(entry_ids):  # all in the same tick
        flusher.ack(entry_id, (write(key_prefix, number),))
    await flusher.send(write(key_prefix, 50))
    assert flusher.batches == [(1, 50)]
    # The pushes handlers await go first, then each acknowledged entry's writes, in order.
    assert await frames_of(redis_client, f"{key_prefix}:node:gw-f:out") == [
        f'{{"action":"n","data":{number}}}' for number in (50, *range(50))
    ]
    assert await redis_client.xlen(inbound) == 0
    assert (await redis_client.xpending(inbound, "workers"))["pending"] == 0


async def test_an_entry_is_acknowledged_only_once_redis_took_all_of_its_writes(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """A refused write leaves its entry pending (its later writes unsent) and is reported; a
    refused ``BestEffort`` write is only logged; the other entries of the batch go on."""
    inbound = f"{key_prefix}:inbound"
    taken, refused, best_effort = await pending_entries(redis_client, inbound, 3)
    broken = Route.connection(key_prefix, "gw-x.q2uE4nK0m5Zr8VtY1xWb7A").send('{"action":"x"}')
    assert isinstance(broken, StreamWrite)
    await redis_client.set(broken.stream, "not a stream")
    flusher.ack(taken, (write(key_prefix, 1),), "taken")
    flusher.ack(refused, (write(key_prefix, 2), broken, write(key_prefix, 3)), "refused")
    flusher.ack(best_effort, (BestEffort(broken), write(key_prefix, 4)), "best effort")
    await flusher.send(write(key_prefix, 5))  # returns once the batch was written
    assert flusher.batches == [(1, 3)]
    assert await frames_of(redis_client, f"{key_prefix}:node:gw-f:out") == [
        f'{{"action":"n","data":{number}}}' for number in (5, 1, 2, 4)
    ]
    [(entry_id, source, error)] = flusher.refused
    assert (entry_id, source) == (refused, "refused")
    assert error.startswith("WRONGTYPE")
    [pending] = await redis_client.xpending_range(inbound, "workers", "-", "+", 10)
    assert pending["message_id"] == refused
    assert [entry_id for entry_id, _ in str_entries(await redis_client.xrange(inbound))] == [refused]


async def test_send_returns_once_written(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    await flusher.send(write(key_prefix, 1))
    assert await redis_client.xlen(f"{key_prefix}:node:gw-f:out") == 1


async def test_close_writes_what_is_queued(
    flusher: CountingFlusher, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    for number in range(3):
        flusher.ack(f"1-{number}", (write(key_prefix, number),))
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
    [entry_id] = await pending_entries(redis_client, inbound, 1)
    unencodable = StreamWrite(f"{key_prefix}:node:gw-f:out", {"frame": "\ud800"}, None)
    with pytest.raises(UnicodeEncodeError):
        flusher.ack(entry_id, (write(key_prefix, 1), unencodable))
    with pytest.raises(UnicodeEncodeError):
        await flusher.send(unencodable)
    flusher.ack(entry_id, (write(key_prefix, 1),))
    await flusher.send(write(key_prefix, 2))
    assert await frames_of(redis_client, f"{key_prefix}:node:gw-f:out") == [
        '{"action":"n","data":2}',
        '{"action":"n","data":1}',
    ]
    assert (await redis_client.xpending(inbound, "workers"))["pending"] == 0


async def test_unreachable_redis_fails_sends_and_keeps_replies(key_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    flusher: Flusher[None] = Flusher(client, f"{key_prefix}:inbound", "workers")
    flusher.start()
    try:
        flusher.ack("1-0", (write(key_prefix, 1),))
        with pytest.raises(PublishError, match="Redis is unavailable, nothing was sent"):
            await flusher.send(write(key_prefix, 2))

        async def kept_for_retry() -> bool:
            return flusher.backlog == 1 and flusher.pending_acks == ["1-0"]

        await wait_until_async(kept_for_retry)
        await asyncio.wait_for(flusher.close(0.2), 5)  # gives up, without hanging
    finally:
        await client.aclose()
