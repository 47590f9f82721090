"""The HTTP API examples of docs/http-api.md run as a backend would run them: a Node script with
nothing but fetch pushes to a real gateway's connections (the PHP ones need a PHP, which this
machine does not have)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from system_harness import ConnectClient, StartGateway

from wsq_client import Push
from wsq_devkit import free_port

pytestmark = [
    pytest.mark.single_redis,  # the API on a cluster: test_http_api.py
    pytest.mark.skipif(
        shutil.which("node") is None and not os.environ.get("CI"), reason="node is not on PATH"
    ),
]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "http_api" / "push.mjs"
KEY = "example-api-key-0123456789"


async def node(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), 30)
    return await proc.wait(), output.decode()


async def test_the_node_example_pushes_with_fetch(
    start_gateway: StartGateway, connect_client: ConnectClient
) -> None:
    api_port = free_port()
    gateway = start_gateway(WSQ_API_KEYS=KEY, WSQ_API_PORT=str(api_port))
    env = {"WSQ_API_URL": f"http://127.0.0.1:{api_port}", "WSQ_API_KEY": KEY}
    client = await connect_client(gateway.ws_url)
    assert client.connection_id is not None
    code, output = await node("connection", client.connection_id, "notice", '{"text": "hi"}', env=env)
    assert (code, output.strip()) == (0, "written to 1 gateway(s)")
    assert await client.pushed("notice") == {"text": "hi"}
    code, output = await node("all", "tick", "1", env=env)
    assert code == 0, output
    assert await client.pushed("tick") == 1
    assert client.received == [Push("notice", {"text": "hi"}), Push("tick", 1)], "nothing else"
    code, output = await node(
        "connection", client.connection_id, "notice", env={**env, "WSQ_API_KEY": "wrong"}
    )
    assert code != 0
    assert "unauthorized" in output
