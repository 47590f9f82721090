"""pytest fixtures: a private redis-server per test session and a key prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from wsq_devkit.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server on a free port for the whole session (never the shared 6379)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix of this test's own, so tests sharing the server never collide."""
    return f"t{uuid.uuid4().hex[:12]}"
