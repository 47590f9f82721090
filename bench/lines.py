"""The child side of the runner's line protocol: commands on stdin, answers on stdout.

Each line is one JSON object. A child answers every command with exactly one line;
``{"cmd": "close"}`` (or the end of stdin) ends it. Standard library only, so the
Django Channels publisher (which runs in bench/.venv-peers) shares it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

LINE_LIMIT = 64 * 1024 * 1024  # a line may carry 10,000 connection ids or a histogram

Command = dict[str, Any]
Handler = Callable[[Command], Awaitable[Mapping[str, Any]]]


async def _commands() -> AsyncIterator[Command]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command: Command = json.loads(line)
        yield command


def answer(doc: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def serve(handle: Handler) -> None:
    """Answer each command with ``handle(command)`` until ``close`` or the end of stdin."""
    answer({"ev": "started"})
    async for command in _commands():
        if command["cmd"] == "close":
            answer({"ev": "closed"})
            return
        answer(await handle(command))
