"""A private Redis Cluster for tests: real ``redis-server --cluster-enabled yes`` processes on free
ports, joined by ``redis-cli --cluster create``, with the faults a cluster has (a master lost and
a replica promoted, a slot moved to another master)."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from wsq_devkit.polling import DeadlineExceeded, wait_until
from wsq_devkit.redis_server import RedisServer, find_redis_cli, find_redis_server

SLOTS = 16384


@dataclass(frozen=True, slots=True)
class NodeView:
    """One line of ``CLUSTER NODES``: a node as the node asked sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: frozenset[int]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def parse_cluster_nodes(text: str) -> list[NodeView]:
    """The nodes of a ``CLUSTER NODES`` reply (its text)."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]
        slots: set[int] = set()
        for spec in fields[8:]:
            if spec.startswith("["):  # a slot being imported or migrated: still its owner's
                continue
            first, _, last = spec.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        nodes.append(
            NodeView(
                node_id=fields[0],
                port=int(address.rsplit(":", 1)[1]),
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                slots=frozenset(slots),
            )
        )
    return nodes


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on free loopback
    ports, without persistence, until ``stop()``. From 3 masters ``redis-cli --cluster create``
    joins them; 1 or 2 masters (which it refuses) are joined by hand: ``CLUSTER MEET``, the slots
    split evenly with ``CLUSTER ADDSLOTS``, each replica told ``CLUSTER REPLICATE``.

    ``start()`` returns once every node says ``cluster_state:ok``, agrees on who serves each
    slot, and every replica is in sync. ``node_timeout_ms`` is small so that a lost master is
    replaced within about two seconds (``fail_over()``). The server binary is
    ``find_redis_server()``'s (``WSQ_TEST_REDIS_SERVER`` may name ``valkey-server``).
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        binary: str | None = None,
        node_timeout_ms: int = 1000,
        args: Sequence[str] = (),
    ) -> None:
        if masters < 1:
            raise ValueError("a cluster needs a master")
        binary = binary or find_redis_server()
        # No delay before a replica's first sync (5 s by default, waiting for more replicas).
        options = ["--cluster-node-timeout", str(node_timeout_ms), "--repl-diskless-sync-delay", "0", *args]
        self.replicas = replicas
        self.nodes = [
            RedisServer(binary=binary, cluster=True, args=options) for _ in range(masters * (1 + replicas))
        ]
        """Every node, in the order they were created (masters first, as redis-cli picks them)."""
        self._expected_masters = masters

    # State, as the running nodes see it.

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` of a running node (a client finds the others from it)."""
        return self.running()[0].url

    def running(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.running()]

    def view(self, node: RedisServer | None = None) -> list[NodeView]:
        """``CLUSTER NODES`` as ``node`` (by default, the first running one) sees it."""
        with _client(node or self.running()[0]) as client:
            return parse_cluster_nodes(client.execute_command("CLUSTER NODES"))

    def masters(self) -> list[RedisServer]:
        """The running nodes that serve slots now, in the order of their first slot."""
        views = [v for v in self.view() if v.is_master and v.slots and not v.failed]
        by_port = {node.port: node for node in self.running()}
        return [by_port[v.port] for v in sorted(views, key=lambda v: min(v.slots)) if v.port in by_port]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The running replicas of ``master``."""
        views = self.view()
        [mine] = [v for v in views if v.port == master.port]
        ports = {v.port for v in views if v.master_id == mine.node_id and not v.failed}
        return [node for node in self.running() if node.port in ports]

    def master_of_slot(self, slot: int) -> RedisServer:
        """The running node serving ``slot``."""
        [owner] = [v for v in self.view() if slot in v.slots and not v.failed]
        [node] = [node for node in self.running() if node.port == owner.port]
        return node

    # Life.

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        try:
            if self._expected_masters >= 3:
                self._create_with_redis_cli()
            else:
                self._create_by_hand()
            self.wait_ok(replicas_per_master=self.replicas)
        except BaseException:
            self.stop()
            raise
        return self

    def _create_with_redis_cli(self) -> None:
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        argv = [find_redis_cli(), "--cluster", "create", *addresses]
        argv += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        created = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")

    def _create_by_hand(self) -> None:
        count = self._expected_masters
        masters, replicas = self.nodes[:count], self.nodes[count:]
        first = self.nodes[0]
        for node in self.nodes[1:]:
            with _client(node) as client:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", first.port, first.cluster_port)
        for index, master in enumerate(masters):
            slots = range(SLOTS * index // count, SLOTS * (index + 1) // count)
            with _client(master) as client:
                client.execute_command("CLUSTER", "ADDSLOTS", *slots)
        ids = [self._node_id(master) for master in masters]
        for index, replica in enumerate(replicas):
            master_id = ids[index % count]
            # A replica can follow a master once it knows it (CLUSTER MEET spreads by gossip).
            wait_until(
                functools.partial(self._knows, replica, master_id),
                timeout=30.0,
                message=f"node {replica.port} to learn of master {master_id}",
            )
            with _client(replica) as client:
                client.execute_command("CLUSTER", "REPLICATE", master_id)

    def _knows(self, node: RedisServer, node_id: str) -> bool:
        return any(v.node_id == node_id for v in self.view(node))

    def _node_id(self, node: RedisServer) -> str:
        with _client(node) as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def wait_ok(self, *, timeout: float = 30.0, replicas_per_master: int | None = None) -> None:
        """Wait until every running node says ``cluster_state:ok``, they all agree on who serves
        each of the 16384 slots, and (``replicas_per_master``) each master has that many
        replicas in sync."""
        wait_until(
            lambda: self._settled(replicas_per_master),
            timeout=timeout,
            message="the Redis Cluster to be ok on every node",
        )

    def _settled(self, replicas_per_master: int | None) -> bool:
        maps: set[tuple[tuple[int, frozenset[int]], ...]] = set()
        for node in self.running():
            try:
                with _client(node) as client:
                    if "cluster_state:ok" not in client.execute_command("CLUSTER INFO"):
                        return False
                    views = parse_cluster_nodes(client.execute_command("CLUSTER NODES"))
                    myself = next(v for v in views if "myself" in v.flags)
                    replication = client.execute_command("INFO", "replication")
            except redis.RedisError:
                return False
            if "slave" in myself.flags and "master_link_status:up" not in replication:
                return False
            serving = {v.node_id: v for v in views if v.slots and not v.failed}
            if sum(len(v.slots) for v in serving.values()) != SLOTS:
                return False
            if replicas_per_master is not None:
                for master_id in serving:
                    followers = [v for v in views if v.master_id == master_id and not v.failed]
                    if len(followers) < replicas_per_master:
                        return False
            maps.add(tuple(sorted((v.port, v.slots) for v in serving.values())))
        return len(maps) == 1

    def stop(self) -> None:
        """Stop every node and delete its files."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Faults.

    def fail_over(
        self, master: RedisServer, *, kill: bool = True, force: bool = False, timeout: float = 30.0
    ) -> RedisServer:
        """Stop ``master`` (SIGKILL with ``kill``, else SIGTERM) and wait until one of its replicas
        serves its slots and the cluster is ok again; return that replica, now a master.

        Without ``force`` the replicas notice the loss themselves (after the node timeout) and
        elect one; with it, a replica is told ``CLUSTER FAILOVER FORCE`` at once. ``rejoin()``
        starts the old master again, as a replica."""
        slots = next(v.slots for v in self.view(master) if v.port == master.port)
        if not slots:
            raise ValueError(f"node {master.port} serves no slot")
        candidates = self.replicas_of(master)
        if not candidates:
            raise ValueError(f"master {master.port} has no replica to promote")
        if kill:
            master.kill()
        else:
            master.stop()
        if force:
            with _client(candidates[0]) as client:
                client.execute_command("CLUSTER FAILOVER", "FORCE")
        slot = min(slots)

        def promoted() -> RedisServer | None:
            try:
                owner = self.master_of_slot(slot)
            except (ValueError, redis.RedisError):
                return None
            return owner if owner in candidates else None

        replica = wait_until(promoted, timeout=timeout, message=f"a replica of {master.port} promoted")
        self.wait_ok(timeout=timeout)
        return replica

    def rejoin(self, node: RedisServer, *, timeout: float = 30.0) -> None:
        """Start a node ``fail_over()`` stopped: it comes back as a replica of the master that
        took its place, and this returns once it is in sync (``ensure_ok()``: a cluster that
        does not settle by itself is repaired)."""
        node.start()
        self.ensure_ok(timeout=timeout)

    def ensure_ok(self, *, timeout: float = 30.0) -> None:
        """Return once the cluster is whole (``wait_ok`` with every master's replicas). When it
        does not settle by itself within ``timeout`` — seen once in many runs: a master killed,
        then restarted, left one slot that no node claimed — ``redis-cli --cluster fix`` assigns
        what is uncovered and closes slots left open, and this waits again. So a fault one test
        caused does not break the tests after it, which share the cluster."""
        if self._settled(self.replicas):
            return
        try:
            self.wait_ok(timeout=timeout, replicas_per_master=self.replicas)
            return
        except DeadlineExceeded:
            pass
        for node in self.running():
            argv = [find_redis_cli(), "--cluster", "fix", f"127.0.0.1:{node.port}", "--cluster-yes"]
            subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
            break
        self.wait_ok(timeout=timeout, replicas_per_master=self.replicas)

    def move_slot(self, slot: int, to: RedisServer, *, timeout: float = 30.0) -> RedisServer:
        """Move ``slot`` and its keys to the master ``to``, as ``redis-cli --cluster reshard``
        does; return the master that served it before."""
        source = self.start_moving_slot(slot, to)
        if source.port != to.port:
            self.migrate_keys(slot, source, to)
            self.finish_moving_slot(slot, to, timeout=timeout)
        return source

    def start_moving_slot(self, slot: int, to: RedisServer) -> RedisServer:
        """Mark ``slot`` IMPORTING on ``to`` and MIGRATING on its master (returned): from now on
        its master answers ``ASK`` for a key it no longer holds."""
        source = self.master_of_slot(slot)
        if source.port != to.port:
            ids = {v.port: v.node_id for v in self.view()}
            with _client(to) as target:
                target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
            with _client(source) as origin:
                origin.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to.port])
        return source

    def migrate_keys(
        self, slot: int, source: RedisServer, to: RedisServer, keys: Sequence[str] | None = None
    ) -> int:
        """MIGRATE ``keys`` (by default every key of ``slot``) from ``source`` to ``to``, the slot
        being moved (``start_moving_slot()``): how many were moved."""
        moved = 0
        with _client(source) as origin:
            while batch := list(keys or origin.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)):
                origin.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *batch)
                moved += len(batch)
                if keys:
                    break
        return moved

    def finish_moving_slot(self, slot: int, to: RedisServer, *, timeout: float = 30.0) -> None:
        """Give ``slot`` to ``to`` on every master (its keys migrated) and wait until every node
        says so: its old master answers ``MOVED`` from now on."""
        node_id = next(v.node_id for v in self.view() if v.port == to.port)
        # The new owner first (it bumps its epoch), then the others (gossip would tell them too).
        for node in [to, *(m for m in self.masters() if m.port != to.port)]:
            with _client(node) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id)
        wait_until(
            lambda: all(self._owner_seen_by(node, slot) == to.port for node in self.running()),
            timeout=timeout,
            message=f"every node to see slot {slot} on {to.port}",
        )
        self.wait_ok(timeout=timeout)

    def _owner_seen_by(self, node: RedisServer, slot: int) -> int | None:
        try:
            views = self.view(node)
        except redis.RedisError:
            return None
        return next((v.port for v in views if slot in v.slots), None)

    def on_each_master(self, command: Callable[[redis.Redis], object]) -> None:
        """Run ``command`` with a client of each master (a ``FLUSHALL``, a ``CONFIG SET``...)."""
        for node in self.masters():
            with _client(node) as client:
                command(client)


def _client(node: RedisServer) -> redis.Redis:
    """A plain client of one node, replies as text (``CLUSTER NODES`` unparsed)."""
    client = redis.Redis(port=node.port, decode_responses=True, socket_timeout=5, socket_connect_timeout=2)
    client.set_response_callback("CLUSTER NODES", lambda reply, **options: reply)
    client.set_response_callback("CLUSTER INFO", lambda reply, **options: reply)
    client.set_response_callback("INFO", lambda reply, **options: reply)
    return client
