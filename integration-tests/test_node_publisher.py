"""Conformance of a publisher written in another language: a Node script speaking RESP itself
(node_publisher/publish.mjs) XADDs the golden example commands to a real gateway's node stream,
and real WebSocket clients receive exactly the frames the examples carry; garbage it sends is
dropped and counted, never forwarded."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from system_harness import HERE, JWT_SECRET, Client, RedisTarget, StartGateway, token

from wsq_protocol.cluster import SyncClient, is_cluster_sync
from wsq_protocol.keys import Keys

NODE = shutil.which("node")
SCRIPT = HERE / "node_publisher" / "publish.mjs"
VALID = HERE.parent / "protocol" / "examples" / "valid" / "command"
INVALID = HERE.parent / "protocol" / "examples" / "invalid" / "command"
# Commands gateways write to each other (session resume): never a publisher's.
BETWEEN_GATEWAYS = ("resume", "resumed", "relay", "detach")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not on PATH: the Node publisher can't run")


def example(name: str) -> Path:
    return VALID / f"{name}.json"


def frame_of(path: Path) -> dict[str, Any]:
    """The server frame a golden send command carries, as the client should read it."""
    doc: dict[str, Any] = json.loads(json.loads(path.read_text())["frame"])
    return doc


def redis_address(client: SyncClient, target: RedisTarget, key: str) -> tuple[str, int]:
    """Where a plain RESP client writes ``key``: the server, or the master serving its slot."""
    if is_cluster_sync(client):
        node = client.nodes_manager.get_node_from_slot(client.keyslot(key))  # type: ignore[union-attr]
        return str(node.host), int(node.port)
    url = urlsplit(target.url)
    return url.hostname or "127.0.0.1", url.port or 6379


def publish(address: tuple[str, int], stream: str, connection_id: str, *files: Path) -> list[str]:
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(SCRIPT), "--host", address[0], "--port", str(address[1]), "--stream", stream,
         "--connection", connection_id, *map(str, files)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == len(files), done.stdout
    assert "nil" not in ids, done.stdout  # every one written: the stream exists
    return ids


async def closed(client: Client) -> tuple[int, str]:
    """The close the server sends next: any other frame fails the test."""
    msg = await client.ws.receive(timeout=10)
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg
    return int(msg.data), msg.extra or ""


async def dropped(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "wsq_gateway_commands_dropped_total"
    }


async def test_node_publisher_golden_commands_reach_clients(
    start_gateway: StartGateway,
    session: aiohttp.ClientSession,
    redis_client: SyncClient,
    redis_target: RedisTarget,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    gateway = start_gateway(WSQ_JWT_SECRET=JWT_SECRET)
    ann = await Client.connect(session, f"{gateway.ws_url}?token={token('ann')}")
    user42 = await Client.connect(session, f"{gateway.ws_url}?token={token('42')}")  # the examples' user
    stream = Keys(key_prefix).node_stream(gateway.node_id)
    address = redis_address(redis_client, redis_target, stream)

    garbage = tmp_path / "garbage.json"  # a send whose frame is not even JSON
    garbage.write_text(json.dumps({
        "v": "1", "type": "send", "target": "connection", "to": ann.connection_id, "frame": "<html>oops",
    }))  # fmt: skip
    commands = [
        example("reply"),  # the SDK's field order: the gateway's fast path
        example("send-connection"),
        example("send-user"),  # to user 42
        example("broadcast"),  # target all, on the node stream: every connection of this gateway
        example("join"),
        example("send-group"),
        example("send-group-exclude"),  # excludes ann, the only member
        example("leave"),
        example("send-group"),  # nobody in the group any more
        example("accept"),  # no connect hook waits: ignored
        example("accept-with-user"),
        example("refuse"),
        garbage,
        INVALID / "frame-not-a-server-frame.json",  # JSON, but no "data"
        INVALID / "send-without-frame.json",  # not a command the gateway can run
        example("send-connection"),  # after the dropped ones, still delivered, in order
        example("disconnect"),  # ann: 4000 kicked
        example("disconnect-user"),  # user 42: 4001 logged out
    ]
    publishers_write = {
        p.name for p in VALID.glob("*.json") if json.loads(p.read_text())["type"] not in BETWEEN_GATEWAYS
    }
    assert {path.name for path in commands if path.parent == VALID} == publishers_write
    publish(address, stream, ann.connection_id, *commands)

    expected_ann = [frame_of(example(name)) for name in
                    ("reply", "send-connection", "broadcast", "send-group", "send-connection")]  # fmt: skip
    assert [await ann.receive() for _ in expected_ann] == expected_ann
    assert await closed(ann) == (4000, "kicked")  # and no other frame before it

    expected_42 = [frame_of(example("send-user")), frame_of(example("broadcast"))]
    assert [await user42.receive() for _ in expected_42] == expected_42
    assert await closed(user42) == (4001, "logged out")

    # Every command before the disconnects was read: the drops are counted already.
    counts = await dropped(session, gateway.http_url("/metrics"))
    assert counts == {"malformed": 1.0, "frame_not_json": 1.0, "frame_invalid": 1.0}
