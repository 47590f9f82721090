"""Is this a Redis wsq can use? Tells permanent errors (no retry will help: exit) from
transient ones (Redis is starting, restarting or out of reach: wait with backoff).

Permanent: a Redis Cluster node (``cluster_enabled:1``; wsq's scripts touch keys of several
hash slots), a replica (``role:slave``, or ``READONLY`` replies), a wrong or missing password
(``WRONGPASS``, ``NOAUTH``), a missing permission (``NOPERM``), a command Redis does not know,
a script that does not stay loaded (``NOSCRIPT`` after loading it), a key of wsq's holding
another type (``WRONGTYPE``). Everything else (connection refused, timeouts, ``LOADING``,
``MASTERDOWN``, ``BUSY``, ``OOM``...) is transient.

The worker SDK makes the same checks (``wsq_worker.preflight``): keep the two in step.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    ClusterCrossSlotError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)

from wsq_gateway.logs import BROKER, get_logger

log = get_logger(BROKER)

CLUSTER = "it is a Redis Cluster node (cluster_enabled:1); wsq does not support Redis Cluster: use a primary"
REPLICA = "it is a read-only replica (role:slave): point WSQ_REDIS_URL at the primary"


async def server_problem(redis: aioredis.Redis) -> str | None:
    """Why this Redis can't serve wsq (a cluster node, a replica), or None. Redis errors
    (transient or not) go up as they are, for :func:`permanent_problem` to judge."""
    try:
        info: Any = await redis.info("cluster")
        cluster_enabled = str(info.get("cluster_enabled", "0"))
        info = await redis.info("replication")
        role = str(info.get("role", "master"))
    except ResponseError as exc:
        # An ACL user without INFO (NOPERM), or a managed Redis that renamed it: the commands
        # wsq runs next tell a cluster or a replica (MOVED, READONLY) all the same.
        log.info("could not check the Redis server's role (INFO refused)", error=str(exc))
        return None
    if cluster_enabled == "1":
        return CLUSTER
    if role == "slave":
        return REPLICA
    return None


class RedisUnusable(Exception):
    """The Redis at WSQ_REDIS_URL can't serve wsq, however long we wait: the message says why."""


def permanent_problem(exc: BaseException) -> str | None:
    """Why ``exc`` (raised by a Redis command) will happen again however often it is retried;
    None when waiting may help."""
    message = str(exc)
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        return f"authentication failed ({message}): check the user and password in WSQ_REDIS_URL"
    if isinstance(exc, NoPermissionError):
        return f"the Redis user lacks a permission wsq needs ({message})"
    if isinstance(exc, ReadOnlyError):
        return f"it is a read-only replica ({message}): point WSQ_REDIS_URL at the primary"
    if isinstance(exc, NoScriptError):
        return f"a script did not stay loaded ({message}): is a proxy in front of Redis?"
    if isinstance(exc, MasterDownError):  # a replica that lost its primary: the check above decides
        return None
    if isinstance(exc, AskError | ClusterCrossSlotError | ClusterDownError) or "non local key" in message:
        return f"{CLUSTER} ({message})"
    if isinstance(exc, ResponseError):
        lowered = message.lower()
        if lowered.startswith(("unknown command", "unknown subcommand")):
            return f"it does not know a command wsq needs ({message}): wsq needs Redis 7 or later"
        if lowered.startswith("wrongtype"):
            return f"a key under WSQ_KEY_PREFIX holds another type ({message}): does another app use it?"
    return None
