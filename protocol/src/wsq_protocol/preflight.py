"""Is this a Redis wsq can use? Tells permanent errors (no retry will help: stop) from transient
ones (Redis is starting, restarting or out of reach: wait with backoff). The gateway
(``wsq_gateway.broker.preflight``) and the worker SDK (``wsq_worker.preflight``) both ask here,
each naming its own settings in the messages (:class:`Wording`) and raising its own exception.

Permanent: a replica (``role:slave``, or ``READONLY`` replies), a wrong or missing password
(``WRONGPASS``, ``NOAUTH``), a missing permission (``NOPERM``), a command Redis does not know,
a script that does not stay loaded (``NOSCRIPT`` after loading it), a key of wsq's holding
another type (``WRONGTYPE``); and on a Redis Cluster: a client that is not a cluster client
(:data:`CLUSTER`: ``MOVED``, ``ASK``), a cluster client pointed at a single Redis
(:data:`NOT_A_CLUSTER`), hash slots no master serves (:data:`SLOT_NOT_SERVED`), a command or
script with keys of several slots (:data:`CROSS_SLOT`). Everything else (connection refused,
timeouts, ``LOADING``, ``MASTERDOWN``, ``BUSY``, ``OOM``, a cluster down while a replica is
promoted, ``TRYAGAIN``...) is transient.

A Redis Cluster (or Valkey cluster) is served through a cluster client
(``wsq_protocol.cluster``): its check is that every master says ``cluster_state:ok`` and every
one of the 16384 slots is assigned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
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
    RedisClusterException,
    RedisClusterUnreachableError,
    ResponseError,
)

__all__ = [
    "CLUSTER",
    "CROSS_SLOT",
    "NOT_A_CLUSTER",
    "SLOT_NOT_SERVED",
    "Wording",
    "cluster_problem",
    "permanent_problem",
    "server_problem",
]

log = logging.getLogger("wsq.protocol.preflight")

SLOTS = 16384

CLUSTER = (
    "it is a Redis Cluster node (cluster_enabled:1), and the client is not a cluster client: "
    "set WSQ_REDIS_CLUSTER=1 (or connect with wsq_protocol.cluster.async_redis(url, cluster=True))"
)
"""A single-Redis client pointed at a cluster node (told by INFO, or by MOVED/ASK replies)."""
NOT_A_CLUSTER = (
    "it is not a Redis Cluster (cluster mode is not enabled on this node), and the client is a "
    "cluster client: unset WSQ_REDIS_CLUSTER (or connect with a single Redis client)"
)
"""A cluster client pointed at a single Redis."""
SLOT_NOT_SERVED = (
    "the Redis Cluster does not serve every hash slot (slots not assigned to any master): "
    "assign all 16384 (redis-cli --cluster check, then --cluster fix)"
)
"""A cluster with slots no master serves (``CLUSTERDOWN Hash slot not served``)."""
CROSS_SLOT = (
    "a command or script touched keys of several hash slots of the Redis Cluster: wsq's keys of "
    "one command share a hash tag, so a key was named outside wsq_protocol.keys (another app, "
    "or a prefix or number of shards not the deployment's?)"
)
"""``CROSSSLOT``, or a script that accessed a key of another slot ("non local key")."""


@dataclass(frozen=True, slots=True)
class Wording:
    """How a package names its settings in the messages, e.g. ``Wording("WSQ_REDIS_URL",
    "WSQ_REDIS_URL", "WSQ_KEY_PREFIX")`` for the gateway."""

    redis_url: str
    """The setting to point at the primary: "point {redis_url} at the primary"."""
    credentials: str
    """Where the user and password are: "check the user and password in {credentials}"."""
    key_prefix: str
    """The key prefix setting: "a key under {key_prefix} holds another type"."""

    @property
    def replica(self) -> str:
        """The problem of a replica, told by ``INFO replication``."""
        return f"it is a read-only replica (role:slave): point {self.redis_url} at the primary"


def _log_info_refused(exc: ResponseError) -> None:
    log.info("could not check the Redis server's role (INFO refused: %s)", exc)


async def server_problem(
    client: redis.asyncio.Redis | AsyncRedisCluster,
    wording: Wording,
    info_refused: Callable[[ResponseError], object] = _log_info_refused,
) -> str | None:
    """Why this Redis can't serve wsq (a cluster node for a single-Redis client, a replica, a
    cluster with slots not served), or None. Redis errors (transient or not) go up as they
    are, for :func:`permanent_problem` to judge (a cluster client's ``RedisClusterException``
    too: it is not a ``RedisError``).

    An ``INFO`` that Redis refuses (an ACL user without it, a managed Redis that renamed it) is
    no problem: the commands run next tell a cluster or a replica (MOVED, READONLY) all the
    same; ``info_refused`` is told (by default, an info line on ``wsq.protocol.preflight``)."""
    if isinstance(client, AsyncRedisCluster):
        return await cluster_problem(client, info_refused)
    try:
        info: Any = await client.info("cluster")
        cluster_enabled = str(info.get("cluster_enabled", "0"))
        info = await client.info("replication")
        role = str(info.get("role", "master"))
    except ResponseError as exc:
        info_refused(exc)
        return None
    if cluster_enabled == "1":
        return CLUSTER
    if role == "slave":
        return wording.replica
    return None


async def cluster_problem(
    client: AsyncRedisCluster, info_refused: Callable[[ResponseError], object] = _log_info_refused
) -> str | None:
    """Why this Redis Cluster can't serve wsq, or None: :data:`SLOT_NOT_SERVED` when a master
    says some of the 16384 slots are assigned to none. A master that says ``cluster_state``
    is not ``ok`` with every slot assigned (a master lost, its replica not promoted yet) raises
    ``ClusterDownError`` ("The cluster is down"): transient, for :func:`permanent_problem`."""
    await client.initialize()  # the slot map: a client made a moment ago has none yet
    for node in client.get_primaries():
        try:
            info: Any = await client.execute_command("CLUSTER INFO", target_nodes=node)
        except ResponseError as exc:
            if isinstance(exc, ClusterDownError):
                raise
            info_refused(exc)
            return None
        if int(info.get("cluster_slots_assigned", 0)) < SLOTS:
            return f"{SLOT_NOT_SERVED} ({node.name} says {info.get('cluster_slots_assigned')} of {SLOTS})"
        if info.get("cluster_state") != "ok":
            raise ClusterDownError(
                f"The cluster is down ({node.name} says cluster_state:{info.get('cluster_state')})"
            )
    return None


def permanent_problem(exc: BaseException, wording: Wording) -> str | None:
    """Why ``exc`` (raised by a Redis command) will happen again however often it is retried;
    None when waiting may help."""
    message = str(exc)
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        return f"authentication failed ({message}): check the user and password in {wording.credentials}"
    if isinstance(exc, NoPermissionError):
        return f"the Redis user lacks a permission wsq needs ({message})"
    if isinstance(exc, ReadOnlyError):
        return f"it is a read-only replica ({message}): point {wording.redis_url} at the primary"
    if isinstance(exc, NoScriptError):
        return f"a script did not stay loaded ({message}): is a proxy in front of Redis?"
    if isinstance(exc, MasterDownError):  # a replica that lost its primary: the check above decides
        return None
    # CROSSSLOT, a script's "non local key", or redis-py's own check of a command's keys.
    if isinstance(exc, ClusterCrossSlotError) or "non local key" in message or "same key slot" in message:
        return f"{CROSS_SLOT} ({message})"
    if isinstance(exc, AskError):  # MOVED or ASK: the client does not follow redirects
        return f"{CLUSTER} ({message})"
    if isinstance(exc, ClusterDownError):  # "Hash slot not served", or down while a replica is promoted
        return f"{SLOT_NOT_SERVED} ({message})" if "not served" in message.lower() else None
    if isinstance(exc, RedisClusterException) and exc.__cause__ is not None:
        # A cluster client that could not read the slot map says why in its cause (a wrong
        # password, a missing permission...): judged as the same error from a single Redis.
        problem = permanent_problem(exc.__cause__, wording)
        if problem is not None:
            return problem
    if isinstance(exc, RedisClusterException) and not isinstance(exc, RedisClusterUnreachableError):
        if "slots are not covered" in message:
            return f"{SLOT_NOT_SERVED} ({message})"
        if "cluster mode is not enabled" in message.lower():
            return f"{NOT_A_CLUSTER} ({message})"
        return None  # nodes that disagree while the slots move, a refresh that failed...
    if isinstance(exc, ResponseError):
        lowered = message.lower()
        if lowered.startswith(("unknown command", "unknown subcommand")):
            return f"it does not know a command wsq needs ({message}): wsq needs Redis 7 or later"
        if lowered.startswith("wrongtype"):
            return (
                f"a key under {wording.key_prefix} holds another type ({message}): does another app use it?"
            )
    return None


async def shards_problem(client: Any, keys: Any, setting: str = "WSQ_SHARDS") -> str | None:
    """Why this process's number of shards does not fit the deployment, or None. The first
    process to start records its number (``keys.shards_key``); every other must have the same,
    or it would read and write other keys than the rest (protocol/README.md, "Slots and shards")."""
    await client.set(keys.shards_key, keys.shards, nx=True)
    recorded: Any = await client.get(keys.shards_key)
    if recorded is None or int(recorded) == keys.shards:
        return None
    return (
        f"{setting}={keys.shards}, but this deployment (prefix {keys.prefix!r}) uses {int(recorded)} shards "
        f"(recorded in {keys.shards_key}): set {setting}={int(recorded)}"
    )
