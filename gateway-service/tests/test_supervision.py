"""No background task of the gateway ends unnoticed, and the Redis batcher outlives a batch that
fails in a way it did not foresee."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import structlog
from gateway_harness import GatewayFactory, receive_json, stream_entries

from wsq_devkit import free_port, wait_until_async
from wsq_devkit.redis_errors import PERMANENT_OR_TRANSIENT
from wsq_gateway import Settings, serve
from wsq_gateway.broker.batcher import Write
from wsq_gateway.broker.inbound import Inbound
from wsq_gateway.broker.preflight import permanent_problem
from wsq_gateway.server import GatewayFailed
from wsq_gateway.state import GATEWAY


async def a_backlog_watch_that_dies(self: Inbound) -> None:
    """Stands in for ``Inbound.watch_backlog``: a bug that ends the task at its first step."""
    raise RuntimeError("injected: the backlog watch hit a bug")


async def test_a_background_task_that_dies_turns_readyz_503_naming_it_and_logs_its_traceback(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Inbound, "watch_backlog", a_backlog_watch_that_dies)
    with structlog.testing.capture_logs() as logs:
        gateway = await start_gateway(wait_ready=False)

        async def readiness() -> tuple[int, dict[str, Any]] | None:
            async with gateway.session.get(gateway.url("/readyz")) as resp:
                body = await resp.json()
                return (resp.status, body) if body["status"] == "failed" else None

        status, body = await wait_until_async(
            readiness, timeout=10, message="/readyz to report the dead task"
        )
    assert status == 503
    assert body["task"] == "wsq-backlog"
    assert "injected" in body["error"]
    died = [entry for entry in logs if entry.get("task") == "wsq-backlog" and entry["log_level"] == "error"]
    assert len(died) == 1, logs
    assert isinstance(died[0]["exc_info"], RuntimeError)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # no new sockets on a failed gateway
        await gateway.session.ws_connect(gateway.url())
    assert refused.value.status == 503


async def test_serve_drains_and_raises_gateway_failed_when_a_background_task_dies(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What makes ``wsq-gateway`` exit with status 1 for its orchestrator to restart it."""
    monkeypatch.setattr(Inbound, "watch_backlog", a_backlog_watch_that_dies)
    settings = Settings(redis_url=redis_url, key_prefix=key_prefix, port=free_port(), drain_s=2)
    with pytest.raises(GatewayFailed, match="wsq-backlog"):
        await asyncio.wait_for(serve(settings, asyncio.Event()), 15)


async def test_a_flush_that_fails_unexpectedly_fails_its_writes_and_the_batcher_goes_on(
    start_gateway: GatewayFactory, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = await start_gateway()
    ws, _ = await gateway.connect()
    batcher = gateway.server.app[GATEWAY].batcher
    pipe = batcher._pipe
    send = pipe.execute
    calls = 0

    async def fails_once(commands: Any) -> list[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected: a reply the batcher can't read")
        return await send(commands)

    monkeypatch.setattr(pipe, "execute", fails_once)
    await ws.send_str('{"action": "first", "id": "1"}')
    error = await receive_json(ws)
    assert (error["action"], error["data"]["code"], error["id"]) == ("$error", "unavailable", "1")
    await ws.send_str('{"action": "second", "id": "2"}')

    async def queued() -> list[bytes] | None:
        entries = await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id))
        actions = [fields[b"frame"] for _, fields in entries if fields[b"type"] == b"message"]
        return actions or None

    assert await wait_until_async(queued, timeout=5) == [b'{"action": "second", "id": "2"}']
    assert await gateway.ready()
    await ws.close()


async def test_a_write_no_redis_command_can_carry_fails_alone(
    start_gateway: GatewayFactory, redis: aioredis.Redis, key_prefix: str
) -> None:
    """A lone surrogate can't be packed: its write raises in its caller (durable or not: no
    retry would ever send it), the writes queued around it go out, and the batcher goes on."""
    gateway = await start_gateway()
    batcher = gateway.server.app[GATEWAY].batcher
    with pytest.raises(UnicodeEncodeError):
        batcher.submit(Write((("SET", f"{key_prefix}:bad", "\ud800"),)))
    with pytest.raises(UnicodeEncodeError):
        batcher.submit(Write((("SET", f"{key_prefix}:bad-durable", "\udcff"),), durable=True))
    batcher.submit(Write((("SET", f"{key_prefix}:good", "ok"),)))

    async def written() -> bool:
        return bool(await redis.get(f"{key_prefix}:good") == b"ok" and batcher.pending == 0)

    await wait_until_async(written, timeout=5, message="the good write, and nothing left queued")
    assert await redis.exists(f"{key_prefix}:bad", f"{key_prefix}:bad-durable") == 0
    assert await batcher.submit_and_wait(("SET", f"{key_prefix}:after", "1")) == [b"OK"]


@pytest.mark.parametrize(("error", "permanent"), PERMANENT_OR_TRANSIENT)
def test_permanent_redis_errors_are_told_from_transient_ones(error: BaseException, permanent: bool) -> None:
    assert (permanent_problem(error) is not None) is permanent
