"""The application test_cli.py runs in two processes: ``python -m wsq_worker crash_app:worker``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from wsq_worker import Context, Worker


async def slow_once(ctx: Context, data: Any) -> dict[str, int]:
    """The first attempt says which process runs it, then works until that process is killed."""
    if ctx.attempt == 1:
        await ctx.send("started", os.getpid())
        await asyncio.sleep(120)  # the work in flight when SIGKILL arrives
    return {"attempt": ctx.attempt, "pid": os.getpid()}


worker = Worker({"slow_once": slow_once}, block_ms=200)
