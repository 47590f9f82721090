"""GET /metrics: what a scrape shows after real sockets sent frames and closed."""

from __future__ import annotations

import redis.asyncio as aioredis
from gateway_harness import GatewayFactory, RunningGateway, receive_json
from prometheus_client.parser import text_string_to_metric_families

from wsq_devkit import wait_until_async
from wsq_devkit.redis_typing import xadd_fields
from wsq_gateway.broker.outbound import DropLog

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
        closed = value(samples, "wsq_gateway_connections_closed_total", code="4321") == 1
        # The disconnect event is counted once its batch was written, a moment after the close.
        written = value(samples, "wsq_gateway_redis_batch_writes_sum") >= 2 + 6 + 1
        return samples if closed and written else None

    samples = await wait_until_async(counted, timeout=10, message="the close counted, its event written")
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


async def test_dropped_commands_are_counted_by_reason(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway()
    ws, hello = await gateway.connect()
    stream = gateway.keys.node_stream(gateway.node_id)
    head = {"v": "1", "type": "send", "target": "connection", "to": str(hello["connection_id"])}
    for frame in ("garbage", "{}", '{"action":"a"}'):  # the SDK's field order: the fast path
        await redis.xadd(stream, xadd_fields({**head, "frame": frame}))
    await redis.xadd(
        stream, xadd_fields({"v": "1", "type": "send", "target": "all", "frame": "[]"})
    )  # fan-out
    await redis.xadd(stream, xadd_fields({"v": "1", "type": "warp", "target": "all"}))
    await redis.xadd(stream, xadd_fields({**head, "frame": '{"action":"ok","data":1}'}))
    assert await receive_json(ws) == {"action": "ok", "data": 1}  # read after the bad ones
    samples = await scrape(gateway)
    dropped = "wsq_gateway_commands_dropped_total"
    assert value(samples, dropped, reason="frame_not_json") == 1
    assert value(samples, dropped, reason="frame_invalid") == 3
    assert value(samples, dropped, reason="malformed") == 1
    assert value(samples, "wsq_gateway_commands_total", type="malformed") == 5
    assert value(samples, "wsq_gateway_commands_total", type="send") == 1
    await ws.close()


def test_dropped_commands_are_logged_once_per_reason_and_interval() -> None:
    drops = DropLog(interval_s=3600.0)
    assert drops.drop("frame_invalid", "no data")  # the first of a reason: logged
    assert not any(drops.drop("frame_invalid", "no data") for _ in range(1000))  # a flood: not
    assert drops.drop("malformed", "unknown type")  # another reason has its own interval
    every = DropLog(interval_s=0.0)
    assert all(every.drop("frame_invalid", "x") for _ in range(3))
