"""Push frames to WebSocket connections from any Python process (a web app, a cron job, a worker).

``Publisher`` uses a blocking ``redis.Redis`` (its connection pool is thread-safe: share one
publisher between the threads of a Django or Flask app); ``AsyncPublisher`` has the same API
on ``redis.asyncio``. Both build every command here, with ``Route`` and ``MembershipWrite``, and
decode every presence reply in ``wsq_worker.presence``; only the execution differs.

Writes (pushes, joins, leaves) are sent at most once. redis-py sends a command again when its
connection fails before the reply came (the client's ``retry``), but Redis may have run it:
a push would arrive twice, a disconnect or a join run twice. So the publishers send writes
themselves: connecting (with the client's retries) comes first, and a failure there means
nothing was sent; once a write is on its way, a lost connection raises ``PublishError`` saying
it may or may not have been written, and nothing is sent again. Presence reads, idempotent,
keep redis-py's retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Literal, NamedTuple, Self, TypeVar, cast

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.retry
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, FieldT

from wsq_protocol.batching import TickBatcher
from wsq_protocol.keys import keys_for
from wsq_protocol.pipe import RedisPipe, async_redis
from wsq_protocol.scripts import script
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
    "FAN_OUT_SCRIPT",
    "JOIN_SCRIPT",
    "LEAVE_SCRIPT",
    "AsyncPublisher",
    "AsyncTarget",
    "FanOutWrite",
    "MembershipWrite",
    "Publisher",
    "Route",
    "StreamWrite",
    "Target",
]

_T = TypeVar("_T")

FAN_OUT_SCRIPT = script("fan_out").body
"""``protocol/lua/fan_out.lua``: one command to every gateway holding a member of a user's or a
group's set. KEYS: the set, then the node streams the caller believes the members are on; a
member on another node makes it write nothing and answer the nodes it found (``FanOutWrite``)."""
JOIN_SCRIPT = script("join").body
"""``protocol/lua/join.lua``: adds a connection to a group, atomic with its gateway's clean-up."""
LEAVE_SCRIPT = script("leave").body
"""``protocol/lua/leave.lua``: removes a connection from a group."""

_SCRIPTS = (FAN_OUT_SCRIPT, JOIN_SCRIPT, LEAVE_SCRIPT)

# Clients the publishers create fail fast: a few quick retries, then PublishError.
_CONNECT_TIMEOUT_S = 5.0
_COMMAND_TIMEOUT_S = 5.0
_RETRIES = 3
# A fan-out whose set has members on gateways it did not pass is sent again with those (nothing
# was written); the nodes each set was last found on are remembered, for the next push to it.
_FAN_OUT_ATTEMPTS = 8
_KNOWN_SETS = 4096


class StreamWrite(NamedTuple):
    """One ``XADD stream MAXLEN ~ maxlen * fields`` (without ``MAXLEN`` when ``maxlen`` is None),
    with ``NOMKSTREAM`` when ``nomkstream``: nothing is written when the stream does not exist
    (a node stream: its gateway is gone). Build node streams' with ``to_node()``."""

    stream: str
    fields: dict[str, str]
    maxlen: int | None = None
    nomkstream: bool = False

    @classmethod
    def to_node(cls, key_prefix: str, node: str, fields: dict[str, str]) -> StreamWrite:
        """The write of a command to the gateway ``node``: capped, and never creating the stream
        (a live gateway's exists; a push to a connection of a dead one is dropped)."""
        return cls(
            keys_for(key_prefix).node_stream(node), fields, constants.NODE_STREAM_MAXLEN, nomkstream=True
        )

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


@dataclass(frozen=True, slots=True)
class FanOutWrite:
    """One ``EVALSHA`` of ``FAN_OUT_SCRIPT``: the command goes to every gateway holding a member
    of the set ``members`` (a user's or a group's connections). ``nodes``: the gateways whose
    streams are passed in KEYS; when a member is on another one, the script writes nothing and
    answers the nodes it found (``with_nodes()`` makes the write to send again)."""

    script: ClassVar[str] = FAN_OUT_SCRIPT

    members: str
    node_stream_head: str
    node_stream_tail: str
    fields: dict[str, str]
    nodes: tuple[str, ...] = ()

    def with_nodes(self, nodes: tuple[str, ...]) -> FanOutWrite:
        return FanOutWrite(self.members, self.node_stream_head, self.node_stream_tail, self.fields, nodes)

    @property
    def keys(self) -> list[str]:
        head, tail = self.node_stream_head, self.node_stream_tail
        return [self.members, *(head + node + tail for node in self.nodes)]

    @property
    def args(self) -> list[str]:
        nodes = [str(len(self.nodes)), " ".join(self.nodes), str(constants.NODE_STREAM_MAXLEN)]
        return nodes + _flat(self.fields)


def fan_out_nodes(reply: Any) -> tuple[str, ...] | None:
    """The nodes a ``FAN_OUT_SCRIPT`` reply found when they were missing from its KEYS (nothing
    was written); None when it ran (its reply is the number of gateways written to)."""
    if not isinstance(reply, list):
        return None
    return tuple(node.decode() if isinstance(node, bytes) else str(node) for node in reply)


class _KnownNodes:
    """The nodes each user's or group's set was last found on (bounded: forgotten when full)."""

    __slots__ = ("_nodes",)

    def __init__(self) -> None:
        self._nodes: dict[str, tuple[str, ...]] = {}

    def get(self, members: str) -> tuple[str, ...]:
        return self._nodes.get(members, ())

    def found(self, members: str, nodes: tuple[str, ...]) -> None:
        if len(self._nodes) >= _KNOWN_SETS:
            self._nodes.clear()
        self._nodes[members] = nodes


def _members_moved(write: FanOutWrite) -> PublishError:
    return PublishError(
        f"the gateways holding the members of {write.members} kept changing: nothing was sent"
    )


@dataclass(frozen=True, slots=True)
class MembershipWrite:
    """One ``EVALSHA`` of ``JOIN_SCRIPT`` or ``LEAVE_SCRIPT``: both registry sets, and the command
    to the gateway holding the connection. Build it with ``join()`` or ``leave()``."""

    type: Literal["join", "leave"]
    key_prefix: str
    connection_id: str
    group: str
    fields: dict[str, str]

    @classmethod
    def join(cls, key_prefix: str, connection_id: str, group: str) -> MembershipWrite:
        return cls("join", key_prefix, connection_id, group, join_command(connection_id, group))

    @classmethod
    def leave(cls, key_prefix: str, connection_id: str, group: str) -> MembershipWrite:
        return cls("leave", key_prefix, connection_id, group, leave_command(connection_id, group))

    @property
    def script(self) -> str:
        return JOIN_SCRIPT if self.type == "join" else LEAVE_SCRIPT

    @property
    def keys(self) -> list[str]:
        keys, connection_id = keys_for(self.key_prefix), self.connection_id
        return [
            keys.connection(connection_id),
            keys.group_connections(self.group),
            keys.connection_groups(connection_id),
            keys.node_stream(node_of(connection_id)),
        ]

    @property
    def args(self) -> list[str]:
        return [self.connection_id, self.group, str(constants.NODE_STREAM_MAXLEN), *_flat(self.fields)]


Write = StreamWrite | FanOutWrite | MembershipWrite


@dataclass(frozen=True, slots=True)
class Route:
    """Where a push goes (one connection, a user's or a group's connections, everyone) and how to
    get there."""

    key_prefix: str
    target: TargetKind
    to: str | None = None

    @classmethod
    def connection(cls, key_prefix: str, connection_id: str) -> Route:
        node_of(connection_id)  # ValueError now rather than a command no gateway will ever read
        return cls(key_prefix, "connection", connection_id)

    @classmethod
    def user(cls, key_prefix: str, user_id: str) -> Route:
        return cls(key_prefix, "user", check_user_id(user_id))

    @classmethod
    def group(cls, key_prefix: str, group: str) -> Route:
        return cls(key_prefix, "group", check_group(group))

    @classmethod
    def everyone(cls, key_prefix: str) -> Route:
        return cls(key_prefix, "all")

    def send(self, frame: str, exclude: str | None = None) -> Write:
        """The write delivering ``frame`` (server-frame JSON text) to this route's sockets, but
        not to the connection ``exclude`` (groups only)."""
        return self._write(send_command(self.target, self.to, frame, exclude))

    def disconnect(self, code: int = 1000, reason: str = "") -> Write:
        """The write closing this route's sockets."""
        return self._write(disconnect_command(self.target, self.to, code, reason))

    def _write(self, fields: dict[str, str]) -> Write:
        prefix, to, keys = self.key_prefix, self.to, keys_for(self.key_prefix)
        if self.target == "all":
            return StreamWrite(keys.broadcast_stream, fields, constants.BROADCAST_STREAM_MAXLEN)
        assert to is not None
        if self.target == "connection":
            return StreamWrite.to_node(prefix, node_of(to), fields)
        members = keys.user_connections(to) if self.target == "user" else keys.group_connections(to)
        head, tail = keys.node_stream("\n").split("\n")
        return FanOutWrite(members, head, tail, fields)


def publish_error(exc: redis.RedisError, *, read: bool = False, sent: bool = False) -> PublishError:
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

    ``Publisher()`` reads ``WSQ_REDIS_URL`` and ``WSQ_KEY_PREFIX`` (as ``from_env()`` does) unless
    ``redis_url``/``key_prefix`` are given; ``client`` reuses an existing ``redis.Redis``, which
    ``close()`` then leaves open. Redis failures raise ``PublishError``. A write is sent at most
    once, whatever the client's ``retry`` says (see the module's docstring).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        *,
        client: redis.Redis | None = None,
    ) -> None:
        _check_client_arguments(redis_url, client)
        url_from_env, prefix_from_env = connection_from_env()
        self.key_prefix = key_prefix or prefix_from_env
        self._owns_client = client is None
        self.client = client or redis.Redis.from_url(
            redis_url or url_from_env,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            retry=redis.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
        )
        self._scripts = {source: self.client.register_script(source) for source in _SCRIPTS}
        self._known_nodes = _KnownNodes()

    @classmethod
    def from_env(cls) -> Self:
        return cls(*connection_from_env())

    # Pushes.

    def to(self, connection_id: str) -> Target:
        """One connection (ValueError for a malformed id)."""
        return Target(self._execute, Route.connection(self.key_prefix, connection_id))

    def to_user(self, user_id: str) -> Target:
        """Every connection of ``user_id``, on every gateway."""
        return Target(self._execute, Route.user(self.key_prefix, user_id))

    def to_group(self, group: str) -> Target:
        """Every member of ``group``, on every gateway (ValueError for a malformed group name)."""
        return Target(self._execute, Route.group(self.key_prefix, group))

    def broadcast(self) -> Target:
        """Every connection of every gateway."""
        return Target(self._execute, Route.everyone(self.key_prefix))

    # Groups.

    def join(self, connection_id: str, group: str) -> bool:
        """Add the connection to ``group``; False (and nothing done) when it is not connected.

        Pushes sent to the group afterwards, by this process, reach it.
        """
        return bool(self._execute(MembershipWrite.join(self.key_prefix, connection_id, group)))

    def leave(self, connection_id: str, group: str) -> bool:
        """Remove the connection from ``group``; False (and nothing done) when it was not a member."""
        return bool(self._execute(MembershipWrite.leave(self.key_prefix, connection_id, group)))

    # Presence.

    def connections(self, user_id: str) -> list[str]:
        """The ids of the user's connections on every gateway, sorted."""
        key = keys_for(self.key_prefix).user_connections(check_user_id(user_id))
        return decode_members(self._read(lambda: self.client.smembers(key)))

    def is_online(self, user_id: str) -> bool:
        """Whether the user has at least one connection, on any gateway."""
        key = keys_for(self.key_prefix).user_connections(check_user_id(user_id))
        return self._read(lambda: self.client.scard(key)) > 0

    def group_members(self, group: str) -> list[str]:
        """The ids of the group's connections on every gateway, sorted."""
        key = keys_for(self.key_prefix).group_connections(check_group(group))
        return decode_members(self._read(lambda: self.client.smembers(key)))

    def connection_info(self, connection_id: str) -> ConnectionInfo | None:
        """The connection's gateway, user, start and groups; None when it is not connected."""
        node_of(connection_id)

        def read() -> list[Any]:
            keys = keys_for(self.key_prefix)
            with self.client.pipeline() as pipe:
                pipe.hgetall(keys.connection(connection_id))
                pipe.smembers(keys.connection_groups(connection_id))
                return pipe.execute()

        fields, groups = self._read(read)
        return decode_connection_info(connection_id, fields, groups)

    # Running the commands.

    def _execute(self, write: Write) -> int:
        try:
            if isinstance(write, StreamWrite):
                entry_id = self._write_once(write.command)
                return 0 if entry_id is None else 1  # None: NOMKSTREAM, and no such stream
            if isinstance(write, MembershipWrite):
                return int(self._run_script(write))
            for _ in range(_FAN_OUT_ATTEMPTS):  # a stale reply wrote nothing: sending again is safe
                write = write.with_nodes(self._known_nodes.get(write.members))
                reply = self._run_script(write)
                nodes = fan_out_nodes(reply)
                if nodes is None:
                    return int(reply)
                self._known_nodes.found(write.members, nodes)
            raise _members_moved(write)
        except redis.RedisError as exc:
            raise publish_error(exc) from exc

    def _run_script(self, write: FanOutWrite | MembershipWrite) -> Any:
        keys = write.keys
        command = ("EVALSHA", self._scripts[write.script].sha, len(keys), *keys, *write.args)
        try:
            return self._write_once(command)
        except NoScriptError:  # Redis restarted or flushed its scripts: the write did not run
            self.client.script_load(write.script)
            return self._write_once(command)

    def _write_once(self, command: tuple[Any, ...]) -> Any:
        """Send ``command`` on a connection of the client's pool and read its reply, never twice
        (``client.execute_command()`` would send it again on a new connection, as its ``retry``
        says). Redis's refusal raises its ``ResponseError``; a connection lost once the command
        was on its way raises ``PublishError`` saying it may or may not have been written."""
        pool = self.client.connection_pool
        try:  # connects, or replaces a connection Redis closed: nothing is sent yet
            conn = pool.get_connection()
        except TypeError:  # redis-py < 5.3 wants a command name, which it ignores
            conn = pool.get_connection("_")
        try:
            # A PING first if the client asks for one (health_check_interval), with its retries.
            conn.check_health()  # type: ignore[no-untyped-call]
            # What no command can carry (a str that is not UTF-8) raises here, unsent.
            packed = conn.pack_command(*command)  # type: ignore[no-untyped-call]
            try:
                conn.send_packed_command(packed, check_health=False)  # type: ignore[no-untyped-call]
                return conn.read_response()
            except redis.ResponseError:  # Redis answered: the connection is in step
                raise
            except BaseException as exc:
                conn.disconnect()  # type: ignore[no-untyped-call]  # out of step with its replies
                if isinstance(exc, redis.RedisError):
                    raise publish_error(exc, sent=True) from exc
                raise
        finally:
            pool.release(conn)

    def _read(self, read: Callable[[], _T]) -> _T:
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


class AsyncPublisher:
    """``Publisher`` for asyncio code: the same API, awaited (``await pub.aclose()``, ``async with``).

    Its writes go in batches (``_Batches``), on a connection of their own, at most once as
    ``Publisher``'s."""

    def __init__(
        self,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        _check_client_arguments(redis_url, client)
        url_from_env, prefix_from_env = connection_from_env()
        self.key_prefix = key_prefix or prefix_from_env
        self._owns_client = client is None
        self.client = client or async_redis(
            redis_url or url_from_env,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            retry=redis.asyncio.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
        )
        self._scripts = {source: self.client.register_script(source) for source in _SCRIPTS}
        self._batches = _Batches(self.client)
        self._known_nodes = _KnownNodes()

    @classmethod
    def from_env(cls) -> Self:
        return cls(*connection_from_env())

    # Pushes.

    def to(self, connection_id: str) -> AsyncTarget:
        """One connection (ValueError for a malformed id)."""
        return AsyncTarget(self._execute, Route.connection(self.key_prefix, connection_id))

    def to_user(self, user_id: str) -> AsyncTarget:
        """Every connection of ``user_id``, on every gateway."""
        return AsyncTarget(self._execute, Route.user(self.key_prefix, user_id))

    def to_group(self, group: str) -> AsyncTarget:
        """Every member of ``group``, on every gateway (ValueError for a malformed group name)."""
        return AsyncTarget(self._execute, Route.group(self.key_prefix, group))

    def broadcast(self) -> AsyncTarget:
        """Every connection of every gateway."""
        return AsyncTarget(self._execute, Route.everyone(self.key_prefix))

    # Groups.

    async def join(self, connection_id: str, group: str) -> bool:
        """See ``Publisher.join``."""
        return bool(await self._execute(MembershipWrite.join(self.key_prefix, connection_id, group)))

    async def leave(self, connection_id: str, group: str) -> bool:
        """See ``Publisher.leave``."""
        return bool(await self._execute(MembershipWrite.leave(self.key_prefix, connection_id, group)))

    # Presence.

    async def connections(self, user_id: str) -> list[str]:
        """See ``Publisher.connections``."""
        key = keys_for(self.key_prefix).user_connections(check_user_id(user_id))
        return decode_members(await self._read(lambda: self.client.smembers(key)))

    async def is_online(self, user_id: str) -> bool:
        """See ``Publisher.is_online``."""
        key = keys_for(self.key_prefix).user_connections(check_user_id(user_id))
        return await self._read(lambda: self.client.scard(key)) > 0

    async def group_members(self, group: str) -> list[str]:
        """See ``Publisher.group_members``."""
        key = keys_for(self.key_prefix).group_connections(check_group(group))
        return decode_members(await self._read(lambda: self.client.smembers(key)))

    async def connection_info(self, connection_id: str) -> ConnectionInfo | None:
        """See ``Publisher.connection_info``."""
        node_of(connection_id)

        async def read() -> list[Any]:
            keys = keys_for(self.key_prefix)
            async with self.client.pipeline() as pipe:
                pipe.hgetall(keys.connection(connection_id))
                pipe.smembers(keys.connection_groups(connection_id))
                return await pipe.execute()

        fields, groups = await self._read(read)
        return decode_connection_info(connection_id, fields, groups)

    # Running the commands.

    async def _execute(self, write: Write) -> int:
        if isinstance(write, StreamWrite):
            entry_id = await self._batches.run(write.command)
            return 0 if entry_id is None else 1  # None: NOMKSTREAM, and no such stream
        if isinstance(write, MembershipWrite):
            return int(await self._run_script(write))
        for _ in range(_FAN_OUT_ATTEMPTS):  # a stale reply wrote nothing: sending again is safe
            write = write.with_nodes(self._known_nodes.get(write.members))
            reply = await self._run_script(write)
            nodes = fan_out_nodes(reply)
            if nodes is None:
                return int(reply)
            self._known_nodes.found(write.members, nodes)
        raise _members_moved(write)

    async def _run_script(self, write: FanOutWrite | MembershipWrite) -> Any:
        keys = write.keys
        sha = self._scripts[write.script].sha
        return await self._batches.run(("EVALSHA", sha, len(keys), *keys, *write.args))

    async def _read(self, read: Callable[[], Awaitable[_T]]) -> _T:
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
    whose flush policy this is) sends the batches on a ``RedisPipe``, so many concurrent
    pushes cost one write and one read, not one each. Scripts go as ``EVALSHA``; when Redis
    does not know them (it restarted, or ran ``SCRIPT FLUSH``), they are loaded and those
    writes sent again, after the rest of their batch (an order only pushes awaited
    concurrently could tell apart). A batch is never sent twice (``RedisPipe(resend=False)``):
    a connection lost once it was sent fails its writes with ``PublishError`` (it may or may
    not have been written); one that can't be made before (``connect()``, with the client's
    retries) fails them as not sent. Nothing is retried: a flush always succeeds.
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipe: RedisPipe | None = None
        self._queue: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._batcher: TickBatcher | None = None

    async def run(self, command: tuple[Any, ...]) -> Any:
        """Write ``command`` in the next batch; its raw reply, or ``PublishError``. What no Redis
        command can carry (a str that is not UTF-8) raises here, not in the batch."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or another event loop: connections are per loop
            pipe = RedisPipe(self._client, resend=False)
            self._loop, self._pipe, self._queue = loop, pipe, []
            self._batcher = TickBatcher(self, name="wsq-publisher-batches", linger=False)
        assert self._pipe is not None
        assert self._batcher is not None
        packed = self._pipe.pack(command)
        done = loop.create_future()
        self._queue.append((packed, done))
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
            for _, done in [*batch, *self._queue]:
                done.cancel()
            raise
        return True

    async def _write(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        """Send ``batch`` once and settle each write with its reply or ``PublishError``."""
        assert self._pipe is not None
        try:
            await self._pipe.connect()
        except redis.RedisError as exc:  # nothing of the batch was sent
            _fail(batch, exc, sent=False)
            return
        replies = await self._run(batch)
        if replies is None:
            return
        again = [pair for pair, reply in zip(batch, replies, strict=True) if isinstance(reply, NoScriptError)]
        for (_, done), reply in zip(batch, replies, strict=True):
            if not isinstance(reply, NoScriptError):
                _settle(done, reply)
        if not again:
            return
        # Redis did not know a script (it restarted, or ran SCRIPT FLUSH): those writes did not
        # run. Load the scripts, then send them again, after the rest of their batch.
        try:
            await self._pipe.execute([("SCRIPT", "LOAD", source) for source in _SCRIPTS])
        except redis.RedisError as exc:  # the writes themselves were not sent again
            _fail(again, exc, sent=False)
            return
        replies = await self._run(again)
        if replies is not None:
            for (_, done), reply in zip(again, replies, strict=True):
                _settle(done, reply)

    async def _run(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> list[Any] | None:
        """The replies to ``batch``, sent once; None, with its writes failed, when the connection
        was lost after it was sent (Redis may have run it)."""
        assert self._pipe is not None
        try:
            return await self._pipe.execute([command for command, _ in batch])
        except redis.RedisError as exc:
            _fail(batch, exc, sent=True)
            return None


def _fail(batch: list[tuple[bytes, asyncio.Future[Any]]], exc: redis.RedisError, *, sent: bool) -> None:
    """Fail each waiting write of ``batch`` with its own ``PublishError``: nothing was sent, or
    (``sent``) it may or may not have been written."""
    for _, done in batch:
        if not done.done():  # else its caller was cancelled
            error = publish_error(exc, sent=sent)
            error.__cause__ = exc
            done.set_exception(error)


def _settle(done: asyncio.Future[Any], reply: Any) -> None:
    """Resolve a waiting write with its reply, or ``PublishError`` (one per waiter)."""
    if done.done():  # its caller was cancelled
        return
    if isinstance(reply, redis.RedisError):
        error = publish_error(reply)
        error.__cause__ = reply
        done.set_exception(error)
    else:
        done.set_result(reply)
