"""Publishing: pushes, disconnects, joins and leaves written to Redis, and presence read from it,
by any process (protocol/README.md, "Outbound commands" and "Presence").

Shared by the worker SDK's ``Publisher``/``AsyncPublisher`` and the gateway's HTTP server API,
so both build the same commands and report the same errors. ``Route`` says where a push goes and
builds its ``Write``: a ``StreamWrite`` (one ``XADD``), a ``GatewaysWrite`` (the gateways holding
a user or a group read from ``{prefix:user:<id>}:nodes`` or ``{prefix:group:<name>}:nodes``, then
one ``XADD`` to each one's stream) or a ``MembershipWrite`` (a join or leave: its script in the
connection's shard, then the group's set and the intent settled, ``wsq_protocol.membership``).
``AsyncPublishing`` runs them on an asyncio client, single Redis or Redis Cluster.

Writes are sent at most once: redis-py would send a command again when its connection fails
before the reply came, but Redis may have run it. So writes go on a pipe of their own
(``resend=False``); a connection lost once a write was on its way raises ``PublishError``
saying it may or may not have been written. Reads (presence, the gateways of a user or group)
and the writes of users' and groups' sets, idempotent, keep redis-py's retries.

Before its first command a publisher checks that its number of shards is the deployment's
(``{prefix}:shards``): with another one it would write to keys no gateway reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar, cast

import redis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from wsq_protocol.batching import TickBatcher
from wsq_protocol.cluster import AsyncClient
from wsq_protocol.codes import BROADCAST_STREAM_MAXLEN, NODE_STREAM_MAXLEN
from wsq_protocol.commands import TargetKind, disconnect_command, join_command, leave_command, send_command
from wsq_protocol.errors import PublishError
from wsq_protocol.history import (
    APPEND_SCRIPT,
    READ_SCRIPT,
    HistoryAppend,
    HistoryPage,
    HistoryRead,
    HistorySettings,
)
from wsq_protocol.ids import check_group, check_user_id, node_of
from wsq_protocol.keys import Keys
from wsq_protocol.membership import Intent, new_token, settle
from wsq_protocol.pipe import RedisPipe
from wsq_protocol.preflight import shards_problem
from wsq_protocol.presence import ConnectionInfo, decode_connection_info, decode_members
from wsq_protocol.routing import RoutedPipe
from wsq_protocol.scripts import Script, run, script

__all__ = [
    "JOIN_SCRIPT",
    "LEAVE_SCRIPT",
    "SCRIPTS",
    "AsyncPublishing",
    "GatewaysWrite",
    "MembershipWrite",
    "Route",
    "StreamWrite",
    "Write",
    "gateways_written",
    "history_push_error",
    "membership_error",
    "publish_error",
    "shards_error",
]

_T = TypeVar("_T")

_JOIN = script("join")
_LEAVE = script("leave")
JOIN_SCRIPT = _JOIN.body
"""``protocol/lua/join.lua``: adds a connection to a group (in its shard), atomic with its
gateway's clean-up, and records the intent to add it to the group's set."""
LEAVE_SCRIPT = _LEAVE.body
"""``protocol/lua/leave.lua``: removes a connection from a group (in its shard), and records the
intent to remove it from the group's set."""

SCRIPTS = (_JOIN, _LEAVE, APPEND_SCRIPT)
"""The scripts a publisher's writes call."""


class StreamWrite(NamedTuple):
    """One ``XADD stream MAXLEN ~ maxlen * fields`` (without ``MAXLEN`` when ``maxlen`` is None),
    with ``NOMKSTREAM`` when ``nomkstream``: nothing is written when the stream does not exist
    (a node stream: its gateway is gone). Build node streams' with ``to_node()``."""

    stream: str
    fields: dict[str, str]
    maxlen: int | None = None
    nomkstream: bool = False

    @classmethod
    def to_node(cls, keys: Keys, node: str, fields: dict[str, str]) -> StreamWrite:
        """The write of a command to the gateway ``node``: capped, and never creating the stream
        (a live gateway's exists; a push to a connection of a dead one is dropped)."""
        return cls(keys.node_stream(node), fields, NODE_STREAM_MAXLEN, nomkstream=True)

    @property
    def xadd_fields(self) -> dict[FieldT, EncodableT]:
        # redis-py types the map with its own (invariant) key and value unions.
        return cast("dict[FieldT, EncodableT]", self.fields)

    @property
    def command(self) -> tuple[str, ...]:
        """The ``XADD`` as a command to pack."""
        head = ("XADD", self.stream, "NOMKSTREAM") if self.nomkstream else ("XADD", self.stream)
        if self.maxlen is None:
            return (*head, "*", *_flat(self.fields))
        return (*head, "MAXLEN", "~", str(self.maxlen), "*", *_flat(self.fields))


def _flat(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class GatewaysWrite:
    """A command for every gateway holding a member of a user's or a group's set: the gateways
    are read from ``nodes`` (the hash counting the set's members per gateway node), then the
    command goes to each one's stream (``streams()``)."""

    keys: Keys
    nodes: str
    fields: dict[str, str]

    def streams(self, nodes: Iterable[bytes | str]) -> list[StreamWrite]:
        """The writes to the streams of ``nodes`` (the reply of ``HKEYS nodes``)."""
        return [StreamWrite.to_node(self.keys, node, self.fields) for node in sorted(map(_text, nodes))]


def gateways_written(replies: Sequence[Any]) -> int:
    """How many of the ``XADD ... NOMKSTREAM`` replies of a ``GatewaysWrite`` wrote a command
    (None: that gateway's stream is gone). ``PublishError`` when one failed (Redis refused it,
    or a connection was lost): with several gateways, the message says how many were written."""
    failed = [reply for reply in replies if isinstance(reply, BaseException)]
    if not failed:
        return sum(1 for reply in replies if reply is not None)
    first = failed[0]
    if isinstance(first, PublishError):
        error, cause = first, first.__cause__
    elif isinstance(first, redis.RedisError):
        error, cause = publish_error(first), first
    else:  # cancelled, say
        raise first
    if len(replies) > 1:
        written = sum(1 for reply in replies if reply is not None and not isinstance(reply, BaseException))
        error = PublishError(
            f"the command for {len(failed)} of {len(replies)} gateways failed ({written} written): {error}",
            code="partially_written" if written else error.code,
        )
    error.__cause__ = cause
    raise error


@dataclass(frozen=True, slots=True)
class MembershipWrite:
    """One ``EVALSHA`` of ``JOIN_SCRIPT`` or ``LEAVE_SCRIPT`` in the connection's shard: its set of
    groups, the command to the gateway holding it and an intent, whose index (the group's set)
    is written next. Build it with ``join()`` or ``leave()``."""

    type: Literal["join", "leave"]
    keys: Keys
    connection_id: str
    group: str
    fields: dict[str, str]

    @classmethod
    def join(cls, keys: Keys, connection_id: str, group: str) -> MembershipWrite:
        return cls("join", keys, connection_id, group, join_command(connection_id, group))

    @classmethod
    def leave(cls, keys: Keys, connection_id: str, group: str) -> MembershipWrite:
        return cls("leave", keys, connection_id, group, leave_command(connection_id, group))

    @property
    def script(self) -> Script:
        return _JOIN if self.type == "join" else _LEAVE

    @property
    def script_keys(self) -> list[str]:
        keys, connection_id = self.keys, self.connection_id
        node = node_of(connection_id)
        return [
            keys.connection(connection_id),
            keys.connection_groups(connection_id),
            keys.node_stream(node),
            keys.node_intents(node),
        ]

    def args(self, token: str) -> list[str]:
        """ARGV, the intent recorded under ``token``."""
        return [self.connection_id, self.group, str(NODE_STREAM_MAXLEN), token, *_flat(self.fields)]

    def command(self, token: str) -> tuple[Any, ...]:
        """The ``EVALSHA``."""
        return self.script.call(self.script_keys, *self.args(token))

    @property
    def holds(self) -> bool:
        """What holds once the script ran: the membership, after a join (``settle()`` reads it
        again, and writes the group's set again if the connection went away meanwhile)."""
        return self.type == "join"

    def outcome(self, reply: Any) -> tuple[bool, Intent | None]:
        """(whether the script did it, the intent to settle) of its reply: ``{1, intent}``, 1 (a
        join of a member: the command only) or 0 (nothing written)."""
        if isinstance(reply, list):
            return True, Intent.parse(reply[1])
        return bool(reply), None


def membership_error(write: MembershipWrite, exc: BaseException) -> PublishError:
    """The ``PublishError`` of a join or leave that ran, whose group's set could not be written."""
    error = PublishError(
        f"connection {write.connection_id} {'joined' if write.type == 'join' else 'left'} group "
        f"{write.group!r}, but the group's set could not be written ({exc}): its gateway writes it "
        f"within a minute, meanwhile pushes to the group may miss it",
        code="membership_pending",
    )
    error.__cause__ = exc
    return error


Write = StreamWrite | GatewaysWrite | MembershipWrite


_TARGET_NAMES = {"connection": "a connection (to)", "user": "a user (to_user)", "all": "everyone (broadcast)"}


def history_push_error(offset: str, exc: PublishError) -> PublishError:
    """The ``PublishError`` of a push sent with history whose history entry (``offset``) was
    written, but whose push failed: the two are separate writes (``wsq_protocol.history``)."""
    error = PublishError(
        f"the message was appended to the group's history (offset {offset}), but the push failed: {exc}",
        code=exc.code,
    )
    error.__cause__ = exc
    return error


@dataclass(frozen=True, slots=True)
class Route:
    """Where a push goes (one connection, a user's or a group's connections, everyone) and how to
    get there."""

    keys: Keys
    target: TargetKind
    to: str | None = None

    @classmethod
    def connection(cls, keys: Keys, connection_id: str) -> Route:
        node_of(connection_id)  # ValueError now rather than a command no gateway will ever read
        return cls(keys, "connection", connection_id)

    @classmethod
    def user(cls, keys: Keys, user_id: str) -> Route:
        return cls(keys, "user", check_user_id(user_id))

    @classmethod
    def group(cls, keys: Keys, group: str) -> Route:
        return cls(keys, "group", check_group(group))

    @classmethod
    def everyone(cls, keys: Keys) -> Route:
        return cls(keys, "all")

    def send(self, frame: str, exclude: str | None = None) -> Write:
        """The write delivering ``frame`` (server-frame JSON text) to this route's sockets, but
        not to the connection ``exclude`` (groups only)."""
        return self._write(send_command(self.target, self.to, frame, exclude))

    def history_append(self, action: str, data_json: str, settings: HistorySettings) -> HistoryAppend:
        """The append of a push (``action``, its data as JSON text ``data_json``) to this route's
        group's history (``wsq_protocol.history``); ValueError for a route not to a group."""
        if self.target != "group":
            raise ValueError(
                f"history=True is for pushes to a group (to_group), not to {_TARGET_NAMES[self.target]}"
            )
        assert self.to is not None
        return HistoryAppend.of(self.keys, self.to, action, data_json, settings)

    def disconnect(self, code: int = 1000, reason: str = "") -> Write:
        """The write closing this route's sockets."""
        return self._write(disconnect_command(self.target, self.to, code, reason))

    def _write(self, fields: dict[str, str]) -> Write:
        keys, to = self.keys, self.to
        if self.target == "all":
            return StreamWrite(keys.broadcast_stream, fields, BROADCAST_STREAM_MAXLEN)
        assert to is not None
        if self.target == "connection":
            return StreamWrite.to_node(keys, node_of(to), fields)
        nodes = keys.user_nodes(to) if self.target == "user" else keys.group_nodes(to)
        return GatewaysWrite(keys, nodes, fields)


def publish_error(
    exc: redis.RedisError | RedisClusterException, *, read: bool = False, sent: bool = False
) -> PublishError:
    """The PublishError to raise (``from exc``) when Redis failed to take a command (or, with
    ``read``, to answer a presence read); with ``sent``, the connection failed once the write
    was on its way (Redis may have run it: it is not sent again)."""
    if sent:
        return PublishError(
            f"the connection to Redis was lost after the write was sent: it may or may not have "
            f"been written: {exc}",
            code="maybe_written",
        )
    outcome = "nothing was read" if read else "nothing was sent"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return PublishError(f"Redis is unavailable, {outcome}: {exc}", code="unavailable")
    return PublishError(f"Redis refused the command, {outcome}: {exc}", code="refused")


def shards_error(problem: str, *, read: bool) -> PublishError:
    return PublishError(
        f"{problem}; {'nothing was read' if read else 'nothing was sent'}", code="shards_mismatch"
    )


class AsyncPublishing:
    """Runs writes and presence reads on an asyncio client (``redis.asyncio.Redis`` or its
    ``RedisCluster``), which it never closes: ``aclose()`` closes only its write pipe.

    Its writes go in batches (``_Batches``), on a connection of their own, at most once.
    Failures raise ``PublishError``; malformed arguments ``ValueError``.
    """

    def __init__(self, client: AsyncClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.batches = _Batches(client)
        self._shards_checked = False
        self._shards_check: asyncio.Future[str | None] | None = None

    # Writes.

    async def execute(self, write: Write) -> int:
        """Run ``write``; the number of commands written (see ``wsq_worker.Target.send``), or for
        a ``MembershipWrite`` 1 when the script did it, else 0."""
        await self.check_shards(read=False)
        if isinstance(write, StreamWrite):
            entry_id = await self.batches.run(write.stream, write.command)
            return 0 if entry_id is None else 1  # None: NOMKSTREAM, and no such stream
        if isinstance(write, MembershipWrite):
            return int(await self._membership(write))
        try:
            nodes: Any = await self.client.hkeys(write.nodes)  # a read: redis-py's retries are fine
        except redis.RedisError as exc:
            raise publish_error(exc) from exc
        streams = write.streams(nodes)
        replies = await asyncio.gather(
            *(self.batches.run(stream.stream, stream.command) for stream in streams), return_exceptions=True
        )
        return gateways_written(replies)

    async def append_history(self, append: HistoryAppend) -> str:
        """Append one entry to a group's history (at most once, in a batch); its offset."""
        await self.check_shards(read=False)
        return _text(await self.batches.run(append.stream, append.command))

    async def history(self, group: str, since: str | None = None, limit: int = 100) -> HistoryPage:
        """One page of ``group``'s history (``wsq_protocol.history``): the newest ``limit``
        entries, or with ``since`` those after it; oldest first. ValueError for a bad group,
        ``since`` or ``limit``."""
        read = HistoryRead.of(self.keys, group, since, limit)
        reply = await self.read(lambda: run(self.client, READ_SCRIPT, read.keys, read.args))
        return read.page(reply)

    async def _membership(self, write: MembershipWrite) -> bool:
        reply = await self.batches.run(write.script_keys[0], write.command(new_token()))
        done, intent = write.outcome(reply)
        if intent is not None:
            try:
                await settle(self.client, self.keys, intent.node, [intent], holds=write.holds)
            except redis.RedisError as exc:
                raise membership_error(write, exc) from exc
        return done

    # Presence.

    async def connections(self, user_id: str) -> list[str]:
        """The ids of the user's connections on every gateway, sorted."""
        key = self.keys.user_connections(check_user_id(user_id))
        return decode_members(await self.read(lambda: self.client.smembers(key)))

    async def is_online(self, user_id: str) -> bool:
        """Whether the user has at least one connection, on any gateway."""
        key = self.keys.user_connections(check_user_id(user_id))
        return await self.read(lambda: self.client.scard(key)) > 0

    async def group_members(self, group: str) -> list[str]:
        """The ids of the group's connections on every gateway, sorted."""
        key = self.keys.group_connections(check_group(group))
        return decode_members(await self.read(lambda: self.client.smembers(key)))

    async def connection_info(self, connection_id: str) -> ConnectionInfo | None:
        """The connection's gateway, user, start and groups; None when it is not connected."""
        node_of(connection_id)

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:  # one slot: the connection's shard
                pipe.hgetall(self.keys.connection(connection_id))
                pipe.smembers(self.keys.connection_groups(connection_id))
                return await pipe.execute()

        fields, groups = await self.read(read)
        return decode_connection_info(connection_id, fields, groups)

    # Checks and reads.

    async def check_shards(self, *, read: bool) -> None:
        """``PublishError`` before the first command when this publisher's number of shards is
        not the deployment's (it records its own when none is yet). The commands awaited
        meanwhile wait for one check, and go on in their order (a connection's pushes keep theirs)."""
        if self._shards_checked:
            return
        check = self._shards_check
        if check is None or check.get_loop() is not asyncio.get_running_loop():
            check = self._shards_check = asyncio.ensure_future(shards_problem(self.client, self.keys))
        try:
            problem = await asyncio.shield(check)  # a caller cancelled does not cancel the others'
        except redis.RedisError as exc:
            self._shards_check = None  # asked again by the next command
            raise publish_error(exc, read=read) from exc
        if problem is not None:
            self._shards_check = None
            raise shards_error(problem, read=read)
        self._shards_checked = True

    async def read(self, read: Callable[[], Awaitable[_T]]) -> _T:
        """``read()``'s result, after the shards check; Redis's failure as ``PublishError``."""
        await self.check_shards(read=True)
        try:
            return await read()
        except redis.RedisError as exc:
            raise publish_error(exc, read=True) from exc

    async def aclose(self) -> None:
        """Close the write pipe's connection (not the client)."""
        await self.batches.aclose()


class _Batches:
    """A publisher's writes awaited during one event-loop tick, in one round trip.

    A write waits for the batch after the one in flight, and one task (a ``TickBatcher``
    whose flush policy this is) sends the batches on a ``RedisPipe`` (on a Redis Cluster a
    ``RoutedPipe``: each write to the master of its key's slot), so many concurrent pushes
    cost one write and one read, not one each. Scripts go as ``EVALSHA``; when Redis does not
    know them (it restarted, or ran ``SCRIPT FLUSH``), the pipe sends those writes again as
    ``EVAL``, after the rest of their batch (an order only pushes awaited concurrently could
    tell apart). A batch is never sent twice (``resend=False``): a connection lost once it was
    sent fails its writes with ``PublishError`` (it may or may not have been written); one that
    can't be made before (``connect()``, with the client's retries) fails them as not sent.
    Nothing is retried: a flush always succeeds.
    """

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipe: RedisPipe | RoutedPipe | None = None
        self._queue: list[tuple[str, bytes, asyncio.Future[Any]]] = []
        self._batcher: TickBatcher | None = None

    async def run(self, key: str, command: tuple[Any, ...]) -> Any:
        """Write ``command`` (in ``key``'s slot) in the next batch; its raw reply, or
        ``PublishError``. What no Redis command can carry (a str that is not UTF-8) raises
        here, not in the batch."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or another event loop: connections are per loop
            client = self._client
            pipe: RedisPipe | RoutedPipe
            if isinstance(client, redis.asyncio.Redis):
                pipe = RedisPipe(client, resend=False, scripts=SCRIPTS)
            else:
                pipe = RoutedPipe(client, resend=False, scripts=SCRIPTS)
            self._loop, self._pipe, self._queue = loop, pipe, []
            self._batcher = TickBatcher(self, name="wsq-publisher-batches", linger=False)
        assert self._pipe is not None
        assert self._batcher is not None
        packed = self._pipe.pack(command)
        done = loop.create_future()
        self._queue.append((key, packed, done))
        self._batcher.wake()
        return await done

    async def aclose(self) -> None:
        if self._pipe is not None and self._loop is asyncio.get_running_loop():
            await self._pipe.aclose()

    # The flush policy (wsq_protocol.batching.FlushPolicy).

    def has_work(self) -> bool:
        return bool(self._queue)

    async def flush(self) -> bool:
        batch, self._queue = self._queue, []
        try:
            await self._write(batch)
        except BaseException:  # cancelled with its loop, say: nobody may wait for ever
            for _, _, done in [*batch, *self._queue]:
                done.cancel()
            raise
        return True

    async def _write(self, batch: list[tuple[str, bytes, asyncio.Future[Any]]]) -> None:
        """Send ``batch`` once and settle each write with its reply or ``PublishError``."""
        pipe = self._pipe
        if isinstance(pipe, RoutedPipe):  # each command's failure comes in its place
            replies = await pipe.execute([(key, command) for key, command, _ in batch])
        else:
            assert pipe is not None
            try:
                await pipe.connect()
            except redis.RedisError as exc:  # nothing of the batch was sent
                _fail(batch, exc, sent=False)
                return
            try:
                replies = await pipe.execute([command for _, command, _ in batch])
            except redis.RedisError as exc:  # lost once sent: Redis may have run it
                _fail(batch, exc, sent=True)
                return
        for (_, _, done), reply in zip(batch, replies, strict=True):
            _settle(done, reply)


def _fail(batch: list[tuple[str, bytes, asyncio.Future[Any]]], exc: redis.RedisError, *, sent: bool) -> None:
    """Fail each waiting write of ``batch`` with its own ``PublishError``: nothing was sent, or
    (``sent``) it may or may not have been written."""
    for _, _, done in batch:
        if not done.done():  # else its caller was cancelled
            error = publish_error(exc, sent=sent)
            error.__cause__ = exc
            done.set_exception(error)


def _settle(done: asyncio.Future[Any], reply: Any) -> None:
    """Resolve a waiting write with its reply, or ``PublishError`` (one per waiter)."""
    if done.done():  # its caller was cancelled
        return
    if isinstance(reply, redis.RedisError):
        # A connection error in its place: a cluster master lost once the write was sent.
        error = publish_error(reply, sent=isinstance(reply, RedisConnectionError | RedisTimeoutError))
        error.__cause__ = reply
        done.set_exception(error)
    else:
        done.set_result(reply)
