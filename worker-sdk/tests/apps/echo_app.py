"""The application test_cli.py runs: ``python -m wsq_worker echo_app:worker`` from this directory."""

from __future__ import annotations

import asyncio
from typing import Any

from wsq_worker import Context, Worker


async def echo(ctx: Context, data: Any) -> Any:
    return data


async def slow(ctx: Context, seconds: float) -> str:
    await ctx.send("started")
    await asyncio.sleep(seconds)  # the work in flight when SIGTERM arrives
    return "finished"


async def settings(ctx: Context, data: Any) -> dict[str, Any]:
    """The settings of the worker make_worker() made, after the command line's overrides."""
    [made] = made_workers
    return {
        "concurrency": made.concurrency,
        "key_prefix": made.key_prefix,
        "shards": made.shards,
        "claim_idle_ms": made.claim_idle_ms,
        "max_attempts": made.max_attempts,
        "max_dead_letters": made.max_dead_letters,
    }


worker = Worker({"echo": echo, "slow": slow}, block_ms=200)
made_workers: list[Worker] = []


def make_worker() -> Worker:
    made_workers.append(Worker({"settings": settings}, block_ms=200))
    return made_workers[-1]


not_a_worker = 42
