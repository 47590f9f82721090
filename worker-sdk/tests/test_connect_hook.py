"""The connect hook against the private Redis: a connect event with hook=1 is answered with an
accept or a refuse command on the connection's node stream (checked against the command schema
by the FakeGateway), decided by on_connect."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis.asyncio
from worker_harness import FakeGateway, StartWorker, str_entries

from wsq_devkit import wait_until_async
from wsq_worker import Context, Refuse

CLAIM_IDLE_MS = 300


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if text in record.getMessage()]


def accept(connection_id: str, user_id: str | None = None) -> dict[str, str]:
    command = {"v": "1", "type": "accept", "target": "connection", "to": connection_id}
    if user_id is not None:
        command["user_id"] = user_id
    return command


def refuse(connection_id: str, code: int, reason: str) -> dict[str, str]:
    return {
        "v": "1",
        "type": "refuse",
        "target": "connection",
        "to": connection_id,
        "code": str(code),
        "reason": reason,
    }


def returning(value: Any) -> Any:
    async def on_connect(ctx: Context) -> Any:
        return value

    return on_connect


def raising(exception: Exception) -> Any:
    async def on_connect(ctx: Context) -> None:
        raise exception

    return on_connect


def sync_returning(value: Any) -> Any:
    def on_connect(ctx: Context) -> Any:  # a plain def, run in the thread pool
        return value

    return on_connect


ACCEPTED: dict[str, str] = {"type": "accept"}
FAILED = {"type": "refuse", "code": "3011", "reason": "connect hook failed"}


@pytest.mark.parametrize(
    ("on_connect", "answer"),
    [
        (None, ACCEPTED),
        (returning(None), ACCEPTED),
        (returning(True), ACCEPTED),
        (returning("alice"), {"type": "accept", "user_id": "alice"}),
        (sync_returning("bob"), {"type": "accept", "user_id": "bob"}),
        (returning(False), {"type": "refuse", "code": "4003", "reason": "refused"}),
        (sync_returning(False), {"type": "refuse", "code": "4003", "reason": "refused"}),
        (raising(Refuse("banned", 4001)), {"type": "refuse", "code": "4001", "reason": "banned"}),
        (raising(Refuse()), {"type": "refuse", "code": "4003", "reason": ""}),
        (raising(RuntimeError("database down")), FAILED),
        (returning(42), FAILED),
        (returning(""), FAILED),
        (returning("\ud800"), FAILED),  # a str, but not UTF-8: no Redis key or field can hold it
        (returning("x" * 257), FAILED),  # the gateway refuses a token's sub past 256 bytes too
        (returning("ann\nbob"), FAILED),  # and control characters
        (returning("é" * 128), {"type": "accept", "user_id": "é" * 128}),  # 256 bytes: the most
    ],
    ids=[
        "no-on_connect",
        "None",
        "True",
        "user-id",
        "sync-user-id",
        "False",
        "sync-False",
        "Refuse",
        "Refuse-defaults",
        "exception",
        "not-a-user-id",
        "empty-user-id",
        "user-id-not-utf-8",
        "user-id-too-long",
        "user-id-control-character",
        "user-id-of-256-bytes",
    ],
)
async def test_hook_answer(
    start_worker: StartWorker, gateway: FakeGateway, on_connect: Any, answer: dict[str, str]
) -> None:
    await start_worker(on_connect=on_connect)
    connection_id = gateway.new_connection_id()
    await gateway.connect(connection_id, user_id="42", hook=True)
    [command] = await gateway.wait_for_commands(1)  # checked against the command schema
    assert command.fields == {"v": "1", "target": "connection", "to": connection_id, **answer}
    await wait_until_async(gateway.backlog_done)
    assert len(await gateway.commands()) == 1


async def test_failing_hook_is_logged_with_its_traceback(
    start_worker: StartWorker, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    await start_worker(on_connect=raising(RuntimeError("database down")))
    connection_id = gateway.new_connection_id()
    await gateway.connect(connection_id, hook=True)
    await gateway.wait_for_commands(1)
    [record] = records(caplog, f"on_connect failed (connection {connection_id}): refusing it")
    assert record.exc_info is not None
    assert "database down" in str(record.exc_info[1])


async def test_hook_sees_the_connection(start_worker: StartWorker, gateway: FakeGateway) -> None:
    seen: list[Context] = []

    async def on_connect(ctx: Context) -> str:
        seen.append(ctx)
        return f"user-of-{ctx.meta.client_addr}"

    await start_worker(on_connect=on_connect)
    connection_id = gateway.new_connection_id()
    await gateway.connect(connection_id, user_id="42", addr="198.51.100.1", hook=True)
    [command] = await gateway.wait_for_commands(1)
    assert command.fields["user_id"] == "user-of-198.51.100.1"
    [ctx] = seen
    assert (ctx.connection_id, ctx.user_id, ctx.action, ctx.id, ctx.attempt) == (
        connection_id,
        "42",
        None,
        None,
        1,
    )


async def test_pushes_from_the_hook_come_before_its_answer(
    start_worker: StartWorker, gateway: FakeGateway
) -> None:
    async def on_connect(ctx: Context) -> None:
        await ctx.send("welcome", 1)

    await start_worker(on_connect=on_connect)
    connection_id = gateway.new_connection_id()
    await gateway.connect(connection_id, hook=True)
    commands = await gateway.wait_for_commands(2)
    assert [command.fields["type"] for command in commands] == ["send", "accept"]


async def test_without_the_hook_the_return_value_is_ignored(
    start_worker: StartWorker, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    async def on_connect(ctx: Context) -> bool:
        calls.append(ctx.connection_id)
        if len(calls) == 2:
            raise Refuse("banned")
        return False

    await start_worker(on_connect=on_connect)
    first, second = gateway.new_connection_id(), gateway.new_connection_id()
    await gateway.connect(first)
    await gateway.connect(second)
    await wait_until_async(gateway.backlog_done)
    assert sorted(calls) == sorted([first, second])
    assert await gateway.commands() == [], "no accept or refuse: the gateway did not ask"
    [record] = records(caplog, "but the gateway does not run the connect hook")
    assert record.levelno == logging.ERROR
    assert record.exc_info is None


async def test_hook_whose_workers_died_is_refused_and_dead_lettered(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    calls: list[int] = []

    async def on_connect(ctx: Context) -> None:
        calls.append(ctx.attempt)

    connection_id = gateway.new_connection_id()
    await gateway.connect(connection_id, hook=True)
    await redis_client.xgroup_create(gateway.inbound, "workers", id="0", mkstream=True)
    await redis_client.xreadgroup("workers", "died", {gateway.inbound: ">"})
    await start_worker(on_connect=on_connect, claim_idle_ms=CLAIM_IDLE_MS, max_attempts=1)
    [command] = await gateway.wait_for_commands(1)
    assert command.fields == refuse(connection_id, 3011, "connect hook failed")
    await wait_until_async(gateway.backlog_done)
    [(_, dead)] = str_entries(await redis_client.xrange(gateway.dead))
    assert (dead["type"], dead["hook"], dead["attempts"]) == ("connect", "1", "1")
    assert calls == []


async def test_hook_claimed_from_a_dead_worker_runs_again(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    async def on_connect(ctx: Context) -> str:
        return f"attempt-{ctx.attempt}"

    connection_id = gateway.new_connection_id()
    await gateway.connect(connection_id, hook=True)
    await redis_client.xgroup_create(gateway.inbound, "workers", id="0", mkstream=True)
    await redis_client.xreadgroup("workers", "died", {gateway.inbound: ">"})
    await start_worker(on_connect=on_connect, claim_idle_ms=CLAIM_IDLE_MS)
    [command] = await gateway.wait_for_commands(1)
    assert command.fields == accept(connection_id, "attempt-2")
