"""Helpers for tests of an in-process gateway (aiohttp test server) on a private redis-server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
import orjson
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from redis.typing import KeyT

from wsq_devkit.redis_typing import BytesEntry, bytes_entries
from wsq_gateway import Settings
from wsq_protocol.keys import Keys


class RunningGateway:
    def __init__(self, server: TestServer, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.session = session

    @property
    def node_id(self) -> str:
        return self.settings.node_id

    def url(self, path: str | None = None) -> str:
        return str(self.server.make_url(path or self.settings.path))

    async def ready(self) -> bool:
        async with self.session.get(self.url("/readyz")) as resp:
            return resp.status == 200

    async def connect(self, **kwargs: Any) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
        """Open a socket and read its $connected frame."""
        ws = await self.session.ws_connect(self.url(), **kwargs)
        hello = await receive_json(ws)
        assert hello["action"] == "$connected", hello
        return ws, hello["data"]


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    doc: dict[str, Any] = orjson.loads(msg.data)
    return doc


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


# redis-py types a reply for any client: ``bytes | str`` (it cannot know ``decode_responses``),
# a stream range as optional. The tests' clients do not decode, so replies are bytes: these give
# a reply that one type, with a cast where redis-py returns it.


async def stream_entries(redis: aioredis.Redis, stream: str) -> list[BytesEntry]:
    """``XRANGE stream``: every entry, oldest first."""
    return bytes_entries(await redis.xrange(stream))


async def set_members(redis: aioredis.Redis, key: KeyT) -> set[bytes]:
    """``SMEMBERS key``."""
    return cast("set[bytes]", await redis.smembers(key))
