"""The inbound stream's partitions, against the private Redis: a worker reads every partition,
keeps each connection's events in order, keeps its concurrency whatever the number of
partitions, puts an event's retries and dead letter in its own shard, and refuses to run with
another number of shards than the deployment's."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio
from worker_harness import FakeGateway, StartWorker, str_entries

from wsq_devkit import wait_until_async
from wsq_protocol.keys import Keys
from wsq_worker import Context, RedisUnusableError, Retry, Worker, loops

# Gateway nodes in five different shards (of 16): their events go to five partitions.
NODES = ("gw-f", "gw-g", "gw-b", "gw-test1", "gw-c")


@pytest.fixture
def gateways(gateway_on: Callable[[str], FakeGateway], keys: Keys) -> list[FakeGateway]:
    gateways = [gateway_on(node) for node in NODES]
    assert len({keys.shard_of(node) for node in NODES}) == len(NODES)
    return gateways


def test_reader_groups_read_every_partition_once() -> None:
    assert loops.reader_groups(4, cluster=False) == [[0, 1, 2, 3]]
    assert loops.reader_groups(4, cluster=True) == [[0], [1], [2], [3]]
    assert loops.reader_groups(1, cluster=True) == loops.reader_groups(1, cluster=False) == [[0]]


@pytest.fixture(params=["one reader", "a reader per shard"])
def readers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both groupings of ``reader_groups``: one XREADGROUP over every partition (a single Redis),
    and one reader per partition (a Redis Cluster's, here on a single Redis)."""
    if request.param == "a reader per shard":
        monkeypatch.setattr(loops, "reader_groups", lambda shards, cluster: [[s] for s in range(shards)])
    return str(request.param)


@pytest.mark.usefixtures("readers")
async def test_events_of_every_partition_are_handled_in_each_connections_order(
    start_worker: StartWorker, gateways: list[FakeGateway]
) -> None:
    """With one slot, the events of five partitions are read beyond the free slots: those wait
    in the worker, and every connection's events still run in the order it sent them."""
    per_connection = 12
    connections = {gateway.new_connection_id(): gateway for gateway in gateways}
    for number in range(per_connection):
        for connection_id, gateway in connections.items():
            await gateway.message(connection_id, "n", number)
    seen: dict[str, list[int]] = defaultdict(list)

    async def n(ctx: Context, number: int) -> None:
        seen[ctx.connection_id].append(number)

    await start_worker({"n": n}, concurrency=1)

    async def all_done() -> bool:
        return all([await gateway.backlog_done() for gateway in gateways])

    await wait_until_async(all_done, timeout=20)
    assert seen == {connection_id: list(range(per_connection)) for connection_id in connections}


@pytest.mark.usefixtures("readers")
async def test_the_partitions_share_the_workers_concurrency(
    start_worker: StartWorker, gateways: list[FakeGateway]
) -> None:
    concurrency, per_gateway = 3, 8
    running, most = 0, 0
    handled: list[tuple[str, int]] = []

    async def slow(ctx: Context, number: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)  # the work: long enough for the others to pile up
        running -= 1
        handled.append((ctx.connection_id, number))

    for gateway in gateways:
        connection_id = gateway.new_connection_id()
        for number in range(per_gateway):
            await gateway.message(connection_id, "slow", number)
    await start_worker({"slow": slow}, concurrency=concurrency)

    async def all_handled() -> bool:
        return len(handled) == len(gateways) * per_gateway

    await wait_until_async(all_handled, timeout=20)
    assert most == concurrency


async def test_entries_waiting_for_a_slot_are_kept_from_other_workers(
    start_worker: StartWorker, gateways: list[FakeGateway], caplog: pytest.LogCaptureFixture
) -> None:
    """Entries one read took beyond the free slots are this worker's: it keeps them alive as
    running ones, so another worker does not take them over (and run them twice)."""
    caplog.set_level(logging.WARNING, logger="wsq_worker")
    attempts: list[int] = []
    started = asyncio.Event()

    async def job(ctx: Context, seconds: float) -> None:
        attempts.append(ctx.attempt)
        started.set()
        await asyncio.sleep(seconds)  # the work, longer than claim_idle_ms

    for gateway in gateways:
        await gateway.message(gateway.new_connection_id(), "job", 0.5)
    await start_worker({"job": job}, concurrency=1, claim_idle_ms=200, consumer_name="busy")
    await asyncio.wait_for(started.wait(), 10)
    await start_worker({"job": job}, claim_idle_ms=200, consumer_name="idle")

    async def all_done() -> bool:
        return all([await gateway.backlog_done() for gateway in gateways])

    await wait_until_async(all_done, timeout=30)
    assert attempts == [1] * len(gateways)
    assert not [record for record in caplog.records if "claimed" in record.getMessage()]


async def test_retries_and_dead_letters_stay_in_the_shard_of_their_event(
    start_worker: StartWorker, gateways: list[FakeGateway], redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    first, second = gateways[:2]
    waiting = asyncio.Event()

    async def later(ctx: Context, data: Any) -> None:
        if ctx.attempt == 1:
            raise Retry(delay=0.2)
        await waiting.wait()
        raise Retry(delay=0)  # the last attempt: dead-lettered

    await start_worker({"later": later}, max_attempts=2)
    for gateway in (first, second):
        await gateway.message(gateway.new_connection_id(), "later", gateway.node, id=gateway.node)

    async def both_delayed() -> bool:
        return all([await redis_client.zcard(gateway.delayed) == 1 for gateway in (first, second)])

    await wait_until_async(both_delayed)
    waiting.set()

    async def both_dead() -> bool:
        return all([await redis_client.xlen(gateway.dead) == 1 for gateway in (first, second)])

    await wait_until_async(both_dead)
    for gateway in (first, second):
        [(_, dead)] = str_entries(await redis_client.xrange(gateway.dead))
        assert (dead["node"], dead["attempts"]) == (gateway.node, "2")
        assert await gateway.backlog_done()
        assert not await redis_client.exists(gateway.delayed)
    others = [
        keys.dead_letters(shard) for shard in range(keys.shards) if shard not in (first.shard, second.shard)
    ]
    assert not await redis_client.exists(*others)


async def test_a_worker_with_another_number_of_shards_refuses_to_start(
    redis_url: str, key_prefix: str, keys: Keys, redis_client: redis.asyncio.Redis
) -> None:
    """Its partitions would not be the gateways': it stops at once, before it reads anything."""
    await redis_client.set(keys.shards_key, "4")
    worker = Worker({}, redis_url=redis_url, key_prefix=key_prefix, shards=16, block_ms=100)
    with pytest.raises(RedisUnusableError, match=r"WSQ_SHARDS=16, but this deployment .* uses 4 shards"):
        await asyncio.wait_for(worker.run_async(), 10)
    assert not await redis_client.exists(*keys.inbound_streams()), "no consumer group made"
    async with Worker({}, redis_url=redis_url, key_prefix=key_prefix, shards=4, block_ms=100):
        pass  # the deployment's number: it runs


async def test_the_first_worker_records_its_number_of_shards(
    start_worker: StartWorker, keys: Keys, redis_client: redis.asyncio.Redis
) -> None:
    worker = await start_worker({}, shards=2)

    async def reading() -> bool:
        return await redis_client.exists(keys.shards_key) == 1

    await wait_until_async(reading)
    assert await redis_client.get(keys.shards_key) == "2"
    assert worker.shards == 2


def test_shards_out_of_range_are_refused_when_the_worker_starts() -> None:
    for shards in (0, 1025):
        worker = Worker({}, redis_url="redis://unused", shards=shards)
        with pytest.raises(ValueError, match="shards must be 1-1024"):
            worker._start()
