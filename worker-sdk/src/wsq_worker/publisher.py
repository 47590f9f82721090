"""Push frames to WebSocket connections from any Python process (a web app, a cron job, a worker).

``Publisher`` uses a blocking ``redis.Redis`` (its connection pool is thread-safe: share one
publisher between the threads of a Django or Flask app); ``AsyncPublisher`` has the same API
on ``redis.asyncio``. Both build every command here, with ``Route`` and ``MembershipWrite``, and
decode every presence reply in ``wsq_worker.presence``; only the execution differs.

Where a push goes (protocol/README.md, "Outbound commands"): a push to a connection is one
``XADD`` to the stream of the gateway named in its id; a push to a user or a group reads which
gateways hold its members (``{prefix:user:<id>}:nodes``, kept by the gateways and
publishers with the user's or group's set) and writes one ``XADD`` to each of those gateways'
streams; a broadcast is one ``XADD`` to ``{prefix}:broadcast``, which every gateway reads.
A ``join`` or ``leave`` runs its script in the connection's shard, then writes the group's set
(another slot) and settles the intent the script recorded (``wsq_protocol.membership``).

Writes (pushes, joins, leaves) are sent at most once. redis-py sends a command again when its
connection fails before the reply came (the client's ``retry``), but Redis may have run it:
a push would arrive twice, a disconnect or a join run twice. So the publishers send writes
themselves: connecting (with the client's retries) comes first, and a failure there means
nothing was sent; once a write is on its way, a lost connection raises ``PublishError`` saying
it may or may not have been written, and nothing is sent again. Reads (presence, the gateways
of a user or group) and the writes of users' and groups' sets, idempotent, keep redis-py's
retries.

Before its first command a publisher checks that its number of shards (``WSQ_SHARDS``) is the
deployment's, recorded in ``{prefix}:shards`` (which it records itself when it is the first):
with another one it would write to keys no gateway reads, so it raises ``PublishError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self, TypeVar, cast

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.retry
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, NoScriptError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from wsq_protocol.batching import TickBatcher
from wsq_protocol.cluster import AsyncClient, SyncClient, async_redis, sync_redis
from wsq_protocol.keys import Keys, keys_for
from wsq_protocol.membership import Intent, new_token, settle
from wsq_protocol.pipe import RedisPipe
from wsq_protocol.preflight import shards_problem
from wsq_protocol.routing import RoutedPipe, slot_of
from wsq_protocol.scripts import Script, script
from wsq_worker import constants
from wsq_worker.exceptions import PublishError
from wsq_worker.presence import ConnectionInfo, decode_connection_info, decode_members
from wsq_worker.protocol import (
    TargetKind,
    check_group,
    check_user_id,
    disconnect_command,
    join_command,
    leave_command,
    node_of,
    push_frame,
    send_command,
)
from wsq_worker.settings import connection_from_env

__all__ = [
    "JOIN_SCRIPT",
    "LEAVE_SCRIPT",
    "AsyncPublisher",
    "AsyncTarget",
    "GatewaysWrite",
    "MembershipWrite",
    "Publisher",
    "Route",
    "StreamWrite",
    "Target",
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

_SCRIPT_OBJECTS = (_JOIN, _LEAVE)

# Clients the publishers create fail fast: a few quick retries, then PublishError.
_CONNECT_TIMEOUT_S = 5.0
_COMMAND_TIMEOUT_S = 5.0
_RETRIES = 3


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
        return cls(keys.node_stream(node), fields, constants.NODE_STREAM_MAXLEN, nomkstream=True)

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
            f"the command for {len(failed)} of {len(replies)} gateways failed ({written} written): {error}"
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
        return [self.connection_id, self.group, str(constants.NODE_STREAM_MAXLEN), token, *_flat(self.fields)]

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
        f"within a minute, meanwhile pushes to the group may miss it"
    )
    error.__cause__ = exc
    return error


Write = StreamWrite | GatewaysWrite | MembershipWrite


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

    def disconnect(self, code: int = 1000, reason: str = "") -> Write:
        """The write closing this route's sockets."""
        return self._write(disconnect_command(self.target, self.to, code, reason))

    def _write(self, fields: dict[str, str]) -> Write:
        keys, to = self.keys, self.to
        if self.target == "all":
            return StreamWrite(keys.broadcast_stream, fields, constants.BROADCAST_STREAM_MAXLEN)
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
            f"been written: {exc}"
        )
    outcome = "nothing was read" if read else "nothing was sent"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return PublishError(f"Redis is unavailable, {outcome}: {exc}")
    return PublishError(f"Redis refused the command, {outcome}: {exc}")


def _shards_error(problem: str, *, read: bool) -> PublishError:
    return PublishError(f"{problem}; {'nothing was read' if read else 'nothing was sent'}")


class Target:
    """Pushes to one route, returned by ``Publisher.to()``, ``.to_user()``, ``.to_group()`` and
    ``.broadcast()``."""

    __slots__ = ("_execute", "route")

    def __init__(self, execute: Callable[[Write], int], route: Route) -> None:
        self._execute = execute
        self.route = route

    def send(self, action: str, data: Any = None, *, exclude: str | None = None) -> int:
        """Push ``{"action": action, "data": data}``; returns the number of commands written: 1
        (for ``to()``: 0 when the connection's gateway is gone, whose stream is not created
        again), or for ``to_user()``/``to_group()`` the number of gateways holding a member.

        ``exclude`` (``to_group()`` only, ValueError elsewhere) is a connection that must not
        receive the push, typically the sender.
        """
        return self._execute(self.route.send(push_frame(action, data), exclude))

    def disconnect(self, code: int = 1000, reason: str = "") -> int:
        """Close the route's connections: ``code`` is 1000 or 3000-4999, ``reason`` <= 123 bytes.
        Returns the number of commands written, as ``send()``."""
        return self._execute(self.route.disconnect(code, reason))


class AsyncTarget:
    """``Target`` for ``AsyncPublisher``: the same methods, to be awaited."""

    __slots__ = ("_execute", "route")

    def __init__(self, execute: Callable[[Write], Awaitable[int]], route: Route) -> None:
        self._execute = execute
        self.route = route

    async def send(self, action: str, data: Any = None, *, exclude: str | None = None) -> int:
        """See ``Target.send``."""
        return await self._execute(self.route.send(push_frame(action, data), exclude))

    async def disconnect(self, code: int = 1000, reason: str = "") -> int:
        """See ``Target.disconnect``."""
        return await self._execute(self.route.disconnect(code, reason))


def _check_client_arguments(redis_url: str | None, client: object) -> None:
    if redis_url is not None and client is not None:
        raise ValueError("pass either redis_url or client, not both")


class Publisher:
    """Pushes frames to connections through Redis, from blocking code, manages groups, and
    answers presence questions.

    ``Publisher()`` reads ``WSQ_REDIS_URL``, ``WSQ_KEY_PREFIX``, ``WSQ_SHARDS`` and
    ``WSQ_REDIS_CLUSTER`` (as ``from_env()`` does) unless ``redis_url``/``key_prefix``/
    ``shards``/``redis_cluster`` are given; ``client`` reuses an existing ``redis.Redis`` (or
    ``redis.cluster.RedisCluster``), which ``close()`` then leaves open. Redis failures raise
    ``PublishError``. A write is sent at most once, whatever the client's ``retry`` says (see the
    module's docstring).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        *,
        shards: int | None = None,
        redis_cluster: bool | None = None,
        client: SyncClient | None = None,
    ) -> None:
        _check_client_arguments(redis_url, client)
        settings = connection_from_env(
            redis_url=redis_url, key_prefix=key_prefix, shards=shards, redis_cluster=redis_cluster
        )
        self.key_prefix = settings.key_prefix
        self.shards = settings.shards
        self.keys = keys_for(self.key_prefix, self.shards)
        self._owns_client = client is None
        self.client: SyncClient = client or sync_redis(
            settings.redis_url,
            cluster=settings.redis_cluster,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            retry=redis.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
        )
        self._shards_checked = False

    @classmethod
    def from_env(cls) -> Self:
        settings = connection_from_env()
        return cls(
            settings.redis_url,
            settings.key_prefix,
            shards=settings.shards,
            redis_cluster=settings.redis_cluster,
        )

    # Pushes.

    def to(self, connection_id: str) -> Target:
        """One connection (ValueError for a malformed id)."""
        return Target(self._execute, Route.connection(self.keys, connection_id))

    def to_user(self, user_id: str) -> Target:
        """Every connection of ``user_id``, on every gateway."""
        return Target(self._execute, Route.user(self.keys, user_id))

    def to_group(self, group: str) -> Target:
        """Every member of ``group``, on every gateway (ValueError for a malformed group name)."""
        return Target(self._execute, Route.group(self.keys, group))

    def broadcast(self) -> Target:
        """Every connection of every gateway."""
        return Target(self._execute, Route.everyone(self.keys))

    # Groups.

    def join(self, connection_id: str, group: str) -> bool:
        """Add the connection to ``group``; False (and nothing done) when it is not connected.

        Pushes sent to the group afterwards, by this process, reach it.
        """
        return bool(self._execute(MembershipWrite.join(self.keys, connection_id, group)))

    def leave(self, connection_id: str, group: str) -> bool:
        """Remove the connection from ``group``; False (and nothing done) when it was not a member."""
        return bool(self._execute(MembershipWrite.leave(self.keys, connection_id, group)))

    # Presence.

    def connections(self, user_id: str) -> list[str]:
        """The ids of the user's connections on every gateway, sorted."""
        key = self.keys.user_connections(check_user_id(user_id))
        return decode_members(self._read(lambda: self.client.smembers(key)))

    def is_online(self, user_id: str) -> bool:
        """Whether the user has at least one connection, on any gateway."""
        key = self.keys.user_connections(check_user_id(user_id))
        return self._read(lambda: self.client.scard(key)) > 0

    def group_members(self, group: str) -> list[str]:
        """The ids of the group's connections on every gateway, sorted."""
        key = self.keys.group_connections(check_group(group))
        return decode_members(self._read(lambda: self.client.smembers(key)))

    def connection_info(self, connection_id: str) -> ConnectionInfo | None:
        """The connection's gateway, user, start and groups; None when it is not connected."""
        node_of(connection_id)

        def read() -> list[Any]:
            with self.client.pipeline(transaction=False) as pipe:  # one slot: the connection's shard
                pipe.hgetall(self.keys.connection(connection_id))
                pipe.smembers(self.keys.connection_groups(connection_id))
                return pipe.execute()

        fields, groups = self._read(read)
        return decode_connection_info(connection_id, fields, groups)

    # Running the commands.

    def _execute(self, write: Write) -> int:
        self._check_shards(read=False)
        try:
            if isinstance(write, StreamWrite):
                entry_id = self._write_once(write.stream, write.command)
                return 0 if entry_id is None else 1  # None: NOMKSTREAM, and no such stream
            if isinstance(write, MembershipWrite):
                return int(self._membership(write))
            nodes: Any = self.client.hkeys(write.nodes)  # a read: redis-py's retries are fine
        except redis.RedisError as exc:
            raise publish_error(exc) from exc
        streams = write.streams(nodes)
        return gateways_written(
            self._send_once([(stream.stream, stream.command) for stream in streams]) if streams else []
        )

    def _membership(self, write: MembershipWrite) -> bool:
        command = write.command(new_token())
        key = write.script_keys[0]
        try:
            reply = self._write_once(key, command)
        except NoScriptError:  # Redis restarted or flushed its scripts: the write did not run
            self.client.script_load(write.script.body)
            reply = self._write_once(key, command)
        done, intent = write.outcome(reply)
        if intent is not None:
            try:
                _run_at_once(
                    settle(_AwaitableRedis(self.client), self.keys, intent.node, [intent], holds=write.holds)
                )
            except redis.RedisError as exc:
                raise membership_error(write, exc) from exc
        return done

    def _write_once(self, key: str, command: tuple[Any, ...]) -> Any:
        """Send ``command`` (in ``key``'s slot) and read its reply, never twice (see
        ``_send_once``). Redis's refusal raises its ``ResponseError``."""
        (reply,) = self._send_once([(key, command)])
        if isinstance(reply, redis.ResponseError | PublishError):
            raise reply
        return reply

    def _send_once(self, commands: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Send ``(key, command)``s and read their replies, never twice (see ``_send_on``). On a
        Redis Cluster each goes to the master of its key's slot; a ``MOVED`` reply (it did not
        run) sends it again to the new master once the slot map is read again; a master that
        can't be reached, or lost once they were sent, puts a ``PublishError`` in the place of
        each of its commands (the slot map read again for the next call)."""
        client = self.client
        if not isinstance(client, SyncRedisCluster):
            return _send_on(client.connection_pool, [command for _, command in commands])
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(2):
            by_node: dict[str, tuple[Any, list[int]]] = {}
            for n in todo:
                node = client.nodes_manager.get_node_from_slot(slot_of(commands[n][0]))
                by_node.setdefault(node.name, (node, []))[1].append(n)
            moved: list[int] = []
            for node, indices in by_node.values():
                pool = client.get_redis_connection(node).connection_pool
                try:
                    node_replies = _send_on(pool, [commands[n][1] for n in indices])
                except (PublishError, redis.RedisError, RedisClusterException) as exc:
                    client.nodes_manager.initialize()  # its master may be gone: where is the slot now?
                    error = exc if isinstance(exc, PublishError) else publish_error(exc)
                    node_replies = [error] * len(indices)
                for n, reply in zip(indices, node_replies, strict=True):
                    replies[n] = reply
                    if isinstance(reply, MovedError):
                        moved.append(n)
            if not moved or attempt:
                break
            client.nodes_manager.initialize()
            todo = moved
        return replies

    def _check_shards(self, *, read: bool) -> None:
        """``PublishError`` before the first command when this publisher's number of shards is
        not the deployment's (it records its own when none is yet)."""
        if self._shards_checked:
            return
        try:
            problem = _run_at_once(shards_problem(_AwaitableRedis(self.client), self.keys))
        except redis.RedisError as exc:
            raise publish_error(exc, read=read) from exc
        if problem is not None:
            raise _shards_error(problem, read=read)
        self._shards_checked = True

    def _read(self, read: Callable[[], _T]) -> _T:
        self._check_shards(read=True)
        try:
            return read()
        except redis.RedisError as exc:
            raise publish_error(exc, read=True) from exc

    def close(self) -> None:
        """Close the Redis connections (unless the client was passed in)."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _AwaitableRedis:
    """A blocking client as the protocol core's asyncio helpers (``membership.settle``,
    ``preflight.shards_problem``) call it: each command runs at once, and what is awaited is
    its reply. ``_run_at_once`` runs such a helper to its end without an event loop."""

    def __init__(self, client: SyncClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        command = getattr(self._client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return command(*args, **kwargs)

        return call

    def pipeline(self, transaction: bool = True) -> _AwaitablePipeline:
        return _AwaitablePipeline(self._client.pipeline(transaction=transaction))


class _AwaitablePipeline:
    """A blocking pipeline for ``_AwaitableRedis``: commands queue as they do, ``execute`` is awaited."""

    def __init__(self, pipe: redis.client.Pipeline) -> None:
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return self._pipe.execute(raise_on_error=raise_on_error)


def _send_on(pool: redis.ConnectionPool, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one write on a connection of ``pool`` and read their replies (a
    command Redis refused: its ``ResponseError`` in its place), never twice
    (``client.execute_command()`` would send them again on a new connection, as its ``retry``
    says). A connection lost once they were on their way raises ``PublishError`` saying they
    may or may not have been written; one that can't be made raises redis-py's error (nothing
    was sent)."""
    try:  # connects, or replaces a connection Redis closed: nothing is sent yet
        conn = pool.get_connection()
    except TypeError:  # redis-py < 5.3 wants a command name, which it ignores
        conn = pool.get_connection("_")
    try:
        # A PING first if the client asks for one (health_check_interval), with its retries.
        conn.check_health()  # type: ignore[no-untyped-call]
        # What no command can carry (a str that is not UTF-8) raises here, unsent.
        packed = conn.pack_commands(commands)  # type: ignore[no-untyped-call]
        replies: list[Any] = []
        try:
            conn.send_packed_command(packed, check_health=False)  # type: ignore[no-untyped-call]
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:  # Redis answered: the connection is in step
                    replies.append(exc)
        except BaseException as exc:
            conn.disconnect()  # type: ignore[no-untyped-call]  # out of step with its replies
            if isinstance(exc, redis.RedisError):
                raise publish_error(exc, sent=True) from exc
            raise
        return replies
    finally:
        pool.release(conn)


def _run_at_once(helper: Coroutine[Any, Any, _T]) -> _T:
    """The result of ``helper``, a coroutine that only awaits an ``_AwaitableRedis`` (so it never
    suspends): run without an event loop, from blocking code."""
    try:
        helper.send(None)
    except StopIteration as done:
        return cast(_T, done.value)
    helper.close()
    raise RuntimeError("a protocol helper waited for something other than Redis")


class AsyncPublisher:
    """``Publisher`` for asyncio code: the same API, awaited (``await pub.aclose()``, ``async with``).

    Its writes go in batches (``_Batches``), on a connection of their own, at most once as
    ``Publisher``'s."""

    def __init__(
        self,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        *,
        shards: int | None = None,
        redis_cluster: bool | None = None,
        client: AsyncClient | None = None,
    ) -> None:
        _check_client_arguments(redis_url, client)
        settings = connection_from_env(
            redis_url=redis_url, key_prefix=key_prefix, shards=shards, redis_cluster=redis_cluster
        )
        self.key_prefix = settings.key_prefix
        self.shards = settings.shards
        self.keys = keys_for(self.key_prefix, self.shards)
        self._owns_client = client is None
        self.client: AsyncClient = client or async_redis(
            settings.redis_url,
            cluster=settings.redis_cluster,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            retry=redis.asyncio.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
        )
        self._batches = _Batches(self.client)
        self._shards_checked = False
        self._shards_check: asyncio.Future[str | None] | None = None

    @classmethod
    def from_env(cls) -> Self:
        settings = connection_from_env()
        return cls(
            settings.redis_url,
            settings.key_prefix,
            shards=settings.shards,
            redis_cluster=settings.redis_cluster,
        )

    # Pushes.

    def to(self, connection_id: str) -> AsyncTarget:
        """One connection (ValueError for a malformed id)."""
        return AsyncTarget(self._execute, Route.connection(self.keys, connection_id))

    def to_user(self, user_id: str) -> AsyncTarget:
        """Every connection of ``user_id``, on every gateway."""
        return AsyncTarget(self._execute, Route.user(self.keys, user_id))

    def to_group(self, group: str) -> AsyncTarget:
        """Every member of ``group``, on every gateway (ValueError for a malformed group name)."""
        return AsyncTarget(self._execute, Route.group(self.keys, group))

    def broadcast(self) -> AsyncTarget:
        """Every connection of every gateway."""
        return AsyncTarget(self._execute, Route.everyone(self.keys))

    # Groups.

    async def join(self, connection_id: str, group: str) -> bool:
        """See ``Publisher.join``."""
        return bool(await self._execute(MembershipWrite.join(self.keys, connection_id, group)))

    async def leave(self, connection_id: str, group: str) -> bool:
        """See ``Publisher.leave``."""
        return bool(await self._execute(MembershipWrite.leave(self.keys, connection_id, group)))

    # Presence.

    async def connections(self, user_id: str) -> list[str]:
        """See ``Publisher.connections``."""
        key = self.keys.user_connections(check_user_id(user_id))
        return decode_members(await self._read(lambda: self.client.smembers(key)))

    async def is_online(self, user_id: str) -> bool:
        """See ``Publisher.is_online``."""
        key = self.keys.user_connections(check_user_id(user_id))
        return await self._read(lambda: self.client.scard(key)) > 0

    async def group_members(self, group: str) -> list[str]:
        """See ``Publisher.group_members``."""
        key = self.keys.group_connections(check_group(group))
        return decode_members(await self._read(lambda: self.client.smembers(key)))

    async def connection_info(self, connection_id: str) -> ConnectionInfo | None:
        """See ``Publisher.connection_info``."""
        node_of(connection_id)

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:  # one slot: the connection's shard
                pipe.hgetall(self.keys.connection(connection_id))
                pipe.smembers(self.keys.connection_groups(connection_id))
                return await pipe.execute()

        fields, groups = await self._read(read)
        return decode_connection_info(connection_id, fields, groups)

    # Running the commands.

    async def _execute(self, write: Write) -> int:
        await self._check_shards(read=False)
        if isinstance(write, StreamWrite):
            entry_id = await self._batches.run(write.stream, write.command)
            return 0 if entry_id is None else 1  # None: NOMKSTREAM, and no such stream
        if isinstance(write, MembershipWrite):
            return int(await self._membership(write))
        try:
            nodes: Any = await self.client.hkeys(write.nodes)  # a read: redis-py's retries are fine
        except redis.RedisError as exc:
            raise publish_error(exc) from exc
        streams = write.streams(nodes)
        replies = await asyncio.gather(
            *(self._batches.run(stream.stream, stream.command) for stream in streams), return_exceptions=True
        )
        return gateways_written(replies)

    async def _membership(self, write: MembershipWrite) -> bool:
        reply = await self._batches.run(write.script_keys[0], write.command(new_token()))
        done, intent = write.outcome(reply)
        if intent is not None:
            try:
                await settle(self.client, self.keys, intent.node, [intent], holds=write.holds)
            except redis.RedisError as exc:
                raise membership_error(write, exc) from exc
        return done

    async def _check_shards(self, *, read: bool) -> None:
        """See ``Publisher._check_shards``. The commands awaited meanwhile wait for one check,
        and go on in their order (a connection's pushes keep theirs)."""
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
            raise _shards_error(problem, read=read)
        self._shards_checked = True

    async def _read(self, read: Callable[[], Awaitable[_T]]) -> _T:
        await self._check_shards(read=True)
        try:
            return await read()
        except redis.RedisError as exc:
            raise publish_error(exc, read=True) from exc

    async def aclose(self) -> None:
        """Close the Redis connections (the client's only when it was not passed in)."""
        await self._batches.aclose()
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _Batches:
    """``AsyncPublisher``'s writes awaited during one event-loop tick, in one round trip.

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
                pipe = RedisPipe(client, resend=False, scripts=_SCRIPT_OBJECTS)
            else:
                pipe = RoutedPipe(client, resend=False, scripts=_SCRIPT_OBJECTS)
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
