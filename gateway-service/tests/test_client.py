"""The hiredis-packing Redis connection writes exactly what redis-py's own packer writes;
the lean pipeline answers as redis-py's pipeline does, replies raw."""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from aiohttp import WSCloseCode
from gateway_harness import stream_entries
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsq_devkit import wait_until_async
from wsq_devkit.redis_typing import execute_command
from wsq_gateway.broker.batcher import RedisBatcher, Write
from wsq_protocol.codes import CloseCode, ErrorCode
from wsq_protocol.pipe import CheckedConnection as HiredisConnection
from wsq_protocol.pipe import CheckedSSLConnection as HiredisSSLConnection
from wsq_protocol.pipe import CommandTemplate, RedisPipe
from wsq_protocol.pipe import async_redis as redis_client


@pytest.mark.parametrize(
    "command",
    [
        ("XADD", "wsq:inbound", "*", "v", "1", "frame", b'{"action":"x"}'),
        ("EVAL", "return 1", 0, "wsq", 1006),
        ("ZADD", "k", 1.5, "m"),
        ("CLIENT KILL", "ID", 7),
        (b"CLIENT SETNAME", b"n"),
        ("SET", "ünïcode", "välue ✓"),
    ],
)
def test_packing_matches_redis_py(command: tuple[Any, ...]) -> None:
    ours = b"".join(HiredisConnection().pack_command(*command))
    theirs = b"".join(Connection().pack_command(*command))
    assert ours == theirs


class _Flag(enum.Flag):
    ON = 1


# What redis-py's packer would have sent as its repr() ("<WSCloseCode.ABNORMAL_CLOSURE: 1006>")
# or refused with its DataError: the gateway's packers refuse each, naming its type.
NOT_PLAIN = [
    pytest.param(True, "bool", id="bool"),
    pytest.param(WSCloseCode.ABNORMAL_CLOSURE, "WSCloseCode", id="aiohttp-IntEnum"),
    pytest.param(CloseCode.TRY_AGAIN_LATER, "CloseCode", id="IntEnum"),
    pytest.param(ErrorCode.UNAVAILABLE, "ErrorCode", id="StrEnum"),
    pytest.param(_Flag.ON, "_Flag", id="Flag"),
    pytest.param(None, "NoneType", id="None"),
    pytest.param(memoryview(b"view"), "memoryview", id="memoryview"),
    pytest.param(bytearray(b"array"), "bytearray", id="bytearray"),
    pytest.param(1.5j, "complex", id="complex"),
]


@pytest.mark.parametrize(("value", "type_name"), NOT_PLAIN)
def test_the_packing_connection_refuses_anything_but_bytes_str_int_float(
    value: object, type_name: str
) -> None:
    with pytest.raises(TypeError, match=rf"'EVAL': argument 4 is a {type_name} \("):
        HiredisConnection().pack_command("EVAL", "return 1", 0, "wsq", value)


@pytest.mark.parametrize(("value", "type_name"), NOT_PLAIN)
def test_the_pipe_refuses_anything_but_bytes_str_int_float(value: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=rf"'XADD': argument 4 is a {type_name} \("):
        RedisPipe(redis_client("redis://127.0.0.1:1/0")).pack(("XADD", "s", "*", "close_code", value))


async def test_a_client_command_with_an_enum_raises_and_sends_nothing(
    redis_url: str, key_prefix: str
) -> None:
    client = redis_client(redis_url)
    try:
        with pytest.raises(TypeError, match="argument 2 is a WSCloseCode"):
            await client.set(f"{key_prefix}:k", WSCloseCode.MESSAGE_TOO_BIG)
        assert await client.exists(f"{key_prefix}:k") == 0
        assert await client.set(f"{key_prefix}:k", 1009)  # the same connection serves on
    finally:
        await client.aclose()


async def test_the_batcher_refuses_a_bad_write_in_its_caller_and_goes_on(
    redis_url: str, key_prefix: str
) -> None:
    client = redis_client(redis_url)
    batcher = RedisBatcher(client, sequence_key=f"{key_prefix}:node:gw-t:seq")
    batcher.start()
    try:
        with pytest.raises(TypeError, match="argument 2 is a CloseCode"):
            batcher.submit(Write([("SET", f"{key_prefix}:bad", CloseCode.SERVICE_RESTART)], durable=True))
        assert await batcher.submit_and_wait(("SET", f"{key_prefix}:good", 1012)) == [b"OK"]
        assert await client.get(f"{key_prefix}:good") == b"1012"
        assert await client.exists(f"{key_prefix}:bad") == 0
    finally:
        await batcher.close(5.0)
        await client.aclose()


def test_clients_use_the_packing_connections() -> None:
    plain = redis_client("redis://127.0.0.1:1/0")
    secure = redis_client("rediss://127.0.0.1:1/0")
    unix = redis_client("unix:///tmp/redis.sock")
    assert plain.connection_pool.connection_class is HiredisConnection
    assert secure.connection_pool.connection_class is HiredisSSLConnection
    assert unix.connection_pool.connection_class is not HiredisConnection


async def test_a_real_round_trip(redis_url: str, key_prefix: str) -> None:
    client = redis_client(redis_url)
    try:
        await client.xadd(f"{key_prefix}:s", {"a": "ü", "b": b"\xff"})
        ((_, fields),) = await stream_entries(client, f"{key_prefix}:s")
        assert fields == {b"a": "ü".encode(), b"b": b"\xff"}
        assert isinstance(client, aioredis.Redis)
    finally:
        await client.aclose()


async def test_pipe_returns_raw_replies_in_order_with_refusals_in_place(
    redis_url: str, key_prefix: str
) -> None:
    client = redis_client(redis_url)
    pipe = RedisPipe(client)
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


_arguments = st.one_of(st.text(max_size=20), st.binary(max_size=20))


@given(head=st.lists(_arguments, min_size=1, max_size=6), tail=st.lists(st.binary(max_size=300), max_size=4))
def test_a_template_packs_what_hiredis_packs(head: list[str | bytes], tail: list[bytes]) -> None:
    # hiredis types pack_command()'s argument as a 1-tuple (Tuple[X], not Tuple[X, ...])
    assert CommandTemplate(head, len(tail)).pack(*tail) == hiredis.pack_command((*head, *tail))  # type: ignore[arg-type]


def test_a_template_refuses_a_wrong_number_of_arguments() -> None:
    template = CommandTemplate(("XADD", "s", "*", "frame"), 1)
    with pytest.raises(ValueError, match="expected 1 arguments, got 2"):
        template.pack(b"a", b"b")


async def test_pipe_sends_packed_commands_among_the_others(redis_url: str, key_prefix: str) -> None:
    client = redis_client(redis_url)
    pipe = RedisPipe(client)
    template = CommandTemplate(("XADD", f"{key_prefix}:s", "*", "v", "1", "frame"), 1)
    try:
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
    finally:
        await pipe.aclose()
        await client.aclose()


@pytest.mark.parametrize("retries", [0, 1])
async def test_pipe_retries_a_killed_connection_as_the_client_says(
    redis_url: str, key_prefix: str, retries: int
) -> None:
    client = redis_client(redis_url, retry=Retry(NoBackoff(), retries))
    pipe = RedisPipe(client)
    admin = redis_client(redis_url)
    try:
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
    finally:
        await pipe.aclose()
        await client.aclose()
        await admin.aclose()


async def test_pipe_gives_up_after_the_socket_timeout(redis_url: str, key_prefix: str) -> None:
    client = redis_client(redis_url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    pipe = RedisPipe(client)
    try:
        with pytest.raises(RedisTimeoutError):
            await pipe.execute([("BLPOP", f"{key_prefix}:empty", 5)])
        (reply,) = await pipe.execute([("PING",)])  # the out-of-step socket was dropped: a new one
        assert reply in (b"PONG", "PONG")
    finally:
        await pipe.aclose()
        await client.aclose()


async def test_a_pipe_cancelled_from_outside_is_not_timed_out(redis_url: str, key_prefix: str) -> None:
    client = redis_client(redis_url, socket_timeout=5)
    pipe = RedisPipe(client)
    try:
        task = asyncio.create_task(pipe.execute([("BLPOP", f"{key_prefix}:empty", 5)]))
        await wait_until_async(lambda: _blocked_clients(client, 1), timeout=5, message="BLPOP waiting")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (reply,) = await pipe.execute([("PING",)])  # the pipe goes on, on a new socket
        assert reply in (b"PONG", "PONG")
    finally:
        await pipe.aclose()
        await client.aclose()


async def test_quick_batches_do_not_time_out_on_an_earlier_batchs_deadline(redis_url: str) -> None:
    client = redis_client(redis_url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    pipe = RedisPipe(client)
    loop = asyncio.get_running_loop()
    try:
        end = loop.time() + 1.0  # five deadlines long; every batch far within its own
        while loop.time() < end:
            assert await pipe.execute([("PING",)]) in ([b"PONG"], ["PONG"])
        with pytest.raises(RedisTimeoutError):  # and a slow one is still bounded
            await pipe.execute([("BLPOP", "empty", 5)])
    finally:
        await pipe.aclose()
        await client.aclose()


async def _blocked_clients(client: aioredis.Redis, n: int) -> bool:
    info: Any = await client.info("clients")
    return int(info["blocked_clients"]) >= n
