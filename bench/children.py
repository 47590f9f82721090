"""The runner's side of ``bench.lines``: child processes driven by one JSON line at a time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.lines import LINE_LIMIT
from bench.stats import Histogram

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0


class Child:
    """A process that answers each command on its stdin with one line on its stdout."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc

    @classmethod
    async def start(cls, name: str, argv: Sequence[str]) -> Child:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT, limit=LINE_LIMIT
        )
        child = cls(name, proc)
        try:
            await child._answer(START_TIMEOUT_S)  # {"ev": "started"}
        except BaseException:
            await child.close()
            raise
        return child

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ask(self, command: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._answer(timeout)

    async def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.name} did not answer within {timeout:.0f}s") from None
        if not line:
            raise RuntimeError(f"{self.name} exited with status {await self.proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.ask({"cmd": "close"}, 10.0)
                await asyncio.wait_for(self.proc.wait(), 10.0)
            except (RuntimeError, TimeoutError, ConnectionError):
                with contextlib.suppress(ProcessLookupError):  # it may have exited meanwhile
                    self.proc.kill()
                await self.proc.wait()


@asynccontextmanager
async def child(name: str, argv: Sequence[str]) -> AsyncIterator[Child]:
    started = await Child.start(name, argv)
    try:
        yield started
    finally:
        await started.close()


class Clients:
    """Load-generator processes (``bench.loadgen``) sharing the connections of one workload."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.ids: list[str] = []
        self.failed = 0
        self.first_failure = ""
        self.open_seconds = 0.0

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    async def ask_all(self, command: Mapping[str, Any], timeout: float) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(c.ask(command, timeout) for c in self.children)))

    async def count(self) -> int:
        return sum(answer["received"] for answer in await self.ask_all({"cmd": "count"}, 30.0))

    async def collect(self) -> Received:
        return Received(await self.ask_all({"cmd": "collect"}, 30.0))

    async def wait_for(self, target: int, stall_s: float, limit_s: float) -> int:
        """Poll the held connections' count until it reaches ``target``, stops growing for
        ``stall_s`` seconds, or ``limit_s`` seconds passed; return the count."""
        started = last_change = time.monotonic()
        total = last = 0
        while total < target:
            await asyncio.sleep(0.05)
            total = await self.count()
            now = time.monotonic()
            if total != last:
                last, last_change = total, now
            if now - last_change >= stall_s or now - started >= limit_s:
                break
        return total


class Received:
    """What all the load generators collected: count, latencies, first and last receipt."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.count = sum(answer["received"] for answer in answers)
        self.hist = Histogram()
        for answer in answers:
            self.hist.merge(Histogram.from_json(answer["hist"]))
        got = [answer for answer in answers if answer["received"]]
        self.first_ns = min((answer["first_ns"] for answer in got), default=0)
        self.last_ns = max((answer["last_ns"] for answer in got), default=0)


@asynccontextmanager
async def clients(url: str, connections: int, processes: int, concurrency: int) -> AsyncIterator[Clients]:
    """``connections`` WebSocket connections to ``url``, opened by ``processes`` load generators
    (at most ``concurrency`` handshakes at a time in each)."""
    processes = max(1, min(processes, connections))
    argv = [sys.executable, "-m", "bench.loadgen", url]
    started: list[Child] = []
    try:
        for index in range(processes):
            started.append(await Child.start(f"loadgen-{index}", argv))
        group = Clients(started)
        shares = [connections // processes + (index < connections % processes) for index in range(processes)]
        began = time.monotonic()
        answers = await asyncio.gather(
            *(
                c.ask({"cmd": "open", "connections": share, "concurrency": concurrency}, 300.0)
                for c, share in zip(started, shares, strict=True)
            )
        )
        group.open_seconds = time.monotonic() - began
        for answer in answers:
            group.ids += answer["ids"]
            group.failed += answer["failed"]
            group.first_failure = group.first_failure or answer["first_failure"]
        yield group
    finally:
        await asyncio.gather(*(c.close() for c in started))
