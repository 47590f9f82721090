"""The Channels peer's publisher process: ``python -m bench.peers.publish REDIS_URL`` (in .venv-peers).

A push is ``channel_layer.send`` to the socket's channel, a broadcast ``group_send`` to the group
every socket is in, a group ``group_add`` then ``group_send``. Commands: ``bench.publishing``.
"""

# mypy: disable-error-code="import-not-found,import-untyped"
# Django and Channels exist only in bench/.venv-peers.

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import django

from bench.lines import serve
from bench.publishing import Publisher

EVERYONE = "all"  # bench.peers.channels_app.consumers.EVERYONE (importing it needs Django set up first)


def _push(action: str, data: dict[str, Any]) -> dict[str, str]:
    return {"type": "push.frame", "text": json.dumps({"action": action, "data": data})}


class ChannelsPublisher(Publisher):
    def __init__(self) -> None:
        super().__init__()
        from channels.layers import get_channel_layer  # noqa: PLC0415 - after django.setup()

        self.layer = get_channel_layer()

    async def push(self, connection_id: str, data: dict[str, Any]) -> None:
        await self.layer.send(connection_id, _push("push", data))

    async def broadcast(self, data: dict[str, Any]) -> None:
        await self.layer.group_send(EVERYONE, _push("fanout", data))

    async def join(self, connection_id: str, group: str) -> None:
        await self.layer.group_add(group, connection_id)

    async def group_send(self, group: str, data: dict[str, Any]) -> None:
        await self.layer.group_send(group, _push("fanout", data))

    async def close(self) -> None:
        await self.layer.close_pools()


async def main() -> None:
    publisher = ChannelsPublisher()
    try:
        await serve(publisher.handle)
    finally:
        await publisher.close()


if __name__ == "__main__":
    os.environ["BENCH_REDIS_URL"] = sys.argv[1]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peers.channels_app.settings")
    django.setup()
    asyncio.run(main())
