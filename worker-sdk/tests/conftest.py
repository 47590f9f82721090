"""Shared fixtures: the protocol's schemas, a fake gateway side of Redis, running workers, and a
proxy to Redis that loses an answer.

Everything runs against the private redis-server of wsq_devkit (fixtures ``redis_url`` and
``key_prefix``); nothing is mocked. The types behind them (``Schemas``, ``FakeGateway``,
``StartWorker``, ``ReplyCutter``) live in ``worker_harness``, where the tests import them from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio
from worker_harness import FakeGateway, ReplyCutter, Schemas, StartWorker, worker_starter

from wsq_devkit import RedisServer
from wsq_protocol.keys import Keys, keys_for


@pytest.fixture(scope="session")
def schemas() -> Schemas:
    return Schemas()


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    """The test's keys, of the default number of shards (the workers' and publishers' too)."""
    return keys_for(key_prefix)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client for the test itself (str replies)."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def gateway(redis_client: redis.asyncio.Redis, key_prefix: str, schemas: Schemas) -> FakeGateway:
    """A live gateway: its stream exists (gateways of ``gateway_on``/``make_gateway`` create it
    with their first event or registration)."""
    fake = FakeGateway(redis_client, key_prefix, schemas, node="gw-test1")
    await fake.create_stream()
    return fake


@pytest.fixture
def gateway_on(
    redis_client: redis.asyncio.Redis, key_prefix: str, schemas: Schemas
) -> Callable[[str], FakeGateway]:
    """``gateway_on(node)``: a FakeGateway for another node, on the test's Redis client."""
    return lambda node: FakeGateway(redis_client, key_prefix, schemas, node=node)


@pytest.fixture
def make_gateway(key_prefix: str, schemas: Schemas) -> Callable[[redis.asyncio.Redis], FakeGateway]:
    """A FakeGateway on another Redis client (for tests that run a Redis server of their own)."""
    return lambda client: FakeGateway(client, key_prefix, schemas, node="gw-test1")


@pytest.fixture
async def start_worker(redis_url: str, key_prefix: str) -> AsyncIterator[StartWorker]:
    """``await start_worker(actions, **options)``: a Worker running ``run_async()`` in a task until
    the test ends (reads block 100 ms so that stopping is quick)."""
    async with worker_starter(redis_url=redis_url, key_prefix=key_prefix) as start:
        yield start


@pytest.fixture
async def reply_cutter(redis_server: RedisServer) -> AsyncIterator[ReplyCutter]:
    cutter = ReplyCutter(redis_server.port)
    yield cutter
    await cutter.close()
