"""The JavaScript client in Node: its unit tests (clients/js/test/, Node's own test runner, a
fake WebSocket and clock) as one pytest test, so that ``python3 dev.py test`` and CI run them;
and the package in Node 20+ against a real gateway and worker."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from system_harness import StartGateway, StartWorker

# the client's code, not Redis: nothing to run in the cluster mode
pytestmark = pytest.mark.single_redis

CLIENT = Path(__file__).resolve().parents[1] / "clients" / "js"
NODE = shutil.which("node")
NODE_MAJOR_MIN = 20  # package.json's engines


def node_or_skip() -> str:
    if NODE is None:
        missing = "node is not on PATH (Node 20+: the JavaScript client's tests need it)"
        if os.environ.get("CI"):  # CI installs Node: there, a missing node is a failure
            pytest.fail(missing)
        pytest.skip(missing)
    return NODE


def test_node_unit_tests() -> None:
    node = node_or_skip()
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    assert int(version.strip().lstrip("v").split(".")[0]) >= NODE_MAJOR_MIN, version
    done = subprocess.run(
        [node, "--test", "--test-reporter=tap", "test/"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", output, re.MULTILINE)
    assert passed is not None, output
    assert failed is not None, output
    assert int(failed.group(1)) == 0, output
    assert int(passed.group(1)) >= 30, output  # the runner found the tests


def test_node_against_a_real_gateway(start_gateway: StartGateway, start_worker: StartWorker) -> None:
    node = node_or_skip()
    gateway = start_gateway()
    start_worker()
    # Node 20's WebSocket is behind a flag (Node 22 has it by default, and ignores the flag).
    flags = ["--experimental-websocket"] if "--experimental-websocket" in node_help(node) else []
    done = subprocess.run(
        [node, *flags, str(CLIENT / "test-support" / "live.mjs"), gateway.ws_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["connectionId"].startswith(f"{gateway.node_id}.")
    assert result["userId"] is None
    assert result["echo"] == {"text": "héllo"}
    assert result["pushTwice"] == "done"
    assert result["pushes"] == [1, 2]
    assert result["unknown"] == {"name": "WsqError", "code": "unknown_action"}
    assert result["pingMs"] >= 0
    assert result["state"] == "closed"


def node_help(node: str) -> str:
    return subprocess.run([node, "--help"], capture_output=True, text=True, check=True).stdout
