"""Stale consumers, against the private Redis: a dead worker's consumer leaves the consumer group
once idle for ``stale_consumer_ms`` and only once its pending entries were claimed; a live worker,
however quiet, keeps its consumer fresh. A "dead" worker is a consumer the test made (it read an
entry and never acknowledged it, or never read at all); the SIGKILLed process is in test_cli.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
import redis.asyncio
from worker_harness import FakeGateway, StartWorker, StrEntry

from wsq_devkit import wait_until_async
from wsq_worker import Context, Worker

CLAIM_IDLE_MS = 300
BLOCK_MS = 100
STALE_MS = 3 * max(CLAIM_IDLE_MS, BLOCK_MS)  # the workers' stale_consumer_ms


async def consumers(client: redis.asyncio.Redis, inbound: str) -> dict[str, dict[str, Any]]:
    """The group's consumers by name (``pending``, ``idle`` in ms)."""
    return {str(c["name"]): c for c in await client.xinfo_consumers(inbound, "workers")}


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if text in record.getMessage()]


def test_stale_consumer_ms_is_three_times_the_longer_of_claim_idle_ms_and_block_ms() -> None:
    assert Worker(redis_url="redis://unused").stale_consumer_ms == 45_000  # claim_idle_ms 15000
    assert Worker(redis_url="redis://unused", claim_idle_ms=300, block_ms=100).stale_consumer_ms == 900
    assert Worker(redis_url="redis://unused", claim_idle_ms=300, block_ms=2000).stale_consumer_ms == 6000


async def test_a_stale_consumer_is_removed_only_once_its_pending_entries_were_claimed(
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wsq_worker")
    started, release = asyncio.Event(), asyncio.Event()

    async def block(ctx: Context, data: Any) -> str:
        started.set()
        await release.wait()
        return "released"

    async def echo(ctx: Context, data: Any) -> Any:
        return data

    # The worker's one slot is busy, so it can't claim what the dead consumers hold.
    worker = await start_worker(
        {"block": block, "echo": echo}, concurrency=1, claim_idle_ms=CLAIM_IDLE_MS, block_ms=BLOCK_MS
    )
    connection_id = gateway.new_connection_id()
    await gateway.message(connection_id, "block", id="b1")
    await asyncio.wait_for(started.wait(), 10)
    held = await gateway.message(connection_id, "echo", "h", id="h1")
    reply = await redis_client.xreadgroup("workers", "dead-holding", {gateway.inbound: ">"}, count=1)
    [[_, [(entry_id, _)]]] = cast("list[tuple[str, list[StrEntry]]]", reply)
    assert entry_id == held, "a worker that took h1 and died"
    await redis_client.xgroup_createconsumer(gateway.inbound, "workers", "dead-empty")

    async def dead_empty_removed() -> bool:
        return "dead-empty" not in await consumers(redis_client, gateway.inbound)

    await wait_until_async(dead_empty_removed, timeout=10, message="dead-empty removed")
    # Idle just as long, but it holds h1: XGROUP DELCONSUMER would drop the entry. It stays.
    holding = (await consumers(redis_client, gateway.inbound))["dead-holding"]
    assert holding["pending"] == 1
    assert holding["idle"] > worker.stale_consumer_ms == STALE_MS
    assert await gateway.commands() == []

    release.set()  # b1 is answered; the free slot claims h1 and runs it again
    seen: list[tuple[dict[str, Any] | None, int]] = []  # dead-holding, frames written so far

    async def dead_holding_removed() -> bool:
        seen.append(
            (
                (await consumers(redis_client, gateway.inbound)).get("dead-holding"),
                len(await gateway.commands()),
            )
        )
        return seen[-1][0] is None

    await wait_until_async(dead_holding_removed, timeout=10, message="dead-holding removed")
    assert all(consumer["pending"] == 1 for consumer, frames in seen if consumer and frames < 2)
    await wait_until_async(gateway.backlog_done)
    assert await gateway.frames() == [
        {"action": "block", "data": "released", "id": "b1"},
        {"action": "echo", "data": "h", "id": "h1"},
    ]
    assert list(await consumers(redis_client, gateway.inbound)) == [worker.consumer_name]
    assert records(caplog, "removed consumer dead-empty from the group")
    assert records(caplog, "removed consumer dead-holding from the group")


async def test_quiet_workers_stay_fresh_and_keep_their_consumers(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    """No events for several stale_consumer_ms: each worker's idle time stays near block_ms (on
    Redis 7.0 a blocking read that gets nothing does not reset it: the worker touches its consumer),
    so gateways count it live and the other worker never removes it."""

    async def echo(ctx: Context, data: Any) -> Any:
        return data

    workers = [
        await start_worker({"echo": echo}, claim_idle_ms=CLAIM_IDLE_MS, block_ms=BLOCK_MS) for _ in range(2)
    ]
    names = {worker.consumer_name for worker in workers}

    async def both_read() -> bool:
        try:
            return set(await consumers(redis_client, gateway.inbound)) == names
        except redis.ResponseError:  # no stream yet
            return False

    await wait_until_async(both_read, timeout=10, message="both workers read")
    loop = asyncio.get_running_loop()
    watch_until = loop.time() + 4 * STALE_MS / 1000
    idle_ms: list[int] = []

    async def watched_long_enough() -> bool:
        seen = await consumers(redis_client, gateway.inbound)
        assert set(seen) == names, "a live worker's consumer was removed"
        idle_ms.extend(int(seen[name]["idle"]) for name in names)
        return loop.time() >= watch_until

    await wait_until_async(watched_long_enough, timeout=30, interval=0.05, message="the watch")
    assert max(idle_ms) < 2 * CLAIM_IDLE_MS, f"idle up to {max(idle_ms)} ms; block_ms is {BLOCK_MS}"
    await gateway.message(gateway.new_connection_id(), "echo", "still here", id="q1")
    assert await gateway.wait_for_frames(1) == [{"action": "echo", "data": "still here", "id": "q1"}]
