"""`wsq-worker status` and `wsq-worker send` against real gateway and worker processes (on a single
Redis and on a Redis Cluster: the redis_target fixture)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from system_harness import ConnectClient, RedisTarget, StartGateway, StartWorker


def run_wsq_worker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "wsq_worker", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def status(env: dict[str, str]) -> dict[str, Any]:
    result = run_wsq_worker(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


async def test_status_shows_the_gateways_their_connections_and_the_workers_and_send_reaches_a_client(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    connect_client: ConnectClient,
    redis_target: RedisTarget,
    key_prefix: str,
) -> None:
    env = {**redis_target.env, "WSQ_KEY_PREFIX": key_prefix}
    empty = run_wsq_worker(env, "status")
    assert empty.returncode == 0, empty.stderr
    assert "no gateway alive" in empty.stdout
    assert "no worker has read the inbound stream yet" in empty.stdout

    gateways = [start_gateway(), start_gateway()]
    worker = start_worker()
    clients = [await connect_client(gateways[0].ws_url) for _ in range(2)]
    clients.append(await connect_client(gateways[1].ws_url))
    for client in clients:  # the worker handled their connect events
        assert await client.pushed("welcome") == {"connection_id": client.connection_id}

    shown = status(env)
    assert sorted((g["node"], g["connections"]) for g in shown["gateways"]) == sorted(
        [(gateways[0].node_id, 2), (gateways[1].node_id, 1)]
    )
    assert shown["stale_gateways"] == []
    [consumer] = shown["workers"]["live"]
    assert f"-{worker.pid}-" in consumer
    assert shown["workers"]["stale"] == []
    assert (shown["inbound"]["pending"], shown["dead_letters"]) == (0, 0)

    human = run_wsq_worker(env, "status")
    assert human.returncode == 0, human.stderr
    assert "gateways: 2 alive, 3 connections" in human.stdout
    assert "workers: 1 live" in human.stdout.splitlines()

    target = clients[2]
    sent = run_wsq_worker(env, "send", f"connection:{target.connection_id}", "notice", '{"text": "hi"}')
    assert (sent.returncode, sent.stdout) == (0, "wrote 1 command\n"), sent.stderr
    assert await target.pushed("notice") == {"text": "hi"}
    sent = run_wsq_worker(env, "send", "all", "maintenance", "300")
    assert (sent.returncode, sent.stdout) == (0, "wrote 1 command\n"), sent.stderr
    for client in clients:
        assert await client.pushed("maintenance") == 300
