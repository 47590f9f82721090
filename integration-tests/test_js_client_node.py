"""The JavaScript client in Node: its unit tests (clients/js/test/, Node's own test runner, a
fake WebSocket and clock) as one pytest test, so that ``python3 dev.py test`` and CI run them;
and the package in Node 20+ against a real gateway and worker, including a session resumed
across a network cut (a TCP proxy resetting both sides)."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from system_harness import JWT_SECRET, RedisTarget, StartGateway, StartWorker, token

from wsq_devkit import TcpProxy, wait_until
from wsq_worker import Publisher

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


class DrivenClient:
    """clients/js/test-support/driven.mjs: a WsqClient in a Node process, sent commands on its
    stdin, reporting what it sees (events, pushes, replies) as JSON lines on its stdout."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.seen: list[dict[str, Any]] = []  # every line read so far, for failure messages
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self._lines.put(json.loads(line))
        self._lines.put(None)

    def command(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def request(self, name: str, action: str, data: Any = None) -> None:
        self.command(cmd="request", name=name, action=action, data=data)

    def expect(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        """The next reported line matching ``predicate`` (the others are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"nothing matching within {timeout} s; seen: {self.seen}") from None
            if line is None:
                raise AssertionError(f"the Node client exited; seen: {self.seen}\n{self.stderr()}")
            self.seen.append(line)
            if predicate(line):
                return line

    def reply(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        """The outcome of the request ``name`` (already seen, or the next to come)."""
        for line in self.seen:
            if line.get("name") == name:
                return line
        return self.expect(lambda line: line.get("name") == name, timeout)

    def stderr(self) -> str:
        return "" if self.process.stderr is None else self.process.stderr.read()


@contextmanager
def driven_client(node: str, url: str, jwt: str = "", **options: Any) -> Iterator[DrivenClient]:
    """A driven client connecting to ``url`` with the token ``jwt``; ``options``: the client's."""
    flags = ["--experimental-websocket"] if "--experimental-websocket" in node_help(node) else []
    process = subprocess.Popen(
        [node, *flags, str(CLIENT / "test-support" / "driven.mjs"), url, jwt, json.dumps(options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = DrivenClient(process)
    try:
        yield client
        client.command(cmd="close")
        client.expect(lambda line: line["event"] == "exit", timeout=10)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def pushed(line: dict[str, Any]) -> bool:
    return bool(line["event"] == "push" and line["action"] == "n")


def test_node_resumes_its_session_across_a_network_cut(
    start_gateway: StartGateway, start_worker: StartWorker, redis_target: RedisTarget, key_prefix: str
) -> None:
    """Resume on (WSQ_RESUME_WINDOW_S=30): the client's TCP connection is cut without a close
    frame; what is pushed meanwhile to its connection, its user and its group, and the reply to
    a request in flight, arrive after the resume, each once and in order, on the same
    connection id (protocol/README.md, "Session resume")."""
    node = node_or_skip()
    gateway = start_gateway(WSQ_RESUME_WINDOW_S="30", WSQ_JWT_SECRET=JWT_SECRET)
    start_worker()
    # The first reconnect waits 2.5 s (a fixed jitter), after the 1.5 s cut: Node 20's
    # WebSocket never reports an attempt whose TCP connection is closed during the handshake
    # (the proxy refusing it), so no attempt may fall inside the cut.
    backoff = {"reconnect": {"baseMs": 2500, "maxMs": 2500}, "random": 0.999}
    with (
        TcpProxy(gateway.port) as proxy,
        Publisher(redis_target.url, key_prefix, redis_cluster=redis_target.cluster) as publisher,
        driven_client(node, f"ws://127.0.0.1:{proxy.port}{gateway.path}", token("ada"), **backoff) as client,
    ):
        first = client.expect(lambda line: line["event"] == "$open")
        assert first["resumable"], f"the gateway sent no resume_token (is resume implemented?): {first}"
        assert (first["userId"], first["resumed"], first["recovered"]) == ("ada", False, False), first
        connection_id = first["connectionId"]
        client.request("join", "join_room", "lobby")
        assert client.reply("join")["ok"], client.seen
        publisher.to(connection_id).send("n", 0)
        client.expect(pushed)

        client.request("slow", "slow_async", 1.0)  # its reply comes while the network is cut
        wait_until(lambda: gateway.frames_accepted("slow_async") >= 1, message="the request queued")
        proxy.cut(1.5)  # both TCP connections reset, new ones refused for 1.5 s: no close frame
        closed = client.expect(lambda line: line["event"] == "$closed")
        assert (closed["code"], closed["willReconnect"]) == (1006, True), closed
        publisher.to(connection_id).send("n", 1)
        publisher.to_user("ada").send("n", 2)
        publisher.to_group("lobby").send("n", 3)

        resumed = client.expect(lambda line: line["event"] == "$open", timeout=30)
        assert resumed["connectionId"] == connection_id, resumed
        assert (resumed["resumed"], resumed["recovered"]) == (True, True), resumed
        publisher.to(connection_id).send("n", 4)  # live again
        client.expect(lambda line: pushed(line) and line["data"] == 4)
        assert client.reply("slow") == {
            "event": "reply",
            "name": "slow",
            "ok": True,
            "value": "slept",
        }, "the request in flight got its reply in the replay"
        reconnecting = [line for line in client.seen if line["event"] == "$reconnecting"]
        assert reconnecting, client.seen
        assert all(line["resuming"] for line in reconnecting), reconnecting
        client.request("whoami", "whoami")
        who = client.reply("whoami")
        assert who["value"]["connection_id"] == connection_id, who
    assert [line["data"] for line in client.seen if pushed(line)] == [0, 1, 2, 3, 4], client.seen
    assert not [line for line in client.seen if line["event"] == "$error"], client.seen
