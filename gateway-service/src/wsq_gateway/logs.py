"""Logging: every logger the gateway uses is named here, and configured in one function.

Logs are structured (structlog): one JSON object per line by default, with the node id
bound to every line and the connection id on connection-scoped lines. Nothing is logged
per message at info level.
"""

from __future__ import annotations

import logging
import sys

import structlog

GATEWAY = "wsq.gateway"
CONNECTIONS = "wsq.gateway.connections"
BROKER = "wsq.gateway.broker"
LOGGER_NAMES = (GATEWAY, CONNECTIONS, BROKER)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    assert name in LOGGER_NAMES, f"unregistered logger {name}"
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def configure_logging(level: str, fmt: str, node_id: str) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
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
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(node=node_id)
