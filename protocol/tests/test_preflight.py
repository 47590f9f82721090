"""The start-up checks both packages share: a Redis that can never serve wsq is told from one
that is only out of reach for now, and the messages name the caller's own settings."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from wsq_devkit import RedisServer, wait_until
from wsq_devkit.redis_cluster import RedisCluster
from wsq_devkit.redis_errors import PERMANENT_OR_TRANSIENT
from wsq_devkit.redis_server import RedisServer as RedisServerType
from wsq_devkit.redis_typing import execute_command
from wsq_protocol.cluster import async_redis
from wsq_protocol.preflight import (
    CLUSTER,
    CROSS_SLOT,
    NOT_A_CLUSTER,
    SLOT_NOT_SERVED,
    Wording,
    permanent_problem,
    server_problem,
)

WORDING = Wording(redis_url="THE_URL", credentials="THE_CREDENTIALS", key_prefix="THE_PREFIX")


@pytest.mark.parametrize(("error", "permanent"), PERMANENT_OR_TRANSIENT)
def test_permanent_redis_errors_are_told_from_transient_ones(error: BaseException, permanent: bool) -> None:
    assert (permanent_problem(error, WORDING) is not None) is permanent


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (redis_errors.AuthenticationError("WRONGPASS"), "check the user and password in THE_CREDENTIALS"),
        (redis_errors.ReadOnlyError("READONLY"), "point THE_URL at the primary"),
        (redis_errors.ResponseError("WRONGTYPE Operation"), "a key under THE_PREFIX holds another type"),
        (redis_errors.ClusterDownError("Hash slot not served"), SLOT_NOT_SERVED),
        (redis_errors.MovedError("3999 127.0.0.1:6381"), CLUSTER),
        (
            redis_errors.ResponseError("Error running script: Script attempted to access a non local key"),
            CROSS_SLOT,
        ),
        (redis_errors.ClusterCrossSlotError("Keys in request don't hash to the same slot"), CROSS_SLOT),
        (redis_errors.ResponseError("unknown command 'XAUTOCLAIM'"), "wsq needs Redis 7 or later"),
    ],
)
def test_a_problem_names_the_callers_settings_and_the_error(error: BaseException, says: str) -> None:
    problem = permanent_problem(error, WORDING)
    assert problem is not None
    assert says in problem
    assert str(error) in problem


async def test_a_primary_has_no_problem(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await server_problem(client, WORDING) is None
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", ["cluster", "replica"])
async def test_a_cluster_node_or_a_replica_is_a_problem(kind: str, redis_server: RedisServerType) -> None:
    if kind == "cluster":
        server, expected = RedisServer(cluster=True), CLUSTER
    else:
        server, expected = RedisServer(replica_of=redis_server.port), WORDING.replica
    with server:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            assert await server_problem(client, WORDING) == expected
        finally:
            await client.aclose()
    assert "point THE_URL at the primary" in WORDING.replica


async def test_an_info_redis_refuses_is_no_problem_and_is_reported(redis_url: str) -> None:
    """An ACL user without INFO: the commands run next tell a cluster or a replica anyway."""
    admin = redis.asyncio.Redis.from_url(redis_url)
    await execute_command(admin, "ACL", "SETUSER", "no-info", "on", ">pw", "+@all", "-info", "~*")
    client = redis.asyncio.Redis.from_url(redis_url, username="no-info", password="pw")
    refused: list[redis_errors.ResponseError] = []
    try:
        assert await server_problem(client, WORDING, refused.append) is None
        [error] = refused
        assert isinstance(error, redis_errors.NoPermissionError)
    finally:
        await client.aclose()
        await execute_command(admin, "ACL", "DELUSER", "no-info")
        await admin.aclose()


# A Redis Cluster, through a cluster client.


async def judge(client: redis.asyncio.Redis | AsyncRedisCluster) -> str | None:
    """What a process's start-up makes of this Redis: the check's problem, or the permanent
    problem of the error it raised; None when all is well or waiting may help."""
    try:
        return await server_problem(client, WORDING)
    except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError) as exc:
        return permanent_problem(exc, WORDING)


async def test_a_cluster_that_serves_every_slot_has_no_problem(redis_cluster: RedisCluster) -> None:
    client = async_redis(redis_cluster.url, cluster=True)
    try:
        assert await server_problem(client, WORDING) is None
    finally:
        await client.aclose()


async def test_a_cluster_client_on_a_single_redis_or_a_node_serving_nothing_is_a_problem(
    redis_url: str,
) -> None:
    with RedisServer(cluster=True) as lone:
        for url, expected in ((redis_url, NOT_A_CLUSTER), (lone.url, SLOT_NOT_SERVED)):
            client = async_redis(url, cluster=True)
            try:
                problem = await judge(client)
            finally:
                await client.aclose()
            assert problem is not None
            assert problem.startswith(expected)


@pytest.mark.parametrize("password", ["a-wrong-password", None])
async def test_a_cluster_client_refused_by_the_password_says_so(password: str | None) -> None:
    """A cluster client that can't read the slot map says why only in its exception's cause:
    a wrong or missing password is as permanent there as from a single Redis."""
    with RedisServer(cluster=True, password="the-password") as node:
        auth = f":{password}@" if password else ""
        client = async_redis(f"redis://{auth}127.0.0.1:{node.port}/0", cluster=True)
        try:
            problem = await judge(client)
        finally:
            await client.aclose()
    assert problem is not None
    assert problem.startswith("authentication failed")


async def test_a_slot_no_master_serves_is_a_problem(redis_cluster: RedisCluster) -> None:
    """A slot deleted from its master: the cluster is not ok, and waiting will not help."""
    slot = 1234
    owner = redis_cluster.master_of_slot(slot)
    client = async_redis(redis_cluster.url, cluster=True)
    with redis.Redis(port=owner.port) as direct:
        direct.execute_command("CLUSTER", "DELSLOTS", slot)
        try:
            problem = await judge(client)
            assert problem is not None
            assert problem.startswith(SLOT_NOT_SERVED)
        finally:
            await client.aclose()
            direct.execute_command("CLUSTER", "ADDSLOTS", slot)
    redis_cluster.wait_ok(replicas_per_master=1)


async def test_a_cluster_down_for_a_lost_master_is_waited_for(redis_cluster: RedisCluster) -> None:
    """A master lost (here with its replica, so none is promoted): the cluster is down, but a
    replica promoted or the master back makes it whole again: transient."""
    master = redis_cluster.masters()[1]
    [replica] = redis_cluster.replicas_of(master)
    client = async_redis(redis_cluster.url, cluster=True, socket_connect_timeout=0.5)
    await client.initialize()
    replica.stop()
    master.stop()
    try:
        wait_until(lambda: "cluster_state:fail" in cluster_info(redis_cluster.url), message="cluster down")
        with pytest.raises((redis_errors.RedisError, redis_errors.RedisClusterException, OSError)) as raised:
            await server_problem(client, WORDING)
        assert permanent_problem(raised.value, WORDING) is None, raised.value
    finally:
        await client.aclose()
        master.start()
        replica.start()
        redis_cluster.wait_ok(replicas_per_master=1)


def cluster_info(url: str) -> str:
    with redis.Redis.from_url(url, decode_responses=True) as client:
        client.set_response_callback("CLUSTER INFO", lambda reply, **options: reply)
        return str(client.execute_command("CLUSTER", "INFO"))
