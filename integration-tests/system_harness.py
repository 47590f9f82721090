"""Helpers for end-to-end tests: real gateway and worker processes, real WebSocket clients."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

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


StartGateway = Callable[..., GatewayProcess]
StartWorker = Callable[..., ManagedProcess]
