"""Is this a Redis wsq can use? Tells permanent errors (no retry will help: stop) from transient
ones (Redis is starting, restarting or out of reach: wait with backoff). The gateway
(``wsq_gateway.broker.preflight``) and the worker SDK (``wsq_worker.preflight``) both ask here,
each naming its own settings in the messages (:class:`Wording`) and raising its own exception.

Permanent: a Redis Cluster node (``cluster_enabled:1``; wsq's scripts touch keys of several
hash slots), a replica (``role:slave``, or ``READONLY`` replies), a wrong or missing password
(``WRONGPASS``, ``NOAUTH``), a missing permission (``NOPERM``), a command Redis does not know,
a script that does not stay loaded (``NOSCRIPT`` after loading it), a key of wsq's holding
another type (``WRONGTYPE``). Everything else (connection refused, timeouts, ``LOADING``,
``MASTERDOWN``, ``BUSY``, ``OOM``...) is transient.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
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

__all__ = ["CLUSTER", "Wording", "permanent_problem", "server_problem"]

log = logging.getLogger("wsq.protocol.preflight")

CLUSTER = "it is a Redis Cluster node (cluster_enabled:1); wsq does not support Redis Cluster: use a primary"


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
    client: redis.asyncio.Redis,
    wording: Wording,
    info_refused: Callable[[ResponseError], object] = _log_info_refused,
) -> str | None:
    """Why this Redis can't serve wsq (a cluster node, a replica), or None. Redis errors
    (transient or not) go up as they are, for :func:`permanent_problem` to judge.

    An ``INFO`` that Redis refuses (an ACL user without it, a managed Redis that renamed it) is
    no problem: the commands run next tell a cluster or a replica (MOVED, READONLY) all the
    same; ``info_refused`` is told (by default, an info line on ``wsq.protocol.preflight``)."""
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
    if isinstance(exc, AskError | ClusterCrossSlotError | ClusterDownError) or "non local key" in message:
        return f"{CLUSTER} ({message})"
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
