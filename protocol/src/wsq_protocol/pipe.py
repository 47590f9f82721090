"""The Redis pipe both packages send their hot-path commands on, and the clients it builds on.

* :func:`async_redis`: redis-py's asyncio client whose connections check every argument and
  pack with hiredis when it is installed. redis-py's blocking client packs in C
  (``hiredis.pack_command``); its asyncio client always packs in Python, which the benchmark
  measured at a fifth of the gateway's CPU per message and a sixth of a worker's. Only exact
  ``bytes``, ``str``, ``int`` and ``float`` arguments are sent: anything else (a bool, an
  enum, None...) raises ``TypeError`` naming it, where redis-py's packer would send an enum's
  ``repr()`` (``<CloseCode.X: 1013>``) for a Lua script to write into the protocol.
* :class:`RedisPipe`: redis-py's ``Pipeline`` spends about 10 µs of Python per command around
  the socket (a command stack, a timeout and a response callback per reply); the pipe sends
  the same packed bytes on a connection of its own and reads the raw replies in a loop. Given
  a Redis Cluster client it is a :class:`wsq_protocol.routing.SlotPipe`, bound to the master
  of one key's slot; :class:`wsq_protocol.routing.RoutedPipe` spreads a batch over masters.
* :class:`CommandTemplate`: even hiredis formats every argument of every command (a
  ``sprintf`` each); for a command sent once per message, the arguments that never change
  are packed once, and only the last few per message.
* :class:`BatchDeadline`: one timer bounding many batches, where ``asyncio.timeout`` would arm
  and cancel one per batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from wsq_protocol.scripts import Script

__all__ = [
    "BatchDeadline",
    "CommandTemplate",
    "RedisPipe",
    "WriteInDoubt",
    "as_eval",
    "async_redis",
    "check_plain",
    "pack_command",
]

hiredis: Any
try:
    import hiredis
except ImportError:  # pragma: no cover - without the speed-ups, redis-py packs in Python
    hiredis = None

log = logging.getLogger("wsq.protocol.pipe")

# Exact types only: bool is an int and an IntEnum or StrEnum an int or str to isinstance().
_PLAIN = frozenset((bytes, str, int, float))


def check_plain(command: tuple[Any, ...]) -> None:
    """TypeError, naming the argument, unless each one of ``command`` is exactly bytes, str, int
    or float: the only values wsq sends to Redis."""
    for arg in command:
        if type(arg) not in _PLAIN:
            raise _not_plain(command)


def _not_plain(command: tuple[Any, ...]) -> TypeError:
    position, arg = next((n, a) for n, a in enumerate(command) if type(a) not in _PLAIN)
    name = command[0] if position else "?"
    shown = repr(arg)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return TypeError(
        f"Redis command {name!r}: argument {position} is a {type(arg).__qualname__} ({shown}); "
        "only bytes, str, int and float are sent to Redis: convert it first"
    )


_PYTHON_PACKER = Connection()  # never connected: redis-py's packer, when hiredis is not installed


def pack_command(command: tuple[Any, ...] | bytes) -> bytes:
    """``command`` in RESP (bytes are packed already): checked (``check_plain``), then packed
    with hiredis when installed, else with redis-py's packer."""
    if type(command) is bytes:
        return command
    check_plain(command)  # type: ignore[arg-type]
    if hiredis is not None:
        packed: bytes = hiredis.pack_command(command)
        return packed
    return b"".join(_PYTHON_PACKER.pack_command(*command))


_EVALSHA = b"$7\r\nEVALSHA\r\n$40\r\n"


def as_eval(packed: bytes, scripts: dict[bytes, bytes]) -> bytes | None:
    """The ``EVAL`` (packed) of ``packed`` when it is the ``EVALSHA`` of one of ``scripts`` (SHA1
    in hex -> body), else None: for a server that answered ``NOSCRIPT`` (it restarted, or is a
    replica just promoted), which ``EVAL`` teaches the script."""
    head = packed.find(b"\r\n") + 2  # after "*<count>"
    if packed[head : head + len(_EVALSHA)].upper() != _EVALSHA:
        return None
    start = head + len(_EVALSHA)
    body = scripts.get(packed[start : start + 40].lower())
    if body is None:
        return None
    return b"%s$4\r\nEVAL\r\n$%d\r\n%s%s" % (packed[:head], len(body), body, packed[start + 40 :])


def script_bodies(scripts: Iterable[Script]) -> dict[bytes, bytes]:
    """SHA1 (hex, as bytes) -> body, for :func:`as_eval`."""
    return {script.sha.encode(): script.body.encode() for script in scripts}


# A writer's connection: a Redis host that vanished is noticed in about 11 s (idle 5 s, then
# 3 probes 2 s apart), where a connection without keepalive would wait for its replies for ever.
KEEPALIVE = {
    option: value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if (option := getattr(socket, name, None)) is not None
}


class WriteInDoubt(RedisConnectionError):
    """The connection failed after a batch of writes was sent: Redis may have run all, some or
    none of it. Sending it again is safe only for writes that are idempotent or deduplicated."""


class _CheckedPacking:
    """Checks every argument (``check_plain``), then packs with hiredis when installed, else with
    redis-py's packer."""

    def pack_command(self, *args: Any) -> list[bytes]:
        check_plain(args)
        if hiredis is None:
            python_packer: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
            return python_packer
        command = args[0]
        # A command name with a space ("CLIENT KILL") is several arguments, as redis-py does.
        if (type(command) is str and " " in command) or (type(command) is bytes and b" " in command):
            args = (*command.split(), *args[1:])
        return [hiredis.pack_command(args)]


class CheckedConnection(_CheckedPacking, Connection):
    pass


class CheckedSSLConnection(_CheckedPacking, SSLConnection):
    pass


def async_redis(url: str, **options: Any) -> redis.asyncio.Redis:
    """``redis.asyncio.Redis.from_url(url, **options)``, its connections checking every argument
    and packing with hiredis when installed."""
    client = redis.asyncio.Redis.from_url(url, **options)
    pool = client.connection_pool
    if issubclass(pool.connection_class, SSLConnection):
        pool.connection_class = CheckedSSLConnection
    elif pool.connection_class is Connection:
        pool.connection_class = CheckedConnection
    return client


class CommandTemplate:
    """A Redis command whose first arguments are the same every time, packed once.

    ``pack(*tail)`` returns the whole command in RESP (what ``hiredis.pack_command(head +
    tail)`` returns, for ``tail_length`` more arguments), ready for ``RedisPipe.execute()``.
    """

    __slots__ = ("_head", "_tail_length", "arguments")

    def __init__(self, head: Sequence[str | bytes], tail_length: int) -> None:
        self._tail_length = tail_length
        self.arguments = len(head) + tail_length
        """How many arguments (the command's name included) a packed command has."""
        self._head = b"*%d\r\n" % self.arguments + b"".join(
            [_bulk(arg.encode() if isinstance(arg, str) else arg) for arg in head]
        )

    def pack(self, *tail: bytes) -> bytes:
        if len(tail) != self._tail_length:  # Redis would read the next command as arguments
            raise ValueError(f"expected {self._tail_length} arguments, got {len(tail)}")
        return self._head + b"".join([b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in tail])


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


class BatchDeadline:
    """Bounds one batch at a time to ``seconds``, as ``asyncio.timeout(seconds)`` would, with one
    timer for many batches.

    ``asyncio.timeout`` arms a timer and cancels it for every batch (9-10 us with uvloop, a
    tenth of a worker's CPU per event at light load; the gateway runs two batches per message
    at light load, the frame's and the reply's). Here ``start()`` only notes when the batch is
    due, and arms a timer if none is pending; when the timer fires it cancels the task if its
    batch is overdue, sleeps again if a later batch is still running, and stops if none is.
    ``stop()`` ends the batch and says whether the deadline cancelled it (True: the
    ``CancelledError`` is ours, turn it into a timeout).
    """

    __slots__ = ("_cancelling", "_due", "_expired", "_seconds", "_task", "_timer")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._due: float | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._expired = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._seconds is None:
            return
        task = asyncio.current_task()
        assert task is not None, "a batch runs in a task"
        loop = task.get_loop()
        self._task, self._cancelling, self._expired = task, task.cancelling(), False
        self._due = loop.time() + self._seconds
        if self._timer is None:
            self._timer = loop.call_at(self._due, self._fire)

    def stop(self) -> bool:
        self._due = None
        if not self._expired:
            return False
        self._expired = False
        assert self._task is not None
        # As asyncio.timeout: ours only if nobody else cancelled the task meanwhile.
        return self._task.uncancel() <= self._cancelling

    def _fire(self) -> None:
        self._timer = None
        if self._due is None or self._task is None:  # no batch running: start() arms it again
            return
        loop = self._task.get_loop()
        if loop.time() >= self._due:
            self._expired = True
            self._task.cancel()
        else:  # a later batch is running: wake up when it is due
            self._timer = loop.call_at(self._due, self._fire)


class RedisPipe:
    """A Redis connection of one hot-path task's own (the gateway's batcher and command reader,
    the worker's flusher and read loop, an ``AsyncPublisher``'s batches).

    ``execute(commands)`` does what ``client.pipeline(transaction=False).execute(
    raise_on_error=False)`` does, without its per-command and per-batch cost (a pool
    checkout, a task per write, a timeout and a response callback per reply): the commands
    go out in one write and their replies come back raw (bytes, lists, and maps in RESP3),
    a command Redis refused giving its ``ResponseError`` in its place. A lost connection is
    retried as the client's ``retry`` says (the whole batch, as redis-py's pipeline does).
    The client's ``socket_timeout`` bounds a whole batch, a blocking command's wait
    included. Failures raise redis-py's ``ConnectionError`` or ``TimeoutError``.

    A command is a tuple of arguments, or bytes already packed (``CommandTemplate.pack()``).
    One task at a time: a second ``execute()`` while one runs would read the other's replies.
    Command names are one word each (``"CLIENT", "ID"``, not ``"CLIENT ID"``).

    ``resend=False``: a batch is never sent twice; a connection lost after it was sent (Redis
    may have run it) raises at once, for the caller to decide what may be sent again.

    ``writes=True`` is for commands that must not run twice by accident (the gateway's
    batcher): a batch is never sent again by the pipe, and never abandoned while its connection
    lives — no deadline, so Redis's replies always tell what it did (a stalled Redis is waited
    for; TCP keepalive finds a dead host). A failure once the batch may have reached Redis
    raises :class:`WriteInDoubt`; before that, redis-py's ``ConnectionError``.

    ``on_connect``, a command, runs first on every new connection, before the batch that
    made it (an error reply to it is logged, and the batch goes on).

    ``scripts``: an ``EVALSHA`` of one of them that Redis answers ``NOSCRIPT`` (it restarted)
    is sent again as its ``EVAL`` (outside a transaction), after the rest of the batch.

    On a Redis Cluster client, ``RedisPipe(client, key=...)`` is a
    :class:`wsq_protocol.routing.SlotPipe` bound to the master of ``key``'s slot
    (``failover_s``: how long it waits for that slot's master to answer again). On a single
    Redis ``key`` and ``failover_s`` change nothing.
    """

    def __new__(cls, client: redis.asyncio.Redis | AsyncRedisCluster, **options: Any) -> RedisPipe:
        if cls is RedisPipe and isinstance(client, AsyncRedisCluster):
            # A cluster's pipe is bound to one slot's master (imported here: routing builds on
            # this module).
            from wsq_protocol.routing import SlotPipe  # noqa: PLC0415

            return super().__new__(SlotPipe)
        return super().__new__(cls)

    def __init__(
        self,
        client: redis.asyncio.Redis | AsyncRedisCluster,
        *,
        key: str | bytes | None = None,
        resend: bool = True,
        writes: bool = False,
        on_connect: tuple[Any, ...] | None = None,
        failover_s: float | None = None,
        scripts: Iterable[Script] = (),
    ) -> None:
        # key and failover_s are for a cluster (SlotPipe): a single Redis serves every key.
        del key, failover_s
        if isinstance(client, AsyncRedisCluster):  # RedisPipe() made a SlotPipe of it
            raise TypeError("a Redis Cluster's pipe is a wsq_protocol.routing.SlotPipe")
        pool = client.connection_pool
        self._writes = writes
        self._resend = resend and not writes
        self._deadline = BatchDeadline(None if writes else pool.connection_kwargs.get("socket_timeout"))
        # Connected as the client's own connections are, but with no socket timeout: redis-py
        # would run every write in a task of its own to bound it; execute() bounds the batch.
        options = {**pool.connection_kwargs, "socket_timeout": None}
        if writes:
            options |= {"socket_keepalive": True, "socket_keepalive_options": KEEPALIVE}
        self._conn: AbstractConnection = pool.connection_class(**options)
        self._on_connect = None if on_connect is None else self.pack(on_connect)
        if self._on_connect is not None:
            self._conn.register_connect_callback(self._run_on_connect)  # type: ignore[no-untyped-call]
        self._scripts = script_bodies(scripts)

    async def _run_on_connect(self, conn: AbstractConnection) -> None:
        assert self._on_connect is not None
        await conn.send_packed_command(self._on_connect, check_health=False)
        try:  # within the batch's deadline: connecting happens in execute()
            await conn.read_response(disable_decoding=True, timeout=math.inf)
        except ResponseError as exc:
            log.warning("redis refused the command run on connecting: %s", exc)

    async def connect(self) -> None:
        """Connect now if not connected, or again if Redis closed the connection meanwhile (it
        restarted, say), with the client's retries: a failure here means that nothing of the
        next batch was sent."""
        conn = self._conn
        if conn.is_connected:
            # As redis-py's pool checks a connection before lending it: a socket Redis closed,
            # or holding bytes nobody asked for, is replaced before a batch is sent on it.
            # can_read() from redis-py 8 on, which deprecates the older can_read_destructive().
            can_read = getattr(conn, "can_read", None) or conn.can_read_destructive
            try:
                stale = bool(await can_read())
            except (RedisConnectionError, OSError):
                stale = True
            if stale:
                await conn.disconnect(nowait=True)
        if not conn.is_connected:
            await conn.connect()  # type: ignore[no-untyped-call]

    def pack(self, command: tuple[Any, ...]) -> bytes:
        """``command`` in RESP, for ``execute()`` later: what Redis can't take (a bool, an enum, a
        str that is not UTF-8...) raises here, in the caller that queues it, not in a batch."""
        check_plain(command)
        if hiredis is not None:
            packed: bytes = hiredis.pack_command(command)
            return packed
        return b"".join(self._conn.pack_command(*command))

    async def execute(self, commands: Sequence[tuple[Any, ...] | bytes]) -> list[Any]:
        packed = [
            command if type(command) is bytes else self.pack(command)  # type: ignore[arg-type]
            for command in commands
        ]
        replies = await self._execute_packed(packed)
        if self._scripts:
            await self._evals_for_noscript(packed, replies)
        return replies

    async def _evals_for_noscript(self, packed: list[bytes], replies: list[Any]) -> None:
        """Each ``EVALSHA`` of a known script Redis answered ``NOSCRIPT`` (outside a
        transaction) sent again as its ``EVAL``, its reply put in place."""
        spans = transactions(packed)
        again = [
            (index, as_eval(packed[index], self._scripts))
            for index, reply in enumerate(replies)
            if isinstance(reply, NoScriptError) and index not in spans
        ]
        evals = [(index, command) for index, command in again if command is not None]
        if evals:
            for (index, _), reply in zip(
                evals, await self._execute_packed([c for _, c in evals]), strict=True
            ):
                replies[index] = reply

    async def _execute_packed(self, packed: list[bytes]) -> list[Any]:
        conn = self._conn
        commands = packed

        async def send_and_read() -> list[Any]:
            replies: list[Any] = []
            sent = False
            self._deadline.start()
            try:
                if conn.is_connected and closed_by_peer(conn):
                    await conn.disconnect(nowait=True)  # Redis went away while idle: not a doubt
                if not conn.is_connected:
                    await conn.connect()  # type: ignore[no-untyped-call]  # failing here, nothing was sent
                sent = True
                await conn.send_packed_command(packed)
                for _ in commands:
                    try:  # math.inf: no timeout per reply, the deadline bounds them all
                        replies.append(await conn.read_response(disable_decoding=True, timeout=math.inf))
                    except ResponseError as exc:
                        replies.append(exc)
            except asyncio.CancelledError:
                if not self._deadline.stop():
                    raise  # cancelled from outside
                await conn.disconnect(nowait=True)  # replies may still come: this socket is out of step
                raise RedisTimeoutError("Timeout reading from Redis") from None
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._deadline.stop()
                if self._writes and sent:
                    await conn.disconnect(nowait=True)
                    raise WriteInDoubt(f"the connection to Redis failed during a write: {exc}") from exc
                raise
            except BaseException:
                self._deadline.stop()
                raise
            self._deadline.stop()
            return replies

        if self._writes:
            return await send_and_read()
        if not self._resend:
            try:
                return await send_and_read()
            except Exception:
                await conn.disconnect(nowait=True)  # out of step: the next batch connects again
                raise

        async def disconnect(error: Exception) -> None:
            await conn.disconnect()

        result: list[Any] = await conn.retry.call_with_retry(send_and_read, disconnect)
        return result

    async def aclose(self) -> None:
        # Every reply was read, so nothing is left to wait for: closing without waiting also
        # keeps a shutdown from hanging in ``wait_closed()`` (redis/redis-py#3941).
        await self._conn.disconnect(nowait=True)


MULTI, EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"


def transactions(packed: Sequence[bytes]) -> dict[int, int]:
    """Each command (index) of a ``MULTI`` ... ``EXEC`` span of ``packed`` -> the span's first
    index (MULTI's). Empty without a transaction."""
    spans: dict[int, int] = {}
    start: int | None = None
    for index, command in enumerate(packed):
        # By length first: MULTI and EXEC are the only commands of 15 and 14 bytes that matter.
        if len(command) == 15 and command.upper() == MULTI:
            start = index
        if start is not None:
            spans[index] = start
            if len(command) == 14 and command.upper() == EXEC:
                start = None
    return spans


def closed_by_peer(conn: AbstractConnection) -> bool:
    """Redis closed this idle connection (it stopped, or killed the client): its end of file is read."""
    reader = getattr(conn, "_reader", None)
    return isinstance(reader, asyncio.StreamReader) and reader.at_eof()
