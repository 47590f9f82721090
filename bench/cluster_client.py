"""What a batch costs the client on a Redis Cluster (``python -m bench.cluster_client``).

A batch of ``--batch`` commands to keys of ``--shards`` shards (``{wsq:S}``: the slots of wsq's
shards, spread over the masters), half ``XADD ... MAXLEN ~ 1000`` and half ``EVALSHA`` of a
one-key script, sent again and again for ``--seconds`` by each client; commands per second
of one process (the client's CPU is what is measured: every server is on this machine too):

* ``redis-py cluster pipeline``: ``RedisCluster.pipeline(transaction=False)``, ``execute(
  raise_on_error=False)``: redis-py splits the batch per node itself.
* ``per-master pipe (naive)``: the batch grouped by the master of each key's slot (redis-py's
  slot map), one ``RedisPipe`` of a plain client per master, the groups sent concurrently.
* ``RoutedPipe``: ``wsq_protocol.pipe.RoutedPipe`` (the same, with MOVED/ASK and fail-over
  handled).
* ``single Redis``: ``RedisPipe`` and redis-py's pipeline on one ``redis-server``, for scale.

Rounds alternate the contenders, and the best round of each is reported (the machine is
shared: the best is the least disturbed), with this process's CPU time per command (the servers
share the machine's cores with it: CPU per command is the steadier figure).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot

from wsq_devkit import RedisCluster, RedisServer
from wsq_protocol.cluster import async_redis
from wsq_protocol.pipe import RedisPipe
from wsq_protocol.routing import RoutedPipe
from wsq_protocol.scripts import Script

SCRIPT = Script.of("bench", "return redis.call('INCR', KEYS[1])")

Command = tuple[Any, ...]
Batch = list[tuple[str, Command]]


def make_batch(size: int, shards: int) -> Batch:
    """``size`` (key, command) pairs over ``shards`` shards: XADDs and EVALSHAs in turn."""
    batch: Batch = []
    for n in range(size):
        tag = f"{{wsq:{n % shards}}}"
        if n % 2:
            key = f"{tag}:counter"
            batch.append((key, SCRIPT.call([key])))
        else:
            key = f"{tag}:inbound"
            batch.append((key, ("XADD", key, "MAXLEN", "~", 1000, "*", "type", "message", "n", n)))
    return batch


async def measure(run: Callable[[], Awaitable[None]], size: int, seconds: float) -> tuple[float, float]:
    """(commands per second, this process's CPU µs per command) while ``run`` (one batch of
    ``size``) is repeated for ``seconds``."""
    await run()  # connected, scripts known: not measured
    batches, start, cpu = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        await run()
        batches += 1
    commands = batches * size
    return commands / elapsed, (time.process_time() - cpu) * 1e6 / commands


def redis_py_pipeline(client: Any, batch: Batch) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        pipe = client.pipeline(transaction=False)
        for _, command in batch:
            pipe.execute_command(*command)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):
                raise reply

    return run


def naive_per_master(client: AsyncRedisCluster, pipes: dict[str, RedisPipe], batch: Batch) -> Any:
    """Group by master (redis-py's slot map), one RedisPipe per master, groups concurrently."""

    async def run() -> None:
        groups: dict[str, list[Command]] = {}
        for key, command in batch:
            node = client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
            groups.setdefault(node.name, []).append(command)
        replies = await asyncio.gather(*(pipes[name].execute(group) for name, group in groups.items()))
        for group_replies in replies:
            for reply in group_replies:
                if isinstance(reply, Exception):
                    raise reply

    return run


def routed(pipe: RoutedPipe, batch: Batch) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        for reply in await pipe.execute(batch):
            if isinstance(reply, Exception):
                raise reply

    return run


def single_pipe(pipe: RedisPipe, batch: Batch) -> Callable[[], Awaitable[None]]:
    commands = [command for _, command in batch]

    async def run() -> None:
        for reply in await pipe.execute(commands):
            if isinstance(reply, Exception):
                raise reply

    return run


async def bench(sizes: Sequence[int], shards: int, seconds: float, rounds: int) -> None:
    with RedisCluster() as cluster, RedisServer() as single:
        client = async_redis(cluster.url, cluster=True)
        assert isinstance(client, AsyncRedisCluster)
        await client.initialize()
        for master in cluster.masters():  # scripts known everywhere: EVALSHA measured, not EVAL
            await redis.asyncio.Redis(port=master.port).script_load(SCRIPT.body)
        pipes = {
            node.name: RedisPipe(async_redis(f"redis://{node.host}:{node.port}/0", cluster=False))
            for node in client.get_primaries()
        }
        plain = async_redis(single.url, cluster=False)
        assert not isinstance(plain, AsyncRedisCluster)
        await plain.script_load(SCRIPT.body)
        single_redis_pipe = RedisPipe(plain)
        routed_pipe = RoutedPipe(client)
        print(f"{len(pipes)} masters, {shards} shards; commands/s of one client process, best of {rounds}")
        for size in sizes:
            batch = make_batch(size, shards)
            contenders: dict[str, Callable[[], Awaitable[None]]] = {
                "redis-py cluster pipeline": redis_py_pipeline(client, batch),
                "per-master pipe (naive)": naive_per_master(client, pipes, batch),
                "RoutedPipe": routed(routed_pipe, batch),
                "single Redis: redis-py pipeline": redis_py_pipeline(plain, batch),
                "single Redis: RedisPipe": single_pipe(single_redis_pipe, batch),
            }
            best = dict.fromkeys(contenders, 0.0)
            cpu = dict.fromkeys(contenders, float("inf"))
            for _ in range(rounds):
                for name, run in contenders.items():
                    rate, cpu_us = await measure(run, size, seconds)
                    best[name], cpu[name] = max(best[name], rate), min(cpu[name], cpu_us)
            print(f"\nbatch of {size}:")
            base, base_cpu = best["redis-py cluster pipeline"], cpu["redis-py cluster pipeline"]
            for name, rate in best.items():
                print(
                    f"  {name:32} {rate:>9,.0f} cmds/s ({rate / base:.1f}x)"
                    f"  client CPU {cpu[name]:5.1f} µs/cmd ({base_cpu / cpu[name]:.1f}x less)"
                )
        await routed_pipe.aclose()
        await single_redis_pipe.aclose()
        for pipe in pipes.values():
            await pipe.aclose()
        await client.aclose()
        await plain.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        import uvloop  # noqa: PLC0415 - the gateway's and worker's loop, when installed

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(bench(args.batch, args.shards, args.seconds, args.rounds))


if __name__ == "__main__":
    main()
