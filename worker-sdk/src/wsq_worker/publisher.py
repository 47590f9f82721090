"""Push frames to WebSocket connections from any Python process (a web app, a cron job, a worker).

``Publisher`` uses a blocking ``redis.Redis`` (its connection pool is thread-safe: share one
publisher between the threads of a Django or Flask app); ``AsyncPublisher`` has the same API
on ``redis.asyncio``. Both build every command here, with ``Route``; only the execution of the
resulting ``StreamWrite``/``UserWrite`` differs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, cast

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.retry
from redis.typing import EncodableT, FieldT

from wsq_worker import constants
from wsq_worker.exceptions import PublishError
from wsq_worker.protocol import TargetKind, disconnect_command, node_of, push_frame, send_command

__all__ = ["AsyncPublisher", "AsyncTarget", "Publisher", "Route", "StreamWrite", "Target", "UserWrite"]

# Appends one command to the node stream of every gateway holding a connection of the user.
# KEYS[1]: the user's set of connection ids. ARGV: node stream key = ARGV[1] .. node .. ARGV[2],
# ARGV[3]: MAXLEN ~ cap, ARGV[4...]: the command's fields and values. Returns the number of gateways.
# The node stream keys are computed in the script, so it needs a single Redis (not a cluster).
TO_USER_SCRIPT = """
local seen, reached = {}, 0
for _, connection_id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local node = string.match(connection_id, '^([%w_%-]+)%.[%w_%-]+$')
  if node and not seen[node] then
    seen[node] = true
    redis.call('XADD', ARGV[1] .. node .. ARGV[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
    reached = reached + 1
  end
end
return reached
"""

# Clients the publishers create fail fast: a few quick retries, then PublishError.
_CONNECT_TIMEOUT_S = 5.0
_COMMAND_TIMEOUT_S = 5.0
_RETRIES = 3


@dataclass(frozen=True, slots=True)
class StreamWrite:
    """One ``XADD stream MAXLEN ~ maxlen * fields``."""

    stream: str
    fields: dict[str, str]
    maxlen: int

    @property
    def xadd_fields(self) -> dict[FieldT, EncodableT]:
        # redis-py types the map with its own (invariant) key and value unions.
        return cast("dict[FieldT, EncodableT]", self.fields)


@dataclass(frozen=True, slots=True)
class UserWrite:
    """One ``EVALSHA`` of ``TO_USER_SCRIPT``: the command goes to every gateway of the user."""

    user_connections: str
    node_stream_head: str
    node_stream_tail: str
    fields: dict[str, str]

    @property
    def keys(self) -> list[str]:
        return [self.user_connections]

    @property
    def args(self) -> list[str]:
        head_tail_cap = [self.node_stream_head, self.node_stream_tail, str(constants.NODE_STREAM_MAXLEN)]
        return head_tail_cap + [item for pair in self.fields.items() for item in pair]


Write = StreamWrite | UserWrite


@dataclass(frozen=True, slots=True)
class Route:
    """Where a push goes (one connection, every connection of a user, everyone) and how to get there."""

    key_prefix: str
    target: TargetKind
    to: str | None = None

    @classmethod
    def connection(cls, key_prefix: str, connection_id: str) -> Route:
        node_of(connection_id)  # ValueError now rather than a command no gateway will ever read
        return cls(key_prefix, "connection", connection_id)

    @classmethod
    def user(cls, key_prefix: str, user_id: str) -> Route:
        if not isinstance(user_id, str) or not user_id:
            raise ValueError(f"a user id is a non-empty string, not {user_id!r}")
        return cls(key_prefix, "user", user_id)

    @classmethod
    def everyone(cls, key_prefix: str) -> Route:
        return cls(key_prefix, "all")

    def send(self, frame: str) -> Write:
        """The write delivering ``frame`` (server-frame JSON text) to this route's sockets."""
        fields = send_command(self.target, self.to, frame)
        if self.target == "user":
            assert self.to is not None
            head, tail = constants.node_stream(self.key_prefix, "\n").split("\n")
            return UserWrite(constants.user_connections(self.key_prefix, self.to), head, tail, fields)
        if self.target == "all":
            return StreamWrite(
                constants.broadcast_stream(self.key_prefix), fields, constants.BROADCAST_STREAM_MAXLEN
            )
        return StreamWrite(self._node_stream(), fields, constants.NODE_STREAM_MAXLEN)

    def disconnect(self, code: int = 1000, reason: str = "") -> StreamWrite:
        if self.target != "connection":
            raise ValueError("disconnect() closes one connection: use it on to(connection_id)")
        assert self.to is not None
        return StreamWrite(
            self._node_stream(),
            disconnect_command("connection", self.to, code, reason),
            constants.NODE_STREAM_MAXLEN,
        )

    def _node_stream(self) -> str:
        assert self.to is not None
        return constants.node_stream(self.key_prefix, node_of(self.to))


def publish_error(exc: redis.RedisError) -> PublishError:
    """The PublishError to raise (``from exc``) when Redis failed to take a command."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return PublishError(f"Redis is unavailable, nothing was sent: {exc}")
    return PublishError(f"Redis refused the command, nothing was sent: {exc}")


class Target:
    """Pushes to one route, returned by ``Publisher.to()``, ``.to_user()`` and ``.broadcast()``."""

    __slots__ = ("_execute", "route")

    def __init__(self, execute: Callable[[Write], int], route: Route) -> None:
        self._execute = execute
        self.route = route

    def send(self, action: str, data: Any = None) -> int:
        """Push ``{"action": action, "data": data}``; returns the number of commands written
        (1, or for ``to_user()`` the number of gateways holding a connection of the user)."""
        return self._execute(self.route.send(push_frame(action, data)))

    def disconnect(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (``to()`` only): ``code`` is 1000 or 3000-4999, ``reason`` <= 123 bytes."""
        self._execute(self.route.disconnect(code, reason))


class AsyncTarget:
    """``Target`` for ``AsyncPublisher``: the same methods, to be awaited."""

    __slots__ = ("_execute", "route")

    def __init__(self, execute: Callable[[Write], Awaitable[int]], route: Route) -> None:
        self._execute = execute
        self.route = route

    async def send(self, action: str, data: Any = None) -> int:
        """See ``Target.send``."""
        return await self._execute(self.route.send(push_frame(action, data)))

    async def disconnect(self, code: int = 1000, reason: str = "") -> None:
        """See ``Target.disconnect``."""
        await self._execute(self.route.disconnect(code, reason))


def _check_client_arguments(redis_url: str | None, client: object) -> None:
    if redis_url is not None and client is not None:
        raise ValueError("pass either redis_url or client, not both")


class Publisher:
    """Pushes frames to connections through Redis, from blocking code.

    ``Publisher()`` reads ``WSQ_REDIS_URL`` and ``WSQ_KEY_PREFIX`` (as ``from_env()`` does) unless
    ``redis_url``/``key_prefix`` are given; ``client`` reuses an existing ``redis.Redis``, which
    ``close()`` then leaves open. Redis failures raise ``PublishError``.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        *,
        client: redis.Redis | None = None,
    ) -> None:
        _check_client_arguments(redis_url, client)
        self.key_prefix = key_prefix or constants.key_prefix_from_env()
        self._owns_client = client is None
        self.client = client or redis.Redis.from_url(
            redis_url or constants.redis_url_from_env(),
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            retry=redis.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
        )
        self._to_user_script = self.client.register_script(TO_USER_SCRIPT)

    @classmethod
    def from_env(cls) -> Self:
        return cls(constants.redis_url_from_env(), constants.key_prefix_from_env())

    def to(self, connection_id: str) -> Target:
        """One connection (ValueError for a malformed id)."""
        return Target(self._execute, Route.connection(self.key_prefix, connection_id))

    def to_user(self, user_id: str) -> Target:
        """Every connection of ``user_id``, on every gateway."""
        return Target(self._execute, Route.user(self.key_prefix, user_id))

    def broadcast(self) -> Target:
        """Every connection of every gateway."""
        return Target(self._execute, Route.everyone(self.key_prefix))

    def _execute(self, write: Write) -> int:
        try:
            if isinstance(write, StreamWrite):
                self.client.xadd(write.stream, write.xadd_fields, maxlen=write.maxlen, approximate=True)
                return 1
            return int(self._to_user_script(keys=write.keys, args=write.args))
        except redis.RedisError as exc:
            raise publish_error(exc) from exc

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
    """``Publisher`` for asyncio code: the same API, awaited (``await pub.aclose()``, ``async with``)."""

    def __init__(
        self,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        _check_client_arguments(redis_url, client)
        self.key_prefix = key_prefix or constants.key_prefix_from_env()
        self._owns_client = client is None
        self.client = client or redis.asyncio.Redis.from_url(
            redis_url or constants.redis_url_from_env(),
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            retry=redis.asyncio.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
        )
        self._to_user_script = self.client.register_script(TO_USER_SCRIPT)

    @classmethod
    def from_env(cls) -> Self:
        return cls(constants.redis_url_from_env(), constants.key_prefix_from_env())

    def to(self, connection_id: str) -> AsyncTarget:
        """One connection (ValueError for a malformed id)."""
        return AsyncTarget(self._execute, Route.connection(self.key_prefix, connection_id))

    def to_user(self, user_id: str) -> AsyncTarget:
        """Every connection of ``user_id``, on every gateway."""
        return AsyncTarget(self._execute, Route.user(self.key_prefix, user_id))

    def broadcast(self) -> AsyncTarget:
        """Every connection of every gateway."""
        return AsyncTarget(self._execute, Route.everyone(self.key_prefix))

    async def _execute(self, write: Write) -> int:
        try:
            if isinstance(write, StreamWrite):
                await self.client.xadd(write.stream, write.xadd_fields, maxlen=write.maxlen, approximate=True)
                return 1
            return int(await self._to_user_script(keys=write.keys, args=write.args))
        except redis.RedisError as exc:
            raise publish_error(exc) from exc

    async def aclose(self) -> None:
        """Close the Redis connections (unless the client was passed in)."""
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
