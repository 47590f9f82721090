"""GET /metrics: what a scrape shows after real sockets sent frames and closed."""

from __future__ import annotations

from gateway_harness import GatewayFactory, RunningGateway, receive_json
from prometheus_client.parser import text_string_to_metric_families

from wsq_devkit import wait_until_async

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(gateway: RunningGateway) -> Samples:
    async with gateway.session.get(gateway.url("/metrics")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_frames_connections_and_errors_are_counted(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(metrics_max_actions=2)
    ws, _ = await gateway.connect()
    other, _ = await gateway.connect()
    for n in range(3):
        await ws.send_str(f'{{"action": "echo", "data": {n}}}')
    await ws.send_str('{"action": "chat.say", "data": 1}')
    for action in ("a1", "a2"):  # past the cap of 2 distinct actions: labelled "other"
        await ws.send_str(f'{{"action": "{action}"}}')
    await ws.send_str('{"action": "$ping", "id": "p"}')
    assert (await receive_json(ws))["action"] == "$pong"
    await ws.send_str("not json")
    assert (await receive_json(ws))["data"]["code"] == "invalid_json"
    await ws.send_bytes(b"\x00")
    assert (await receive_json(ws))["data"]["code"] == "invalid_frame"
    await other.close(code=4321)

    async def counted() -> Samples | None:
        samples = await scrape(gateway)
        done = value(samples, "wsq_gateway_connections_closed_total", code="4321") == 1
        return samples if done else None

    samples = await wait_until_async(counted, timeout=10, message="the close counted")
    frames = "wsq_gateway_frames_in_total"
    assert value(samples, frames, outcome="accepted", action="echo") == 3
    assert value(samples, frames, outcome="accepted", action="chat.say") == 1
    assert value(samples, frames, outcome="accepted", action="other") == 2
    assert value(samples, frames, outcome="ping", action="") == 1
    assert value(samples, frames, outcome="invalid_json", action="") == 1
    assert value(samples, frames, outcome="invalid_frame", action="") == 1
    assert value(samples, "wsq_gateway_errors_total", code="invalid_json") == 1
    assert value(samples, "wsq_gateway_errors_total", code="invalid_frame") == 1
    assert value(samples, "wsq_gateway_errors_total", code="overloaded") == 0
    assert value(samples, "wsq_gateway_connections_opened_total") == 2
    assert value(samples, "wsq_gateway_connections") == 1
    assert value(samples, "wsq_gateway_outbox_bytes") == 0
    # Registrations, the frames and the disconnect went to Redis in batches.
    assert value(samples, "wsq_gateway_redis_batch_seconds_count") >= 1
    assert value(samples, "wsq_gateway_redis_batch_writes_sum") >= 2 + 6 + 1
    assert value(samples, "process_resident_memory_bytes") > 0
    assert any(name == "python_gc_collections_total" for name, _ in samples)
    await ws.close()


async def test_metrics_off(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(metrics=False)
    async with gateway.session.get(gateway.url("/metrics")) as resp:
        assert resp.status == 404
    ws, _ = await gateway.connect()
    await ws.send_str('{"action": "$ping", "id": "p"}')
    assert (await receive_json(ws))["action"] == "$pong"
    await ws.close()


async def test_two_gateways_in_one_process_have_their_own_counts(start_gateway: GatewayFactory) -> None:
    first, second = await start_gateway(), await start_gateway()
    ws, _ = await first.connect()
    await ws.close()

    async def closed() -> bool:
        return value(await scrape(first), "wsq_gateway_connections_closed_total", code="1000") == 1

    await wait_until_async(closed, timeout=10, message="the close counted")
    assert value(await scrape(second), "wsq_gateway_connections_opened_total") == 0
