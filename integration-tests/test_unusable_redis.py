"""A Redis that can never serve wsq — a cluster node, a replica, a wrong or missing password —
stops the gateway and the worker at start-up with one clear line and a non-zero status,
instead of "not reachable yet" for ever (or a worker that half works)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from system_harness import HERE, RedisTarget

from wsq_devkit import ManagedProcess, RedisServer, free_port, wait_until
from wsq_devkit.redis_server import RedisServer as RedisServerType

EXIT_WITHIN_S = 15.0
PASSWORD = "the-right-password"


@pytest.fixture
def unusable(
    request: pytest.FixtureRequest, redis_server: RedisServerType, redis_target: RedisTarget
) -> Iterator[tuple[str, str]]:
    """(Redis URL, what the error line must say) for each kind of unusable Redis. The processes
    use a cluster client in the cluster mode: a lone cluster node then serves no slot, and a
    replica of a single Redis is not a cluster."""
    kind = request.param
    if kind == "cluster":
        server = RedisServer(cluster=True)
        url = server.url
        says = "does not serve every hash slot" if redis_target.cluster else "set WSQ_REDIS_CLUSTER=1"
    elif kind == "replica":
        server = RedisServer(replica_of=redis_server.port)
        url, says = server.url, "it is not a Redis Cluster" if redis_target.cluster else "replica"
    else:
        server = RedisServer(password=PASSWORD)
        auth = ":a-wrong-password@" if kind == "wrong-password" else ""
        url, says = f"redis://{auth}127.0.0.1:{server.port}/0", "authentication failed"
    with server:
        yield url, says


def exit_status(process: ManagedProcess) -> int:
    wait_until(lambda: not process.running(), timeout=EXIT_WITHIN_S, message=f"{process.name} to exit")
    return process.wait(0)


KINDS = ["cluster", "replica", "wrong-password", "no-password"]


@pytest.mark.parametrize("unusable", KINDS, indirect=True)
def test_the_gateway_exits_non_zero_with_one_clear_line(
    unusable: tuple[str, str], base_env: dict[str, str], processes: list[ManagedProcess]
) -> None:
    url, says = unusable
    env = {**base_env, "WSQ_REDIS_URL": url, "WSQ_LOG_FORMAT": "json", "WSQ_PORT": str(free_port())}
    gateway = ManagedProcess.python_module("gateway", "wsq_gateway", env=env).start()
    processes.append(gateway)
    assert exit_status(gateway) == 1
    lines = [json.loads(line) for line in gateway.output().splitlines() if line.startswith("{")]
    errors = [line for line in lines if line["level"] in ("error", "critical")]
    assert len(errors) == 1, errors
    assert says in errors[0]["event"], errors[0]
    assert "exception" not in errors[0], "one line, not a traceback"
    assert not any("not reachable yet" in line["event"] for line in lines)
    assert PASSWORD not in gateway.output()
    assert "a-wrong-password" not in gateway.output()


@pytest.mark.parametrize("unusable", KINDS, indirect=True)
def test_the_worker_exits_non_zero_with_one_clear_line(
    unusable: tuple[str, str], base_env: dict[str, str], processes: list[ManagedProcess]
) -> None:
    url, says = unusable
    env = {**base_env, "WSQ_REDIS_URL": url}
    worker = ManagedProcess.python_module("worker", "wsq_worker", "sample_app:worker", env=env, cwd=HERE)
    processes.append(worker.start())
    assert exit_status(worker) == 1
    output = worker.output()
    problems = [
        line
        for line in output.splitlines()
        if "ERROR" in line or line.startswith(("wsq-worker:", "Traceback"))
    ]
    assert len(problems) == 1, output
    assert problems[0].startswith("wsq-worker: "), output
    assert says in problems[0], output
    assert PASSWORD not in output
    assert "a-wrong-password" not in output
