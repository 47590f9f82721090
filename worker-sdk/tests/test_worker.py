"""Worker against the private Redis: events appended as the gateway does, commands read back."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
from worker_harness import FakeGateway, StartWorker, add_to_index, str_reply

from wsq_devkit import RedisServer, wait_until_async
from wsq_devkit.redis_typing import xadd_fields
from wsq_protocol.keys import keys_for
from wsq_worker import AsyncPublisher, Context, LifecycleHandler, Worker

NODE = "gw-test1"


def reply(action: str, data: Any, frame_id: str) -> dict[str, Any]:
    return {"action": action, "data": data, "id": frame_id}


def error(code: str, message: str, frame_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"action": "$error", "data": {"code": code, "message": message}}
    if frame_id is not None:
        frame["id"] = frame_id
    return frame


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if text in record.getMessage()]


async def echo(ctx: Context, data: Any) -> Any:
    return data


# Replies and errors.


async def test_request_gets_its_reply(start_worker: StartWorker, gateway: FakeGateway) -> None:
    async def chat_text(ctx: Context, data: Any) -> Any:
        return {"stored": True, "got": data}

    await start_worker({"chat_text": chat_text})
    connection_id = gateway.new_connection_id()
    await gateway.message(connection_id, "chat_text", {"text": "hello"}, id="req-1")
    [command] = await gateway.wait_for_commands(1)
    assert command.fields["target"] == "connection"
    assert command.fields["to"] == connection_id
    assert command.frame == reply("chat_text", {"stored": True, "got": {"text": "hello"}}, "req-1")


async def test_a_reply_to_a_connection_of_a_gone_gateway_does_not_create_its_stream(
    start_worker: StartWorker,
    gateway_on: Callable[[str], FakeGateway],
    redis_client: redis.asyncio.Redis,
) -> None:
    async def answer(ctx: Context, data: Any) -> str:
        await ctx.send("pushed", 1)
        return "answered"

    gone = gateway_on("gw-gone")  # it wrote this event, then died and was reaped: no stream
    event = gone.message_event(gone.new_connection_id(), "answer", id="r")
    await redis_client.xadd(gone.inbound, xadd_fields(event))
    await start_worker({"answer": answer})
    await wait_until_async(gone.backlog_done, message="the event handled")
    assert not await redis_client.exists(gone.out)


async def test_reply_is_null_when_the_handler_returns_none(
    start_worker: StartWorker, gateway: FakeGateway
) -> None:
    async def nothing(ctx: Context, data: Any) -> None:
        return None

    await start_worker({"nothing": nothing})
    await gateway.message(gateway.new_connection_id(), "nothing", id="req-2")
    assert await gateway.wait_for_frames(1) == [reply("nothing", None, "req-2")]


async def test_no_reply_without_id(start_worker: StartWorker, gateway: FakeGateway) -> None:
    handled = []

    async def chat_text(ctx: Context, data: Any) -> str:
        handled.append(data)
        return "ignored"

    await start_worker({"chat_text": chat_text})
    await gateway.message(gateway.new_connection_id(), "chat_text", "hi")
    await wait_until_async(gateway.backlog_done)  # acked after its writes: nothing more will come
    assert handled == ["hi"]
    assert await gateway.commands() == []


@pytest.mark.parametrize("frame_id", ["req-3", None])
async def test_unknown_action_gets_an_error(
    start_worker: StartWorker, gateway: FakeGateway, frame_id: str | None
) -> None:
    await start_worker({"chat_text": echo})
    await gateway.message(gateway.new_connection_id(), "nope", id=frame_id)
    assert await gateway.wait_for_frames(1) == [
        error("unknown_action", 'no handler for action "nope"', frame_id)
    ]


async def test_default_handler_gets_every_other_action(
    start_worker: StartWorker, gateway: FakeGateway
) -> None:
    async def default(ctx: Context, data: Any) -> Any:
        return [ctx.action, data]

    await start_worker({"known": echo}, default=default)
    connection_id = gateway.new_connection_id()
    await gateway.message(connection_id, "other.thing", 1, id="a")
    await gateway.message(connection_id, "known", 2, id="b")
    frames = await gateway.wait_for_frames(2)
    assert sorted(frames, key=lambda frame: frame["id"]) == [
        reply("other.thing", ["other.thing", 1], "a"),
        reply("known", 2, "b"),
    ]


@pytest.mark.parametrize("frame_id", ["req-4", None])
async def test_failing_handler_gets_a_handler_error(
    start_worker: StartWorker, gateway: FakeGateway, caplog: pytest.LogCaptureFixture, frame_id: str | None
) -> None:
    async def broken(ctx: Context, data: Any) -> None:
        raise RuntimeError("secret details")

    await start_worker({"broken": broken})
    await gateway.message(gateway.new_connection_id(), "broken", id=frame_id)
    assert await gateway.wait_for_frames(1) == [error("handler_error", "the handler failed", frame_id)]
    [record] = records(caplog, 'handler of action "broken" failed')
    assert record.name.startswith("wsq_worker")
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert "secret details" in str(record.exc_info[1])


# A set is not JSON; a lone surrogate is, as text, but is not UTF-8, which frames are.
@pytest.mark.parametrize("value", [{1, 2}, "\ud800"], ids=["set", "lone-surrogate"])
async def test_return_value_json_cannot_encode_gets_a_handler_error(
    start_worker: StartWorker, gateway: FakeGateway, caplog: pytest.LogCaptureFixture, value: Any
) -> None:
    async def returns_a_set(ctx: Context, data: Any) -> Any:
        return value

    await start_worker({"bad": returns_a_set})
    await gateway.message(gateway.new_connection_id(), "bad", id="r")
    assert await gateway.wait_for_frames(1) == [error("handler_error", "the handler failed", "r")]
    assert records(caplog, "returned a value JSON can't encode")


async def test_sync_handler(start_worker: StartWorker, gateway: FakeGateway) -> None:
    threads = []

    def blocking(ctx: Context, data: Any) -> Any:
        threads.append(threading.current_thread())
        return data * 2

    await start_worker({"double": blocking})
    await gateway.message(gateway.new_connection_id(), "double", 21, id="r")
    assert await gateway.wait_for_frames(1) == [reply("double", 42, "r")]
    assert threads[0] is not threading.main_thread(), "plain def handlers run in the thread pool"


async def test_callable_object_with_async_call_is_awaited(
    start_worker: StartWorker, gateway: FakeGateway
) -> None:
    class Handler:
        async def __call__(self, ctx: Context, data: Any) -> Any:
            return threading.current_thread() is threading.main_thread()

    await start_worker({"on_loop": Handler()})
    await gateway.message(gateway.new_connection_id(), "on_loop", id="r")
    assert await gateway.wait_for_frames(1) == [reply("on_loop", True, "r")]


# The handler's context.


async def test_context_of_a_message(start_worker: StartWorker, gateway: FakeGateway) -> None:
    contexts: list[Context] = []

    async def keep(ctx: Context, data: Any) -> None:
        contexts.append(ctx)

    await start_worker({"keep": keep})
    connection_id = gateway.new_connection_id()
    await gateway.message(connection_id, "keep", id="r1", user_id="42")
    await gateway.wait_for_commands(1)
    [ctx] = contexts
    assert (ctx.connection_id, ctx.user_id, ctx.action, ctx.id, ctx.attempt) == (
        connection_id,
        "42",
        "keep",
        "r1",
        1,
    )
    assert ctx.meta.node == NODE
    assert ctx.meta.client_addr == "203.0.113.7"
    assert ctx.meta.received_at == datetime(2026, 11, 28, 8, 0, 0, 123000, tzinfo=UTC)  # ts 1795852800123
    assert ctx.meta.close_code is None
    assert isinstance(ctx.publisher, AsyncPublisher)


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_on_connect_and_on_disconnect(
    start_worker: StartWorker, gateway: FakeGateway, kind: str
) -> None:
    seen: list[tuple[str, Context]] = []
    on_connect: LifecycleHandler
    on_disconnect: LifecycleHandler

    if kind == "async":

        async def on_connect(ctx: Context) -> None:
            seen.append(("connect", ctx))

        async def on_disconnect(ctx: Context) -> None:
            seen.append(("disconnect", ctx))
    else:

        def on_connect(ctx: Context) -> None:
            seen.append(("connect", ctx))

        def on_disconnect(ctx: Context) -> None:
            seen.append(("disconnect", ctx))

    await start_worker(on_connect=on_connect, on_disconnect=on_disconnect)
    anonymous, user = gateway.new_connection_id(), gateway.new_connection_id()
    await gateway.connect(anonymous)
    await gateway.connect(user, user_id="42")
    await gateway.disconnect(user, 4001, user_id="42")
    await wait_until_async(gateway.backlog_done)
    assert sorted(
        (name, ctx.connection_id, ctx.user_id, ctx.meta.close_code) for name, ctx in seen
    ) == sorted(
        [("connect", anonymous, None, None), ("connect", user, "42", None), ("disconnect", user, "42", 4001)]
    )
    for _, ctx in seen:
        assert (ctx.action, ctx.id, ctx.meta.node) == (None, None, NODE)
    assert await gateway.commands() == []


async def test_failing_on_connect_is_logged(
    start_worker: StartWorker, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    async def on_connect(ctx: Context) -> None:
        raise RuntimeError("boom")

    await start_worker(on_connect=on_connect)
    connection_id = gateway.new_connection_id()
    await gateway.connect(connection_id)
    await wait_until_async(gateway.backlog_done)
    [record] = records(caplog, f"on_connect failed (connection {connection_id})")
    assert record.exc_info is not None


async def test_ctx_send_arrives_in_order_before_the_reply(
    start_worker: StartWorker, gateway: FakeGateway
) -> None:
    async def chatty(ctx: Context, data: Any) -> str:
        await ctx.send("progress", 1)
        await ctx.send("progress", 2)
        await ctx.publisher.to(ctx.connection_id).send("progress", 3)
        return "done"

    def chatty_sync(ctx: Context, data: Any) -> str:
        ctx.send_sync("step", "a")
        ctx.send_sync("step", "b")
        return "done"

    await start_worker({"chatty": chatty, "chatty_sync": chatty_sync})
    first, second = gateway.new_connection_id(), gateway.new_connection_id()
    await gateway.message(first, "chatty", id="r1")
    await gateway.message(second, "chatty_sync", id="r2")
    commands = await gateway.wait_for_commands(7)
    assert [c.frame for c in commands if c.fields["to"] == first] == [
        {"action": "progress", "data": 1},
        {"action": "progress", "data": 2},
        {"action": "progress", "data": 3},
        reply("chatty", "done", "r1"),
    ]
    assert [c.frame for c in commands if c.fields["to"] == second] == [
        {"action": "step", "data": "a"},
        {"action": "step", "data": "b"},
        reply("chatty_sync", "done", "r2"),
    ]


async def test_send_sync_refuses_to_block_the_event_loop(
    start_worker: StartWorker, gateway: FakeGateway
) -> None:
    async def wrong(ctx: Context, data: Any) -> None:
        ctx.send_sync("a", 1)

    await start_worker({"wrong": wrong})
    await gateway.message(gateway.new_connection_id(), "wrong", id="r")
    assert await gateway.wait_for_frames(1) == [error("handler_error", "the handler failed", "r")]


async def test_async_ctx_calls_from_a_plain_def_handler_raise_at_once(
    start_worker: StartWorker, gateway: FakeGateway
) -> None:
    """``ctx.send()``/``join()``/``leave()`` in a thread-pool handler raise RuntimeError naming the
    ``*_sync`` method, rather than return a coroutine nobody awaits (a push silently lost)."""

    def plain(ctx: Context, data: Any) -> list[str]:
        messages = []
        for call in (lambda: ctx.send("a", 1), lambda: ctx.join("room"), lambda: ctx.leave("room")):
            try:
                call()
            except RuntimeError as exc:
                messages.append(str(exc))
        return messages

    await start_worker({"plain": plain})
    await gateway.message(gateway.new_connection_id(), "plain", id="r")
    [frame] = await gateway.wait_for_frames(1)
    assert frame["id"] == "r"
    assert [message.split(" called off")[0] for message in frame["data"]] == [
        "ctx.send()",
        "ctx.join()",
        "ctx.leave()",
    ]
    for name, message in zip(("send", "join", "leave"), frame["data"], strict=True):
        assert f"use ctx.{name}_sync()" in message


def membership(kind: str, connection_id: str, group: str) -> dict[str, str]:
    return {"v": "1", "type": kind, "target": "connection", "to": connection_id, "group": group}


async def test_handlers_join_and_leave_groups(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    async def enter(ctx: Context, group: str) -> list[Any]:
        joined = await ctx.join(group)
        reached = await ctx.publisher.to_group(group).send(
            "joined", ctx.connection_id, exclude=ctx.connection_id
        )
        return [joined, reached]

    async def leave(ctx: Context, group: str) -> bool:
        return await ctx.leave(group)

    def enter_sync(ctx: Context, group: str) -> bool:
        return ctx.join_sync(group)

    def leave_sync(ctx: Context, group: str) -> bool:
        return ctx.leave_sync(group)

    await start_worker({"enter": enter, "leave": leave, "enter_sync": enter_sync, "leave_sync": leave_sync})
    first, second, gone = (gateway.new_connection_id() for _ in range(3))
    await gateway.register(first)
    await gateway.register(second)

    async def ask(connection_id: str, action: str, frame_id: str) -> list[dict[str, str]]:
        before = len(await gateway.commands())
        await gateway.message(connection_id, action, "room", id=frame_id)
        await wait_until_async(gateway.backlog_done)  # acked after its writes: all of them are there
        return [command.fields for command in (await gateway.commands())[before:]]

    def answer(connection_id: str, action: str, data: Any, frame_id: str) -> dict[str, str]:
        frame = json.dumps(reply(action, data, frame_id), separators=(",", ":"))
        return {"v": "1", "type": "send", "target": "connection", "to": connection_id, "frame": frame}

    joined = {"action": "joined", "data": first}
    assert await ask(first, "enter", "r1") == [
        membership("join", first, "room"),
        {
            "v": "1",
            "type": "send",
            "target": "group",
            "to": "room",
            "exclude": first,
            "frame": json.dumps(joined, separators=(",", ":")),
        },
        answer(first, "enter", [True, 1], "r1"),
    ]
    assert await ask(second, "enter_sync", "r2") == [
        membership("join", second, "room"),
        answer(second, "enter_sync", True, "r2"),
    ]
    assert await ask(gone, "enter_sync", "r3") == [answer(gone, "enter_sync", False, "r3")]
    assert await redis_client.smembers(keys_for(key_prefix).group_connections("room")) == {first, second}
    assert await ask(second, "leave_sync", "r4") == [
        membership("leave", second, "room"),
        answer(second, "leave_sync", True, "r4"),
    ]
    assert await ask(second, "leave_sync", "r5") == [answer(second, "leave_sync", False, "r5")]
    assert await ask(first, "leave", "r6") == [
        membership("leave", first, "room"),
        answer(first, "leave", True, "r6"),
    ]
    assert not await redis_client.exists(keys_for(key_prefix).group_connections("room"))


async def test_join_sync_refuses_to_block_the_event_loop(
    start_worker: StartWorker, gateway: FakeGateway
) -> None:
    async def wrong(ctx: Context, data: Any) -> None:
        ctx.join_sync("room")

    await start_worker({"wrong": wrong})
    connection_id = gateway.new_connection_id()
    await gateway.register(connection_id)
    await gateway.message(connection_id, "wrong", id="r")
    assert await gateway.wait_for_frames(1) == [error("handler_error", "the handler failed", "r")]


async def test_handler_can_push_to_a_user(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    other = gateway.new_connection_id()
    await add_to_index(redis_client, key_prefix, "u", "7", other)

    async def notify(ctx: Context, data: Any) -> int:
        reached: int = await ctx.publisher.to_user("7").send("notice", data)
        return reached

    await start_worker({"notify": notify})
    asker = gateway.new_connection_id()
    await gateway.message(asker, "notify", "hi", id="r")
    commands = await gateway.wait_for_commands(2)
    assert [(c.fields["target"], c.fields["to"], c.frame) for c in commands] == [
        ("user", "7", {"action": "notice", "data": "hi"}),
        ("connection", asker, reply("notify", 1, "r")),
    ]


# Concurrency.


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_slow_handler_does_not_delay_the_others(
    start_worker: StartWorker, gateway: FakeGateway, kind: str
) -> None:
    """One handler takes 3 s; 20 other messages are each answered well under 250 ms meanwhile."""
    slow_started = threading.Event()

    async def slow_async(ctx: Context, data: Any) -> str:
        slow_started.set()
        await asyncio.sleep(3)  # the slow work itself
        return "slow"

    def slow_sync(ctx: Context, data: Any) -> str:
        slow_started.set()
        time.sleep(3)  # blocking work: runs in the thread pool
        return "slow"

    def fast_sync(ctx: Context, data: Any) -> Any:
        return data

    handlers: dict[str, Callable[..., Any]] = (
        {"slow": slow_async, "fast": echo} if kind == "async" else {"slow": slow_sync, "fast": fast_sync}
    )
    await start_worker(handlers)
    connection_id = gateway.new_connection_id()
    await gateway.message(connection_id, "slow", id="slow")

    async def started() -> bool:
        return slow_started.is_set()

    await wait_until_async(started)
    sent_at = {}
    for number in range(20):
        entry_id = await gateway.message(connection_id, "fast", number, id=f"fast-{number}")
        sent_at[f"fast-{number}"] = int(entry_id.split("-")[0])
    commands = await gateway.wait_for_commands(20)
    assert sorted(command.frame["id"] for command in commands) == sorted(sent_at), (
        "the slow one is still running"
    )
    for command in commands:
        # Both times come from the Redis server's clock: the entry ids of the event and of the reply.
        latency_ms = command.millis - sent_at[command.frame["id"]]
        assert latency_ms < 250, f"{command.frame['id']} answered after {latency_ms} ms"
    commands = await gateway.wait_for_commands(21)
    assert commands[20].frame == reply("slow", "slow", "slow")


async def test_at_most_concurrency_events_at_once(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    release = asyncio.Event()
    running = 0
    most = 0

    async def gated(ctx: Context, data: Any) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    await start_worker({"gated": gated}, concurrency=3)
    connection_id = gateway.new_connection_id()
    for number in range(10):
        await gateway.message(connection_id, "gated", number)

    async def three_running() -> bool:
        return running == 3

    await wait_until_async(three_running)
    # The worker reads only as many events as it has free slots: the rest wait in the stream.
    pending = await redis_client.xpending(gateway.inbound, "workers")
    assert pending["pending"] == 3
    release.set()
    await wait_until_async(gateway.backlog_done)
    assert most == 3


async def test_events_appended_before_the_worker_started_are_handled(
    start_worker: StartWorker, gateway: FakeGateway
) -> None:
    connection_id = gateway.new_connection_id()
    for number in range(3):
        await gateway.message(connection_id, "echo", number, id=f"r{number}")
    await start_worker({"echo": echo})
    frames = await gateway.wait_for_frames(3)
    assert sorted(frame["data"] for frame in frames) == [0, 1, 2]


async def test_handled_events_are_acknowledged_and_deleted(
    start_worker: StartWorker, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    await start_worker({"echo": echo})
    connection_id = gateway.new_connection_id()
    for number in range(30):
        await gateway.message(connection_id, "echo", number, id=f"r{number}")
    await gateway.wait_for_commands(30)

    async def inbound_empty() -> bool:
        return await redis_client.xlen(gateway.inbound) == 0

    await wait_until_async(inbound_empty)
    assert (await redis_client.xpending(gateway.inbound, "workers"))["pending"] == 0
    [group] = await redis_client.xinfo_groups(gateway.inbound)
    assert group["entries-read"] == 30


async def test_invalid_event_is_dropped_and_logged(
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await start_worker({"echo": echo})
    bad_entry = str_reply(await redis_client.xadd(gateway.inbound, {"v": "2", "type": "connect"}))
    await gateway.message(gateway.new_connection_id(), "echo", 1, id="r")
    assert await gateway.wait_for_frames(1) == [reply("echo", 1, "r")]
    await wait_until_async(gateway.backlog_done)
    [record] = records(caplog, f"dropped inbound entry {bad_entry}")
    assert "unsupported protocol version" in record.getMessage()


async def test_two_workers_share_the_stream(start_worker: StartWorker, gateway: FakeGateway) -> None:
    handled: list[tuple[str, int]] = []

    def handler_of(name: str) -> Callable[[Context, Any], Any]:
        async def job(ctx: Context, data: Any) -> None:
            handled.append((name, data))
            await asyncio.sleep(0.01)  # some work, so that both workers get some

        return job

    await start_worker({"job": handler_of("one")}, concurrency=2, consumer_name="one")
    await start_worker({"job": handler_of("two")}, concurrency=2, consumer_name="two")
    connection_id = gateway.new_connection_id()
    for number in range(40):
        await gateway.message(connection_id, "job", number)
    await wait_until_async(gateway.backlog_done)
    assert sorted(number for _, number in handled) == list(range(40)), "each event exactly once"
    assert {name for name, _ in handled} == {"one", "two"}


# Stopping.


async def test_stop_waits_for_in_flight_handlers(
    redis_url: str, key_prefix: str, gateway: FakeGateway, redis_client: redis.asyncio.Redis
) -> None:
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow(ctx: Context, data: Any) -> str:
        started.set()
        await asyncio.sleep(0.5)  # still working when stop() is called
        finished.set()
        return "finished"

    worker = Worker({"slow": slow}, redis_url=redis_url, key_prefix=key_prefix, block_ms=100)
    task = asyncio.create_task(worker.run_async())
    await gateway.message(gateway.new_connection_id(), "slow", id="r")
    await asyncio.wait_for(started.wait(), 10)
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert finished.is_set()
    # Its reply and ack were written before run_async() returned.
    assert await gateway.frames() == [reply("slow", "finished", "r")]
    assert await gateway.backlog_done()
    assert await redis_client.xinfo_consumers(gateway.inbound, "workers") == [], "the consumer is removed"


async def test_stop_from_another_thread(redis_url: str, key_prefix: str) -> None:
    worker = Worker({"echo": echo}, redis_url=redis_url, key_prefix=key_prefix, block_ms=100)
    async with worker:
        thread = threading.Thread(target=worker.stop)
        thread.start()
        await asyncio.to_thread(thread.join)
        # run_async() returns by itself; __aexit__ then has nothing left to stop.
    assert worker._running is None


async def test_handlers_past_shutdown_timeout_are_cancelled_and_stay_pending(
    redis_url: str,
    key_prefix: str,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(ctx: Context, data: Any) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never finishes
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker = Worker(
        {"stuck": stuck}, redis_url=redis_url, key_prefix=key_prefix, block_ms=100, shutdown_timeout=0.2
    )
    task = asyncio.create_task(worker.run_async())
    await gateway.message(gateway.new_connection_id(), "stuck", id="r")
    await asyncio.wait_for(started.wait(), 10)
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert cancelled.is_set()
    assert records(caplog, "still running after shutdown_timeout")
    assert await gateway.frames() == []
    assert await redis_client.xlen(gateway.inbound) == 1
    assert (await redis_client.xpending(gateway.inbound, "workers"))["pending"] == 1


async def test_async_with_runs_the_worker(redis_url: str, key_prefix: str, gateway: FakeGateway) -> None:
    async with Worker({"echo": echo}, redis_url=redis_url, key_prefix=key_prefix, block_ms=100) as worker:
        await gateway.message(gateway.new_connection_id(), "echo", "x", id="r")
        assert await gateway.wait_for_frames(1) == [reply("echo", "x", "r")]
    assert worker._running is None


def test_invalid_worker_arguments() -> None:
    with pytest.raises(ValueError, match="action must be"):
        Worker({"bad name": echo})
    with pytest.raises(TypeError, match="must be callable"):
        Worker({"a": "not a function"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="intervals"):
        # echo is an action handler, not a Periodic: the interval 0 is what is refused here
        Worker(every={0: echo})  # type: ignore[dict-item]


# Periodic functions.


async def test_every_runs_repeatedly_and_survives_exceptions(
    start_worker: StartWorker,
    redis_client: redis.asyncio.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async_calls: list[AsyncPublisher] = []
    sync_calls: list[AsyncPublisher] = []

    async def tick(publisher: AsyncPublisher) -> None:
        async_calls.append(publisher)
        if len(async_calls) == 1:
            raise RuntimeError("first tick fails")
        await publisher.broadcast().send("tick", len(async_calls))

    def tock(publisher: AsyncPublisher) -> None:
        sync_calls.append(publisher)

    await start_worker(every={0.05: tick, 0.07: tock})

    async def called_repeatedly() -> bool:
        return len(async_calls) >= 4 and len(sync_calls) >= 3

    await wait_until_async(called_repeatedly)
    assert isinstance(async_calls[0], AsyncPublisher)
    assert records(caplog, "periodic function")[0].exc_info is not None
    assert await redis_client.xlen(f"{key_prefix}:broadcast") >= 3


# Redis outages.


def reconnecting_client(url: str) -> redis.asyncio.Redis:
    """The test's own client, retrying its commands through the restart of Redis."""
    retry = redis.asyncio.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.5, base=0.05), 10)
    return redis.asyncio.Redis.from_url(url, decode_responses=True, retry=retry)


async def test_worker_survives_a_redis_outage(
    key_prefix: str,
    make_gateway: Callable[[redis.asyncio.Redis], FakeGateway],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with RedisServer() as server:
        client = reconnecting_client(server.url)
        gateway = make_gateway(client)
        try:
            async with Worker({"echo": echo}, redis_url=server.url, key_prefix=key_prefix, block_ms=100):
                await gateway.message(gateway.new_connection_id(), "echo", 1, id="before")
                assert await gateway.wait_for_frames(1) == [reply("echo", 1, "before")]
                server.stop()

                async def outage_logged() -> bool:
                    return bool(records(caplog, "Redis is unavailable"))

                await wait_until_async(outage_logged)
                server.start()  # empty: the stream and the consumer group are gone
                await gateway.message(gateway.new_connection_id(), "echo", 2, id="after")
                assert await gateway.wait_for_frames(1, timeout=20) == [reply("echo", 2, "after")]
        finally:
            await client.aclose()


async def test_replies_are_written_once_redis_is_back(
    key_prefix: str, make_gateway: Callable[[redis.asyncio.Redis], FakeGateway]
) -> None:
    release, started = asyncio.Event(), asyncio.Event()

    async def gated(ctx: Context, data: Any) -> str:
        started.set()
        await release.wait()
        return "late"

    # With its data on restart (AOF), as a production Redis: the gateway's stream is still there.
    # (After an empty restart the gateway makes its stream again, as it reconnects.)
    with RedisServer(args=["--appendonly", "yes"]) as server:
        client = reconnecting_client(server.url)
        gateway = make_gateway(client)
        try:
            async with Worker({"gated": gated}, redis_url=server.url, key_prefix=key_prefix, block_ms=100):
                await gateway.message(gateway.new_connection_id(), "gated", id="r")
                await asyncio.wait_for(started.wait(), 10)
                server.stop()
                release.set()  # the reply is due while Redis is down
                server.start()
                assert await gateway.wait_for_frames(1, timeout=20) == [reply("gated", "late", "r")]
        finally:
            await client.aclose()
