"""``python -m wsq_worker dead list|replay`` as a real process, on dead letters a real Worker made
(``dead show|purge``: test_ops_cli.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime

import pytest
import redis.asyncio
from worker_harness import FakeGateway, Schemas, StartWorker, str_entries, str_reply

from wsq_devkit import free_port, wait_until_async
from wsq_devkit.redis_typing import xadd_fields
from wsq_protocol.keys import keys_for
from wsq_worker import Context, Retry

DeadLetters = tuple[list[str], list[int], list[str]]
"""The ``three_dead_letters`` fixture: their connection ids, the numbers handled after a replay,
the dead letters' names (``SHARD:ID``)."""


async def wsq_worker(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m wsq_worker args...`` in a thread, so the test's worker keeps running."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "wsq_worker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def redis_options(redis_url: str, key_prefix: str) -> list[str]:
    return ["--redis-url", redis_url, "--key-prefix", key_prefix]


@pytest.fixture
async def three_dead_letters(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> DeadLetters:
    """Three messages that went to the dead letters (their handler raised Retry, max_attempts 1)
    and are handled once replayed: (their connection ids, the numbers handled after a replay,
    the dead letters' names). The messages' $error handler_failed are the node stream's first three."""
    count = 3
    handled: list[int] = []
    state = {"broken": True}

    async def charge(ctx: Context, number: int) -> int:
        if state["broken"]:
            raise Retry(delay=0)
        handled.append(number)
        return ctx.attempt

    await start_worker({"charge": charge}, max_attempts=1)
    connection_ids = [gateway.new_connection_id() for _ in range(count)]
    for number, connection_id in enumerate(connection_ids):
        await gateway.message(connection_id, "charge", number, id=f"c{number}")

    async def all_dead() -> list[str] | None:
        entries = str_entries(await redis_client.xrange(gateway.dead))
        return [f"{gateway.shard}:{entry_id}" for entry_id, _ in entries] if len(entries) == count else None

    dead_ids = await wait_until_async(all_dead)
    await gateway.wait_for_commands(count)  # their $error handler_failed
    state["broken"] = False
    return connection_ids, handled, dead_ids


async def test_dead_list(three_dead_letters: DeadLetters, redis_options: list[str]) -> None:
    connection_ids, _, dead_ids = three_dead_letters
    result = await wsq_worker("dead", "list", *redis_options)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line, entry_id, connection_id in zip(lines, dead_ids, connection_ids, strict=True):
        entry, action, connection, attempts, failed_at, error = line.split("  ")
        assert (entry, action, connection, attempts) == (entry_id, "charge", connection_id, "attempts=1")
        assert datetime.fromisoformat(failed_at.removeprefix("failed_at=")).tzinfo is not None
        assert error == "error=Retry raised at attempt 1 of 1"

    result = await wsq_worker("dead", "list", "--count", "2", "--json", *redis_options)
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert (first["id"], second["id"]) == (dead_ids[0], dead_ids[1])
    assert first["action"] == "charge"
    assert first["connection_id"] == connection_ids[0]
    assert first["attempts"] == 1
    assert first["error"] == "Retry raised at attempt 1 of 1"
    assert isinstance(first["failed_at"], int)
    assert first["worker"]
    assert json.loads(first["event"]["frame"]) == {"action": "charge", "data": 0, "id": "c0"}
    assert "and 1 more" in result.stderr


async def test_dead_list_of_nothing(redis_options: list[str]) -> None:
    result = await wsq_worker("dead", "list", *redis_options)
    assert (result.returncode, result.stdout) == (0, "no dead letters\n")
    result = await wsq_worker("dead", "list", "--json", *redis_options)
    assert (result.returncode, result.stdout) == (0, ""), "no object, for scripts"


async def test_dead_replay_runs_the_messages_again(
    three_dead_letters: DeadLetters,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    redis_options: list[str],
) -> None:
    _, handled, dead_ids = three_dead_letters

    result = await wsq_worker("dead", "replay", dead_ids[1], *redis_options)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "replayed 1 dead letter into the inbound stream"
    assert result.stderr == "", "no progress bar when stderr is not a terminal"
    frames = await gateway.wait_for_frames(4)
    assert frames[3] == {"action": "charge", "data": 1, "id": "c1"}, "attempt 1 again"
    assert handled == [1]
    remaining = [
        f"{gateway.shard}:{entry_id}" for entry_id, _ in str_entries(await redis_client.xrange(gateway.dead))
    ]
    assert remaining == [dead_ids[0], dead_ids[2]]

    result = await wsq_worker("dead", "replay", dead_ids[1], *redis_options)
    assert result.returncode == 1
    assert f"no dead letter {dead_ids[1]}" in result.stderr

    result = await wsq_worker("dead", "replay", "--all", "--progress", *redis_options)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "replayed 2 dead letters into the inbound stream"
    # The bar is redrawn in place after each \r (which text mode reads as a line end).
    drawn = [line for line in result.stderr.splitlines() if line]
    assert drawn[-1] == f"replaying 2/2 [{'#' * 30}] 100%", result.stderr
    assert all(line.startswith("replaying ") for line in drawn), result.stderr
    await gateway.wait_for_frames(6)
    await wait_until_async(gateway.backlog_done)
    assert sorted(handled) == [0, 1, 2]
    assert await redis_client.xlen(gateway.dead) == 0


async def test_replayed_event_is_the_original_one(
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    redis_options: list[str],
    schemas: Schemas,
) -> None:
    """The dead letter's own fields and ``attempt`` are dropped; the event's are kept."""
    event = gateway.message_event(gateway.new_connection_id(), "charge", "é", user_id="42", attempt=3)
    extra = {"error": "boom", "attempts": "3", "failed_at": "1795852800999", "worker": "w-1"}
    entry_id = str_reply(await redis_client.xadd(gateway.dead, xadd_fields(event | extra)))
    result = await wsq_worker("dead", "replay", f"{gateway.shard}:{entry_id}", *redis_options)
    assert result.returncode == 0, result.stderr
    [(_, replayed)] = str_entries(await redis_client.xrange(gateway.inbound))
    del event["attempt"]
    assert replayed == event
    assert list(replayed) == list(event), "in the same order"
    schemas.check("event", replayed)


async def test_concurrent_replays_move_each_dead_letter_once(
    gateway: FakeGateway, redis_client: redis.asyncio.Redis, redis_options: list[str]
) -> None:
    extra = {"error": "boom", "attempts": "3", "failed_at": "1", "worker": "w"}
    for number in range(50):
        fields = gateway.message_event(gateway.new_connection_id(), "a", number) | extra
        await redis_client.xadd(gateway.dead, xadd_fields(fields))
    results = await asyncio.gather(*(wsq_worker("dead", "replay", "--all", *redis_options) for _ in range(3)))
    assert all(result.returncode == 0 for result in results), [result.stderr for result in results]
    replayed = [int(result.stdout.split()[1]) for result in results]
    assert sum(replayed) == 50
    entries = str_entries(await redis_client.xrange(gateway.inbound))
    assert sorted(json.loads(fields["frame"])["data"] for _, fields in entries) == list(range(50))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay"], "one of the arguments SHARD:ID --all is required"),
        (["replay", "--all", "1-0"], "not allowed with"),
        (["replay", "nope"], "not a dead letter's SHARD:ID"),
        (["replay", "1764316800123-0"], "not a dead letter's SHARD:ID"),
        (["replay", "16:1764316800123-0"], "SHARD below 16"),
        (["replay", "--shards", "4", "4:1-0"], "SHARD below 4"),
        (["list", "--shards", "0"], "must be 1 to 1024"),
        ([], "required: {list,show,replay,purge}"),
        (["list", "--count", "0"], "must be at least 1"),
    ],
)
async def test_dead_usage_errors(args: list[str], message: str) -> None:
    result = await wsq_worker("dead", *args)
    assert result.returncode == 2
    assert message in result.stderr


async def test_dead_when_redis_is_unreachable() -> None:
    result = await wsq_worker("dead", "list", "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert "Redis failed" in result.stderr
    assert "Traceback" not in result.stderr


async def test_dead_letters_of_every_shard_are_listed_together_and_replayed_to_their_own(
    gateway_on: Callable[[str], FakeGateway], redis_client: redis.asyncio.Redis, redis_options: list[str]
) -> None:
    """Each shard keeps its dead letters; list shows them all, oldest first (by id: the Redis time
    they failed at), named SHARD:ID; replay moves each back into its own shard's partition."""
    first, second = gateway_on("gw-f"), gateway_on("gw-g")
    assert first.shard != second.shard
    extra = {"error": "boom", "attempts": "3", "failed_at": "1", "worker": "w"}
    names = []
    for number, (gateway, entry_id) in enumerate(
        [(second, "1000-0"), (first, "2000-0"), (second, "3000-0"), (first, "3000-0")]
    ):
        fields = gateway.message_event(gateway.new_connection_id(), "a", number) | extra
        await redis_client.xadd(gateway.dead, xadd_fields(fields), id=entry_id)
        names.append(f"{gateway.shard}:{entry_id}")
    result = await wsq_worker("dead", "list", *redis_options)
    assert result.returncode == 0, result.stderr
    shown = [line.split("  ")[0] for line in result.stdout.splitlines()]
    by_time = sorted(names, key=lambda name: (int(name.split(":")[1].split("-")[0]), int(name.split(":")[0])))
    assert shown == by_time
    result = await wsq_worker("dead", "list", "--count", "1", "--json", *redis_options)
    [oldest] = [json.loads(line) for line in result.stdout.splitlines()]
    assert (oldest["id"], oldest["shard"]) == (f"{second.shard}:1000-0", second.shard)
    assert "and 3 more" in result.stderr

    result = await wsq_worker("dead", "replay", f"{first.shard}:2000-0", *redis_options)
    assert (result.returncode, result.stdout.strip()) == (0, "replayed 1 dead letter into the inbound stream")
    result = await wsq_worker("dead", "replay", f"{second.shard}:2000-0", *redis_options)
    assert result.returncode == 1, "that id is in the other shard"
    assert f"no dead letter {second.shard}:2000-0" in result.stderr
    result = await wsq_worker("dead", "replay", "--all", *redis_options)
    assert (result.returncode, result.stdout.strip()) == (
        0,
        "replayed 3 dead letters into the inbound stream",
    )
    for gateway, numbers in ((first, [1, 3]), (second, [0, 2])):
        assert await redis_client.xlen(gateway.dead) == 0
        entries = str_entries(await redis_client.xrange(gateway.inbound))
        assert sorted(json.loads(fields["frame"])["data"] for _, fields in entries) == numbers


async def test_dead_refuses_another_number_of_shards_than_the_deployments(
    redis_client: redis.asyncio.Redis, key_prefix: str, redis_options: list[str]
) -> None:
    await redis_client.set(keys_for(key_prefix).shards_key, "8")
    result = await wsq_worker("dead", "list", *redis_options)
    assert result.returncode == 1
    assert "uses 8 shards: pass --shards 8" in result.stderr
    result = await wsq_worker("dead", "list", "--shards", "8", *redis_options)
    assert (result.returncode, result.stdout) == (0, "no dead letters\n"), result.stderr
