"""The aiohttp application: routes, and the Redis resources and background tasks around it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisClusterException

from wsq_gateway.broker.outbound import BLOCK_MS
from wsq_gateway.broker.preflight import RedisUnusable, permanent_problem, server_problem
from wsq_gateway.logs import GATEWAY as GATEWAY_LOGGER
from wsq_gateway.logs import get_logger
from wsq_gateway.settings import Settings
from wsq_gateway.state import GATEWAY, Gateway
from wsq_gateway.transport import healthz, metrics, readyz, websocket
from wsq_protocol.batching import Backoff, cancel_and_wait
from wsq_protocol.cluster import AsyncClient, async_redis
from wsq_protocol.codes import CloseCode
from wsq_protocol.preflight import shards_problem

log = get_logger(GATEWAY_LOGGER)

FLUSH_SHARE = 0.9


def _async_redis(settings: Settings, timeout: float) -> AsyncClient:
    return async_redis(
        settings.redis_url,
        cluster=settings.redis_cluster,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=timeout,
        health_check_interval=30,
    )


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    blocking_timeout = BLOCK_MS / 1000 + settings.redis_timeout_s
    app[GATEWAY] = Gateway(
        settings,
        _async_redis(settings, settings.redis_timeout_s),
        _async_redis(settings, blocking_timeout),
    )
    app.router.add_get(settings.path, websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if settings.metrics:
        app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_redis_pipeline)
    app.on_shutdown.append(_drain)
    return app


async def _redis_pipeline(app: web.Application) -> AsyncIterator[None]:
    """Connect to Redis in the background (the port opens at once: /healthz answers, /readyz
    says 503 until Redis does), then run the command reader, the heartbeat and the backlog
    watch. On exit: flush the writes and say goodbye."""
    gateway = app[GATEWAY]
    supervisor = gateway.supervisor  # every task below is watched: see supervisor.py
    supervisor.watch(gateway.batcher.start())
    tasks: list[asyncio.Task[None]] = []

    def run(coro: Coroutine[Any, Any, None], name: str, *, finishes: bool = False) -> None:
        tasks.append(supervisor.watch(asyncio.create_task(coro, name=name), finishes=finishes))

    async def start() -> None:
        await _retry_until_reachable(gateway)
        run(gateway.outbound.run(), "wsq-outbound")
        run(gateway.liveness.run(), "wsq-liveness")
        run(gateway.inbound.watch_backlog(), "wsq-backlog")
        run(gateway.inbound.indexes.run(), "wsq-indexes")
        if gateway.untaken.enabled:
            consumers = gateway.inbound.consumers
            run(gateway.untaken.run(lambda: consumers.state.last_delivered), "wsq-untaken")
        run(gateway.validators.run(), "wsq-schemas")
        if gateway.sessions.enabled:
            run(gateway.peers.run(), "wsq-peers")
        gateway.started = True
        log.info("gateway started", redis=_safe_url(gateway.settings.redis_url))

    run(start(), "wsq-start", finishes=True)
    yield
    supervisor.stopping()
    await cancel_and_wait(tasks)
    # A handler aiohttp had to cancel may not have ended yet: its disconnect event goes now.
    # A parked session's, with the code of the socket it lost.
    for conn in gateway.connections.all():
        gateway.forget_connection(conn, conn.close_code or CloseCode.SERVICE_RESTART)
    # The queued writes (disconnect events among them) get most of what is left of the drain's
    # budget; the goodbye, one round trip, the rest.
    await gateway.batcher.close(gateway.drain_time_left() * FLUSH_SHARE)
    with contextlib.suppress(aioredis.RedisError, OSError):
        await gateway.liveness.goodbye()
    await gateway.redis.aclose()
    await gateway.blocking_redis.aclose()


async def _retry_until_reachable(gateway: Gateway) -> None:
    """Redis may start after the gateway (docker compose, k8s): wait for it, with backoff.
    A Redis that can never serve (a cluster node, a replica, a wrong password...) raises
    RedisUnusable instead: the supervisor stops the gateway, which exits with status 1."""
    backoff = Backoff(base=0.1, cap=5.0)
    while True:
        try:
            problem = await server_problem(gateway.redis) or await shards_problem(gateway.redis, gateway.keys)
            if problem is not None:
                raise RedisUnusable(f"{_safe_url(gateway.settings.redis_url)}: {problem}")
            await gateway.outbound.start_positions()
            await gateway.batcher.load_scripts()
            await gateway.liveness.start()
            await gateway.validators.refresh()  # the schemas workers published, before any frame
            return
        except (OSError, aioredis.RedisError, RedisClusterException) as exc:
            problem = permanent_problem(exc)
            if problem is not None:
                raise RedisUnusable(f"{_safe_url(gateway.settings.redis_url)}: {problem}") from exc
            delay = backoff.next()
            log.warning("redis not reachable yet", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)


async def _drain(app: web.Application) -> None:
    """Shutdown: refuse new sockets, close the open ones with 1012; their disconnect events follow."""
    gateway = app[GATEWAY]
    gateway.start_draining()
    log.info("draining", connections=len(gateway.connections))
    await gateway.close_all()


def _safe_url(url: str) -> str:
    """The Redis URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    _userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}" if sep else url
