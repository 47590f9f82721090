"""Fixtures for end-to-end tests: a private Redis, gateway and worker processes.

Every test that starts gateways or workers is parametrised by the Redis it runs on: a single
redis-server (``[single]``) and a local 3-master Redis Cluster with a replica each
(``[cluster]``, ``WSQ_REDIS_CLUSTER=true``); ``WSQ_TEST_REDIS_MODES=single`` (or ``cluster``)
runs one mode only. A test of a single server's own faults (stopped, paused, emptied), or of
what does not depend on Redis's topology (TLS, pings, logs, the browser page), is marked
``single_redis`` and runs once; one of the cluster's own (a master failing over),
``cluster_redis``. Each test gets its own
key prefix, so the processes of one test never see another's data.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from docker_mode import pytest_report_header, pytest_terminal_summary  # noqa: F401 - report hooks
from system_harness import (
    HERE,
    ConnectClient,
    GatewayProcess,
    RedisTarget,
    StartGateway,
    StartWorker,
    WsqClient,
    consumers,
    wait_for_consumers,
)

from wsq_devkit import ManagedProcess, free_port
from wsq_protocol.cluster import SyncClient, sync_redis
from wsq_worker import AsyncPublisher

_names = itertools.count(1)

# Both by default (as in CI); WSQ_TEST_REDIS_MODES=single for a quicker run.
MODES = os.environ.get("WSQ_TEST_REDIS_MODES", "single,cluster").split(",")


@pytest.fixture(params=MODES)
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    if request.param == "cluster":
        return RedisTarget(request.getfixturevalue("redis_cluster").url, cluster=True)
    return RedisTarget(request.getfixturevalue("redis_server").url, cluster=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``single_redis`` test runs in the single mode only (not collected as ``[cluster]``), a
    ``cluster_redis`` one (a cluster's own fault) in the cluster mode only."""
    dropped = [
        item
        for item in items
        if (_mode(item) == "cluster" and item.get_closest_marker("single_redis"))
        or (_mode(item) == "single" and item.get_closest_marker("cluster_redis"))
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


def _mode(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("redis_target")


@pytest.fixture
def base_env(redis_target: RedisTarget, key_prefix: str) -> dict[str, str]:
    return {
        **redis_target.env,
        "WSQ_KEY_PREFIX": key_prefix,
        # Session resume off (the default is 120 s): a vanished client's disconnect event comes
        # at once, as these tests of faults expect; test_resume.py and the clients' tests turn
        # it on.
        "WSQ_RESUME_WINDOW_S": "0",
        "WSQ_LOG_LEVEL": "debug",
        "WSQ_LOG_FORMAT": "console",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def redis_client(redis_target: RedisTarget) -> Iterator[SyncClient]:
    """A client of the test's Redis (a cluster client in cluster mode), decoding replies."""
    client = sync_redis(redis_target.url, cluster=redis_target.cluster, decode_responses=True)
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
        # WSQ_NODE_ID="" leaves it unset: the gateway picks one in the least used shard.
        node_id = env.pop("WSQ_NODE_ID", f"gw{next(_names)}")
        full_env = {**base_env, "WSQ_HOST": "127.0.0.1", "WSQ_PORT": str(port), "WSQ_NODE_ID": node_id, **env}
        if not node_id:
            del full_env["WSQ_NODE_ID"]
        name = node_id or f"picked{next(_names)}"
        process = ManagedProcess.python_module(f"gateway-{name}", "wsq_gateway", env=full_env)
        processes.append(process.start())
        gateway = GatewayProcess(process, port, node_id, full_env.get("WSQ_PATH", "/ws"), scheme)
        gateway.wait_ready()
        if not node_id:
            gateway.node_id = str(gateway.ready_report()["node"])
        return gateway

    return start


@pytest.fixture
def start_worker(
    base_env: dict[str, str], processes: list[ManagedProcess], redis_client: SyncClient, key_prefix: str
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
async def publisher(redis_target: RedisTarget, key_prefix: str) -> AsyncIterator[AsyncPublisher]:
    """An ``AsyncPublisher`` on the test's Redis and key prefix."""
    async with AsyncPublisher(
        redis_url=redis_target.url, redis_cluster=redis_target.cluster, key_prefix=key_prefix
    ) as pub:
        yield pub


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def connect_client() -> AsyncIterator[ConnectClient]:
    """``await connect_client(url, **options)``: a connected ``WsqClient`` (a ``wsq_client.Client``
    recording its pushes), closed after the test. Without ``reconnect`` unless asked: a test
    that loses its connection fails loudly (``ClientClosed``) instead of going on with a new one."""
    clients: list[WsqClient] = []

    async def connect(url: str, **options: Any) -> WsqClient:
        client = WsqClient(url, **{"reconnect": False, **options})
        clients.append(client)
        await client.connect()
        return client

    yield connect
    for client in clients:
        await client.close()
