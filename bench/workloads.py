"""The workloads: each takes a started system and measures it (see bench/README.md).

The numbers come from the load generators (latencies, counts) and from ``/proc`` (memory,
CPU). Every function returns a JSON-ready dict of one system's results.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from bench.children import Child, Clients, child, clients
from bench.loadgen import GRACE_S
from bench.profiling import profiling
from bench.redis_stats import RedisSample, load_per_message, sample_all
from bench.stats import Histogram, cpu_seconds, rss_kib
from bench.systems import Running

GROUP = "bench-fanout"
FANOUT_STALL_S = 10.0  # a fanout round ends when nothing more arrived for this long...
FANOUT_LIMIT_S = 90.0  # ...or after this long
PUSH_STALL_S = 3.0
PUSH_LIMIT_S = 60.0
PROFILED = ("server", "worker")  # the Python processes of wsq (not Redis)


@dataclass(frozen=True)
class Load:
    clients: int
    inflight: int
    processes: int  # load-generator processes sharing the clients


@dataclass(frozen=True)
class Sizes:
    """How big and how long each workload is: ``FULL`` for the measurement, ``SMOKE`` for CI."""

    warmup_s: float = 3.0
    duration_s: float = 20.0
    high: Load = field(default_factory=lambda: Load(50, 4, 2))
    light: Load = field(default_factory=lambda: Load(10, 1, 1))
    push_connections: int = 100
    push_seconds: float = 10.0
    push_concurrency: int = 64  # pushes the publisher keeps in flight
    fanout_connections: int = 10_000
    fanout_rounds: int = 5
    fanout_pause_s: float = 1.0
    idle_connections: int = 10_000
    hold_processes: int = 4  # load generators holding the fanout, idle and push connections
    open_concurrency: int = 32  # handshakes in flight per load generator
    settle_s: float = 3.0  # idle: how long after the last open before memory is read
    soak_s: float = 300.0
    soak_reference_s: float = 60.0  # the soak compares the end with this point
    soak_sample_s: float = 5.0


FULL = Sizes()
SMOKE = Sizes(
    warmup_s=0.5,
    duration_s=1.5,
    high=Load(10, 4, 1),
    light=Load(2, 1, 1),
    push_connections=20,
    push_seconds=1.0,
    push_concurrency=16,
    fanout_connections=200,
    fanout_rounds=2,
    fanout_pause_s=0.2,
    idle_connections=200,
    hold_processes=2,
    settle_s=0.5,
    soak_s=4.0,
    soak_reference_s=1.0,
    soak_sample_s=0.5,
)


@dataclass(frozen=True)
class Options:
    sizes: Sizes
    profile_dir: Path | None = None
    gateways: int = 1  # wsq's gateway processes (the load generators spread over them)


class Window:
    """CPU used by each process between two moments (and wsq's profiles, when asked).

    ``extra`` adds the benchmark's own processes (load generators, publisher), whose CPU
    shows whether the machine itself was the limit.
    """

    def __init__(
        self, running: Running, options: Options, label: str, extra: Mapping[str, list[int]] | None = None
    ) -> None:
        self.pids = {role: [pid] for role, pid in running.pids.items()} | dict(extra or {})
        self.profiled = {role: running.pids[role] for role in PROFILED if role in running.pids}
        self.profile_dir = options.profile_dir if running.name.startswith("wsq") else None
        self.label = label
        self.cpu: dict[str, float] = {}
        self.redis_urls = running.redis_urls
        self.redis_before: list[RedisSample] = []
        self.redis_after: list[RedisSample] = []

    def _used(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in self.pids.items()}

    async def measure(self, from_ns: int, to_ns: int) -> None:
        await _sleep_until(from_ns)
        before = self._used()
        self.redis_before = sample_all(self.redis_urls)
        async with profiling(self.profiled, self.profile_dir, self.label):
            await _sleep_until(to_ns)
        seconds = (to_ns - from_ns) / 1e9
        after = self._used()
        self.redis_after = sample_all(self.redis_urls)
        self.cpu = {role: round(100 * (after[role] - before[role]) / seconds, 1) for role in after}


async def _sleep_until(monotonic_ns: int) -> None:
    await asyncio.sleep(max(0.0, (monotonic_ns - time.monotonic_ns()) / 1e9))


def _check_opened(group: Clients, wanted: int) -> None:
    if group.failed:
        raise RuntimeError(f"{group.failed} of {wanted} connections failed to open: {group.first_failure}")


# ---- roundtrip ------------------------------------------------------------------------------


async def roundtrip(running: Running, options: Options) -> dict[str, Any]:
    sizes = options.sizes
    return {
        "high": await _roundtrips(running, options, sizes.high, "roundtrip-high"),
        "light": await _roundtrips(running, options, sizes.light, "roundtrip-light"),
    }


async def _roundtrips(running: Running, options: Options, load: Load, label: str) -> dict[str, Any]:
    sizes = options.sizes
    async with clients(running.ws_url, load.clients, load.processes, sizes.open_concurrency) as group:
        _check_opened(group, load.clients)
        start_ns = time.monotonic_ns() + 300_000_000
        window_from = start_ns + int(sizes.warmup_s * 1e9)
        window = Window(running, options, label, {"clients": group.pids})
        measuring = asyncio.create_task(
            window.measure(window_from, window_from + int(sizes.duration_s * 1e9))
        )
        command = {
            "cmd": "roundtrip",
            "inflight": load.inflight,
            "start_ns": start_ns,
            "warmup_s": sizes.warmup_s,
            "duration_s": sizes.duration_s,
        }
        answers = await group.ask_all(command, sizes.warmup_s + sizes.duration_s + GRACE_S + 60)
        await measuring
    hist = Histogram()
    for answer in answers:
        hist.merge(Histogram.from_json(answer["hist"]))
    redis_load = (
        # Each Redis server's CPU and commands per message (a cluster: each master's share).
        {"redis": load_per_message(window.redis_before, window.redis_after, hist.total)}
        if window.redis_urls
        else {}
    )
    return {
        "clients": load.clients,
        "inflight": load.inflight,
        "messages_per_s": round(hist.total / sizes.duration_s, 1),
        **hist.summary_ms(),
        **_sum(answers, "sent", "errors", "lost"),
        "first_error": next((a["first_error"] for a in answers if a["first_error"]), ""),
        "cpu_percent": window.cpu,
        **redis_load,
    }


def _sum(answers: list[dict[str, Any]], *names: str) -> dict[str, int]:
    return {name: sum(answer[name] for answer in answers) for name in names}


# ---- push -----------------------------------------------------------------------------------


async def push(running: Running, options: Options) -> dict[str, Any]:
    sizes = options.sizes
    connections = sizes.push_connections
    async with (
        clients(running.ws_url, connections, 2, sizes.open_concurrency) as group,
        child("publisher", running.publisher_argv) as publisher,
    ):
        _check_opened(group, connections)
        await group.ask_all({"cmd": "hold"}, 30)
        await publisher.ask({"cmd": "ids", "ids": group.ids}, 30)
        start_ns = time.monotonic_ns()
        window = Window(running, options, "push", {"clients": group.pids, "publisher": [publisher.pid]})
        measuring = asyncio.create_task(window.measure(start_ns, start_ns + int(sizes.push_seconds * 1e9)))
        command = {"cmd": "push", "seconds": sizes.push_seconds, "concurrency": sizes.push_concurrency}
        pushed = await publisher.ask(command, sizes.push_seconds + 120)
        await measuring
        await group.wait_for(pushed["sent"], PUSH_STALL_S, PUSH_LIMIT_S)
        received = await group.collect()
    sent = pushed["sent"]
    delivering_s = max(received.last_ns - pushed["first_ns"], 1) / 1e9
    return {
        "connections": connections,
        "sent": sent,
        "failed": pushed["failed"],
        "first_failure": pushed["first_failure"],
        "sent_per_s": round(sent / max(pushed["last_ns"] - pushed["first_ns"], 1) * 1e9, 1),
        "delivered": received.count,
        "delivered_share": round(received.count / max(sent, 1), 5),
        "delivered_per_s": round(received.count / delivering_s, 1),
        **received.hist.summary_ms(),
        "cpu_percent": window.cpu,
    }


# ---- fanout ---------------------------------------------------------------------------------


async def fanout(running: Running, options: Options) -> dict[str, Any]:
    sizes = options.sizes
    wanted = sizes.fanout_connections
    async with (
        clients(running.ws_url, wanted, sizes.hold_processes, sizes.open_concurrency) as group,
        child("publisher", running.publisher_argv) as publisher,
    ):
        connections = len(group.ids)
        await group.ask_all({"cmd": "hold"}, 60)
        await publisher.ask({"cmd": "ids", "ids": group.ids}, 60)
        result: dict[str, Any] = {"connections": connections, "failed_to_open": group.failed}
        profiled = {role: running.pids[role] for role in PROFILED if role in running.pids}
        profile_dir = options.profile_dir if running.name.startswith("wsq") else None
        async with profiling(profiled, profile_dir, "fanout"):
            result["broadcast"] = await _fanout_rounds(group, publisher, {"cmd": "broadcast"}, sizes)
        joined = await publisher.ask({"cmd": "join", "group": GROUP, "concurrency": 64}, 600)
        if joined["ev"] == "unavailable":
            result["group"] = {"available": False, "why": "AsyncPublisher has no to_group() yet (issue 3)"}
        else:
            rounds = await _fanout_rounds(group, publisher, {"cmd": "group", "group": GROUP}, sizes)
            result["group"] = {"available": True, "join_s": round(joined["seconds"], 2), **rounds}
    return result


async def _fanout_rounds(
    group: Clients, publisher: Child, command: Mapping[str, Any], sizes: Sizes
) -> dict[str, Any]:
    """Send one frame to every connection, ``fanout_rounds`` times, each once the previous one
    arrived everywhere (or stalled); latencies are from the send to each receipt."""
    connections = len(group.ids)
    hist = Histogram()
    delivered = 0
    completions: list[float | None] = []
    for _ in range(sizes.fanout_rounds):
        sent = await publisher.ask(command, 120)
        await group.wait_for(connections, FANOUT_STALL_S, FANOUT_LIMIT_S)
        received = await group.collect()
        hist.merge(received.hist)
        delivered += received.count
        completions.append(round((received.last_ns - sent["t0"]) / 1e6, 1) if received.count else None)
        await asyncio.sleep(sizes.fanout_pause_s)  # spacing between rounds, not a synchronisation
    expected = connections * sizes.fanout_rounds
    return {
        "rounds": sizes.fanout_rounds,
        "expected": expected,
        "delivered": delivered,
        "delivered_share": round(delivered / max(expected, 1), 5),
        **hist.summary_ms(),
        "last_receipt_ms": completions,
    }


# ---- idle -----------------------------------------------------------------------------------


def redis_used_bytes(urls: list[str]) -> int:
    """``used_memory`` summed over the Redis servers (``INFO memory``): what wsq's keys cost."""
    total = 0
    for url in urls:
        with redis.Redis.from_url(url) as client:
            total += int(cast("dict[str, Any]", client.info("memory"))["used_memory"])
    return total


async def idle(running: Running, options: Options) -> dict[str, Any]:
    sizes = options.sizes
    before = sum(rss_kib(pid) for pid in running.server_pids)  # with several gateways: all of them
    redis_before = redis_used_bytes(running.redis_urls)
    async with clients(
        running.ws_url, sizes.idle_connections, sizes.hold_processes, sizes.open_concurrency
    ) as group:
        connections = len(group.ids)
        await asyncio.sleep(sizes.settle_s)  # the server finishes its connect work (registry, events)
        after = sum(rss_kib(pid) for pid in running.server_pids)
        redis_after = redis_used_bytes(running.redis_urls)
    redis_measured = {
        # Anonymous connections: the registry (hash, node set member); their connect events
        # were handled and deleted by then. A user or a group adds an index entry each.
        "redis_bytes_per_connection": round((redis_after - redis_before) / max(connections, 1), 1),
    }
    return {
        "connections": connections,
        "failed_to_open": group.failed,
        "first_failure": group.first_failure,
        "open_s": round(group.open_seconds, 2),
        "opens_per_s": round(connections / max(group.open_seconds, 1e-9), 1),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": round((after - before) / max(connections, 1), 2),
        **(redis_measured if running.redis_urls else {}),
    }


# ---- soak -----------------------------------------------------------------------------------


async def soak(running: Running, options: Options) -> dict[str, Any]:
    """The high-load roundtrip for ``soak_s`` seconds, the memory of each process sampled."""
    sizes = options.sizes
    load = sizes.high
    samples: list[dict[str, float]] = []
    async with clients(running.ws_url, load.clients, load.processes, sizes.open_concurrency) as group:
        _check_opened(group, load.clients)
        start_ns = time.monotonic_ns() + 300_000_000
        command = {
            "cmd": "roundtrip",
            "inflight": load.inflight,
            "start_ns": start_ns,
            "warmup_s": 0,
            "duration_s": sizes.soak_s,
        }
        run = asyncio.create_task(group.ask_all(command, sizes.soak_s + GRACE_S + 60))
        await _sleep_until(start_ns)
        while not run.done():
            sample = {"t_s": round((time.monotonic_ns() - start_ns) / 1e9, 2)}
            sample |= {f"{role}_kib": rss_kib(pid) for role, pid in running.pids.items()}
            samples.append(sample)
            await asyncio.wait({run}, timeout=sizes.soak_sample_s)
        answers = run.result()
    hist = Histogram()
    for answer in answers:
        hist.merge(Histogram.from_json(answer["hist"]))
    reference = next(s for s in samples if s["t_s"] >= sizes.soak_reference_s)
    end = [s for s in samples if s["t_s"] <= sizes.soak_s][-1]
    growth = {
        role: round(100 * (end[f"{role}_kib"] - reference[f"{role}_kib"]) / reference[f"{role}_kib"], 2)
        for role in running.pids
    }
    return {
        "seconds": sizes.soak_s,
        "clients": load.clients,
        "inflight": load.inflight,
        "messages_per_s": round(hist.total / sizes.soak_s, 1),
        **hist.summary_ms(),
        **_sum(answers, "sent", "errors", "lost"),
        "reference_s": reference["t_s"],
        "end_s": end["t_s"],
        "rss_reference_kib": {role: reference[f"{role}_kib"] for role in running.pids},
        "rss_end_kib": {role: end[f"{role}_kib"] for role in running.pids},
        "rss_growth_percent": growth,
        "samples": samples,
    }


WORKLOADS = {"roundtrip": roundtrip, "push": push, "fanout": fanout, "idle": idle, "soak": soak}
