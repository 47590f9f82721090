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
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of 3 masters with a replica each, for the whole session. A test that
    fails a master over (``fail_over()``) ``rejoin()``s it before it ends, so the next one finds
    3 masters with a replica each again."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix of this test's own, so tests sharing the server never collide."""
    return f"t{uuid.uuid4().hex[:12]}"
