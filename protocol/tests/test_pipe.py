"""The pipe changes speed only: its connections write exactly what redis-py's packer writes
(with hiredis or without), refuse what redis-py would send as a ``repr()``, and its batches
answer as redis-py's pipeline does, replies raw; ``BatchDeadline`` bounds one batch at a time
as ``asyncio.timeout`` would; ``writes=True`` and ``resend=False`` never send a batch twice."""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsq_devkit import free_port, wait_until_async
from wsq_devkit.redis_typing import bytes_entries, execute_command
from wsq_protocol import pipe as pipe_module
from wsq_protocol.codes import CloseCode, ErrorCode
from wsq_protocol.pipe import (
    BatchDeadline,
    CheckedConnection,
    CheckedSSLConnection,
    CommandTemplate,
    RedisPipe,
    WriteInDoubt,
    async_redis,
)

HAS_HIREDIS = importlib.util.find_spec("hiredis") is not None


class Opened:
    """Clients and pipes a test opened, closed when it ends (pipes first)."""

    def __init__(self) -> None:
        self._pipes: list[RedisPipe] = []
        self._clients: list[redis.asyncio.Redis] = []

    def client(self, url: str, **options: Any) -> redis.asyncio.Redis:
        self._clients.append(async_redis(url, **options))
        return self._clients[-1]

    def pipe(self, client: redis.asyncio.Redis, **options: Any) -> RedisPipe:
        self._pipes.append(RedisPipe(client, **options))
        return self._pipes[-1]

    async def aclose(self) -> None:
        for pipe in self._pipes:
            await pipe.aclose()
        for client in self._clients:
            await client.aclose()


@pytest.fixture
async def opened() -> AsyncIterator[Opened]:
    resources = Opened()
    yield resources
    await resources.aclose()


@pytest.fixture(params=["hiredis", "without-hiredis"])
def packer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test using it runs twice: packing with hiredis (when installed), and without."""
    if request.param == "hiredis" and not HAS_HIREDIS:
        pytest.skip("hiredis is not installed")
    if request.param == "without-hiredis":
        monkeypatch.setattr(pipe_module, "hiredis", None)  # the SDK's fast extra not installed


# Packing


@pytest.mark.parametrize(
    "command",
    [
        ("XADD", "wsq:inbound", "*", "v", "1", "frame", b'{"action":"x"}'),
        ("XADD", "wsq:node:gw-1:out", "MAXLEN", "~", 100000, "*", "v", "1", "frame", b'{"a":1}'),
        ("EVAL", "return 1", 0, "wsq", 1006),
        ("EVALSHA", "0" * 40, 1, "k", "ünï", 2.5),
        ("ZADD", "k", 1.5, "m"),
        ("CLIENT KILL", "ID", 7),
        (b"CLIENT SETNAME", b"n"),
        ("SET", "ünïcode", "välue ✓"),
    ],
)
def test_packing_matches_redis_py(command: tuple[Any, ...]) -> None:
    assert b"".join(CheckedConnection().pack_command(*command)) == b"".join(
        Connection().pack_command(*command)
    )


class _Flag(enum.Flag):
    ON = 1


# What redis-py's packer would have sent as its repr() ("<CloseCode.ABNORMAL_CLOSURE: 1006>")
# or refused with its DataError: the packers refuse each, naming its type, hiredis or not.
NOT_PLAIN = [
    pytest.param(True, "bool", id="bool"),
    pytest.param(CloseCode.TRY_AGAIN_LATER, "CloseCode", id="IntEnum"),
    pytest.param(ErrorCode.UNAVAILABLE, "ErrorCode", id="StrEnum"),
    pytest.param(_Flag.ON, "_Flag", id="Flag"),
    pytest.param(None, "NoneType", id="None"),
    pytest.param(memoryview(b"view"), "memoryview", id="memoryview"),
    pytest.param(bytearray(b"array"), "bytearray", id="bytearray"),
    pytest.param(1.5j, "complex", id="complex"),
]


@pytest.mark.usefixtures("packer")
@pytest.mark.parametrize(("value", "type_name"), NOT_PLAIN)
def test_the_connections_refuse_anything_but_bytes_str_int_float(value: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=rf"'EVAL': argument 4 is a {type_name} \("):
        CheckedConnection().pack_command("EVAL", "return 1", 0, "wsq", value)


@pytest.mark.usefixtures("packer")
@pytest.mark.parametrize(("value", "type_name"), NOT_PLAIN)
def test_the_pipe_refuses_anything_but_bytes_str_int_float(value: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=rf"'XADD': argument 4 is a {type_name} \("):
        RedisPipe(async_redis("redis://127.0.0.1:1/0")).pack(("XADD", "s", "*", "close_code", value))


@pytest.mark.usefixtures("packer")
async def test_a_client_command_with_an_enum_raises_and_sends_nothing(
    opened: Opened, redis_url: str, key_prefix: str
) -> None:
    client = opened.client(redis_url)
    with pytest.raises(TypeError, match="argument 2 is a CloseCode"):
        await client.set(f"{key_prefix}:k", CloseCode.MESSAGE_TOO_BIG)
    assert await client.exists(f"{key_prefix}:k") == 0
    assert await client.set(f"{key_prefix}:k", 1009)  # the same connection serves on


@pytest.mark.usefixtures("packer")
def test_clients_use_the_checking_connections_with_or_without_hiredis() -> None:
    plain = async_redis("redis://127.0.0.1:1/0")  # never connected: nothing to close
    secure = async_redis("rediss://127.0.0.1:1/0")
    unix = async_redis("unix:///tmp/redis.sock")
    assert plain.connection_pool.connection_class is CheckedConnection
    assert secure.connection_pool.connection_class is CheckedSSLConnection
    assert unix.connection_pool.connection_class is not CheckedConnection


# Templates

_arguments = st.one_of(st.text(max_size=20), st.binary(max_size=20))


@pytest.mark.skipif(not HAS_HIREDIS, reason="hiredis is not installed")
@given(head=st.lists(_arguments, min_size=1, max_size=6), tail=st.lists(st.binary(max_size=300), max_size=4))
def test_a_template_packs_what_hiredis_packs(head: list[str | bytes], tail: list[bytes]) -> None:
    import hiredis  # noqa: PLC0415 - optional: the SDK's fast extra

    # hiredis types pack_command()'s argument as a 1-tuple (Tuple[X], not Tuple[X, ...])
    assert CommandTemplate(head, len(tail)).pack(*tail) == hiredis.pack_command((*head, *tail))  # type: ignore[arg-type]


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
    assert CommandTemplate([name, *head], len(tail)).pack(*tail) == expected


@pytest.mark.parametrize("tail", [(b"a", b"b"), ()])
def test_a_template_refuses_a_wrong_number_of_arguments(tail: tuple[bytes, ...]) -> None:
    template = CommandTemplate(("XADD", "s", "*", "frame"), 1)
    with pytest.raises(ValueError, match=f"expected 1 arguments, got {len(tail)}"):
        template.pack(*tail)


# Batches


async def test_a_real_round_trip(opened: Opened, redis_url: str, key_prefix: str) -> None:
    client = opened.client(redis_url)
    await client.xadd(f"{key_prefix}:s", {"a": "ü", "b": b"\xff"})
    ((_, fields),) = bytes_entries(await client.xrange(f"{key_prefix}:s"))
    assert fields == {b"a": "ü".encode(), b"b": b"\xff"}
    assert isinstance(client, redis.asyncio.Redis)


@pytest.mark.usefixtures("packer")
async def test_pipe_returns_raw_replies_in_order_with_refusals_in_place(
    opened: Opened, redis_url: str, key_prefix: str
) -> None:
    client = opened.client(redis_url)
    pipe = opened.pipe(client)
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


@pytest.mark.usefixtures("packer")
async def test_pipe_sends_packed_commands_among_the_others(
    opened: Opened, redis_url: str, key_prefix: str
) -> None:
    client = opened.client(redis_url)
    pipe = opened.pipe(client)
    template = CommandTemplate(("XADD", f"{key_prefix}:s", "*", "v", "1", "frame"), 1)
    replies = await pipe.execute(
        [
            template.pack('{"ü":1}'.encode()),
            ("XLEN", f"{key_prefix}:s"),
            template.pack(b"\xff"),
            ("XRANGE", f"{key_prefix}:s", "-", "+"),
        ]
    )
    assert replies[1] == 1
    assert [fields for _, fields in replies[3]] == [
        [b"v", b"1", b"frame", '{"ü":1}'.encode()],
        [b"v", b"1", b"frame", b"\xff"],
    ]
    assert [entry_id for entry_id, _ in replies[3]] == [replies[0], replies[2]]
    entries = bytes_entries(await client.xrange(f"{key_prefix}:s"))  # as redis-py reads them
    assert [fields for _, fields in entries] == [
        {b"v": b"1", b"frame": '{"ü":1}'.encode()},
        {b"v": b"1", b"frame": b"\xff"},
    ]


@pytest.mark.parametrize("retries", [0, 1])
async def test_pipe_replaces_a_connection_killed_while_idle(
    opened: Opened, redis_url: str, key_prefix: str, retries: int
) -> None:
    client = opened.client(redis_url, retry=Retry(NoBackoff(), retries))
    pipe = opened.pipe(client)
    admin = opened.client(redis_url)
    (own_id,) = await pipe.execute([("CLIENT", "ID")])
    await execute_command(admin, "CLIENT", "KILL", "ID", own_id)
    if retries:  # the batch runs once, on a new connection
        assert await pipe.execute([("INCR", f"{key_prefix}:n")]) == [1]
    else:
        # An idle connection Redis closed is replaced before sending, once its end of file
        # was read; before that, the batch fails and did not run. Either way it runs at
        # most once, and the next one runs on a new connection.
        try:
            assert await pipe.execute([("INCR", f"{key_prefix}:n")]) == [1]
        except RedisConnectionError:
            assert await pipe.execute([("INCR", f"{key_prefix}:n")]) == [1]


async def _blocked_clients(admin: redis.asyncio.Redis) -> bool:
    info: Any = await admin.info("clients")
    return int(info["blocked_clients"]) > 0


async def _kill_while_blocked(
    pipe: RedisPipe, admin: redis.asyncio.Redis, key: str, seconds: float
) -> asyncio.Task[list[Any]]:
    """A batch waiting ``seconds`` for its reply (BLPOP), whose connection Redis then kills."""
    (own_id,) = await pipe.execute([("CLIENT", "ID")])
    waiting = asyncio.create_task(pipe.execute([("BLPOP", key, seconds)]))
    await wait_until_async(lambda: _blocked_clients(admin), timeout=10, message="BLPOP waiting")
    await execute_command(admin, "CLIENT", "KILL", "ID", own_id)
    return waiting


@pytest.mark.parametrize("retries", [0, 1])
async def test_pipe_retries_a_connection_killed_while_waiting_as_the_client_says(
    opened: Opened, redis_url: str, key_prefix: str, retries: int
) -> None:
    # Killed while a batch waits for its reply (a connection Redis closed while idle is replaced
    # before the next batch is sent, and counts as no failure).
    client = opened.client(redis_url, retry=Retry(NoBackoff(), retries))
    pipe = opened.pipe(client)
    admin = opened.client(redis_url)
    waiting = await _kill_while_blocked(pipe, admin, f"{key_prefix}:empty", 0.5)
    if retries:
        assert await waiting == [None]  # sent again on a new connection, timed out there
    else:
        with pytest.raises(RedisConnectionError):
            await waiting
    assert await pipe.execute([("INCR", f"{key_prefix}:n")]) == [1]


@pytest.mark.parametrize(
    ("options", "error"),
    [({"resend": False}, RedisConnectionError), ({"writes": True}, WriteInDoubt)],
    ids=["resend=False", "writes=True"],
)
async def test_a_pipe_that_must_not_resend_raises_once_its_batch_was_sent(
    opened: Opened, redis_url: str, key_prefix: str, options: dict[str, bool], error: type[Exception]
) -> None:
    """The client's retries are not used for a batch Redis may have run: ``resend=False``
    raises redis-py's ``ConnectionError``, ``writes=True`` a ``WriteInDoubt`` (one of them)."""
    client = opened.client(redis_url, retry=Retry(NoBackoff(), 3))
    pipe = opened.pipe(client, **options)
    admin = opened.client(redis_url)
    waiting = await _kill_while_blocked(pipe, admin, f"{key_prefix}:empty", 5)
    with pytest.raises(RedisConnectionError) as failed:
        await waiting
    assert type(failed.value) is error
    assert await pipe.execute([("INCR", f"{key_prefix}:n")]) == [1]  # on a new connection


async def test_a_write_pipe_that_could_not_connect_sent_nothing(opened: Opened) -> None:
    client = opened.client(f"redis://127.0.0.1:{free_port()}/0", retry=Retry(NoBackoff(), 0))
    pipe = opened.pipe(client, writes=True)
    with pytest.raises(RedisConnectionError) as failed:
        await pipe.execute([("INCR", "n")])
    assert not isinstance(failed.value, WriteInDoubt)


async def test_a_write_pipe_has_no_deadline(opened: Opened, redis_url: str, key_prefix: str) -> None:
    """Its replies always tell what Redis did: a batch slower than the socket timeout is waited for."""
    client = opened.client(redis_url, socket_timeout=0.1, retry=Retry(NoBackoff(), 0))
    pipe = opened.pipe(client, writes=True)
    assert await pipe.execute([("BLPOP", f"{key_prefix}:empty", 0.3)]) == [None]


async def test_on_connect_runs_first_on_every_new_connection(
    opened: Opened, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = opened.client(redis_url)
    named = opened.pipe(client, on_connect=("CLIENT", "SETNAME", f"{key_prefix}-pipe"))
    refused = opened.pipe(client, on_connect=("NO-SUCH-COMMAND",))
    admin = opened.client(redis_url)
    (own_id, name) = await named.execute([("CLIENT", "ID"), ("CLIENT", "GETNAME")])
    assert name == f"{key_prefix}-pipe".encode()
    await execute_command(admin, "CLIENT", "KILL", "ID", own_id)
    try:
        (name,) = await named.execute([("CLIENT", "GETNAME")])
    except RedisConnectionError:  # the kill was not noticed before sending: nothing ran
        (name,) = await named.execute([("CLIENT", "GETNAME")])
    assert name == f"{key_prefix}-pipe".encode()  # named again, on the new connection
    with caplog.at_level(logging.WARNING, logger="wsq.protocol.pipe"):
        assert await refused.execute([("PING",)]) in ([b"PONG"], ["PONG"])  # the batch goes on
    assert any("refused the command run on connecting" in r.getMessage() for r in caplog.records)


# Deadlines


async def test_pipe_gives_up_after_the_socket_timeout(
    opened: Opened, redis_url: str, key_prefix: str
) -> None:
    client = opened.client(redis_url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    pipe = opened.pipe(client)
    with pytest.raises(RedisTimeoutError):
        await pipe.execute([("BLPOP", f"{key_prefix}:empty", 5)])
    (reply,) = await pipe.execute([("PING",)])  # the out-of-step socket was dropped: a new one
    assert reply in (b"PONG", "PONG")


async def test_a_pipe_cancelled_from_outside_is_not_timed_out(
    opened: Opened, redis_url: str, key_prefix: str
) -> None:
    client = opened.client(redis_url, socket_timeout=5)
    pipe = opened.pipe(client)
    admin = opened.client(redis_url)
    task = asyncio.create_task(pipe.execute([("BLPOP", f"{key_prefix}:empty", 5)]))
    await wait_until_async(lambda: _blocked_clients(admin), timeout=5, message="BLPOP waiting")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (reply,) = await pipe.execute([("PING",)])  # the pipe goes on, on a new socket
    assert reply in (b"PONG", "PONG")


async def test_quick_batches_do_not_time_out_on_an_earlier_batchs_deadline(
    opened: Opened, redis_url: str
) -> None:
    client = opened.client(redis_url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    pipe = opened.pipe(client)
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.0  # five deadlines long; every batch far within its own
    while loop.time() < end:
        assert await pipe.execute([("PING",)]) in ([b"PONG"], ["PONG"])
    with pytest.raises(RedisTimeoutError):  # and a slow one is still bounded
        await pipe.execute([("BLPOP", "empty", 5)])


# BatchDeadline: asyncio.timeout's meaning for one batch at a time, with one timer for many.


async def _batch(deadline: BatchDeadline, seconds: float) -> bool:
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
    deadline = BatchDeadline(0.05)
    started = asyncio.get_running_loop().time()
    assert await _batch(deadline, 5) is False
    assert asyncio.get_running_loop().time() - started < 2
    assert await _batch(deadline, 0) is True  # and the next batch runs normally


async def test_quick_batches_are_never_cancelled_by_an_old_timer() -> None:
    deadline = BatchDeadline(0.1)
    loop = asyncio.get_running_loop()
    end = loop.time() + 0.5  # five deadlines long, each batch far within its own
    batches = 0
    while loop.time() < end:
        assert await _batch(deadline, 0.01)
        batches += 1
    assert batches > 10
    assert await _batch(deadline, 5) is False  # still bounded afterwards


async def test_a_cancel_from_outside_is_not_a_timeout() -> None:
    deadline = BatchDeadline(5)
    task = asyncio.create_task(_batch(deadline, 5))
    await asyncio.sleep(0)  # the batch starts
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outside_cancel_wins_over_the_deadline() -> None:
    """Both cancel the batch before it runs again: the CancelledError is the outside one's."""
    deadline = BatchDeadline(0.01)
    task = asyncio.create_task(_batch(deadline, 5))
    await asyncio.sleep(0)  # the batch starts: due in 10 ms
    asyncio.get_running_loop().call_later(0.02, task.cancel)  # the outside cancel, 10 ms later
    # Hold the loop (not a wait for anything): when it looks at its timers again both are due,
    # and both fire, the deadline's first, before the task runs.
    time.sleep(0.05)  # noqa: ASYNC251 - blocking the loop is the point here
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_no_seconds_means_no_deadline() -> None:
    deadline = BatchDeadline(None)
    assert await _batch(deadline, 0.05) is True
