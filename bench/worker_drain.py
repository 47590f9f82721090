"""The worker alone: what one event costs it (``python -m bench.worker_drain``).

Fills a private Redis's inbound stream with ``--events`` message events (the roundtrip
workload's echo action, in the fields the gateway writes), then runs a worker in this process
on them (``bench.echo_worker``) until every event is handled, and prints the process's CPU
time per event. No gateway, no clients and no hops between processes: far steadier than the
roundtrip on a shared machine, so it can tell two versions of the SDK apart (``PYTHONPATH``
pointing at another ``worker-sdk/src``). Under valgrind's callgrind the count of instructions
is exact: see docs/benchmarks.md, "Measuring the worker alone".

The events are sent as one block of packed commands over a plain socket, so filling the
stream costs this process next to nothing per event. The run fails (exit status 1) unless
every event was answered: one reply in the gateway's node stream each, none left pending.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import hiredis
import redis.asyncio as aioredis

from bench.echo_worker import echo
from wsq_devkit import RedisServer
from wsq_protocol.keys import keys_for
from wsq_worker import Worker, constants, speedups
from wsq_worker.settings import WorkerSettings

EVENT = Path(__file__).resolve().parents[1] / "protocol/examples/valid/event/message.json"
PREFIX = WorkerSettings().key_prefix
SHARDS = WorkerSettings().shards
POLL_S = 0.2  # polling costs CPU too: rarely, so that it hardly counts
TIMEOUT_S = 600.0


def _fill(port: int, fields: dict[str, str], events: int) -> None:
    """XADD ``events`` copies of the event ``fields`` to its gateway's inbound partition, in one
    write, and read the replies."""
    stream = keys_for(PREFIX, SHARDS).inbound_stream_of(fields["node"])
    arguments: Any = ("XADD", stream, "*", *(item for pair in fields.items() for item in pair))
    command = hiredis.pack_command(arguments)  # its stubs type the tuple as one element long
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as conn:
        conn.sendall(command * events)
        replies = b""
        while replies.count(b"\r\n") < 2 * events:  # each reply: "$<length>\r\n<id>\r\n"
            if replies.startswith(b"-") or b"\r\n-" in replies:  # an error reply
                raise RuntimeError(f"Redis refused the events: {replies[:200]!r}")
            replies += conn.recv(1 << 20)


async def _drain(url: str, node: str, events: int, concurrency: int) -> tuple[float, float]:
    """Run a worker until ``events`` events from gateway ``node`` are handled: (CPU seconds,
    wall seconds)."""
    keys = keys_for(PREFIX, SHARDS)
    inbound, replies = keys.inbound_stream_of(node), keys.node_stream(node)
    client = aioredis.Redis.from_url(url)
    worker = Worker(
        actions={"echo": echo}, redis_url=url, key_prefix=PREFIX, shards=SHARDS, concurrency=concurrency
    )
    try:
        # What the live gateway ``node`` keeps: its stream (replies are XADD ... NOMKSTREAM).
        await client.xadd(replies, {"created": "1"}, id="0-1")
        await client.xdel(replies, "0-1")
        async with worker:
            cpu, wall = time.process_time(), time.perf_counter()
            deadline = wall + TIMEOUT_S
            while await client.xlen(replies) < events or await _pending(client, inbound):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"the worker did not handle {events} events in {TIMEOUT_S:.0f} s")
                await asyncio.sleep(POLL_S)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        answered = await client.xlen(replies)
    finally:
        await client.aclose()
    if answered != events:
        raise RuntimeError(f"{answered} replies for {events} events")
    return cpu, wall


async def _pending(client: aioredis.Redis, inbound: str) -> int:
    summary = await client.xpending(inbound, constants.CONSUMER_GROUP)
    return int(summary["pending"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.worker_drain", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=50_000, help="events to handle (default 50000)")
    parser.add_argument("--concurrency", type=int, default=200, help="the worker's concurrency (default 200)")
    args = parser.parse_args(argv)
    if not 0 < args.events <= constants.NODE_STREAM_MAXLEN:  # above the cap, replies would be trimmed
        parser.error(f"--events must be 1 to {constants.NODE_STREAM_MAXLEN}")
    fields = json.loads(EVENT.read_text())
    fields["frame"] = json.dumps({"action": "echo", "data": {"text": "hello"}, "id": "1"})
    with RedisServer() as server:
        _fill(server.port, fields, args.events)
        measured: list[tuple[float, float]] = []

        async def measure() -> None:
            measured.append(await _drain(server.url, fields["node"], args.events, args.concurrency))

        speedups.run(measure())  # on uvloop, as Worker.run() runs
        ((cpu, wall),) = measured
    print(
        f"worker drain: {args.events} events in {wall:.2f} s ({args.events / wall:,.0f} events/s), "
        f"{cpu / args.events * 1e6:.1f} us of CPU per event"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
