"""Running the gateway: listen, serve until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from redis.exceptions import RedisClusterException, RedisError

from wsq_gateway.api import create_api_app
from wsq_gateway.app import create_app
from wsq_gateway.broker.liveness import pick_node_id
from wsq_gateway.logs import GATEWAY as GATEWAY_LOGGER
from wsq_gateway.logs import bind_node, configure_logging, get_logger
from wsq_gateway.settings import Settings
from wsq_gateway.state import GATEWAY
from wsq_protocol.cluster import async_redis
from wsq_protocol.keys import Keys

log = get_logger(GATEWAY_LOGGER)

HANDLERS_SHARE = 0.25
CANCEL_WAIT_S = 1.0  # after an overlong drain, for its cancellation to unwind
API_SHUTDOWN_S = 1.0  # API requests in progress at shutdown: each is one round trip to Redis


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.ssl_certfile is None or settings.ssl_keyfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    return context


class GatewayFailed(Exception):
    """A background task of the gateway died, or its Redis can't serve it: it stopped."""


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (by default: until SIGTERM or SIGINT). Raise GatewayFailed,
    after the same graceful shutdown, when a background task ended unexpectedly (supervisor.py)."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    if "node_id" not in settings.model_fields_set:
        settings = await _with_balanced_node_id(settings)
    bind_node(settings.node_id)  # from here on every line names the id it runs with
    app = create_app(settings)
    # After the sockets are closed, aiohttp waits up to this for their handlers, then cancels
    # them and waits up to this again; the flush and the goodbye have the rest of WSQ_DRAIN_S.
    handlers_timeout = settings.drain_s * HANDLERS_SHARE
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=handlers_timeout)
    supervisor = app[GATEWAY].supervisor
    api_runner: web.AppRunner | None = None
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context(settings))
        await site.start()
        scheme = "wss" if settings.ssl_certfile else "ws"
        log.info("listening", url=f"{scheme}://{settings.host}:{settings.port}{settings.path}")
        if settings.api_keys is not None:
            api_runner = await _start_api(app, settings)
        await _first(stop.wait(), supervisor.failed.wait())
        log.info("shutting down", failed_task=supervisor.failed_task)
    finally:
        if api_runner is not None:  # first: it writes with the gateway's Redis client, closed below
            await api_runner.cleanup()
        # Stops accepting, closes the sockets (1012), waits for their handlers, flushes the
        # Redis writes and leaves the set of live gateways: all within WSQ_DRAIN_S.
        gateway = app[GATEWAY]
        gateway.start_draining()  # /readyz answers 503 from now on
        cleanup = asyncio.ensure_future(runner.cleanup())
        await asyncio.wait([cleanup], timeout=gateway.drain_time_left())
        if cleanup.done():
            cleanup.result()  # an error of the cleanup itself goes on up
        else:
            log.error(
                "the drain took longer than WSQ_DRAIN_S; exiting anyway",
                drain_s=settings.drain_s,
                waiting=_waiting_tasks(),
            )
            cleanup.cancel()
            await asyncio.wait([cleanup], timeout=CANCEL_WAIT_S)
    if supervisor.failed_task is not None:
        raise GatewayFailed(f"{supervisor.failed_task}: {supervisor.reason}")
    log.info("stopped")


async def _start_api(app: web.Application, settings: Settings) -> web.AppRunner:
    """The HTTP server API on its own listener (README, "HTTP server API")."""
    runner = web.AppRunner(
        create_api_app(app[GATEWAY]), handle_signals=False, access_log=None, shutdown_timeout=API_SHUTDOWN_S
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.api_host, settings.api_port, ssl_context=ssl_context(settings))
    await site.start()
    scheme = "https" if settings.ssl_certfile else "http"
    log.info("http api listening", url=f"{scheme}://{settings.api_host}:{settings.api_port}/api/")
    return runner


async def _with_balanced_node_id(settings: Settings) -> Settings:
    """``settings`` with a node id in the least used shard (protocol/README.md, "Slots and
    shards"), or as they are when Redis does not answer at once: a gateway may start first."""
    client = async_redis(
        settings.redis_url, cluster=settings.redis_cluster, socket_connect_timeout=1.0, socket_timeout=1.0
    )
    try:
        keys = Keys(settings.key_prefix, settings.shards)
        node_id = await pick_node_id(client, keys, settings.node_timeout_s)
    except (RedisError, RedisClusterException, OSError) as exc:
        log.info("could not read the live gateways: a random node id", error=str(exc))
        return settings
    finally:
        await client.aclose()
    return settings.model_copy(update={"node_id": node_id})


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until one of ``waits`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _waiting_tasks() -> list[str]:
    """Each unfinished task and its chain of awaits, innermost last: what held a drain up."""
    waiting = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        chain: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        waiting.append(f"{task.get_name()}: {' > '.join(chain)}")
    return waiting


def run(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; the exit status: 0, or 1 when the gateway failed (a
    background task died, or Redis can't serve it: the log says why)."""
    # A node id it was given is named at once; one it picks (serve()), once picked.
    given = settings.node_id if "node_id" in settings.model_fields_set else None
    configure_logging(settings.log_level, settings.log_format, given)
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(settings))
    except GatewayFailed as exc:
        log.info("stopped", exit_status=1, failed=str(exc))  # the error itself was logged already
        return 1
    return 0
