"""A worker run as a script, ``python script_app.py``, as the README's app.py: ``worker.run()``
without the CLI (test_cli.py checks that it logs as ``wsq-worker`` does)."""

from __future__ import annotations

from typing import Any

from wsq_worker import Context, Worker


async def echo(ctx: Context, data: Any) -> Any:
    return data


def shout(ctx: Context, data: str) -> str:
    return data.upper()


worker = Worker({"echo": echo, "shout": shout}, concurrency=7, block_ms=200)

if __name__ == "__main__":
    worker.run()
