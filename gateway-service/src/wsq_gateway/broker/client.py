"""The gateway's Redis clients: redis-py's asyncio client, packing commands with hiredis.

redis-py's blocking client packs commands in C (``hiredis.pack_command``) when hiredis is
installed; its asyncio client always packs them in Python, which the benchmark measured
at a fifth of the gateway's CPU per message. These connection classes pack with hiredis
and fall back to redis-py's packer for anything hiredis does not take.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        command = args[0]
        # A command name with a space ("CLIENT KILL") is several arguments, as redis-py does.
        if (isinstance(command, str) and " " in command) or (isinstance(command, bytes) and b" " in command):
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # e.g. a bool: redis-py's packer raises its usual DataError
            python_packer: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
            return python_packer


class HiredisConnection(_HiredisPacking, Connection):
    pass


class HiredisSSLConnection(_HiredisPacking, SSLConnection):
    pass


def redis_client(url: str, **options: Any) -> aioredis.Redis:
    """``redis.asyncio.Redis.from_url(url, **options)``, packing commands with hiredis."""
    client = aioredis.Redis.from_url(url, **options)
    pool = client.connection_pool
    if issubclass(pool.connection_class, SSLConnection):
        pool.connection_class = HiredisSSLConnection
    elif pool.connection_class is Connection:
        pool.connection_class = HiredisConnection
    return client
