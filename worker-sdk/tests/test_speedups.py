"""The speed-ups change speed only: the same bytes to Redis, the same results."""

from __future__ import annotations

import asyncio
import enum
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsq_devkit import wait_until_async
from wsq_devkit.redis_typing import bytes_entries, execute_command
from wsq_protocol import pipe as pipe_module
from wsq_worker import constants, speedups
from wsq_worker.dispatch import _reply_template
from wsq_worker.publisher import Route, StreamWrite


@pytest.mark.parametrize(
    "command",
    [
        ("XADD", "wsq:node:gw-1:out", "MAXLEN", "~", 100000, "*", "v", "1", "frame", b'{"a":1}'),
        ("EVALSHA", "0" * 40, 1, "k", "ünï", 2.5),
        ("CLIENT KILL", "ID", 7),
    ],
)
def test_hiredis_packing_matches_redis_py(command: tuple[Any, ...]) -> None:
    assert b"".join(pipe_module.CheckedConnection().pack_command(*command)) == b"".join(
        Connection().pack_command(*command)
    )


class _Code(enum.IntEnum):
    GOING_AWAY = 1001


class _Kind(enum.StrEnum):
    SEND = "send"


# What redis-py's packer would have sent as its repr() ("<_Code.GOING_AWAY: 1001>") or refused
# with its DataError: the worker's packers refuse each, naming its type, hiredis or not.
NOT_PLAIN = [
    pytest.param(True, "bool", id="bool"),
    pytest.param(_Code.GOING_AWAY, "_Code", id="IntEnum"),
    pytest.param(_Kind.SEND, "_Kind", id="StrEnum"),
    pytest.param(None, "NoneType", id="None"),
    pytest.param(memoryview(b"view"), "memoryview", id="memoryview"),
    pytest.param(bytearray(b"array"), "bytearray", id="bytearray"),
]


@pytest.fixture(params=["hiredis", "without-hiredis"])
def packer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param == "without-hiredis":
        monkeypatch.setattr(pipe_module, "hiredis", None)  # the fast extra not installed


@pytest.mark.usefixtures("packer")
@pytest.mark.parametrize(("value", "type_name"), NOT_PLAIN)
def test_the_connections_refuse_anything_but_bytes_str_int_float(value: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=rf"'EVALSHA': argument 3 is a {type_name} \("):
        pipe_module.CheckedConnection().pack_command("EVALSHA", "0" * 40, 0, value)


@pytest.mark.usefixtures("packer")
@pytest.mark.parametrize(("value", "type_name"), NOT_PLAIN)
def test_the_pipe_refuses_anything_but_bytes_str_int_float(value: object, type_name: str) -> None:
    pipe = speedups.RedisPipe(speedups.async_redis("redis://127.0.0.1:1/0"))
    with pytest.raises(TypeError, match=rf"'XADD': argument 4 is a {type_name} \("):
        pipe.pack(("XADD", "s", "*", "code", value))


@pytest.mark.usefixtures("packer")
async def test_a_client_command_with_an_enum_raises_and_sends_nothing(
    redis_url: str, key_prefix: str
) -> None:
    client = speedups.async_redis(redis_url)
    try:
        with pytest.raises(TypeError, match="argument 2 is a _Code"):
            await client.set(f"{key_prefix}:k", _Code.GOING_AWAY)
        assert await client.exists(f"{key_prefix}:k") == 0
        assert await client.set(f"{key_prefix}:k", 1001)  # the same client serves on
    finally:
        await client.aclose()


@pytest.mark.usefixtures("packer")
def test_clients_use_the_checking_connections_with_or_without_hiredis() -> None:
    client = speedups.async_redis("redis://127.0.0.1:1/0")
    assert client.connection_pool.connection_class is pipe_module.CheckedConnection
    tls = speedups.async_redis("rediss://127.0.0.1:1/0")
    assert tls.connection_pool.connection_class is pipe_module.CheckedSSLConnection


def test_run_uses_uvloop_when_installed() -> None:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    speedups.run(main())
    assert seen == ["uvloop"]


async def test_pipe_returns_raw_replies_in_order_with_refusals_in_place(
    redis_url: str, key_prefix: str
) -> None:
    client = speedups.async_redis(redis_url)
    pipe = speedups.RedisPipe(client)
    try:
        replies = await pipe.execute(
            [
                ("SET", f"{key_prefix}:a", "ü"),
                ("LPUSH", f"{key_prefix}:a", "x"),  # WRONGTYPE: refused, the others still run
                ("GET", f"{key_prefix}:a"),
                ("XADD", f"{key_prefix}:s", "*", "f", b"\xff"),
                ("XRANGE", f"{key_prefix}:s", "-", "+"),
            ],
        )
        assert replies[0] in (b"OK", "OK")
        assert isinstance(replies[1], ResponseError)
        assert "WRONGTYPE" in str(replies[1])
        assert replies[2] == "ü".encode()
        ((entry_id, fields),) = replies[4]
        assert entry_id == replies[3]
        assert fields == [b"f", b"\xff"]  # flat, not a dict: no response callbacks
    finally:
        await pipe.aclose()
        await client.aclose()


@pytest.mark.parametrize("retries", [0, 1])
async def test_pipe_retries_a_killed_connection_as_the_client_says(
    redis_url: str, key_prefix: str, retries: int
) -> None:
    # Killed while a batch waits for its reply (a connection Redis closed while idle is replaced
    # before the next batch is sent, and counts as no failure).
    client = speedups.async_redis(redis_url, retry=Retry(NoBackoff(), retries))
    pipe = speedups.RedisPipe(client)
    admin = speedups.async_redis(redis_url)
    try:
        (own_id,) = await pipe.execute([("CLIENT", "ID")])
        waiting = asyncio.create_task(pipe.execute([("BLPOP", f"{key_prefix}:empty", 0.5)]))
        await wait_until_async(lambda: _blocked_clients(admin), timeout=10)
        await execute_command(admin, "CLIENT", "KILL", "ID", own_id)
        if retries:
            assert await waiting == [None]  # sent again on a new connection, timed out there
        else:
            with pytest.raises(RedisConnectionError):
                await waiting
        assert await pipe.execute([("INCR", f"{key_prefix}:n")]) == [1]
    finally:
        await pipe.aclose()
        await client.aclose()
        await admin.aclose()


async def _blocked_clients(admin: Any) -> bool:
    info = await admin.info("clients")
    return int(info["blocked_clients"]) > 0


async def test_pipe_gives_up_after_the_socket_timeout(redis_url: str, key_prefix: str) -> None:
    client = speedups.async_redis(redis_url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    pipe = speedups.RedisPipe(client)
    try:
        with pytest.raises(RedisTimeoutError):
            await pipe.execute([("BLPOP", f"{key_prefix}:empty", 5)])
        assert await pipe.execute([("PING",)]) in ([b"PONG"], ["PONG"])  # a new socket
    finally:
        await pipe.aclose()
        await client.aclose()


async def test_pipe_packs_with_redis_py_without_hiredis(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipe_module, "hiredis", None)  # the fast extra not installed
    client = speedups.async_redis(redis_url)
    pipe = speedups.RedisPipe(client)
    try:
        assert await pipe.execute([("SET", f"{key_prefix}:k", "ü"), ("GET", f"{key_prefix}:k")]) in (
            [b"OK", "ü".encode()],
            ["OK", "ü".encode()],
        )
    finally:
        await pipe.aclose()
        await client.aclose()


_arguments = st.one_of(st.text(max_size=20), st.binary(max_size=20))


@given(
    name=st.sampled_from(["XADD", "SET", b"EVALSHA"]),
    head=st.lists(_arguments, max_size=6),
    tail=st.lists(st.binary(max_size=300), max_size=4),
)
def test_a_template_packs_what_redis_py_packs(
    name: str | bytes, head: list[str | bytes], tail: list[bytes]
) -> None:
    # A one-word command name: redis-py would split "CLIENT KILL" in two, RedisPipe never does.
    expected = b"".join(Connection().pack_command(name, *head, *tail))
    assert speedups.CommandTemplate([name, *head], len(tail)).pack(*tail) == expected


def test_a_template_refuses_a_wrong_number_of_arguments() -> None:
    template = speedups.CommandTemplate(("XADD", "s", "*", "frame"), 1)
    with pytest.raises(ValueError, match="expected 1 arguments, got 0"):
        template.pack()


@pytest.mark.parametrize("frame", ['{"action":"echo","data":"ü","id":"1"}', ""])
def test_a_reply_is_packed_as_its_send_command(frame: str) -> None:
    connection_id = "gw-3f2a9c1d.q2uE4nK0m5Zr8VtY1xWb7A"
    template = _reply_template("wsq", "gw-3f2a9c1d")
    write = Route.connection("wsq", connection_id).send(frame)  # what a push to it writes
    assert isinstance(write, StreamWrite)
    assert template.stream == write.stream == constants.node_stream("wsq", "gw-3f2a9c1d")
    packed = template.command.pack(connection_id.encode(), b"frame", frame.encode())
    assert packed == b"".join(Connection().pack_command(*write.command))
    assert b"$10\r\nNOMKSTREAM\r\n" in packed  # a reply never creates a gateway's stream


@pytest.mark.parametrize("with_hiredis", [True, False])
async def test_pipe_sends_packed_commands_among_the_others(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch, with_hiredis: bool
) -> None:
    if not with_hiredis:
        monkeypatch.setattr(pipe_module, "hiredis", None)
    client = speedups.async_redis(redis_url)
    pipe = speedups.RedisPipe(client)
    template = speedups.CommandTemplate(("XADD", f"{key_prefix}:s", "*", "frame"), 1)
    try:
        replies = await pipe.execute(
            [template.pack("ü".encode()), ("XLEN", f"{key_prefix}:s"), template.pack(b"\xff")]
        )
        assert replies[1] == 1
        entries = bytes_entries(await client.xrange(f"{key_prefix}:s"))
        assert [fields for _, fields in entries] == [{b"frame": "ü".encode()}, {b"frame": b"\xff"}]
        assert [entry_id for entry_id, _ in entries] == [replies[0], replies[2]]
    finally:
        await pipe.aclose()
        await client.aclose()


# BatchDeadline: asyncio.timeout's meaning for one batch at a time, with one timer for many.


async def _batch(deadline: speedups.BatchDeadline, seconds: float) -> bool:
    """Run a batch lasting ``seconds``; True if it completed, False if its deadline cancelled it."""
    deadline.start()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if deadline.stop():
            return False
        raise
    deadline.stop()
    return True


async def test_a_batch_past_its_deadline_is_cancelled() -> None:
    deadline = speedups.BatchDeadline(0.05)
    started = asyncio.get_running_loop().time()
    assert await _batch(deadline, 5) is False
    assert asyncio.get_running_loop().time() - started < 2
    assert await _batch(deadline, 0) is True  # and the next batch runs normally


async def test_quick_batches_are_never_cancelled_by_an_old_timer() -> None:
    deadline = speedups.BatchDeadline(0.1)
    loop = asyncio.get_running_loop()
    end = loop.time() + 0.5  # five deadlines long, each batch far within its own
    batches = 0
    while loop.time() < end:
        assert await _batch(deadline, 0.01)
        batches += 1
    assert batches > 10
    assert await _batch(deadline, 5) is False  # still bounded afterwards


async def test_a_cancel_from_outside_is_not_a_timeout() -> None:
    deadline = speedups.BatchDeadline(5)
    task = asyncio.create_task(_batch(deadline, 5))
    await asyncio.sleep(0)  # the batch starts
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outside_cancel_wins_over_the_deadline() -> None:
    """Both cancel the batch before it runs again: the CancelledError is the outside one's."""
    deadline = speedups.BatchDeadline(0.01)
    task = asyncio.create_task(_batch(deadline, 5))
    await asyncio.sleep(0)  # the batch starts: due in 10 ms
    asyncio.get_running_loop().call_later(0.02, task.cancel)  # the outside cancel, 10 ms later
    # Hold the loop (not a wait for anything): when it looks at its timers again both are due,
    # and both fire, the deadline's first, before the task runs.
    time.sleep(0.05)  # noqa: ASYNC251 - blocking the loop is the point here
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_no_seconds_means_no_deadline() -> None:
    deadline = speedups.BatchDeadline(None)
    assert await _batch(deadline, 0.05) is True
