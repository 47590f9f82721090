"""Stale consumers, against the private Redis: a live worker, however quiet, keeps its consumer
fresh."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio
from worker_harness import FakeGateway, StartWorker

from wsq_devkit import wait_until_async
from wsq_worker import Context

CLAIM_IDLE_MS = 300
BLOCK_MS = 100
STALE_MS = 3 * max(CLAIM_IDLE_MS, BLOCK_MS)  # the workers' stale_consumer_ms


async def consumers(client: redis.asyncio.Redis, inbound: str) -> dict[str, dict[str, Any]]:
    """The group's consumers by name (``pending``, ``idle`` in ms)."""
    return {str(c["name"]): c for c in await client.xinfo_consumers(inbound, "workers")}


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if text in record.getMessage()]


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
