"""The worker's log format: ``wsq-worker`` and ``Worker.run()`` (in a process that configured no
logging) write the same lines, with a timestamp, a level and the logger's name."""

from __future__ import annotations

import logging

__all__ = ["LOG_FORMAT", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: int | str = logging.INFO) -> None:
    """Log to stderr in ``LOG_FORMAT`` from ``level`` up, unless the root logger has a handler
    already (the application configured logging: it is left alone)."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=level, format=LOG_FORMAT)
