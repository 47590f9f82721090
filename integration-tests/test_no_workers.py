"""What a client gets when no worker consumes the inbound stream, with real processes: `$error
no_workers` at once (the frame is not queued), replies once a worker reads, the error again
once the last worker is gone for WSQ_WORKER_TIMEOUT_S; /readyz tells the operator all along."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from typing import Any

import redis
from system_harness import ConnectClient, GatewayProcess, StartGateway, StartWorker, WsqClient, inbound_length

from wsq_client import RequestTimeout, ServerError
from wsq_devkit import wait_until, wait_until_async

WORKER_TIMEOUT_S = 3.0


def workers(gateway: GatewayProcess) -> dict[str, Any]:
    """The ``workers`` part of /readyz (which stays 200 either way)."""
    with urllib.request.urlopen(gateway.http_url("/readyz"), timeout=2) as resp:
        assert resp.status == 200
        report: dict[str, Any] = json.load(resp)["workers"]
        return report


async def answer_within(client: WsqClient, data: str, seconds: float) -> Any:
    """Request an echo of ``data``: its reply's data, the ``ServerError`` it got, or None when
    nothing came in ``seconds``."""
    try:
        return await client.request("echo", data, timeout=seconds)
    except ServerError as error:
        return error
    except RequestTimeout:
        return None


def is_no_workers(answer: Any) -> bool:
    return isinstance(answer, ServerError) and answer.code == "no_workers"


async def test_frames_get_no_workers_while_no_worker_reads_and_replies_once_one_does(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    connect_client: ConnectClient,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    gateway = start_gateway(WSQ_WORKER_TIMEOUT_S=str(WORKER_TIMEOUT_S))
    client = await connect_client(gateway.ws_url)

    # No worker ever started: answered at once, and nothing is queued for nobody.
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    assert is_no_workers(await answer_within(client, "n1", 5))
    assert loop.time() - sent_at < 1.0, "answered at once, not after a timeout"
    await client.send("echo", "no id")  # a frame without an id gets the error too: a push, no id
    assert (await client.pushed("$error", timeout=5))["code"] == "no_workers"
    assert inbound_length(redis_client, key_prefix) == 1, "only the connect event, which waits for workers"
    report = workers(gateway)
    assert report.pop("oldest_unread_age_s") >= 0, "the connect event waits unread"
    assert report == {
        "live": 0,
        "consumers": 0,
        "accepting_frames": False,
        "lag": 1,
        "pending": 0,
        "backlog": 1,
        "stalled": False,
    }

    # A worker reads: the very next frame is queued and answered (the gateway looks again before
    # refusing one, so it never refuses for a worker it has not seen yet).
    worker = start_worker()
    assert await answer_within(client, "w1", 10) == "w1"
    wait_until(lambda: workers(gateway)["live"] == 1, timeout=5, message="/readyz counts the worker")
    assert workers(gateway)["accepting_frames"] is True

    # The worker is killed. It read less than a second ago, so it counts as live a while longer:
    # a frame sent now is accepted and waits for the next worker; once WORKER_TIMEOUT_S has passed
    # frames are refused again.
    worker.signal(signal.SIGKILL)
    assert await answer_within(client, "k-accepted", 0.3) is None
    attempts = iter(range(1000))

    async def refused_again() -> bool:
        return is_no_workers(await answer_within(client, f"k{next(attempts)}", 0.5))

    await wait_until_async(refused_again, timeout=WORKER_TIMEOUT_S + 5, message="no_workers again")
    report = workers(gateway)
    assert (report["live"], report["consumers"], report["accepting_frames"]) == (0, 1, False)
    assert report["lag"] >= 1, "the frames accepted before the timeout wait for the next worker"
