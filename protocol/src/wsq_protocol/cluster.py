"""Redis Cluster or a single Redis: telling them apart, and the client each needs.

wsq's keys are sharded with hash tags so that every script and transaction touches one slot
(protocol/README.md, "Slots and shards"); the same code then runs on a single Redis and on a
Redis Cluster (or Valkey cluster), given the right client:

* :func:`is_cluster` / :func:`is_cluster_sync`: does this server run in cluster mode
  (``INFO cluster`` says ``cluster_enabled:1``)?
* :func:`async_redis` / :func:`sync_redis`: redis-py's ``Redis`` or ``RedisCluster`` for a URL,
  whose connections (asyncio) check every argument and pack with hiredis, as
  :func:`wsq_protocol.pipe.async_redis`'s do.
* :func:`open_async_redis` / :func:`open_sync_redis`: ask the server at the URL first, then
  build the client it needs: what a process that may be pointed at either uses.

The shared pipe (:class:`wsq_protocol.pipe.RedisPipe`) takes either client: on a cluster it is
bound to the master of one key's slot, and :class:`wsq_protocol.pipe.RoutedPipe` spreads a batch
over the masters.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from wsq_protocol.pipe import CheckedConnection, CheckedSSLConnection
from wsq_protocol.pipe import async_redis as async_single_redis

__all__ = [
    "REDIS_ERRORS",
    "REDIS_FAILURES",
    "AsyncClient",
    "SyncClient",
    "async_redis",
    "check_redis_url",
    "is_cluster",
    "is_cluster_sync",
    "open_async_redis",
    "open_sync_redis",
    "sync_redis",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def check_redis_url(url: str) -> str:
    """``url``, when redis-py can connect with it: a ``redis://``, ``rediss://`` (TLS) or
    ``unix://`` URL, its port a number. Otherwise ValueError, whose message completes "WSQ_REDIS_URL
    ..." and never holds the URL (it may hold a password)."""
    if not url.lower().startswith(_REDIS_SCHEMES):
        scheme, sep, _ = url.partition("://")
        given = f", not {scheme}://" if sep and scheme.isascii() and scheme.isalnum() else ""
        raise ValueError(f"must be a redis://, rediss:// (TLS) or unix:// URL{given}")
    try:
        redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:  # a port that is not a number, a bad query argument
        raise ValueError(f"is not a usable Redis URL: {exc}") from None
    return url


AsyncClient = redis.asyncio.Redis | AsyncRedisCluster
"""An asyncio client of a single Redis or of a Redis Cluster."""
SyncClient = redis.Redis | SyncRedisCluster
"""A blocking client of a single Redis or of a Redis Cluster."""

REDIS_ERRORS: tuple[type[RedisError], type[RedisClusterException]] = (RedisError, RedisClusterException)
"""What a client's command may raise from Redis: ``RedisError``, and on a cluster client
``RedisClusterException`` too (no node reachable, slots not covered, a slot map being rebuilt),
which is not one: ``except REDIS_ERRORS`` catches both."""
REDIS_FAILURES: tuple[type[RedisError], type[RedisClusterException], type[OSError]] = (
    RedisError,
    RedisClusterException,
    OSError,
)
"""``REDIS_ERRORS`` and ``OSError`` (a socket failing under the client): every way a command may
fail that waiting may or may not cure, for loops that log and retry."""

# What a server without cluster support answers CLUSTER INFO (Redis and Valkey).
_NO_CLUSTER = "cluster support disabled"


def _cluster_enabled(info: Any) -> bool:
    return str(info.get("cluster_enabled", "0")) == "1"


async def is_cluster(client: AsyncClient) -> bool:
    """Whether ``client``'s server runs in cluster mode: ``INFO cluster`` says
    ``cluster_enabled:1`` (a ``RedisCluster`` client is one without asking). When Redis refuses
    INFO (an ACL user without it), ``CLUSTER INFO`` tells: a server without cluster support
    refuses it. Connection errors go up."""
    if isinstance(client, AsyncRedisCluster):
        return True
    try:
        return _cluster_enabled(await client.info("cluster"))
    except ResponseError:
        pass
    try:
        await client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
    except ResponseError as exc:
        if _NO_CLUSTER in str(exc):
            return False
        raise
    return True


def is_cluster_sync(client: SyncClient) -> bool:
    """:func:`is_cluster` for a blocking client."""
    if isinstance(client, SyncRedisCluster):
        return True
    try:
        return _cluster_enabled(client.info("cluster"))
    except ResponseError:
        pass
    try:
        client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
    except ResponseError as exc:
        if _NO_CLUSTER in str(exc):
            return False
        raise
    return True


def async_redis(url: str, *, cluster: bool, **options: Any) -> AsyncClient:
    """redis-py's asyncio client for ``url`` (``Redis.from_url``, or ``RedisCluster.from_url``
    with ``cluster``, which finds the other nodes from this one), ``options`` passed on; its
    connections check every argument and pack with hiredis when installed."""
    if not cluster:
        return async_single_redis(url, **options)
    client = AsyncRedisCluster.from_url(url, **options)
    # Every node's connections are made with these (ClusterNode copies them, so the nodes
    # made already, the startup nodes, are told too).
    kwargs = client.nodes_manager.connection_kwargs
    checked = _checked_class(kwargs.get("connection_class", Connection))
    kwargs["connection_class"] = checked
    for node in [*client.nodes_manager.startup_nodes.values(), *client.nodes_manager.nodes_cache.values()]:
        node.connection_class = checked
    return client


def _checked_class(connection_class: type[Connection]) -> type[Connection]:
    if issubclass(connection_class, SSLConnection):
        return CheckedSSLConnection
    if connection_class is Connection:
        return CheckedConnection
    return connection_class  # someone's own class: left as it is


def sync_redis(url: str, *, cluster: bool, **options: Any) -> SyncClient:
    """redis-py's blocking client for ``url``: ``Redis.from_url``, or ``RedisCluster.from_url``
    with ``cluster`` (it packs with hiredis when installed)."""
    if cluster:
        return SyncRedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


async def open_async_redis(url: str, **options: Any) -> AsyncClient:
    """The asyncio client the server at ``url`` needs: asks it (:func:`is_cluster`, on a
    connection of its own, closed after), then :func:`async_redis`. Connection errors go up,
    for the caller to retry."""
    probe = redis.asyncio.Redis.from_url(url, **options)
    try:
        cluster = await is_cluster(probe)
    finally:
        await probe.aclose()
    return async_redis(url, cluster=cluster, **options)


def open_sync_redis(url: str, **options: Any) -> SyncClient:
    """:func:`open_async_redis` for a blocking client."""
    with redis.Redis.from_url(url, **options) as probe:
        cluster = is_cluster_sync(probe)
    return sync_redis(url, cluster=cluster, **options)
