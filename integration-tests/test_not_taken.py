"""Frames no worker takes in time (WSQ_TAKE_TIMEOUT_S), with real processes: a worker with one
slot runs a frame longer than the deadline; the frame queued behind it is withdrawn unread and
answered `$error not_taken` — once, and never run — while the slow one, read in time, still
gets its reply, and a frame without an id waits for the worker as before."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from system_harness import Client, StartGateway, StartWorker

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
    redis_client: SyncClient,
    key_prefix: str,
) -> None:
    gateway = start_gateway(WSQ_TAKE_TIMEOUT_S=str(TAKE_TIMEOUT_S))
    start_worker("sample_app:worker", "--concurrency", "1")
    client = await Client.connect(session, gateway.ws_url)
    assert (await client.request("echo", "up", id="up"))["data"] == "up"

    await client.send("tracked", SLOW_S, id="slow")  # read at once: the deadline no longer applies
    await client.send("tracked", 0, id="late")  # waits unread behind it, past the deadline
    await client.send("tracked", 0)  # no id: never withdrawn, it waits for the worker

    answers: dict[str, list[dict[str, Any]]] = {}

    async def receive_until_answered(frame_id: str) -> None:
        while frame_id not in answers:
            frame = await client.receive(timeout=3 * SLOW_S)
            answers.setdefault(frame.get("id") or "", []).append(frame)

    await receive_until_answered("late")
    assert answers["late"][0]["data"]["code"] == "not_taken", answers["late"]
    assert "slow" not in answers, "withdrawn while the slow frame ran: within the deadline"
    await receive_until_answered("slow")
    # A frame sent now is read at once. Had "late" stayed in the stream, the worker (one slot,
    # reading in order) would have answered it before this one.
    await client.send("tracked", 0, id="after")
    await receive_until_answered("after")
    assert [f["action"] for f in answers["late"]] == ["$error"], "one answer: not_taken"
    assert [f["action"] for f in answers["slow"]] == ["tracked"], "read in time: its reply"
    assert [f["action"] for f in answers["after"]] == ["tracked"]

    def processed() -> list[str | None]:
        raw: Any = redis_client.lrange(f"{key_prefix}:test:processed", 0, -1)
        return [json.loads(item)["id"] for item in raw]

    assert processed() == ["slow", None, "after"], "the withdrawn frame never ran; the one without id did"
    assert await errors_sent(session, gateway.http_url("/metrics"), "not_taken") == 1
    await client.close()
