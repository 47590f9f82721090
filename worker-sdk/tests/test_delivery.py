"""At least once, against the private Redis: claims after a worker died, keep-alive of slow
handlers, Retry, the delayed set, max_attempts and the dead letters. Nothing is mocked: a "dead"
worker is a consumer that read an entry and never acknowledged it, or a Worker cancelled hard."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from typing import Any, cast

import pytest
import redis.asyncio
from worker_harness import FakeGateway, Schemas, StartWorker, StrEntry, str_entries

from wsq_devkit import wait_until_async
from wsq_worker import Context, Retry, Worker
from wsq_worker.delivery import delayed_member

CLAIM_IDLE_MS = 300


def reply(action: str, data: Any, frame_id: str) -> dict[str, Any]:
    return {"action": action, "data": data, "id": frame_id}


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if text in record.getMessage()]


async def read_as_dead_consumer(client: redis.asyncio.Redis, inbound: str, consumer: str = "died") -> str:
    """A worker that took the next entry and died before acknowledging it; its entry id."""
    await client.xgroup_create(inbound, "workers", id="0", mkstream=True)
    reply = await client.xreadgroup("workers", consumer, {inbound: ">"}, count=1)
    [[_, [(entry_id, _)]]] = cast("list[tuple[str, list[StrEntry]]]", reply)
    return str(entry_id)


async def delivered(client: redis.asyncio.Redis, inbound: str, entry_id: str) -> tuple[str, int]:
    """(owner, times delivered) of a pending entry."""
    [pending] = await client.xpending_range(inbound, "workers", entry_id, entry_id, 1)
    return cast(str, pending["consumer"]), cast(int, pending["times_delivered"])


async def all_done(gateway: FakeGateway, client: redis.asyncio.Redis) -> bool:
    """Nothing left anywhere: the gateway's inbound partition and its pending entries, and its
    shard's delayed set."""
    return await gateway.backlog_done() and not await client.exists(gateway.delayed)


async def dead_letters(client: redis.asyncio.Redis, gateway: FakeGateway) -> list[tuple[str, dict[str, str]]]:
    entries: list[tuple[str, dict[str, str]]] = str_entries(await client.xrange(gateway.dead))
    return entries


# Claims: a worker died mid-message.


async def test_entry_of_a_dead_worker_is_claimed_and_run_again(
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts: list[int] = []

    async def charge(ctx: Context, data: Any) -> dict[str, Any]:
        attempts.append(ctx.attempt)
        return {"charged": data, "attempt": ctx.attempt}

    connection_id = gateway.new_connection_id()
    appended = await gateway.message(connection_id, "charge", 5, id="c1")
    entry_id = await read_as_dead_consumer(redis_client, gateway.inbound)
    assert entry_id == appended
    await start_worker({"charge": charge}, claim_idle_ms=CLAIM_IDLE_MS)
    [command] = await gateway.wait_for_commands(1)
    assert command.frame == reply("charge", {"charged": 5, "attempt": 2}, "c1")
    # Not before the entry was idle for claim_idle_ms (both times on the Redis server's clock).
    assert command.millis - int(entry_id.split("-")[0]) >= CLAIM_IDLE_MS
    await wait_until_async(gateway.backlog_done)
    assert attempts == [2]
    assert len(await gateway.commands()) == 1, "exactly one reply"
    assert records(caplog, "claimed 1 entries idle for more than 300 ms")


async def test_worker_cancelled_hard_mid_message_loses_nothing(
    redis_url: str,
    key_prefix: str,
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
) -> None:
    runs: list[tuple[str, int]] = []
    started = asyncio.Event()

    async def first_never_finishes(ctx: Context, data: Any) -> None:
        runs.append(("first", ctx.attempt))
        started.set()
        await asyncio.Event().wait()  # the work in flight when the worker dies

    async def second(ctx: Context, data: Any) -> int:
        runs.append(("second", ctx.attempt))
        return ctx.attempt

    first = Worker(
        {"job": first_never_finishes},
        redis_url=redis_url,
        key_prefix=key_prefix,
        block_ms=100,
        consumer_name="first",
        claim_idle_ms=CLAIM_IDLE_MS,
    )
    task = asyncio.create_task(first.run_async())
    entry_id = await gateway.message(gateway.new_connection_id(), "job", id="j1")
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()  # no stop(), no shutdown_timeout: the handler is cancelled, nothing is acknowledged
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await delivered(redis_client, gateway.inbound, entry_id) == ("first", 1)

    await start_worker({"job": second}, consumer_name="second", claim_idle_ms=CLAIM_IDLE_MS)
    assert await gateway.wait_for_frames(1) == [reply("job", 2, "j1")]
    await wait_until_async(gateway.backlog_done)
    assert runs == [("first", 1), ("second", 2)]
    assert len(await gateway.commands()) == 1


async def test_attempt_adds_redeliveries_to_the_events_own(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    """A retried message (attempt 2 in the event) whose worker died: attempt 3."""

    async def job(ctx: Context, data: Any) -> int:
        return ctx.attempt

    await gateway.message(gateway.new_connection_id(), "job", id="j1", attempt=2)
    await read_as_dead_consumer(redis_client, gateway.inbound)
    await start_worker({"job": job}, claim_idle_ms=CLAIM_IDLE_MS, max_attempts=3)
    assert await gateway.wait_for_frames(1) == [reply("job", 3, "j1")]


async def test_keep_alive_protects_a_slow_handler(
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler taking 3 x claim_idle_ms is not claimed by the other, idle, worker."""
    runs: list[tuple[str, int]] = []

    def slow_handler(name: str) -> Any:
        async def slow(ctx: Context, data: Any) -> int:
            runs.append((name, ctx.attempt))
            await asyncio.sleep(3 * CLAIM_IDLE_MS / 1000)  # the slow work itself
            return ctx.attempt

        return slow

    await start_worker({"slow": slow_handler("one")}, consumer_name="one", claim_idle_ms=CLAIM_IDLE_MS)
    await start_worker({"slow": slow_handler("two")}, consumer_name="two", claim_idle_ms=CLAIM_IDLE_MS)
    await gateway.message(gateway.new_connection_id(), "slow", id="s1")
    assert await gateway.wait_for_frames(1) == [reply("slow", 1, "s1")]
    await wait_until_async(gateway.backlog_done)
    assert len(runs) == 1, runs
    assert runs[0][1] == 1
    assert not records(caplog, "claimed"), "never claimed, so delivered once"


async def test_an_entry_claimed_from_a_live_worker_is_left_to_its_new_owner(
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """This worker was presumed dead: its keep-alive does not take the entry back, and its own
    claimer does not start a handler for an entry it is still running."""
    release = threading.Event()
    runs: list[int] = []

    def gated(ctx: Context, data: Any) -> int:
        runs.append(ctx.attempt)
        release.wait(timeout=20)
        return ctx.attempt

    await start_worker({"gated": gated}, consumer_name="alive", claim_idle_ms=CLAIM_IDLE_MS)
    entry_id = await gateway.message(gateway.new_connection_id(), "gated", id="g1")

    async def running() -> bool:
        return bool(runs)

    await wait_until_async(running)
    await redis_client.xclaim(gateway.inbound, "workers", "thief", 0, [entry_id])

    async def lost_logged() -> bool:
        return bool(records(caplog, f"inbound entry {entry_id} was claimed by another worker"))

    await wait_until_async(lost_logged)
    release.set()
    assert await gateway.wait_for_frames(1) == [reply("gated", 1, "g1")]
    await wait_until_async(gateway.backlog_done)
    assert runs == [1], "its handler ran once here"


# Retry.


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_retry_runs_the_message_again_after_the_delay(
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    kind: str,
) -> None:
    runs: list[tuple[int, float]] = []

    def record(ctx: Context, data: Any) -> int:
        runs.append((ctx.attempt, time.monotonic()))
        if ctx.attempt == 1:
            raise Retry(delay=0.2)
        return ctx.attempt

    async def charge_async(ctx: Context, data: Any) -> int:
        return record(ctx, data)

    await start_worker({"charge": charge_async if kind == "async" else record})
    await gateway.message(gateway.new_connection_id(), "charge", {"amount": 5}, id="c1")
    assert await gateway.wait_for_frames(1) == [reply("charge", 2, "c1")]
    await wait_until_async(lambda: all_done(gateway, redis_client))
    assert [attempt for attempt, _ in runs] == [1, 2]
    assert runs[1][1] - runs[0][1] >= 0.2
    assert len(await gateway.commands()) == 1, "no answer for the attempt that asked for a retry"


async def test_retry_waits_in_the_delayed_set_as_the_next_attempt(
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    schemas: Schemas,
) -> None:
    async def later(ctx: Context, data: Any) -> None:
        raise Retry(delay=3600)

    await start_worker({"later": later})
    connection_id = gateway.new_connection_id()
    entry_id = await gateway.message(connection_id, "later", [1, "é"], id="l1")

    async def delayed() -> list[tuple[str, float]]:
        return cast(
            "list[tuple[str, float]]",
            await redis_client.zrange(gateway.delayed, 0, -1, withscores=True),
        )

    [(member, due_ms)] = await wait_until_async(delayed)
    await wait_until_async(gateway.backlog_done)  # acknowledged and deleted from the inbound stream
    stored = json.loads(member)
    assert stored["retry_of"] == entry_id
    fields = stored["fields"]
    assert fields["attempt"] == "2"
    assert fields["connection_id"] == connection_id
    assert json.loads(fields["frame"]) == {"action": "later", "data": [1, "é"], "id": "l1"}
    schemas.check("event", fields)
    seconds, micros = await redis_client.time()
    now_ms = seconds * 1000 + micros // 1000
    assert 3590_000 < due_ms - now_ms <= 3600_000, "due in an hour, on the Redis server's clock"
    assert await gateway.commands() == []


async def test_two_retries_of_equal_messages_do_not_collide(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    async def later(ctx: Context, data: Any) -> None:
        raise Retry(delay=3600)

    await start_worker({"later": later})
    connection_id = gateway.new_connection_id()
    for _ in range(2):
        await gateway.message(connection_id, "later", "same", id="same")
    await wait_until_async(gateway.backlog_done)
    assert await redis_client.zcard(gateway.delayed) == 2


@pytest.mark.parametrize("frame_id", ["c1", None])
async def test_retries_past_max_attempts_go_to_the_dead_letters(
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
    schemas: Schemas,
    frame_id: str | None,
) -> None:
    attempts: list[int] = []

    async def declined(ctx: Context, data: Any) -> None:
        attempts.append(ctx.attempt)
        try:
            raise ValueError("card declined")
        except ValueError as exc:
            raise Retry(delay=0) from exc

    worker = await start_worker({"charge": declined}, max_attempts=3)
    connection_id = gateway.new_connection_id()
    await gateway.message(connection_id, "charge", 5, id=frame_id)
    [frame] = await gateway.wait_for_frames(1)
    expected: dict[str, Any] = {
        "action": "$error",
        "data": {"code": "handler_failed", "message": "the message failed after 3 attempts"},
    }
    if frame_id is not None:
        expected["id"] = frame_id
    assert frame == expected
    await wait_until_async(lambda: all_done(gateway, redis_client))
    assert attempts == [1, 2, 3]
    [(_, dead)] = await dead_letters(redis_client, gateway)
    assert dead["error"] == "Retry raised at attempt 3 of 3, after ValueError: card declined"
    assert dead["attempts"] == "3"
    assert dead["worker"] == worker.consumer_name
    assert abs(int(dead["failed_at"]) - time.time() * 1000) < 60_000
    event = {
        name: value
        for name, value in dead.items()
        if name not in ("error", "attempts", "failed_at", "worker")
    }
    schemas.check("event", event)
    assert (event["connection_id"], event["attempt"], json.loads(event["frame"])["data"]) == (
        connection_id,
        "3",
        5,
    )
    assert records(caplog, 'action "charge"')[-1].levelno == logging.ERROR
    assert len(await gateway.commands()) == 1


async def test_the_dead_letters_keep_the_newest_max_dead_letters(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    """A storm of failing messages cannot fill Redis: the dead letters are capped (about:
    Redis trims whole blocks of up to 100 entries), and the oldest are the ones dropped."""

    async def declined(ctx: Context, data: Any) -> None:
        raise Retry(delay=0)

    await start_worker({"charge": declined}, max_attempts=1, max_dead_letters=10)
    connection_id = gateway.new_connection_id()
    for n in range(300):
        await gateway.message(connection_id, "charge", n)
    await wait_until_async(lambda: all_done(gateway, redis_client), timeout=30)
    await gateway.wait_for_frames(300)  # every client was told (handler_failed)
    kept = {json.loads(fields["frame"])["data"] for _, fields in await dead_letters(redis_client, gateway)}
    assert 10 <= len(kept) <= 10 + 100
    assert 299 in kept, "the newest is kept"
    assert 0 not in kept, "the oldest went first"


async def test_claimed_entry_past_max_attempts_goes_to_the_dead_letters_unrun(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    runs: list[int] = []

    async def job(ctx: Context, data: Any) -> None:
        runs.append(ctx.attempt)

    await gateway.message(gateway.new_connection_id(), "job", id="j1")
    await read_as_dead_consumer(redis_client, gateway.inbound)
    await start_worker({"job": job}, claim_idle_ms=CLAIM_IDLE_MS, max_attempts=1)
    assert await gateway.wait_for_frames(1) == [
        {
            "action": "$error",
            "data": {"code": "handler_failed", "message": "the message failed after 1 attempt"},
            "id": "j1",
        }
    ]
    await wait_until_async(gateway.backlog_done)
    [(_, dead)] = await dead_letters(redis_client, gateway)
    assert dead["error"] == "the worker running attempt 1 died or stopped before finishing it"
    assert dead["attempts"] == "1"
    assert runs == []


async def test_plain_exception_is_answered_once_and_not_retried(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    runs: list[int] = []

    async def broken(ctx: Context, data: Any) -> None:
        runs.append(ctx.attempt)
        raise RuntimeError("bug")

    await start_worker({"broken": broken}, claim_idle_ms=CLAIM_IDLE_MS)
    await gateway.message(gateway.new_connection_id(), "broken", id="b1")
    [frame] = await gateway.wait_for_frames(1)
    assert frame["data"]["code"] == "handler_error"
    await wait_until_async(lambda: all_done(gateway, redis_client))
    assert runs == [1]
    assert await dead_letters(redis_client, gateway) == []


async def test_retry_from_on_disconnect_is_an_error_not_a_retry(
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def on_disconnect(ctx: Context) -> None:
        raise Retry(delay=0)

    await start_worker(on_disconnect=on_disconnect)
    connection_id = gateway.new_connection_id()
    await gateway.disconnect(connection_id)
    await wait_until_async(lambda: all_done(gateway, redis_client))
    assert records(caplog, f"on_disconnect failed (connection {connection_id})")


# The delayed set.


async def test_due_retries_move_exactly_once_with_two_workers(
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: collections.Counter[int] = collections.Counter()
    attempts: set[int] = set()

    async def job(ctx: Context, number: int) -> None:
        handled[number] += 1
        attempts.add(ctx.attempt)

    connection_id = gateway.new_connection_id()
    members: dict[str, float] = {}
    for number in range(300):
        fields = gateway.message_event(connection_id, "job", number)
        members[delayed_member(f"1-{number}", fields, 2)] = 0  # due long ago
    members["not json"] = 0
    await redis_client.zadd(gateway.delayed, members)
    await start_worker({"job": job}, consumer_name="one", concurrency=20)
    await start_worker({"job": job}, consumer_name="two", concurrency=20)

    async def all_handled() -> bool:
        return sum(handled.values()) >= 300 and await all_done(gateway, redis_client)

    await wait_until_async(all_handled, timeout=30)
    assert set(handled) == set(range(300))
    assert set(handled.values()) == {1}, "each moved and handled exactly once"
    assert attempts == {2}
    [record] = records(caplog, "dropped a malformed member")
    assert "not json" in record.getMessage()


async def test_retries_not_yet_due_stay_in_the_delayed_set(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    connection_id = gateway.new_connection_id()
    seconds, _ = await redis_client.time()
    now = gateway.message_event(connection_id, "job", id="now")
    later = gateway.message_event(connection_id, "job", id="later")
    await redis_client.zadd(
        gateway.delayed,
        {delayed_member("1-0", now, 2): 0, delayed_member("1-1", later, 2): (seconds + 3600) * 1000},
    )

    async def job(ctx: Context, data: Any) -> None:
        return None

    await start_worker({"job": job})
    assert await gateway.wait_for_frames(1) == [reply("job", None, "now")]
    await wait_until_async(gateway.backlog_done)
    [member] = cast("list[str]", await redis_client.zrange(gateway.delayed, 0, -1))
    assert json.loads(member)["retry_of"] == "1-1"


# Settings.


def test_delivery_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (Worker().claim_idle_ms, Worker().max_attempts) == (15000, 3)
    monkeypatch.setenv("WSQ_CLAIM_IDLE_MS", "2500")
    monkeypatch.setenv("WSQ_MAX_ATTEMPTS", "5")
    assert (Worker().claim_idle_ms, Worker().max_attempts) == (2500, 5)
    assert (Worker(claim_idle_ms=10, max_attempts=1).claim_idle_ms, Worker(max_attempts=1).max_attempts) == (
        10,
        1,
    )
    assert Worker().max_dead_letters == 10_000
    monkeypatch.setenv("WSQ_MAX_DEAD_LETTERS", "50")
    assert (Worker().max_dead_letters, Worker(max_dead_letters=0).max_dead_letters) == (50, 0)
    monkeypatch.setenv("WSQ_MAX_ATTEMPTS", "three")
    with pytest.raises(ValueError, match="WSQ_MAX_ATTEMPTS must be a whole number"):
        Worker()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"claim_idle_ms": 0}, "claim_idle_ms must be at least 1"),
        ({"max_attempts": 0}, "max_attempts must be 1-9999"),
        ({"max_attempts": 10000}, "max_attempts must be 1-9999"),
        ({"max_dead_letters": -1}, "max_dead_letters must be 0"),
    ],
)
async def test_invalid_delivery_settings(options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await Worker(**options).run_async()  # type: ignore[arg-type]
