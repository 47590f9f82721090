"""The systems under test, each started fresh for a workload and stopped after it.

* ``wsq``: a private redis-server, ``python -m wsq_gateway`` and one ``python -m wsq_worker``
  process running ``bench.echo_worker``;
* ``wsq-schema``: ``wsq`` whose worker declares a JSON Schema for the echo action, so that the
  gateway validates every frame (``bench.echo_worker.worker_with_schema``);
* ``wsq-noresume``: ``wsq`` with session resume off (``WSQ_RESUME_WINDOW_S=0``; ``wsq`` runs
  the default, 120 s: every frame numbered and kept in its connection's replay buffer), to
  measure what resume costs;
* ``wsq-cluster1``, ``wsq-cluster3``: the same on a private Redis Cluster of 1 or 3 masters
  (no replicas), the gateway and the worker with ``WSQ_REDIS_CLUSTER=1``;
* ``bare``: ``bench.baseline_server``, the same transport work with no broker and no worker;
* ``channels``: a private redis-server, daphne serving ``bench.peers.channels_app`` and one
  ``runworker`` process, with channels_redis between them, from bench/.venv-peers.
"""

from __future__ import annotations

import abc
import hashlib
import json
import subprocess
import sys
import urllib.request
import venv
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aiohttp
import orjson
import redis
from redis.crc import key_slot

from bench.children import ROOT
from wsq_devkit import ManagedProcess, RedisCluster, RedisServer, free_port, wait_until, wait_until_async
from wsq_protocol.keys import Keys

BENCH = ROOT / "bench"
PEERS_VENV = BENCH / ".venv-peers"
PEERS_REQUIREMENTS = BENCH / "requirements-peers.txt"
KEY_PREFIX = "bench"
WORKER_CONCURRENCY = 256  # more than the 200 requests the high-load roundtrip keeps in flight
START_TIMEOUT_S = 60.0


@dataclass
class Running:
    """A started system: where clients connect, which processes to watch, how to publish."""

    name: str
    ws_url: str  # one URL, or one per gateway separated by commas (the load spreads over them)
    publisher_argv: list[str]
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid; "server" holds the sockets
    redis_urls: list[str] = field(default_factory=list)  # wsq's Redis servers (a cluster's masters)

    @property
    def server_pid(self) -> int:
        return self.pids["server"]

    @property
    def server_pids(self) -> list[int]:
        """Every process holding sockets: "server", and "server1"... with several gateways."""
        return [pid for role, pid in self.pids.items() if role.startswith("server")]


class System(abc.ABC):
    name: str
    label: str

    @abc.abstractmethod
    async def start(self, stack: AsyncExitStack, gateways: int = 1) -> Running:
        """Start the processes (``stack`` stops them); return once an echo goes through.
        ``gateways``: how many gateway processes wsq runs (the others have one server)."""


class Wsq(System):
    name = "wsq"
    label = "wsq (gateway + Redis + worker)"
    worker = "bench.echo_worker:worker"

    env: dict[str, str] = {}  # noqa: RUF012 - read only

    async def start(self, stack: AsyncExitStack, gateways: int = 1) -> Running:
        broker = stack.enter_context(RedisServer())
        pids = {"redis": _redis_pid(broker)}
        return await _start_wsq(
            self.name, stack, broker.url, [broker.url], pids, self.env, _node_ids(gateways), self.worker
        )


class WsqSchema(Wsq):
    """wsq, the worker declaring a schema for the echo action: the gateway validates each frame."""

    name = "wsq-schema"
    label = "wsq, frames validated (a schema declared)"
    worker = "bench.echo_worker:worker_with_schema"


class WsqNoResume(Wsq):
    """wsq with session resume off: frames are neither numbered nor kept (what resume costs)."""

    name = "wsq-noresume"
    label = "wsq, session resume off (WSQ_RESUME_WINDOW_S=0)"
    env = {"WSQ_RESUME_WINDOW_S": "0"}  # noqa: RUF012 - read only


class WsqCluster(System):
    """wsq on a private Redis Cluster of ``masters`` masters without replicas
    (``wsq_devkit.RedisCluster``), the gateways and the worker with ``WSQ_REDIS_CLUSTER=1``.
    Several gateways get node ids whose shards are on different masters, in turn."""

    def __init__(self, masters: int) -> None:
        self.masters = masters
        self.name = f"wsq-cluster{masters}"
        self.label = f"wsq on a Redis Cluster of {masters} master{'s' if masters > 1 else ''}"

    async def start(self, stack: AsyncExitStack, gateways: int = 1) -> Running:
        cluster = stack.enter_context(RedisCluster(masters=self.masters, replicas=0))
        masters = cluster.masters()
        pids = {f"redis{index}": _redis_pid(node) for index, node in enumerate(masters)}
        urls = [node.url for node in masters]
        index_of_port = {node.port: index for index, node in enumerate(masters)}
        owner = {slot: index_of_port[v.port] for v in cluster.view() if v.is_master for slot in v.slots}
        keys = Keys(KEY_PREFIX)

        def master_of(node: str) -> int:
            return owner[key_slot(keys.inbound_stream_of(node).encode())]

        nodes = _node_ids(gateways, master_of, len(masters))
        return await _start_wsq(self.name, stack, cluster.url, urls, pids, {"WSQ_REDIS_CLUSTER": "1"}, nodes)


def _node_ids(count: int, master_of: Callable[[str], int] | None = None, masters: int = 1) -> list[str]:
    """Node ids for ``count`` gateways: "bench" for one; for more, ids in distinct shards whose
    master (``master_of``, an index) is each master in turn."""
    if count == 1:
        return ["bench"]
    keys = Keys(KEY_PREFIX)
    if count > keys.shards:
        raise ValueError(f"{count} gateways: more than the {keys.shards} shards")
    chosen: list[str] = []
    shards: set[int] = set()
    for number in range(100_000):
        node = f"bench{number}"
        shard = keys.shard_of(node)
        if shard in shards or (master_of is not None and master_of(node) != len(chosen) % masters):
            continue
        chosen.append(node)
        shards.add(shard)
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"no node ids for {count} gateways over {masters} masters")


async def _start_wsq(
    name: str,
    stack: AsyncExitStack,
    redis_url: str,
    redis_urls: list[str],
    redis_pids: dict[str, int],
    extra_env: dict[str, str],
    node_ids: list[str],
    worker_target: str = "bench.echo_worker:worker",
) -> Running:
    env = {
        "WSQ_HOST": "127.0.0.1",
        "WSQ_REDIS_URL": redis_url,
        "WSQ_KEY_PREFIX": KEY_PREFIX,
        "WSQ_LOG_LEVEL": "warning",
        # Every client is on 127.0.0.1 and sends as fast as it can: lift the per-address
        # connection cap and the per-connection rate limit (issue 4's defaults: 1000, 100/s).
        "WSQ_MAX_CONNECTIONS_PER_ADDR": "0",
        "WSQ_RATE_LIMIT": "0",
        **extra_env,
    }
    gateways: list[ManagedProcess] = []
    urls: list[str] = []
    for index, node in enumerate(node_ids):
        port = free_port()
        process = ManagedProcess.python_module(
            f"wsq-gateway{index or ''}",
            "wsq_gateway",
            env=env | {"WSQ_PORT": str(port), "WSQ_NODE_ID": node},
            cwd=ROOT,
        )
        gateways.append(_start(stack, process))
        urls.append(f"ws://127.0.0.1:{port}/ws")
        _wait_http(f"http://127.0.0.1:{port}/readyz", process)
    worker = _start(
        stack,
        ManagedProcess.python_module(
            "wsq-worker",
            "wsq_worker",
            worker_target,
            "--concurrency",
            str(WORKER_CONCURRENCY),
            env=env,
            cwd=ROOT,
        ),
    )
    servers = {f"server{index or ''}": gateway.pid for index, gateway in enumerate(gateways)}
    running = Running(
        name,
        ",".join(urls),
        [sys.executable, "-m", "bench.publish", "wsq", redis_url, KEY_PREFIX],
        {**servers, "worker": worker.pid, **redis_pids},
        redis_urls,
    )
    for url in urls:
        await _wait_echo(url, [*gateways, worker])
        if worker_target != "bench.echo_worker:worker":  # measure only once every frame is validated
            _wait_schemas(url.replace("ws://", "http://").replace("/ws", "/readyz"), worker)
    return running


class Bare(System):
    name = "bare"
    label = "bare aiohttp (no broker)"

    async def start(self, stack: AsyncExitStack, gateways: int = 1) -> Running:
        port = free_port()
        server = _start(
            stack,
            ManagedProcess.python_module("baseline", "bench.baseline_server", str(port), env={}, cwd=ROOT),
        )
        _wait_http(f"http://127.0.0.1:{port}/healthz", server)
        running = Running(
            self.name,
            f"ws://127.0.0.1:{port}/ws",
            [sys.executable, "-m", "bench.publish", "bare", f"http://127.0.0.1:{port}"],
            {"server": server.pid},
        )
        await _wait_echo(running.ws_url, [server])
        return running


class Channels(System):
    name = "channels"
    label = "Django Channels (daphne + channels_redis + runworker)"

    async def start(self, stack: AsyncExitStack, gateways: int = 1) -> Running:
        python = str(ensure_peers_venv())
        broker = stack.enter_context(RedisServer())
        port = free_port()
        env = {
            "DJANGO_SETTINGS_MODULE": "bench.peers.channels_app.settings",
            "BENCH_REDIS_URL": broker.url,
            "PYTHONPATH": str(ROOT),
        }
        daphne_argv = [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0"]
        daphne = _start(
            stack,
            ManagedProcess("daphne", [*daphne_argv, "bench.peers.channels_app.asgi:application"], env, ROOT),
        )
        worker = _start(
            stack,
            ManagedProcess("runworker", [python, "-m", "django", "runworker", "echo-worker"], env, ROOT),
        )
        running = Running(
            self.name,
            f"ws://127.0.0.1:{port}/ws",
            [python, "-m", "bench.peers.publish", broker.url],
            {"server": daphne.pid, "worker": worker.pid, "redis": _redis_pid(broker)},
        )
        await _wait_echo(running.ws_url, [daphne, worker])
        return running


CLUSTER_MASTERS = (1, 3)  # the Redis Clusters the benchmark knows: wsq-cluster1, wsq-cluster3
SYSTEMS: dict[str, System] = {
    system.name: system
    for system in (
        Wsq(),
        WsqSchema(),
        WsqNoResume(),
        *(WsqCluster(masters) for masters in CLUSTER_MASTERS),
        Bare(),
        Channels(),
    )
}


def ensure_peers_venv() -> Path:
    """bench/.venv-peers with requirements-peers.txt installed (again when the file changed)."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".installed"
    wanted = hashlib.sha256(PEERS_REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"bench: installing {PEERS_REQUIREMENTS.name} into {PEERS_VENV}", flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(PEERS_VENV)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(PEERS_REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return python


def _redis_pid(server: RedisServer) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


class _LogsOnError:
    """Exit callback: when the workload failed, show the end of a process's log."""

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process

    def __call__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            sys.stderr.write(
                f"----- {self.process.name}, last lines -----\n{self.process.output()[-3000:]}\n"
            )


def _start(stack: AsyncExitStack, process: ManagedProcess) -> ManagedProcess:
    """Start ``process``; ``stack`` stops it (after showing its log if something failed)."""
    stack.enter_context(process)
    stack.push(_LogsOnError(process))
    return process


def _check_running(processes: Sequence[ManagedProcess]) -> None:
    for process in processes:
        if not process.running():
            raise RuntimeError(f"{process.name} exited:\n{process.output()[-3000:]}")


def _wait_http(url: str, process: ManagedProcess) -> None:
    def ready() -> bool:
        _check_running([process])
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_until(ready, timeout=START_TIMEOUT_S, message=f"{process.name} answering {url}")


def _wait_schemas(url: str, process: ManagedProcess) -> None:
    """Until the gateway at ``url`` (/readyz) validates some action's frames."""

    def loaded() -> bool:
        _check_running([process])
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(json.load(response)["schemas"]["validated"])

    wait_until(loaded, timeout=START_TIMEOUT_S, message=f"the schemas loaded by {url}")


async def _wait_echo(url: str, processes: Sequence[ManagedProcess]) -> None:
    """Until one echo request goes all the way through the system and back."""

    async def echoed() -> bool:
        _check_running(processes)
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
                await ws.receive(timeout=5)  # $connected
                await ws.send_str('{"action":"echo","data":{"text":"probe"},"id":"probe"}')
                while True:
                    doc = orjson.loads((await ws.receive(timeout=5)).data)
                    if doc.get("id") == "probe":
                        return bool(doc.get("data") == {"text": "probe"})
        except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError, TypeError):
            return False

    await wait_until_async(echoed, timeout=START_TIMEOUT_S, interval=0.1, message=f"an echo through {url}")
