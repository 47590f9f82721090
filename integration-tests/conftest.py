"""Fixtures for end-to-end tests: a private redis-server, gateway and worker processes.

Each test gets its own key prefix, so the processes of one test never see another's data.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis
from docker_mode import pytest_report_header, pytest_terminal_summary  # noqa: F401 - report hooks
from system_harness import HERE, GatewayProcess, StartGateway, StartWorker, consumers, wait_for_consumers

from wsq_devkit import ManagedProcess, free_port
from wsq_devkit.redis_server import RedisServer

_names = itertools.count(1)


@pytest.fixture
def base_env(redis_server: RedisServer, key_prefix: str) -> dict[str, str]:
    return {
        "WSQ_REDIS_URL": redis_server.url,
        "WSQ_KEY_PREFIX": key_prefix,
        "WSQ_LOG_LEVEL": "debug",
        "WSQ_LOG_FORMAT": "console",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def processes(request: pytest.FixtureRequest) -> Iterator[list[ManagedProcess]]:
    """Every process a test started; stopped afterwards, their logs shown if the test failed."""
    started: list[ManagedProcess] = []
    yield started
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for process in started:
        process.stop()
        if failed:
            sys.stderr.write(f"\n----- {process.name} -----\n{process.output()[-6000:]}\n")
        process.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def start_gateway(base_env: dict[str, str], processes: list[ManagedProcess]) -> StartGateway:
    def start(scheme: str = "http", **env: str) -> GatewayProcess:
        port = free_port()
        node_id = env.pop("WSQ_NODE_ID", f"gw{next(_names)}")
        full_env = {**base_env, "WSQ_HOST": "127.0.0.1", "WSQ_PORT": str(port), "WSQ_NODE_ID": node_id, **env}
        process = ManagedProcess.python_module(f"gateway-{node_id}", "wsq_gateway", env=full_env)
        processes.append(process.start())
        gateway = GatewayProcess(process, port, node_id, full_env.get("WSQ_PATH", "/ws"), scheme)
        gateway.wait_ready()
        return gateway

    return start


@pytest.fixture
def start_worker(
    base_env: dict[str, str], processes: list[ManagedProcess], redis_client: redis.Redis, key_prefix: str
) -> StartWorker:
    def start(target: str = "sample_app:worker", *args: str, cwd: Path = HERE, **env: str) -> ManagedProcess:
        """``python -m wsq_worker target args`` run in ``cwd``; returns once it reads the stream."""
        before = consumers(redis_client, key_prefix)
        process = ManagedProcess.python_module(
            f"worker-{next(_names)}", "wsq_worker", target, *args, env={**base_env, **env}, cwd=cwd
        )
        processes.append(process.start())
        wait_for_consumers(redis_client, key_prefix, before + 1)
        return process

    return start


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session
