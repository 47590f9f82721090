"""The publisher process of the push and fanout workloads, for wsq and for the bare baseline.

    python -m bench.publish wsq REDIS_URL KEY_PREFIX     # wsq_worker.AsyncPublisher, as an app would
    python -m bench.publish bare http://127.0.0.1:PORT   # asks bench.baseline_server to do it

Commands: ``bench.publishing``.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, cast

import aiohttp
import orjson
import uvloop

from bench.lines import serve
from bench.publishing import GroupsUnavailable, Publisher
from wsq_worker import AsyncPublisher
from wsq_worker.publisher import AsyncTarget


class _Groups(Protocol):
    """The group API of issue 3, on ``AsyncPublisher`` once it exists."""

    async def join(self, connection_id: str, group: str) -> Any: ...

    def to_group(self, group: str) -> AsyncTarget: ...


class WsqPublisher(Publisher):
    def __init__(self, redis_url: str, key_prefix: str) -> None:
        super().__init__()
        self.publisher = AsyncPublisher(redis_url, key_prefix)

    def _groups(self) -> _Groups:
        if not hasattr(self.publisher, "to_group"):
            raise GroupsUnavailable
        return cast(_Groups, self.publisher)

    async def push(self, connection_id: str, data: dict[str, Any]) -> None:
        await self.publisher.to(connection_id).send("push", data)

    async def broadcast(self, data: dict[str, Any]) -> None:
        await self.publisher.broadcast().send("fanout", data)

    async def join(self, connection_id: str, group: str) -> None:
        await self._groups().join(connection_id, group)

    async def group_send(self, group: str, data: dict[str, Any]) -> None:
        await self._groups().to_group(group).send("fanout", data)

    async def close(self) -> None:
        await self.publisher.aclose()


class BarePublisher(Publisher):
    """The bare server writes the frames itself: it has no broker to take them from.

    Its "group" is all of its sockets: the loop over a group's sockets is the same loop.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.session = aiohttp.ClientSession()

    async def _post(self, path: str, body: bytes = b"") -> dict[str, Any]:
        async with self.session.post(self.url + path, data=body) as response:
            response.raise_for_status()
            answer: dict[str, Any] = await response.json()
            return answer

    async def push(self, connection_id: str, data: dict[str, Any]) -> None:
        raise NotImplementedError("the bare server pushes in its own loop: see push_for")

    async def push_for(self, seconds: float, concurrency: int) -> dict[str, Any]:
        return {"ev": "pushed", **await self._post(f"/push?seconds={seconds}")}

    async def broadcast(self, data: dict[str, Any]) -> None:
        await self._post("/broadcast", orjson.dumps({"action": "fanout", "data": data}))

    async def join(self, connection_id: str, group: str) -> None:
        pass

    async def group_send(self, group: str, data: dict[str, Any]) -> None:
        await self.broadcast(data)

    async def close(self) -> None:
        await self.session.close()


async def main(argv: list[str]) -> None:
    publisher: Publisher = WsqPublisher(argv[1], argv[2]) if argv[0] == "wsq" else BarePublisher(argv[1])
    try:
        await serve(publisher.handle)
    finally:
        await publisher.close()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1:]))
