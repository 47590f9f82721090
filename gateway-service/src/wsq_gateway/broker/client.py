"""The gateway's Redis clients: redis-py's asyncio client, packing commands with hiredis,
and :func:`execute`, the hot path's lean pipeline.

redis-py's blocking client packs commands in C (``hiredis.pack_command``) when hiredis is
installed; its asyncio client always packs them in Python, which the benchmark measured
at a fifth of the gateway's CPU per message. These connection classes pack with hiredis
and fall back to redis-py's packer for anything hiredis does not take.

redis-py's ``Pipeline`` then spends about 10 µs of Python per command around the socket
(a command stack, a timeout and a response callback per reply); :func:`execute` sends the
same packed bytes on the same pooled connections and reads the raw replies in a loop.
"""

from __future__ import annotations

import math
from asyncio import timeout as asyncio_timeout
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


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


async def execute(client: aioredis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one write and return their raw replies, in order.

    What ``client.pipeline(transaction=False).execute(raise_on_error=False)`` does, without
    its per-command cost: replies are as Redis sent them (bytes, lists, and maps in RESP3; no
    response callbacks), a command Redis refused gives its ``ResponseError`` in its place, and a lost
    connection is retried as the client's ``retry`` says (the whole batch, as redis-py's
    pipeline does). The client's ``socket_timeout`` bounds reading all the replies (a blocking
    command's wait included). Raises ``redis.exceptions.ConnectionError`` or ``TimeoutError``.
    """
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    try:
        packed = conn.pack_commands(commands)
        timeout = conn.socket_timeout

        async def send_and_read() -> list[Any]:
            await conn.send_packed_command(packed)
            replies: list[Any] = []
            try:
                async with asyncio_timeout(timeout):
                    for _ in commands:
                        try:  # math.inf: no timeout per reply, the one above bounds them all
                            replies.append(await conn.read_response(disable_decoding=True, timeout=math.inf))
                        except ResponseError as exc:
                            replies.append(exc)
            except TimeoutError:
                await conn.disconnect(nowait=True)  # replies may still come: this socket is out of step
                raise RedisTimeoutError("Timeout reading from Redis") from None
            return replies

        async def disconnect(error: Exception) -> None:
            await conn.disconnect()

        result: list[Any] = await conn.retry.call_with_retry(send_and_read, disconnect)
        return result
    finally:
        await pool.release(conn)
