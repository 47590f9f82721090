"""Fixtures: an in-process gateway (aiohttp test server) on a private redis-server."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from gateway_harness import GatewayFactory, RunningGateway

from wsq_devkit import wait_until_async
from wsq_gateway import Settings, create_app


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def start_gateway(redis_url: str, key_prefix: str) -> AsyncIterator[GatewayFactory]:
    """Start gateways with settings overrides; all are stopped after the test."""
    servers: list[TestServer] = []
    session = aiohttp.ClientSession()

    async def start(*, wait_ready: bool = True, **overrides: Any) -> RunningGateway:
        # No worker runs here: frames are queued for none (0), unless a test sets a timeout.
        # Session resume off: each socket's end is its connection's end, at once (the tests of
        # resume turn it on).
        defaults = {
            "redis_url": redis_url,
            "key_prefix": key_prefix,
            "worker_timeout_s": 0,
            "resume_window_s": 0,
        }
        options: dict[str, Any] = {**defaults, **overrides}
        settings = Settings(**options)
        server = TestServer(create_app(settings), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        gateway = RunningGateway(server, settings, session)
        if wait_ready:
            await wait_until_async(gateway.ready, timeout=10, message="the gateway ready")
        return gateway

    yield start
    await session.close()
    for server in servers:
        await close_or_report(server)


SHUTDOWN_BUDGET_S = 15.0


async def close_or_report(server: TestServer) -> None:
    """Stop a gateway; if that hangs, fail with every task's stack instead of a bare timeout."""
    closing = asyncio.ensure_future(server.close())
    done, _ = await asyncio.wait({closing}, timeout=SHUTDOWN_BUDGET_S)
    if not done:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(file=stacks)
        pytest.fail(f"the gateway did not shut down in {SHUTDOWN_BUDGET_S} s; tasks:\n{stacks.getvalue()}")
    closing.result()


@pytest.fixture
async def gateway(start_gateway: GatewayFactory) -> RunningGateway:
    return await start_gateway()
