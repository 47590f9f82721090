"""Frames no worker takes in time (WSQ_TAKE_TIMEOUT_S), with real processes: a worker with one
slot runs a frame longer than the deadline; the frame queued behind it is withdrawn unread and
answered `$error not_taken` — once, and never run — while the slow one, read in time, still
gets its reply, and a frame without an id waits for the worker as before."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from system_harness import ConnectClient, StartGateway, StartWorker, in_order

from wsq_client import ServerError
from wsq_protocol.cluster import SyncClient

TAKE_TIMEOUT_S = 1.0
SLOW_S = 3.0  # the first frame holds the worker's only slot this long: past the deadline


async def errors_sent(session: aiohttp.ClientSession, url: str, code: str) -> float:
    async with session.get(url) as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "wsq_gateway_errors_total" and sample.labels.get("code") == code:
                return float(sample.value)
    raise AssertionError("wsq_gateway_errors_total not exposed")


async def test_a_frame_no_worker_reads_in_time_is_withdrawn_and_answered_not_taken_once(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    connect_client: ConnectClient,
    redis_client: SyncClient,
    key_prefix: str,
) -> None:
    gateway = start_gateway(WSQ_TAKE_TIMEOUT_S=str(TAKE_TIMEOUT_S))
    start_worker("sample_app:worker", "--concurrency", "1")
    client = await connect_client(gateway.ws_url, request_timeout=3 * SLOW_S)
    assert await client.request("echo", "up") == "up"

    slow, late, no_id = in_order(
        client.request("tracked", SLOW_S),  # read at once: the deadline no longer applies
        client.request("tracked", 0),  # waits unread behind it, past the deadline
        client.send("tracked", 0),  # no id: never withdrawn, it waits for the worker
    )
    with pytest.raises(ServerError) as refused:
        await late
    assert refused.value.code == "not_taken"
    assert not slow.done(), "withdrawn while the slow frame ran: within the deadline"
    assert (await slow)["attempt"] == 1, "read in time: its reply"
    await no_id
    # A frame sent now is read at once. Had "late" stayed in the stream, the worker (one slot,
    # reading in order) would have run it before this one.
    assert (await client.request("tracked", 0))["attempt"] == 1
    assert "$error" not in [push.action for push in client.received], "nor one for the frame without id"

    raw: Any = redis_client.lrange(f"{key_prefix}:test:processed", 0, -1)
    processed = [json.loads(item)["id"] for item in raw]
    # the withdrawn frame never ran; the one without id did
    assert [frame_id is not None for frame_id in processed] == [True, False, True], processed
    assert processed[0] != processed[2], "the slow frame, then the one without id, then the last"
    # one answer to the withdrawn frame, not_taken, and no other (it never ran: no worker's reply)
    assert await errors_sent(session, gateway.http_url("/metrics"), "not_taken") == 1
