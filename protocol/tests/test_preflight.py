"""The start-up checks both packages share: a Redis that can never serve wsq is told from one
that is only out of reach for now, and the messages name the caller's own settings."""

from __future__ import annotations

import pytest
import redis.asyncio
from redis import exceptions as redis_errors

from wsq_devkit import RedisServer
from wsq_devkit.redis_errors import PERMANENT_OR_TRANSIENT
from wsq_devkit.redis_server import RedisServer as RedisServerType
from wsq_devkit.redis_typing import execute_command
from wsq_protocol.preflight import CLUSTER, Wording, permanent_problem, server_problem

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
        (redis_errors.ClusterDownError("Hash slot not served"), CLUSTER),
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
