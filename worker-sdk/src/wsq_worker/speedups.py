"""Optional speed-ups, used when the ``fast`` extra is installed (``wsq-worker[fast]``).

* hiredis: redis-py's asyncio client packs every command in Python (the benchmark measured
  a sixth of a worker's CPU there); these connection classes pack with
  ``hiredis.pack_command``, like redis-py's blocking client already does.
* uvloop: ``Worker.run()`` runs its event loop on uvloop.

Without them everything works the same, only slower.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import redis.asyncio
from redis.asyncio.connection import Connection, SSLConnection

hiredis: Any
uvloop: Any
try:
    import hiredis
except ImportError:  # pragma: no cover - the fast extra is not installed
    hiredis = None
try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


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


def async_redis(url: str, **options: Any) -> redis.asyncio.Redis:
    """``redis.asyncio.Redis.from_url(url, **options)``, packing with hiredis when installed."""
    client = redis.asyncio.Redis.from_url(url, **options)
    if hiredis is not None:
        pool = client.connection_pool
        if issubclass(pool.connection_class, SSLConnection):
            pool.connection_class = HiredisSSLConnection
        elif pool.connection_class is Connection:
            pool.connection_class = HiredisConnection
    return client


def run(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, on uvloop when installed."""
    if uvloop is not None:
        uvloop.run(main)
    else:
        asyncio.run(main)
