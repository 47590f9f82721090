"""No stale presence in the workers' consumer group, with real gateway and worker processes: a
SIGKILLed worker's consumer leaves the group (and /readyz) once its frame was answered by the
survivor, and a quiet live worker stays live for the gateways however long nothing comes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from typing import Any, cast

import aiohttp
import redis
from system_harness import Client, GatewayProcess, StartGateway, StartWorker, inbound_length, inbound_pending

from wsq_devkit import wait_until, wait_until_async

BLOCK_MS = 1000  # sample_app's workers read with the default block_ms


def workers(gateway: GatewayProcess) -> dict[str, Any]:
    """The ``workers`` part of /readyz."""
    with urllib.request.urlopen(gateway.http_url("/readyz"), timeout=2) as resp:
        report: dict[str, Any] = json.load(resp)["workers"]
        return report


def consumer_names(client: redis.Redis, inbound: str) -> set[str]:
    return {str(consumer["name"]) for consumer in client.xinfo_consumers(inbound, "workers")}


async def test_a_killed_workers_consumer_leaves_the_group_after_its_frame_is_answered_once(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    claim_idle_ms = 1000
    stale_ms = 3 * max(claim_idle_ms, BLOCK_MS)  # the workers' stale_consumer_ms
    gateway = start_gateway()
    victim, survivor = [start_worker(WSQ_CLAIM_IDLE_MS=str(claim_idle_ms)) for _ in range(2)]
    client = await Client.connect(session, gateway.ws_url)
    await client.receive_until(lambda f: f["action"] == "welcome")
    await client.send("slow_async", 1, id="held")

    def owner() -> tuple[str, str] | None:
        pending = inbound_pending(redis_client, key_prefix)
        return (cast(str, pending[0]["consumer"]), pending[0]["stream"]) if pending else None

    held_by, inbound = wait_until(owner, timeout=10, message="a worker took the frame")
    if f"-{survivor.pid}-" in held_by:
        victim, survivor = survivor, victim
    assert f"-{victim.pid}-" in held_by
    wait_until(lambda: workers(gateway)["consumers"] == 2, timeout=5, message="/readyz counts both")
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()

    reply = await client.receive_until(lambda f: f.get("id") == "held", timeout=30)
    assert reply == {"action": "slow_async", "data": "slept", "id": "held"}

    async def victim_gone() -> bool:
        return held_by not in consumer_names(redis_client, inbound) and workers(gateway)["consumers"] == 1

    bound_s = (stale_ms + claim_idle_ms / 2) / 1000
    await wait_until_async(victim_gone, timeout=bound_s + 10, message="the victim's consumer removed")
    assert time.monotonic() - killed_at < bound_s + 3
    [remaining] = consumer_names(redis_client, inbound)
    assert f"-{survivor.pid}-" in remaining
    report = workers(gateway)
    assert (report["live"], report["consumers"], report["pending"]) == (1, 1, 0)
    # answered exactly once: the next frame with an id is the one we ask for now
    assert (await client.request("echo", "next", id="next"))["data"] == "next"
    assert inbound_length(redis_client, key_prefix) == 0
    assert f"removed consumer {held_by} from the group" in survivor.output()
    await client.close()


async def test_a_quiet_worker_stays_live_for_the_gateway(
    start_gateway: StartGateway, start_worker: StartWorker, session: aiohttp.ClientSession
) -> None:
    """Nothing comes for longer than WSQ_WORKER_TIMEOUT_S: the worker stays live (on Redis 7.0 a
    blocking read that gets nothing does not reset its idle time: the worker touches its
    consumer), so frames are still accepted and answered, never refused with no_workers."""
    timeout_s = 2.0  # above block_ms, as documented
    gateway = start_gateway(WSQ_WORKER_TIMEOUT_S=str(timeout_s))
    start_worker()
    client = await Client.connect(session, gateway.ws_url)
    await client.receive_until(lambda f: f["action"] == "welcome")  # the last event for a while
    wait_until(lambda: workers(gateway)["live"] == 1, timeout=5, message="/readyz counts the worker")
    loop = asyncio.get_running_loop()
    watch_until = loop.time() + 3 * timeout_s

    async def watched_long_enough() -> bool:
        report = workers(gateway)
        assert (report["live"], report["accepting_frames"]) == (1, True), report
        return loop.time() >= watch_until

    await wait_until_async(watched_long_enough, timeout=30, interval=0.1, message="the watch")
    assert await client.request("echo", "quiet", id="q1") == {"action": "echo", "data": "quiet", "id": "q1"}
    await client.close()
