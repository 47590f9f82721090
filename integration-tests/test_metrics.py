"""Prometheus metrics of a real gateway process and a real worker process, scraped over HTTP
after real frames; and the Grafana dashboard queries only metrics they expose."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from system_harness import ConnectClient, StartGateway, StartWorker

from wsq_client import ServerError
from wsq_devkit import free_port, wait_until_async

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "wsq.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[Samples, set[str]]:
    async with session.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    samples: Samples = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
            names.add(sample.name)
    return samples, names


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_gateway_and_worker_metrics_after_real_traffic(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    connect_client: ConnectClient,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    gateway = start_gateway()
    metrics_port = free_port()
    start_worker("sample_app:worker", "--metrics-port", str(metrics_port), WSQ_MAX_ATTEMPTS="2")
    worker_url = f"http://127.0.0.1:{metrics_port}/metrics"
    client = await connect_client(gateway.ws_url)
    for n in range(3):
        assert await client.request("echo", n) == n
    with pytest.raises(ServerError) as failed:
        await client.request("fail")
    assert failed.value.code == "handler_error"
    with pytest.raises(ServerError) as failed:
        await client.request("until_fixed", 1)  # retried, then dead-lettered after 2 attempts
    assert failed.value.code == "handler_failed"
    await client.close()

    async def gateway_counted() -> tuple[Samples, set[str]] | None:
        scraped = await scrape(session, gateway.http_url("/metrics"))
        return (
            scraped if value(scraped[0], "wsq_gateway_connections_closed_total", code="1000") == 1 else None
        )

    samples, gateway_names = await wait_until_async(gateway_counted, timeout=10, message="the close counted")
    frames = "wsq_gateway_frames_in_total"
    assert value(samples, frames, outcome="accepted", action="echo") == 3
    assert value(samples, frames, outcome="accepted", action="fail") == 1
    assert value(samples, frames, outcome="accepted", action="until_fixed") == 1
    assert value(samples, "wsq_gateway_connections_opened_total") == 1
    assert value(samples, "wsq_gateway_connections") == 0
    # welcome push, 3 replies, an error, a handler_failed error
    assert value(samples, "wsq_gateway_frames_out_total") >= 6
    assert value(samples, "wsq_gateway_commands_total", type="send") >= 6

    async def worker_counted() -> tuple[Samples, set[str]] | None:
        scraped = await scrape(session, worker_url)
        done = value(scraped[0], "wsq_worker_events_total", action="$disconnect", outcome="ok") == 1
        return scraped if done else None

    samples, worker_names = await wait_until_async(
        worker_counted, timeout=15, message="the disconnect handled"
    )
    events = "wsq_worker_events_total"
    assert value(samples, events, action="echo", outcome="ok") == 3
    assert value(samples, events, action="fail", outcome="error") == 1
    assert value(samples, events, action="until_fixed", outcome="retry") == 1
    assert value(samples, events, action="until_fixed", outcome="dead_lettered") == 1
    assert value(samples, events, action="$connect", outcome="ok") == 1
    assert value(samples, "wsq_worker_retries_total") == 1
    assert value(samples, "wsq_worker_dead_letters_total") == 1
    assert value(samples, "wsq_worker_handler_seconds_count", action="echo") == 3
    assert value(samples, "wsq_worker_in_flight") == 0

    async def lag_read() -> bool:
        names = (await scrape(session, worker_url))[1]
        return "wsq_worker_consumer_lag" in names

    await wait_until_async(lag_read, timeout=15, message="the consumer lag read")
    worker_names.update({"wsq_worker_consumer_lag", "wsq_worker_consumer_pending"})
    _dashboard_queries_exist(gateway_names | worker_names)


def _dashboard_queries_exist(exposed: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queried |= set(re.findall(r"\b((?:wsq|process|python)_[a-z_]+)", target["expr"]))
    assert queried, "the dashboard queries nothing"
    missing = queried - exposed
    assert not missing, f"the dashboard queries metrics nobody exposes: {sorted(missing)}"
