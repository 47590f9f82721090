"""Helpers for end-to-end tests: real gateway and worker processes, real WebSocket clients.

Tests of what the application does (replies, pushes, error codes) talk to the gateway through the
Python client, ``wsq_client`` (``WsqClient`` below, connected by conftest's ``connect_client``);
``Client`` here, a thin aiohttp wrapper, stays for tests of the wire itself: exact frames, close
codes, frames answered more than once (raw_client.py goes lower still, for faults)."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import jwt
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

import wsq_client
from wsq_devkit import ManagedProcess, wait_until
from wsq_protocol.cluster import SyncClient
from wsq_protocol.keys import Keys

HERE = Path(__file__).resolve().parent
# The HS256 secret of gateways started with WSQ_JWT_SECRET=JWT_SECRET.
JWT_SECRET = "an-integration-test-secret-32-bytes!"
START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class RedisTarget:
    """The Redis a test's processes use: a single server's URL, or a cluster node's."""

    url: str
    cluster: bool

    @property
    def env(self) -> dict[str, str]:
        return {"WSQ_REDIS_URL": self.url, **({"WSQ_REDIS_CLUSTER": "true"} if self.cluster else {})}


@dataclass
class GatewayProcess:
    process: ManagedProcess
    port: int
    node_id: str
    path: str = "/ws"
    scheme: str = "http"  # https when the gateway serves TLS

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.path}"

    def http_url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def ready_report(self) -> dict[str, Any]:
        """What ``/readyz`` says (its JSON body), ready or not."""
        context = ssl._create_unverified_context() if self.scheme == "https" else None
        try:
            with urllib.request.urlopen(self.http_url("/readyz"), timeout=2, context=context) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        report: dict[str, Any] = json.loads(body)
        return report

    def frames_accepted(self, action: str) -> float:
        """How many client frames of ``action`` this gateway queued for the workers (/metrics)."""
        with urllib.request.urlopen(self.http_url("/metrics"), timeout=2) as resp:
            text = resp.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "wsq_gateway_frames_in"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels == {"outcome": "accepted", "action": action}
        )

    def status(self, path: str) -> int:
        # Readiness is probed without checking the certificate: tests use throw-away ones.
        context = ssl._create_unverified_context() if self.scheme == "https" else None
        try:
            with urllib.request.urlopen(self.http_url(path), timeout=2, context=context) as resp:
                status: int = resp.status
                return status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def wait_ready(self) -> None:
        def ready() -> bool:
            if not self.process.running():
                raise AssertionError(f"gateway exited:\n{self.process.output()}")
            return self.status("/readyz") == 200

        wait_until(ready, timeout=START_TIMEOUT_S, message=f"gateway {self.node_id} ready")


def token(user: str, **claims: object) -> str:
    """A JWT for ``user`` signed with JWT_SECRET."""
    return jwt.encode({"sub": user, **claims}, JWT_SECRET, algorithm="HS256")


def inbound_streams(prefix: str) -> list[str]:
    """The inbound stream partitions of every shard (WSQ_SHARDS: the default here)."""
    return Keys(prefix).inbound_streams()


def consumers(client: SyncClient, prefix: str) -> int:
    """How many workers read every inbound partition (each worker reads them all)."""
    counts = []
    for stream in inbound_streams(prefix):
        try:
            counts.append(max((int(group["consumers"]) for group in client.xinfo_groups(stream)), default=0))
        except redis.ResponseError:  # no stream, no group yet
            counts.append(0)
    return min(counts)


def inbound_length(client: SyncClient, prefix: str) -> int:
    """Entries in all inbound partitions: not yet handled, or handled and not yet acknowledged."""
    return sum(int(client.xlen(stream)) for stream in inbound_streams(prefix))


def inbound_pending(client: SyncClient, prefix: str) -> list[dict[str, Any]]:
    """The pending entries of every partition (``XPENDING ... - + 100``), with their stream."""
    pending: list[dict[str, Any]] = []
    for stream in inbound_streams(prefix):
        try:
            entries: Any = client.xpending_range(stream, "workers", "-", "+", 100)
        except redis.ResponseError:
            continue
        pending += [{**entry, "stream": stream} for entry in entries]
    return pending


def wait_for_consumers(client: SyncClient, prefix: str, count: int) -> None:
    """Until ``count`` workers read every inbound partition's consumer group."""
    wait_until(
        lambda: consumers(client, prefix) >= count,
        timeout=START_TIMEOUT_S,
        message=f"{count} worker(s) consuming",
    )


class Client:
    """A WebSocket client that has read its ``$connected`` frame."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.connection_id: str = hello["connection_id"]
        self.user_id: str | None = hello["user_id"]

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, url: str, **kwargs: Any) -> Client:
        ws = await session.ws_connect(url, **kwargs)
        hello = orjson.loads((await ws.receive(timeout=10)).data)
        assert hello["action"] == "$connected", hello
        return cls(ws, hello["data"])

    async def send(self, action: str, data: Any = None, id: str | None = None) -> None:
        frame: dict[str, Any] = {"action": action, "data": data}
        if id is not None:
            frame["id"] = id
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        doc: dict[str, Any] = orjson.loads(msg.data)
        return doc

    async def receive_until(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The first frame matching ``predicate``, skipping others (such as welcome pushes)."""
        while True:
            frame = await self.receive(timeout)
            if predicate(frame):
                return frame

    async def request(
        self, action: str, data: Any = None, id: str = "r1", timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send a frame with an id and return the answer carrying that id."""
        await self.send(action, data, id)
        return await self.receive_until(lambda frame: frame.get("id") == id, timeout)

    async def close_code(self, timeout: float = 10.0) -> tuple[int, str]:
        """Read (and drop) frames until the server closes the socket: its code and reason."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                return int(msg.data), msg.extra or ""
            assert msg.type is aiohttp.WSMsgType.TEXT, msg

    async def close(self) -> None:
        await self.ws.close()


class WsqClient(wsq_client.Client):
    """A ``wsq_client.Client`` that records every push from before its first connection on
    (``received``), so that a test can wait for one that may have come already (a welcome push
    sent as it connected): ``Client.next_push`` only sees those after it starts listening."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.received: list[wsq_client.Push] = []
        self._taken: set[int] = set()
        self._arrived = asyncio.Event()
        self.on("*", self._record)

    def _record(self, push: wsq_client.Push) -> None:
        self.received.append(push)
        self._arrived.set()

    async def pushed(self, action: str, timeout: float = 10.0) -> Any:
        """The ``data`` of the oldest push of ``action`` not taken yet, waiting for one up to
        ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                for index, push in enumerate(self.received):
                    if index not in self._taken and push.action == action:
                        self._taken.add(index)
                        return push.data
                self._arrived.clear()
                await self._arrived.wait()


T = TypeVar("T")


def in_order(*calls: Awaitable[T]) -> list[asyncio.Future[T]]:
    """Start ``request()``/``send()`` calls of an open client, their frames sent in this order
    once the caller next awaits: tasks run in the order created, and each writes its frame
    before it first suspends."""
    return [asyncio.ensure_future(call) for call in calls]


ConnectClient = Callable[..., Awaitable[WsqClient]]
StartGateway = Callable[..., GatewayProcess]
StartWorker = Callable[..., ManagedProcess]
