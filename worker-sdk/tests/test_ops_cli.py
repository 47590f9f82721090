"""``python -m wsq_worker status``, ``send`` and ``dead show|purge`` as real processes, on the state
real Workers and a FakeGateway leave in a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio
from test_dead_cli import DeadLetters, three_dead_letters, wsq_worker
from worker_harness import FakeGateway, StartWorker, add_to_index, str_entries

from wsq_devkit import free_port, wait_until_async
from wsq_protocol.keys import keys_for
from wsq_worker import Context, Retry, Worker
from wsq_worker.top import format_rates

__all__ = ["three_dead_letters"]  # the fixture, imported from test_dead_cli


@pytest.fixture
def redis_options(redis_url: str, key_prefix: str) -> list[str]:
    return ["--redis-url", redis_url, "--key-prefix", key_prefix]


async def redis_now_ms(client: redis.asyncio.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def status(*args: str) -> dict[str, Any]:
    result = await wsq_worker("status", "--json", *args)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


# status


async def test_status_of_an_empty_deployment(redis_options: list[str]) -> None:
    result = await wsq_worker("status", *redis_options)
    assert result.returncode == 0, result.stderr
    assert "gateways: no gateway alive" in result.stdout
    assert "workers: no worker has read the inbound stream yet" in result.stdout
    assert "inbound: 0 in the stream, 0 pending, lag 0" in result.stdout
    assert "dead letters: 0, delayed retries: 0" in result.stdout
    assert len(result.stdout.splitlines()) == 5, "no table: no shard has anything"
    shown = await status(*redis_options)
    assert shown["gateways"] == shown["stale_gateways"] == shown["per_shard"] == []
    assert shown["workers"] == {"group": False, "live": [], "stale": []}
    assert shown["inbound"] == {"length": 0, "pending": 0, "lag": 0, "read": 0}
    assert (shown["dead_letters"], shown["delayed"], shown["shards"]) == (0, 0, 16)


async def test_status_shows_gateways_workers_backlog_dead_letters_and_retries(
    start_worker: StartWorker,
    gateway: FakeGateway,
    gateway_on: Callable[[str], FakeGateway],
    redis_client: redis.asyncio.Redis,
    redis_options: list[str],
) -> None:
    keys = gateway.keys
    now = await redis_now_ms(redis_client)
    await redis_client.zadd(keys.nodes, {gateway.node: now, "gw-gone": now - 60_000})
    for _ in range(2):
        await gateway.register(gateway.new_connection_id())
    await gateway_on("gw-gone").register(gateway_on("gw-gone").new_connection_id())

    release, started = asyncio.Event(), asyncio.Event()

    async def hold(ctx: Context, data: Any) -> None:
        started.set()
        await release.wait()

    async def later(ctx: Context, data: Any) -> None:
        raise Retry(delay=600)

    async def broken(ctx: Context, data: Any) -> None:
        raise Retry(delay=0)

    worker = await start_worker({"hold": hold, "later": later, "broken": broken}, max_attempts=2)
    try:
        await gateway.message(gateway.new_connection_id(), "later", 1)
        await gateway.message(gateway.new_connection_id(), "broken", 2)
        await wait_until_async(lambda: _counts(redis_client, gateway), message="1 delayed, 1 dead")
        await gateway.message(gateway.new_connection_id(), "hold", 3)
        await asyncio.wait_for(started.wait(), 10)

        shown = await status(*redis_options)
        assert [(g["node"], g["connections"]) for g in shown["gateways"]] == [(gateway.node, 2)]
        assert 0 <= shown["gateways"][0]["age_ms"] < 20_000
        assert [g["node"] for g in shown["stale_gateways"]] == ["gw-gone"]
        assert shown["stale_gateways"][0]["age_ms"] >= 60_000
        assert shown["workers"] == {"group": True, "live": [worker.consumer_name], "stale": []}
        assert shown["inbound"]["pending"] == 1, "the held message"
        assert (shown["dead_letters"], shown["delayed"]) == (1, 1)
        [row] = shown["per_shard"]
        assert row["shard"] == gateway.shard
        assert (row["pending"], row["dead_letters"], row["delayed"]) == (1, 1, 1)
        assert row["consumers"] == row["live_consumers"] == 1
        assert row["length"] >= 1, "read, not yet done: still in the stream"
        assert row["lag"] == 0, "every event was read"

        result = await wsq_worker("status", *redis_options)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert "gateways: 1 alive, 2 connections" in lines
        assert any(line.split()[:3] == [gateway.node, "2", "connections"] for line in lines)
        assert any(line.strip().startswith("stale: gw-gone (last heartbeat 6") for line in lines)
        assert "workers: 1 live" in lines
        assert "dead letters: 1, delayed retries: 1" in lines
        header = [line.split() for line in lines].index(
            ["shard", "length", "pending", "lag", "consumers", "dead", "delayed"]
        )
        assert lines[header + 1].split() == [
            str(gateway.shard),
            str(row["length"]),
            "1",
            "0",
            "1/1",
            "1",
            "1",
        ]
    finally:
        release.set()
    # the held message done: nothing pending, nothing in the stream (acknowledged and deleted)
    await wait_until_async(gateway.backlog_done)
    shown = await status(*redis_options)
    assert shown["inbound"] == {"length": 0, "pending": 0, "lag": 0, "read": shown["inbound"]["read"]}
    assert shown["inbound"]["read"] >= 3, "later, broken (twice) and hold were read"


# top


async def test_top_redraws_the_status_with_rates(
    gateway: FakeGateway, redis_client: redis.asyncio.Redis, redis_options: list[str]
) -> None:
    now = await redis_now_ms(redis_client)
    await redis_client.zadd(gateway.keys.nodes, {gateway.node: now})
    await gateway.register(gateway.new_connection_id())
    result = await wsq_worker("top", "--iterations", "2", "--interval", "0.2", *redis_options)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("\n\nwsq-worker top, ")  # piped: one after the other
    assert first.startswith("wsq-worker top, ")
    assert "every 0.2 s (Ctrl-C to quit)" in first
    assert "rates: from the next refresh on" in first
    assert "gateways: 1 alive, 1 connection" in first
    rates = second.splitlines()[1]
    assert rates.startswith("rates over ")
    assert rates.endswith("events read/s, connections +0, dead letters +0"), rates
    assert "gateways: 1 alive, 1 connection" in second


def test_top_rates_between_two_reads() -> None:
    def status(time_ms: int, read: int | None, connections: int, dead: int) -> dict[str, Any]:
        return {
            "time_ms": time_ms,
            "inbound": {"read": read},
            "gateways": [{"connections": connections}],
            "dead_letters": dead,
        }

    assert format_rates(status(0, 5, 1, 0), None) == "rates: from the next refresh on"
    assert format_rates(status(2000, 105, 4, 1), status(0, 5, 1, 0)) == (
        "rates over 2.0 s: 50.0 events read/s, connections +3, dead letters +1"
    )
    assert format_rates(status(1000, 0, 1, 0), status(0, 50, 2, 1)).startswith(
        "rates over 1.0 s: ? events read/s, connections -1, dead letters -1"
    ), "a group made again (Redis emptied): no rate"
    assert format_rates(status(1000, None, 1, 0), status(0, 5, 1, 0)).startswith("rates over 1.0 s: ?")


async def test_top_when_redis_is_unreachable() -> None:
    result = await wsq_worker("top", "--iterations", "1", "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert "Redis failed:" in result.stdout
    assert "(trying again)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "0"], "must be above 0"),
        (["--interval", "nan"], "must be above 0"),
        (["--iterations", "-1"], "must be 0 or more"),
    ],
)
async def test_top_usage_errors(args: list[str], message: str) -> None:
    result = await wsq_worker("top", *args)
    assert result.returncode == 2
    assert message in result.stderr


async def _counts(client: redis.asyncio.Redis, gateway: FakeGateway) -> bool:
    return (await client.zcard(gateway.delayed), await client.xlen(gateway.dead)) == (1, 1)


async def test_status_shows_events_no_worker_has_read_as_lag(
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    redis_url: str,
    key_prefix: str,
    redis_options: list[str],
) -> None:
    """A worker made the group and stopped: what comes next waits, unread."""
    worker = Worker({}, redis_url=redis_url, key_prefix=key_prefix, block_ms=100)
    running = asyncio.create_task(worker.run_async())
    await wait_until_async(lambda: _group_exists(redis_client, gateway), message="the consumer group")
    worker.stop()
    await asyncio.wait_for(running, 30)
    for number in range(3):
        await gateway.message(gateway.new_connection_id(), "echo", number)
    shown = await status(*redis_options)
    [row] = shown["per_shard"]
    assert (row["shard"], row["length"], row["pending"], row["lag"]) == (gateway.shard, 3, 0, 3)
    assert shown["inbound"] == {"length": 3, "pending": 0, "lag": 3, "read": 0}


async def test_status_before_any_worker_counts_every_event_as_lag(
    gateway: FakeGateway, redis_options: list[str]
) -> None:
    await gateway.message(gateway.new_connection_id(), "echo", 1)
    result = await wsq_worker("status", *redis_options)
    assert result.returncode == 0, result.stderr
    assert "workers: no worker has read the inbound stream yet" in result.stdout
    assert "inbound: 1 in the stream, 0 pending, lag 1" in result.stdout
    [row] = (await status(*redis_options))["per_shard"]
    assert (row["shard"], row["group"], row["length"], row["lag"]) == (gateway.shard, False, 1, 1)


async def _group_exists(client: redis.asyncio.Redis, gateway: FakeGateway) -> bool:
    return bool(await client.exists(gateway.inbound)) and bool(await client.xinfo_groups(gateway.inbound))


async def test_status_when_redis_is_unreachable() -> None:
    result = await wsq_worker("status", "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert "wsq-worker status: Redis failed" in result.stderr
    assert "Traceback" not in result.stderr


async def test_status_refuses_another_number_of_shards(
    redis_client: redis.asyncio.Redis, key_prefix: str, redis_options: list[str]
) -> None:
    await redis_client.set(keys_for(key_prefix).shards_key, "8")
    result = await wsq_worker("status", *redis_options)
    assert result.returncode == 1
    assert "uses 8 shards: pass --shards 8" in result.stderr
    assert (await status("--shards", "8", *redis_options))["shards"] == 8


# send


async def test_send_to_a_connection_a_user_a_group_and_everyone(
    gateway: FakeGateway,
    gateway_on: Callable[[str], FakeGateway],
    redis_client: redis.asyncio.Redis,
    key_prefix: str,
    redis_options: list[str],
) -> None:
    other = gateway_on("gw-other")
    ada, ada_elsewhere, bob = (
        gateway.new_connection_id(),
        other.new_connection_id(),
        gateway.new_connection_id(),
    )
    await gateway.register(ada, user_id="ada")
    await other.register(ada_elsewhere, user_id="ada")
    await gateway.register(bob)
    await add_to_index(redis_client, key_prefix, "g", "lobby", ada, bob)

    result = await wsq_worker(
        "send", f"connection:{bob}", "notice", '{"text": "hi", "n": [1, 2]}', *redis_options
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "wrote 1 command\n", "")
    [command] = await gateway.commands()
    assert command.fields["to"] == bob
    assert command.frame == {"action": "notice", "data": {"text": "hi", "n": [1, 2]}}

    result = await wsq_worker("send", "user:ada", "notice", *redis_options)
    assert (result.returncode, result.stdout) == (0, "wrote 2 commands\n"), "one per gateway"
    for fake in (gateway, other):
        assert (await fake.commands())[-1].frame == {"action": "notice", "data": None}

    result = await wsq_worker("send", "group:lobby", "chat", '"hello"', "--exclude", bob, *redis_options)
    assert (result.returncode, result.stdout) == (0, "wrote 1 command\n")
    last = (await gateway.commands())[-1]
    assert (last.frame, last.fields.get("exclude")) == ({"action": "chat", "data": "hello"}, bob)

    result = await wsq_worker("send", "all", "shutdown", "300", *redis_options)
    assert (result.returncode, result.stdout) == (0, "wrote 1 command\n")
    [(_, fields)] = str_entries(await redis_client.xrange(gateway.keys.broadcast_stream))
    assert json.loads(fields["frame"]) == {"action": "shutdown", "data": 300}

    result = await wsq_worker("send", "user:nobody", "notice", *redis_options)
    assert (result.returncode, result.stdout) == (0, "wrote 0 commands\n"), "no gateway holds one"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "a"], "TARGET must be connection:ID, user:ID, group:NAME or all, not 'nope'"),
        (["user:", "a"], "TARGET must be"),
        (["all:x", "a"], "TARGET must be"),
        (["all", "a", "{nope"], "DATA is not JSON"),
        (["all", "a", "--exclude", "gw-test1.AAAAAAAAAAAAAAAAAAAAAA"], "--exclude goes with a group:NAME"),
        (["all", "bad action!"], "action"),
        (["connection:not-an-id", "a"], "connection id"),
        (["all"], "the following arguments are required: ACTION"),
    ],
)
async def test_send_usage_errors(args: list[str], message: str) -> None:
    result = await wsq_worker("send", *args, "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


async def test_send_when_redis_is_unreachable() -> None:
    result = await wsq_worker("send", "all", "a", "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert result.stderr.startswith("wsq-worker send: Redis is unavailable, nothing was sent")
    assert "Traceback" not in result.stderr


# dead show, dead purge


async def test_dead_show_prints_one_dead_letter_in_full(
    three_dead_letters: DeadLetters, redis_options: list[str]
) -> None:
    connection_ids, _, dead_ids = three_dead_letters
    result = await wsq_worker("dead", "show", dead_ids[1], *redis_options)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["id"], shown["action"], shown["connection_id"]) == (
        dead_ids[1],
        "charge",
        connection_ids[1],
    )
    assert (shown["attempts"], shown["error"]) == (1, "Retry raised at attempt 1 of 1")
    assert json.loads(shown["event"]["frame"]) == {"action": "charge", "data": 1, "id": "c1"}
    assert result.stdout.startswith("{\n  "), "indented"

    shard, _ = dead_ids[1].split(":")
    result = await wsq_worker("dead", "show", f"{shard}:1-0", *redis_options)
    assert result.returncode == 1
    assert f"no dead letter {shard}:1-0" in result.stderr


async def test_dead_purge_deletes_dead_letters(
    three_dead_letters: DeadLetters,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    redis_options: list[str],
) -> None:
    _, handled, dead_ids = three_dead_letters
    result = await wsq_worker("dead", "purge", dead_ids[0], *redis_options)
    assert (result.returncode, result.stdout) == (0, "deleted 1 dead letter\n"), result.stderr
    remaining = [
        f"{gateway.shard}:{entry_id}" for entry_id, _ in str_entries(await redis_client.xrange(gateway.dead))
    ]
    assert remaining == dead_ids[1:]

    result = await wsq_worker("dead", "purge", dead_ids[0], dead_ids[1], *redis_options)
    assert (result.returncode, result.stdout) == (1, "deleted 1 dead letter\n")
    assert f"no dead letter {dead_ids[0]}" in result.stderr

    result = await wsq_worker("dead", "purge", "--all", *redis_options)
    assert result.returncode == 2
    assert "add --yes" in result.stderr
    assert await redis_client.xlen(gateway.dead) == 1, "nothing deleted"

    result = await wsq_worker("dead", "purge", "--all", "--yes", *redis_options)
    assert (result.returncode, result.stdout) == (0, "deleted 1 dead letter\n")
    assert await redis_client.xlen(gateway.dead) == 0
    assert handled == [], "deleted, not replayed"

    result = await wsq_worker("dead", "list", *redis_options)
    assert (result.returncode, result.stdout) == (0, "no dead letters\n")
    result = await wsq_worker("dead", "purge", "--all", "--yes", *redis_options)
    assert (result.returncode, result.stdout) == (0, "deleted 0 dead letters\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show"], "the following arguments are required: SHARD:ID"),
        (["show", "nope"], "not a dead letter's SHARD:ID"),
        (["show", "1-0", "2-0"], "unrecognized arguments"),
        (["purge"], "one of the arguments SHARD:ID --all is required"),
        (["purge", "16:1-0"], "SHARD below 16"),
        (["purge", "--all", "0:1-0"], "not allowed with"),
    ],
)
async def test_dead_show_and_purge_usage_errors(args: list[str], message: str) -> None:
    result = await wsq_worker("dead", *args)
    assert result.returncode == 2
    assert message in result.stderr
