"""Is this a Redis the worker can use? The checks are the protocol core's
(``wsq_protocol.preflight``, shared with the gateway): permanent errors (a cluster node, a
replica, a wrong password, a missing permission, another number of shards than the
deployment's...: the worker stops with ``RedisUnusableError``) are told from transient ones
(retry with backoff). Here they name the
worker's settings, and log on the worker's logger.
"""

from __future__ import annotations

import importlib.util
import logging

from redis.exceptions import ResponseError

from wsq_protocol import preflight
from wsq_protocol.cluster import AsyncClient
from wsq_protocol.keys import Keys

logger = logging.getLogger("wsq_worker.worker")

CLUSTER = preflight.CLUSTER
WORDING = preflight.Wording(
    redis_url="the worker's redis_url", credentials="the Redis URL", key_prefix="the key prefix"
)
REPLICA = WORDING.replica


def _info_refused(exc: ResponseError) -> None:
    logger.info("could not check the Redis server's role (INFO refused: %s)", exc)


async def server_problem(client: AsyncClient) -> str | None:
    """Why this Redis can't serve wsq (a cluster node, a replica), or None. Redis errors
    (transient or not) go up as they are, for :func:`permanent_problem` to judge."""
    return await preflight.server_problem(client, WORDING, _info_refused)


def permanent_problem(exc: BaseException) -> str | None:
    """Why ``exc`` (raised by a Redis command) will happen again however often it is retried;
    None when waiting may help."""
    return preflight.permanent_problem(exc, WORDING)


async def shards_problem(client: AsyncClient, keys: Keys) -> str | None:
    """Why the worker's number of shards (``keys.shards``) is not the deployment's, or None: the
    first process to start records its own in ``{prefix}:shards``."""
    return await preflight.shards_problem(client, keys)


METRICS_HINT = "the worker's metrics need prometheus-client: pip install 'wsq-worker[metrics]'"


def check_metrics_available() -> None:
    """RuntimeError with the install command when prometheus-client (the metrics extra) is
    not installed."""
    if importlib.util.find_spec("prometheus_client") is None:
        raise RuntimeError(METRICS_HINT)
