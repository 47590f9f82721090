"""Running the gateway: listen, serve until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import signal
import ssl

from aiohttp import web

from wsq_gateway.app import create_app
from wsq_gateway.logs import GATEWAY as GATEWAY_LOGGER
from wsq_gateway.logs import configure_logging, get_logger
from wsq_gateway.settings import Settings
from wsq_gateway.state import GATEWAY

log = get_logger(GATEWAY_LOGGER)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.ssl_certfile is None or settings.ssl_keyfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    return context


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (by default: until SIGTERM or SIGINT)."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=settings.drain_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context(settings))
        await site.start()
        scheme = "wss" if settings.ssl_certfile else "ws"
        log.info("listening", url=f"{scheme}://{settings.host}:{settings.port}{settings.path}")
        await stop.wait()
        app[GATEWAY].draining = True  # /readyz answers 503 from now on
        log.info("shutting down")
    finally:
        # Stops accepting, closes the sockets (1012), waits for their handlers, flushes the
        # Redis writes and leaves the set of live gateways: all within WSQ_DRAIN_S.
        try:
            await asyncio.wait_for(runner.cleanup(), settings.drain_s)
        except TimeoutError:
            log.error("the drain took longer than WSQ_DRAIN_S; exiting anyway", drain_s=settings.drain_s)
    log.info("stopped")


def run(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format, settings.node_id)
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
