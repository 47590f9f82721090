"""Live workers that take nothing, with real processes: a worker with one slot, busy with a
slow handler while another frame waits unread, is reported stalled after WSQ_STALL_AFTER_S
(/readyz, still 200, and wsq_gateway_workers_stalled); the report clears once the backlog
drains, and every frame is still answered."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from system_harness import ConnectClient, GatewayProcess, StartGateway, StartWorker, in_order

from wsq_devkit import wait_until_async

STALL_AFTER_S = 1.0
SLOW_S = 3  # each slow frame holds the worker's only slot this long


async def readiness(session: aiohttp.ClientSession, gateway: GatewayProcess) -> dict[str, Any]:
    """The ``workers`` part of /readyz (which stays 200 while workers are stalled)."""
    async with session.get(gateway.http_url("/readyz")) as resp:
        assert resp.status == 200
        report: dict[str, Any] = (await resp.json())["workers"]
        return report


async def gauge(session: aiohttp.ClientSession, gateway: GatewayProcess, name: str) -> float:
    async with session.get(gateway.http_url("/metrics")) as resp:
        assert resp.status == 200
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exposed")


async def test_a_worker_whose_slots_are_all_busy_is_reported_stalled_until_the_backlog_drains(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    connect_client: ConnectClient,
) -> None:
    gateway = start_gateway(WSQ_STALL_AFTER_S=str(STALL_AFTER_S))
    start_worker("sample_app:worker", "--concurrency", "1")
    client = await connect_client(gateway.ws_url, request_timeout=3 * SLOW_S)
    assert await client.request("echo", "up") == "up"  # the worker reads: nothing waits, not stalled
    report = await readiness(session, gateway)
    assert (report["live"], report["stalled"]) == (1, False)
    assert await gauge(session, gateway, "wsq_gateway_workers_stalled") == 0

    # s1 takes the only slot for SLOW_S; s2 waits unread meanwhile: after STALL_AFTER_S without a
    # read, the workers are stalled (the window lasts SLOW_S - STALL_AFTER_S).
    s1, s2 = in_order(client.request("slow_async", SLOW_S), client.request("slow_async", SLOW_S))

    async def stalled() -> dict[str, Any] | None:
        report = await readiness(session, gateway)
        if not report["stalled"] or await gauge(session, gateway, "wsq_gateway_workers_stalled") != 1:
            return None
        return report

    report = await wait_until_async(stalled, timeout=SLOW_S + 5, message="/readyz and the gauge say stalled")
    assert report["live"] == 1, "live, and stalled"
    assert report["accepting_frames"] is True, "frames are still accepted"
    assert report["lag"] >= 1
    assert report["oldest_unread_age_s"] >= STALL_AFTER_S / 2, "s2 has waited about as long"

    # s1 done, s2 read and done: nothing waits unread any more, the report clears.
    assert (await s1, await s2) == ("slept", "slept")

    async def cleared() -> bool:
        report = await readiness(session, gateway)
        return (
            not report["stalled"]
            and report["lag"] == 0
            and report["oldest_unread_age_s"] is None
            and await gauge(session, gateway, "wsq_gateway_workers_stalled") == 0
            and await gauge(session, gateway, "wsq_gateway_inbound_lag") == 0
        )

    await wait_until_async(cleared, timeout=5, message="stalled clears once the backlog drains")
