"""Docker mode: the end-to-end checks against `docker compose up`, with the real images.

Runs with WSQ_IT_DOCKER=1 on a machine with a Docker engine and the compose plugin
(pytest-docker starts docker-compose.yml under a project of its own, on free host ports,
and removes it with its volumes afterwards). Anywhere else every test here is skipped, and
the run's header and summary say why (docker_mode.py). The process-mode tests cover the
same behaviour with local processes; these show it holds in the containers: the
images' entry points, health checks and signals, the proxy in front of two gateways,
and two workers sharing the stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from docker_mode import docker_mode
from system_harness import Client
from test_deploy import COMPOSE_FILE, load_chat_runner

from wsq_devkit import free_port, wait_until

ENABLED, WHY = docker_mode()
pytestmark = pytest.mark.skipif(not ENABLED, reason=f"Docker mode: {WHY}")

STARTUP_TIMEOUT_S = 600  # building both images from scratch included
RECONNECT_CODES = (1001, 1012)  # "going away" / "service restart": reconnect elsewhere


# pytest-docker's fixtures, pointed at the repository's compose file.


@pytest.fixture(scope="session")
def host_ports() -> Iterator[dict[str, int]]:
    """Free host ports for the proxy, passed to compose through its documented variables."""
    ports = {"WSQ_HTTP_PORT": free_port(), "WSQ_WS_PORT": free_port()}
    saved = {name: os.environ.get(name) for name in ports}
    os.environ.update({name: str(port) for name, port in ports.items()})
    yield ports
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_setup(host_ports: dict[str, int]) -> list[str]:
    # --wait: until every service with a health check is healthy (the gateways' is the image's).
    return [f"up --build --detach --wait --wait-timeout {STARTUP_TIMEOUT_S}"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down --volumes --timeout 40"]


@pytest.fixture(scope="session")
def compose(docker_compose_command: str, docker_compose_project_name: str) -> Any:
    def run(*args: str) -> str:
        project = ["-f", str(COMPOSE_FILE), "-p", docker_compose_project_name]
        command = [*docker_compose_command.split(), *project]
        done = subprocess.run([*command, *args], capture_output=True, text=True, check=True, timeout=300)
        return done.stdout

    return run


@pytest.fixture(scope="session")
def urls(docker_services: Any, host_ports: dict[str, int]) -> dict[str, str]:
    http = docker_services.port_for("proxy", 8080)
    ws = docker_services.port_for("proxy", 8000)
    assert (http, ws) == (host_ports["WSQ_HTTP_PORT"], host_ports["WSQ_WS_PORT"])
    return {
        "page": f"http://127.0.0.1:{http}/",
        "ws": f"ws://127.0.0.1:{http}/ws",  # the same origin as the page
        "ws_default": f"ws://127.0.0.1:{ws}/ws",  # where the page looks by default
    }


def containers(compose: Any) -> list[dict[str, Any]]:
    """`docker compose ps --all` as records (one JSON array, or one object a line, by version)."""
    out = compose("ps", "--all", "--format", "json").strip()
    if out.startswith("["):
        records: list[dict[str, Any]] = json.loads(out)
        return records
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_every_service_is_up_and_healthy(compose: Any, urls: dict[str, str]) -> None:
    running = containers(compose)
    by_service: dict[str, list[dict[str, Any]]] = {}
    for record in running:
        by_service.setdefault(record["Service"], []).append(record)
    assert set(by_service) == {"redis", "gateway-1", "gateway-2", "worker", "proxy"}
    assert len(by_service["worker"]) == 2
    for service, records in by_service.items():
        for record in records:
            assert record["State"] == "running", (service, record)
            if service != "worker":  # workers have no health check (HEALTHCHECK NONE)
                assert record.get("Health") == "healthy", (service, record)
    with urllib.request.urlopen(urls["page"], timeout=10) as page:
        assert "wsq chat" in page.read().decode()


async def test_the_chat_works_through_the_proxy(urls: dict[str, str]) -> None:
    """The demo's own check (examples/chat/run.py --check), through nginx, both gateways
    and both workers; and the page's default address (port 8000) leads to a gateway too."""
    chat = load_chat_runner()
    summary = await chat.round_trip(urls["page"], urls["ws"], live_stats=False)
    assert "$pong" in summary
    async with aiohttp.ClientSession() as session:
        client = await Client.connect(session, urls["ws_default"])
        assert await client.request("$ping", 1, id="d") == {"action": "$pong", "data": 1, "id": "d"}
        await client.close()


async def clients_on_both_gateways(session: aiohttp.ClientSession, url: str) -> dict[str, Client]:
    """Connect through the proxy until two clients sit on two different gateways (the node
    id is the part of a connection id before the dot)."""
    by_node: dict[str, Client] = {}
    extra: list[Client] = []
    for _ in range(20):
        client = await Client.connect(session, url)
        node = client.connection_id.split(".")[0]
        if node in by_node:
            extra.append(client)
        else:
            by_node[node] = client
        if len(by_node) == 2:
            break
    for client in extra:
        await client.close()
    assert len(by_node) == 2, "round robin spreads connections over both gateways"
    return by_node


async def test_a_broadcast_crosses_gateways(urls: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        ann, bob = (await clients_on_both_gateways(session, urls["ws"])).values()
        for client, name in ((ann, "ann"), (bob, "bob")):
            reply = await client.request("set_name", {"name": name}, id=f"n-{name}")
            assert reply["data"] == {"ok": True, "name": name}
        reply = await ann.request("say", {"text": "across gateways"}, id="s1")
        assert reply["data"] == {"ok": True}

        def is_message(frame: dict[str, Any]) -> bool:
            return bool(frame["action"] == "message" and frame["data"]["text"] == "across gateways")

        for client in (ann, bob):
            message = await client.receive_until(is_message)
            assert message["data"]["from"] == "ann"
            await client.close()


async def test_a_stopped_gateway_drains_and_the_other_takes_its_clients(
    compose: Any, urls: dict[str, str]
) -> None:
    """`docker compose stop gateway-1` is SIGTERM to the image's entry point: its clients
    are closed with a reconnect code, it exits with status 0, and new connections through
    the proxy reach gateway-2. Then it starts again, for the tests after this one."""
    async with aiohttp.ClientSession() as session:
        clients = list((await clients_on_both_gateways(session, urls["ws"])).values())
        (gateway_1,) = [r for r in containers(compose) if r["Service"] == "gateway-1"]
        stop = asyncio.create_task(asyncio.to_thread(compose, "stop", "--timeout", "30", "gateway-1"))
        closed, open_ = [], []
        for client in clients:
            try:
                code, _ = await client.close_code(timeout=5)
                closed.append(code)
            except TimeoutError:
                open_.append(client)
        await stop
        assert len(closed) == 1, "exactly the client on the stopped gateway was closed"
        assert closed[0] in RECONNECT_CODES
        (survivor,) = open_
        assert (await survivor.request("$ping", None, id="alive"))["id"] == "alive"
        inspect = await asyncio.to_thread(
            subprocess.run,
            ["docker", "inspect", "--format", "{{.State.ExitCode}}", gateway_1["ID"]],
            capture_output=True,
            text=True,
            check=True,
        )
        assert inspect.stdout.strip() == "0", "a drained gateway exits with status 0"
        newcomer = await Client.connect(session, urls["ws"])  # the proxy skips the stopped one
        for client in (survivor, newcomer):
            await client.close()
    compose("start", "gateway-1")

    def healthy_again() -> bool:
        (record,) = [r for r in containers(compose) if r["Service"] == "gateway-1"]
        return record.get("Health") == "healthy"

    wait_until(healthy_again, timeout=60, message="gateway-1 healthy again")


def test_redis_keeps_its_data_on_a_volume(compose: Any) -> None:
    """The append-only file is on, so events waiting in the streams survive a restart."""
    answer = compose("exec", "-T", "redis", "redis-cli", "config", "get", "appendonly")
    assert answer.split() == ["appendonly", "yes"]
    assert Path(COMPOSE_FILE).read_text().count("redis-data:/data") == 1
