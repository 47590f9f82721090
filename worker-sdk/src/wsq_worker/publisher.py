"""Push frames to WebSocket connections from any Python process (a web app, a cron job, a worker).

``Publisher`` uses a blocking ``redis.Redis`` (its connection pool is thread-safe: share one
publisher between the threads of a Django or Flask app); ``AsyncPublisher`` has the same API
on ``redis.asyncio``. Both build every command with the protocol core's ``Route`` and
``MembershipWrite`` (``wsq_protocol.publishing``, shared with the gateway's HTTP API, which also
runs ``AsyncPublisher``'s writes and reads) and decode every presence reply with
``wsq_protocol.presence``; only the execution differs.

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

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.retry
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.exceptions import MovedError, NoScriptError, RedisClusterException

from wsq_protocol import codec
from wsq_protocol.cluster import AsyncClient, SyncClient, async_redis, sync_redis
from wsq_protocol.history import (
    DEFAULT_LIMIT,
    READ_SCRIPT,
    HistoryAppend,
    HistoryPage,
    HistoryRead,
    HistorySettings,
    history_settings_from_env,
)
from wsq_protocol.keys import keys_for
from wsq_protocol.membership import new_token, settle
from wsq_protocol.preflight import shards_problem
from wsq_protocol.publishing import (
    JOIN_SCRIPT,
    LEAVE_SCRIPT,
    AsyncPublishing,
    GatewaysWrite,
    MembershipWrite,
    Route,
    StreamWrite,
    Write,
    gateways_written,
    history_push_error,
    membership_error,
    publish_error,
    shards_error,
)
from wsq_protocol.routing import slot_of
from wsq_protocol.scripts import run
from wsq_worker.exceptions import PublishError
from wsq_worker.presence import ConnectionInfo, decode_connection_info, decode_members
from wsq_worker.protocol import check_group, check_user_id, node_of, push_frame
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
    "publish_error",
]

_T = TypeVar("_T")

# Clients the publishers create fail fast: a few quick retries, then PublishError.
_CONNECT_TIMEOUT_S = 5.0
_COMMAND_TIMEOUT_S = 5.0
_RETRIES = 3


_DEFAULT_HISTORY = HistorySettings()


def _history_settings(
    defaults: HistorySettings, history: bool, size: int | None, ttl_s: float | None
) -> HistorySettings | None:
    """The settings of a push's history append (None: no history), ValueError for
    ``history_size``/``history_ttl_s`` without ``history=True``."""
    if not history:
        if size is not None or ttl_s is not None:
            raise ValueError("history_size and history_ttl_s go with history=True")
        return None
    return HistorySettings(
        defaults.size if size is None else size, defaults.ttl_s if ttl_s is None else ttl_s
    )


class Target:
    """Pushes to one route, returned by ``Publisher.to()``, ``.to_user()``, ``.to_group()`` and
    ``.broadcast()``."""

    __slots__ = ("_append", "_execute", "_history", "route")

    def __init__(
        self,
        execute: Callable[[Write], int],
        route: Route,
        append: Callable[[HistoryAppend], str] | None = None,
        history: HistorySettings = _DEFAULT_HISTORY,
    ) -> None:
        self._execute = execute
        self.route = route
        self._append = append
        self._history = history

    def send(
        self,
        action: str,
        data: Any = None,
        *,
        exclude: str | None = None,
        history: bool = False,
        history_size: int | None = None,
        history_ttl_s: float | None = None,
    ) -> int:
        """Push ``{"action": action, "data": data}``; returns the number of commands written: 1
        (for ``to()``: 0 when the connection's gateway is gone, whose stream is not created
        again), or for ``to_user()``/``to_group()`` the number of gateways holding a member.

        ``exclude`` (``to_group()`` only, ValueError elsewhere) is a connection that must not
        receive the push, typically the sender.

        ``history=True`` (``to_group()`` only, ValueError elsewhere) also appends the push to
        the group's history (``Publisher.history()``, a client's ``$history``), which keeps the
        last ``history_size`` entries (``WSQ_HISTORY_SIZE``, default 100) of the last
        ``history_ttl_s`` seconds (``WSQ_HISTORY_TTL_S``, default 300). The append and the push
        are separate writes, not atomic: the append comes first, and when it fails nothing is
        sent; when the push fails after it, the ``PublishError`` says the message is in the
        history (clients reading it will see it) but was not delivered live.
        """
        frame = push_frame(action, data)
        write = self.route.send(frame, exclude)
        settings = _history_settings(self._history, history, history_size, history_ttl_s)
        if settings is None:
            return self._execute(write)
        append = self.route.history_append(action, codec.dumps(data), settings)
        assert self._append is not None
        offset = self._append(append)
        try:
            return self._execute(write)
        except PublishError as exc:
            raise history_push_error(offset, exc) from exc

    def disconnect(self, code: int = 1000, reason: str = "") -> int:
        """Close the route's connections: ``code`` is 1000 or 3000-4999, ``reason`` <= 123 bytes.
        Returns the number of commands written, as ``send()``."""
        return self._execute(self.route.disconnect(code, reason))


class AsyncTarget:
    """``Target`` for ``AsyncPublisher``: the same methods, to be awaited."""

    __slots__ = ("_append", "_execute", "_history", "route")

    def __init__(
        self,
        execute: Callable[[Write], Awaitable[int]],
        route: Route,
        append: Callable[[HistoryAppend], Awaitable[str]] | None = None,
        history: HistorySettings = _DEFAULT_HISTORY,
    ) -> None:
        self._execute = execute
        self.route = route
        self._append = append
        self._history = history

    async def send(
        self,
        action: str,
        data: Any = None,
        *,
        exclude: str | None = None,
        history: bool = False,
        history_size: int | None = None,
        history_ttl_s: float | None = None,
    ) -> int:
        """See ``Target.send``."""
        frame = push_frame(action, data)
        write = self.route.send(frame, exclude)
        settings = _history_settings(self._history, history, history_size, history_ttl_s)
        if settings is None:
            return await self._execute(write)
        append = self.route.history_append(action, codec.dumps(data), settings)
        assert self._append is not None
        offset = await self._append(append)
        try:
            return await self._execute(write)
        except PublishError as exc:
            raise history_push_error(offset, exc) from exc

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
        self.history_settings = history_settings_from_env()
        """``WSQ_HISTORY_SIZE`` and ``WSQ_HISTORY_TTL_S``: what ``send(..., history=True)`` keeps."""

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
        """Every member of ``group``, on every gateway (ValueError for a malformed group name);
        ``send(..., history=True)`` keeps the push in the group's history too."""
        return Target(
            self._execute, Route.group(self.keys, group), self._append_history, self.history_settings
        )

    def broadcast(self) -> Target:
        """Every connection of every gateway."""
        return Target(self._execute, Route.everyone(self.keys))

    # History.

    def history(self, group: str, since: str | None = None, limit: int = DEFAULT_LIMIT) -> HistoryPage:
        """One page of the group's history (pushes sent with ``history=True``): without
        ``since`` the newest ``limit`` entries (1-1000), with ``since`` (an entry's ``offset``)
        the entries after it; oldest first either way. ``complete`` says nothing asked for was
        left out, ``gap`` that entries after ``since`` were trimmed. ValueError for a bad
        group, ``since`` or ``limit``; ``PublishError`` when Redis fails."""
        read = HistoryRead.of(self.keys, group, since, limit)
        reply = self._read(
            lambda: _run_at_once(run(_AwaitableRedis(self.client), READ_SCRIPT, read.keys, read.args))
        )
        return read.page(reply)

    def _append_history(self, append: HistoryAppend) -> str:
        self._check_shards(read=False)
        try:
            try:
                reply = self._write_once(append.stream, append.command)
            except NoScriptError:  # Redis restarted or flushed its scripts: the write did not run
                self.client.script_load(append.body)
                reply = self._write_once(append.stream, append.command)
        except redis.RedisError as exc:
            raise publish_error(exc) from exc
        return reply.decode() if isinstance(reply, bytes) else str(reply)

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
            raise shards_error(problem, read=read)
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

    It runs the protocol core's ``wsq_protocol.publishing.AsyncPublishing`` (shared with the
    gateway's HTTP API): its writes go in batches, on a connection of their own, at most once as
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
        self.publishing = AsyncPublishing(self.client, self.keys)
        self._execute = self.publishing.execute
        self._batches = self.publishing.batches
        self.history_settings = history_settings_from_env()
        """``WSQ_HISTORY_SIZE`` and ``WSQ_HISTORY_TTL_S``: what ``send(..., history=True)`` keeps."""

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
        """Every member of ``group``, on every gateway (ValueError for a malformed group name);
        ``send(..., history=True)`` keeps the push in the group's history too."""
        return AsyncTarget(
            self._execute,
            Route.group(self.keys, group),
            self.publishing.append_history,
            self.history_settings,
        )

    def broadcast(self) -> AsyncTarget:
        """Every connection of every gateway."""
        return AsyncTarget(self._execute, Route.everyone(self.keys))

    # History.

    async def history(self, group: str, since: str | None = None, limit: int = DEFAULT_LIMIT) -> HistoryPage:
        """See ``Publisher.history``."""
        return await self.publishing.history(group, since, limit)

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
        return await self.publishing.connections(user_id)

    async def is_online(self, user_id: str) -> bool:
        """See ``Publisher.is_online``."""
        return await self.publishing.is_online(user_id)

    async def group_members(self, group: str) -> list[str]:
        """See ``Publisher.group_members``."""
        return await self.publishing.group_members(group)

    async def connection_info(self, connection_id: str) -> ConnectionInfo | None:
        """See ``Publisher.connection_info``."""
        return await self.publishing.connection_info(connection_id)

    async def aclose(self) -> None:
        """Close the Redis connections (the client's only when it was not passed in)."""
        await self.publishing.aclose()
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
