"""Optional speed-ups, used when the ``fast`` extra is installed (``wsq-worker[fast]``).

* hiredis packs every command in C (the protocol core's ``async_redis`` and ``RedisPipe``,
  ``wsq_protocol.pipe``, use it when installed);
* orjson encodes and decodes JSON (``wsq_protocol.codec``);
* uvloop: ``Worker.run()`` runs its event loop on uvloop (:func:`run`).

Without them everything works the same, only slower.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from wsq_protocol.pipe import BatchDeadline, CommandTemplate, RedisPipe, async_redis

__all__ = ["BatchDeadline", "CommandTemplate", "RedisPipe", "async_redis", "run"]

uvloop: Any
try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


def run(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, on uvloop when installed."""
    if uvloop is not None:
        uvloop.run(main)
    else:
        asyncio.run(main)
