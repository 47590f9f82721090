"""What a publisher process does, whatever it publishes through (``bench.publish`` for wsq and the
bare baseline, ``bench.peers.publish`` for Django Channels). Standard library only.

Commands (``bench.lines``), one answer each:

* ``{"cmd": "ids", "ids": [...]}``: the connections to push to;
* ``{"cmd": "push", "seconds": S, "concurrency": C}``: C concurrent loops push to the connections in
  turn for S seconds, each push carrying its send time. Answer: pushes sent and failed, and when
  the first was sent and the last one returned;
* ``{"cmd": "broadcast"}``: one push to every connection; the answer has its send time ``t0``;
* ``{"cmd": "join", "group": G, "concurrency": C}``: every connection joins G;
* ``{"cmd": "group", "group": G}``: one push to the group, like ``broadcast``.

Every push's ``data`` is ``{"t": time.monotonic_ns(), ...}``, which the load generator reads.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Mapping
from typing import Any

from bench.lines import Command


class GroupsUnavailable(Exception):
    """This publisher has no groups (for wsq: ``AsyncPublisher.to_group`` does not exist yet)."""


class Publisher(abc.ABC):
    def __init__(self) -> None:
        self.ids: list[str] = []

    @abc.abstractmethod
    async def push(self, connection_id: str, data: dict[str, Any]) -> None:
        """Send ``{"action": "push", "data": data}`` to one connection."""

    @abc.abstractmethod
    async def broadcast(self, data: dict[str, Any]) -> None:
        """Send ``{"action": "fanout", "data": data}`` to every connection."""

    async def join(self, connection_id: str, group: str) -> None:
        raise GroupsUnavailable

    async def group_send(self, group: str, data: dict[str, Any]) -> None:
        """Send ``{"action": "fanout", "data": data}`` to every member of ``group``."""
        raise GroupsUnavailable

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    async def push_for(self, seconds: float, concurrency: int) -> Mapping[str, Any]:
        first_ns = time.monotonic_ns()
        stop_ns = first_ns + int(seconds * 1e9)
        sent = failed = 0
        failures: list[str] = []
        ids = self.ids

        async def lane(start: int) -> None:
            nonlocal sent, failed
            position = start
            while (now := time.monotonic_ns()) < stop_ns:
                try:
                    await self.push(ids[position % len(ids)], {"t": now, "seq": position})
                except Exception as exc:  # Redis, HTTP, a full channel...: counted, and we go on
                    failed += 1
                    if not failures:
                        failures.append(repr(exc))
                else:
                    sent += 1
                position += concurrency

        await asyncio.gather(*(lane(start) for start in range(concurrency)))
        return {
            "ev": "pushed",
            "sent": sent,
            "failed": failed,
            "first_failure": failures[0] if failures else "",
            "first_ns": first_ns,
            "last_ns": time.monotonic_ns(),
        }

    async def join_all(self, group: str, concurrency: int) -> Mapping[str, Any]:
        started = time.monotonic()
        gate = asyncio.Semaphore(concurrency)

        async def join(connection_id: str) -> None:
            async with gate:
                await self.join(connection_id, group)

        await asyncio.gather(*(join(connection_id) for connection_id in self.ids))
        return {"ev": "joined", "seconds": time.monotonic() - started}

    async def handle(self, command: Command) -> Mapping[str, Any]:
        try:
            match command["cmd"]:
                case "ids":
                    self.ids = command["ids"]
                    return {"ev": "ids", "count": len(self.ids)}
                case "push":
                    return await self.push_for(command["seconds"], command["concurrency"])
                case "broadcast":
                    t0 = time.monotonic_ns()
                    await self.broadcast({"t": t0})
                    return {"ev": "sent", "t0": t0}
                case "join":
                    return await self.join_all(command["group"], command["concurrency"])
                case "group":
                    t0 = time.monotonic_ns()
                    await self.group_send(command["group"], {"t": t0})
                    return {"ev": "sent", "t0": t0}
        except GroupsUnavailable:
            return {"ev": "unavailable"}
        raise ValueError(f"unknown command {command!r}")
