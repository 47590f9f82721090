"""An event is acknowledged only once Redis took all of its writes, against the private Redis.

A write Redis refuses (here: a node stream key holding a string, so ``XADD`` gets
``WRONGTYPE``; in production ``OOM``, ``MOVED``, ``READONLY``...) leaves its event to be run
again, as if its worker had died: a message comes back as its next attempt, and goes to the
dead letters with that error once its attempts are used up. A batch the worker sends again
after losing its connection (Redis may have run it already) writes each reply once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio
from worker_harness import FakeGateway, ReplyCutter, StartWorker, create_node_stream, str_entries

from wsq_devkit import wait_until_async
from wsq_worker import Context, PublishError, Worker

CLAIM_IDLE_MS = 300


async def all_done(gateway: FakeGateway, client: redis.asyncio.Redis) -> bool:
    """Nothing left anywhere: the gateway's inbound partition and its pending entries, and its
    shard's delayed set."""
    return await gateway.backlog_done() and not await client.exists(gateway.delayed)


async def dead_letters(client: redis.asyncio.Redis, gateway: FakeGateway) -> list[dict[str, str]]:
    return [fields for _, fields in str_entries(await client.xrange(gateway.dead))]


async def test_a_refused_reply_runs_the_message_again_as_its_next_attempt(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    attempts: list[int] = []
    key_fixed = asyncio.Event()

    async def echo(ctx: Context, data: Any) -> Any:
        attempts.append(ctx.attempt)
        if ctx.attempt > 1:
            await key_fixed.wait()  # the key is repaired before this attempt replies
        return data

    await redis_client.set(gateway.out, "not a stream")  # every XADD to it: WRONGTYPE
    await start_worker({"echo": echo}, claim_idle_ms=CLAIM_IDLE_MS, max_attempts=3)
    connection_id = gateway.new_connection_id()
    await gateway.message(connection_id, "echo", "hi", id="e1")

    async def ran_again() -> bool:
        return attempts == [1, 2]

    await wait_until_async(ran_again, message="the message to come back as attempt 2")
    await redis_client.delete(gateway.out)
    await create_node_stream(redis_client, gateway.key_prefix, gateway.node)  # as the live gateway keeps it
    key_fixed.set()
    await wait_until_async(lambda: all_done(gateway, redis_client))
    # One reply, after the repair; a later message's reply shows the worker's writes are done.
    await gateway.message(connection_id, "echo", "later", id="e2")
    frames = await gateway.wait_for_frames(2)
    assert frames == [
        {"action": "echo", "data": "hi", "id": "e1"},
        {"action": "echo", "data": "later", "id": "e2"},
    ]
    assert attempts == [1, 2, 1]
    assert await dead_letters(redis_client, gateway) == []


async def test_a_reply_refused_at_every_attempt_is_dead_lettered_with_the_error(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    attempts: list[int] = []

    async def echo(ctx: Context, data: Any) -> Any:
        attempts.append(ctx.attempt)
        return data

    await redis_client.set(gateway.out, "not a stream")
    worker = await start_worker({"echo": echo}, claim_idle_ms=CLAIM_IDLE_MS, max_attempts=2)
    connection_id = gateway.new_connection_id()
    await gateway.message(connection_id, "echo", "hi", id="e1")

    async def dead_lettered() -> list[dict[str, str]]:
        return await dead_letters(redis_client, gateway)

    [dead] = await wait_until_async(dead_lettered, message="a dead letter")
    await wait_until_async(lambda: all_done(gateway, redis_client))
    assert attempts == [1, 2]
    assert dead["error"].startswith("Redis refused a write of attempt 2 of 2: WRONGTYPE")
    assert (dead["attempts"], dead["attempt"], dead["worker"]) == ("2", "2", worker.consumer_name)
    assert (dead["connection_id"], json.loads(dead["frame"])) == (
        connection_id,
        {"action": "echo", "data": "hi", "id": "e1"},
    )
    # The client's handler_failed went to the same broken key: refused too, and only logged.
    assert await redis_client.get(gateway.out) == "not a stream"


async def test_a_publish_error_the_handler_lets_through_retries_the_message(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    """``await ctx.send()`` raising PublishError: a write of the event was not taken. Caught,
    the handler decides; let through, the message runs again (not ``handler_error``)."""
    attempts: list[int] = []

    async def notify(ctx: Context, data: Any) -> str:
        attempts.append(ctx.attempt)
        await ctx.send("progress", 50)
        return "done"

    await redis_client.set(gateway.out, "not a stream")
    await start_worker({"notify": notify}, claim_idle_ms=CLAIM_IDLE_MS, max_attempts=2)
    await gateway.message(gateway.new_connection_id(), "notify", id="n1")

    async def dead_lettered() -> list[dict[str, str]]:
        return await dead_letters(redis_client, gateway)

    [dead] = await wait_until_async(dead_lettered, message="a dead letter")
    await wait_until_async(lambda: all_done(gateway, redis_client))
    assert attempts == [1, 2]
    assert dead["error"].startswith(
        "a write of attempt 2 of 2 failed: PublishError: Redis refused the command"
    )
    assert "WRONGTYPE" in dead["error"]


async def test_a_refused_connect_hook_answer_is_run_again_as_after_a_crash(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    """A connect event can't carry an attempt: its entry stays pending, and is claimed again
    once idle for ``claim_idle_ms``, as when its worker died."""
    attempts: list[int] = []
    key_fixed = asyncio.Event()

    async def on_connect(ctx: Context) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt > 1:
            await key_fixed.wait()
        return "u7"

    await redis_client.set(gateway.out, "not a stream")
    await start_worker(on_connect=on_connect, claim_idle_ms=CLAIM_IDLE_MS, max_attempts=3)
    connection_id = gateway.new_connection_id()
    await gateway.connect(connection_id, hook=True)

    async def ran_again() -> bool:
        return attempts == [1, 2]

    await wait_until_async(ran_again, message="the connect event to be claimed as attempt 2")
    await redis_client.delete(gateway.out)
    await create_node_stream(redis_client, gateway.key_prefix, gateway.node)  # as the live gateway keeps it
    key_fixed.set()
    [command] = await gateway.wait_for_commands(1)
    assert command.fields == {
        "v": "1",
        "type": "accept",
        "target": "connection",
        "to": connection_id,
        "user_id": "u7",
    }
    await wait_until_async(gateway.backlog_done)
    assert len(await gateway.commands()) == 1


async def test_a_batch_sent_again_after_a_lost_connection_writes_each_reply_once(
    reply_cutter: ReplyCutter, gateway: FakeGateway, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    async def echo(ctx: Context, data: Any) -> Any:
        return data

    url = await reply_cutter.start()
    worker = Worker({"echo": echo}, redis_url=url, key_prefix=key_prefix, block_ms=100)
    async with worker:
        connection_id = gateway.new_connection_id()
        # A first reply: Redis knows the worker's script from now on (no NOSCRIPT to hold).
        await gateway.message(connection_id, "echo", "first", id="r0")
        await gateway.wait_for_frames(1)
        reply_cutter.marker = b"unique-reply-7f3a"
        await gateway.message(connection_id, "echo", "unique-reply-7f3a", id="r1")
        await asyncio.wait_for(reply_cutter.held.wait(), 10)

        # Redis ran the batch: the reply is written and the entry acknowledged...
        async def ran() -> bool:
            return await gateway.backlog_done() and len(await gateway.commands()) == 2

        await wait_until_async(ran, message="the batch to have run")
        reply_cutter.cut_held()  # ...but its answer is lost: the worker sends the batch again
        # A later message's reply: every batch before it was written.
        await gateway.message(connection_id, "echo", "later", id="r2")
        frames = await gateway.wait_for_frames(3)
        await wait_until_async(gateway.backlog_done)
    assert frames == [
        {"action": "echo", "data": "first", "id": "r0"},
        {"action": "echo", "data": "unique-reply-7f3a", "id": "r1"},
        {"action": "echo", "data": "later", "id": "r2"},
    ]
    assert len(await gateway.commands()) == 3


async def test_a_push_whose_batch_was_lost_is_not_sent_again(
    reply_cutter: ReplyCutter, gateway: FakeGateway, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """Pushes are at most once: a push whose batch Redis ran but whose answer was lost is not
    sent again; ``ctx.send()`` raises PublishError saying it may have been written."""
    errors: list[str] = []

    async def notify(ctx: Context, data: Any) -> str:
        try:
            await ctx.send("progress", "unique-push-5c1d")
        except PublishError as exc:
            errors.append(str(exc))
        return "done"

    url = await reply_cutter.start()
    async with Worker({"notify": notify}, redis_url=url, key_prefix=key_prefix, block_ms=100):
        reply_cutter.marker = b"unique-push-5c1d"
        await gateway.message(gateway.new_connection_id(), "notify", id="n1")
        await asyncio.wait_for(reply_cutter.held.wait(), 10)

        async def pushed() -> bool:
            return len(await gateway.commands()) == 1

        await wait_until_async(pushed, message="the push to be written")
        reply_cutter.cut_held()
        frames = await gateway.wait_for_frames(2)
        await wait_until_async(gateway.backlog_done)
    assert frames == [
        {"action": "progress", "data": "unique-push-5c1d"},
        {"action": "notify", "data": "done", "id": "n1"},
    ]
    [error] = errors
    assert "it may or may not have been written" in error
