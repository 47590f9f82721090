"""Is this a Redis wsq can use? The checks are the protocol core's (``wsq_protocol.preflight``,
shared with the worker SDK): permanent errors (a cluster node, a replica, a wrong password, a
missing permission...: exit) are told from transient ones (wait with backoff). Here they name
the gateway's settings, and log through the gateway's logger.
"""

from __future__ import annotations

from redis.exceptions import ResponseError

from wsq_gateway.logs import BROKER, get_logger
from wsq_protocol import preflight
from wsq_protocol.cluster import AsyncClient

log = get_logger(BROKER)

CLUSTER = preflight.CLUSTER
WORDING = preflight.Wording("WSQ_REDIS_URL", credentials="WSQ_REDIS_URL", key_prefix="WSQ_KEY_PREFIX")
REPLICA = WORDING.replica


def _info_refused(exc: ResponseError) -> None:
    log.info("could not check the Redis server's role (INFO refused)", error=str(exc))


async def server_problem(redis: AsyncClient) -> str | None:
    """Why this Redis can't serve wsq (a cluster node, a replica), or None. Redis errors
    (transient or not) go up as they are, for :func:`permanent_problem` to judge."""
    return await preflight.server_problem(redis, WORDING, _info_refused)


class RedisUnusable(Exception):
    """The Redis at WSQ_REDIS_URL can't serve wsq, however long we wait: the message says why."""


def permanent_problem(exc: BaseException) -> str | None:
    """Why ``exc`` (raised by a Redis command) will happen again however often it is retried;
    None when waiting may help."""
    return preflight.permanent_problem(exc, WORDING)
