"""Logging: every logger the gateway uses is named here, and configured in one function.

Logs are structured (structlog): one JSON object per line by default (human-readable when
stderr is a terminal, with ``WSQ_LOG_FORMAT=auto``, the default), with the node id
bound to every line and the connection id on connection-scoped lines. Nothing is logged
per message at info level.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError

GATEWAY = "wsq.gateway"
CONNECTIONS = "wsq.gateway.connections"
BROKER = "wsq.gateway.broker"
LOGGER_NAMES = (GATEWAY, CONNECTIONS, BROKER)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    assert name in LOGGER_NAMES, f"unregistered logger {name}"
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``json`` or ``console``: ``fmt``, or for ``auto`` console when ``stream`` is a terminal
    (someone reads it) and json otherwise (a file, a pipe, a container's log collector)."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def configure_logging(level: str, fmt: str, node_id: str | None = None) -> None:
    """Every log line structured (JSON, or human-readable for a console; ``auto``: console when
    stderr is a terminal), naming ``node_id`` once it is known (``bind_node``)."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if resolve_format(fmt, sys.stderr) == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    for old in [f for f in server.filters if isinstance(f, MalformedRequestLog)]:
        server.removeFilter(old)
    server.addFilter(MalformedRequestLog())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    if node_id is not None:
        bind_node(node_id)


def bind_node(node_id: str) -> None:
    """Name ``node_id`` in every log line from here on (in this context and the tasks it starts)."""
    structlog.contextvars.bind_contextvars(node=node_id)


class MalformedRequestLog(logging.Filter):
    """aiohttp logs an error with a traceback for every request it cannot parse (a request line
    or header over 8190 bytes, garbage, TLS to the plain port...), which anyone can send by the
    thousand before any authentication. This filter on the ``aiohttp.server`` logger drops
    those records and logs one info line, without a traceback, per client address per
    ``every_s``, with how many it dropped since. aiohttp still answers each one 400."""

    def __init__(self, every_s: float = 60.0, max_addresses: int = 10_000) -> None:
        super().__init__()
        self.every_s = every_s
        self.max_addresses = max_addresses
        self._logged_at: dict[str, float] = {}  # by address: when its last line was logged
        self._dropped: dict[str, int] = {}  # by address: records dropped since that line

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True  # anything else keeps its level and traceback
        # aiohttp's "Error handling request from %s", request.remote
        addr = str(record.args[0]) if isinstance(record.args, tuple) and record.args else "?"
        now = time.monotonic()
        logged_at = self._logged_at.get(addr)
        if logged_at is not None and now - logged_at < self.every_s:
            self._dropped[addr] = self._dropped.get(addr, 0) + 1
            return False
        if logged_at is None and len(self._logged_at) >= self.max_addresses:
            self._forget_before(now - self.every_s)
        self._logged_at[addr] = now
        detail = " ".join(str(exc.message).split())  # one line, whatever the client sent
        get_logger(CONNECTIONS).info(
            "refused a malformed HTTP request",
            addr=addr,
            error=f"{type(exc).__name__}: {detail[:200]}",
            dropped_since_last=self._dropped.pop(addr, 0),
            next_in_s=self.every_s,
        )
        return False

    def _forget_before(self, cutoff: float) -> None:
        """Bound the memory: drop the addresses last logged before ``cutoff`` (all of them, if
        that is not enough: a flood from that many addresses gets a line per address anyway)."""
        kept = {addr: at for addr, at in self._logged_at.items() if at >= cutoff}
        if len(kept) >= self.max_addresses:
            kept = {}
        self._logged_at = kept
        self._dropped = {addr: n for addr, n in self._dropped.items() if addr in kept}
