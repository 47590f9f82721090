"""The fast extra's speed-ups change speed only: the same bytes to Redis, the same results."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from wsq_worker import speedups


@pytest.mark.parametrize(
    "command",
    [
        ("XADD", "wsq:node:gw-1:out", "MAXLEN", "~", 100000, "*", "v", "1", "frame", b'{"a":1}'),
        ("EVALSHA", "0" * 40, 1, "k", "ünï", 2.5),
        ("CLIENT KILL", "ID", 7),
        ("SET", "k", memoryview(b"view")),
    ],
)
def test_hiredis_packing_matches_redis_py(command: tuple[Any, ...]) -> None:
    assert b"".join(speedups.HiredisConnection().pack_command(*command)) == b"".join(
        Connection().pack_command(*command)
    )


def test_refused_values_get_redis_pys_error() -> None:
    with pytest.raises(DataError):
        speedups.HiredisConnection().pack_command("SET", "k", True)


def test_clients_pack_with_hiredis_when_installed() -> None:
    client = speedups.async_redis("redis://127.0.0.1:1/0")
    assert client.connection_pool.connection_class is speedups.HiredisConnection
    tls = speedups.async_redis("rediss://127.0.0.1:1/0")
    assert tls.connection_pool.connection_class is speedups.HiredisSSLConnection


def test_run_uses_uvloop_when_installed() -> None:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    speedups.run(main())
    assert seen == ["uvloop"]
