"""The hiredis-packing Redis connection writes exactly what redis-py's own packer writes."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from wsq_gateway.broker.client import HiredisConnection, HiredisSSLConnection, redis_client


@pytest.mark.parametrize(
    "command",
    [
        ("XADD", "wsq:inbound", "*", "v", "1", "frame", b'{"action":"x"}'),
        ("EVAL", "return 1", 0, "wsq", 1006),
        ("ZADD", "k", 1.5, "m"),
        ("CLIENT KILL", "ID", 7),
        (b"CLIENT SETNAME", b"n"),
        ("SET", "ünïcode", "välue ✓"),
        ("SET", "k", memoryview(b"view")),
    ],
)
def test_packing_matches_redis_py(command: tuple[Any, ...]) -> None:
    ours = b"".join(HiredisConnection().pack_command(*command))
    theirs = b"".join(Connection().pack_command(*command))
    assert ours == theirs


def test_what_hiredis_refuses_gets_redis_pys_error() -> None:
    with pytest.raises(DataError):
        HiredisConnection().pack_command("SET", "k", True)


def test_clients_use_the_packing_connections() -> None:
    plain = redis_client("redis://127.0.0.1:1/0")
    secure = redis_client("rediss://127.0.0.1:1/0")
    unix = redis_client("unix:///tmp/redis.sock")
    assert plain.connection_pool.connection_class is HiredisConnection
    assert secure.connection_pool.connection_class is HiredisSSLConnection
    assert unix.connection_pool.connection_class is not HiredisConnection


async def test_a_real_round_trip(redis_url: str, key_prefix: str) -> None:
    client = redis_client(redis_url)
    try:
        await client.xadd(f"{key_prefix}:s", {"a": "ü", "b": b"\xff"})
        ((_, fields),) = await client.xrange(f"{key_prefix}:s")
        assert fields == {b"a": "ü".encode(), b"b": b"\xff"}
        assert isinstance(client, aioredis.Redis)
    finally:
        await client.aclose()
