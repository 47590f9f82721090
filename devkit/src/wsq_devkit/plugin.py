"""pytest fixtures: a private redis-server per test session, a private Redis Cluster per test
session (started the first time a test asks for it), and a key prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from wsq_devkit.redis_cluster import RedisCluster
from wsq_devkit.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server on a free port for the whole session (never the shared 6379)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def _shared_redis_cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(_shared_redis_cluster: RedisCluster) -> RedisCluster:
    """A Redis Cluster of 3 masters with a replica each, shared by the whole session. A test that
    fails a master over (``fail_over()``) ``rejoin()``s it before it ends; and each test gets
    it whole (``ensure_ok()``, which repairs it if a fault of an earlier test left it broken)."""
    _shared_redis_cluster.ensure_ok()
    return _shared_redis_cluster


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix of this test's own, so tests sharing the server never collide."""
    return f"t{uuid.uuid4().hex[:12]}"
