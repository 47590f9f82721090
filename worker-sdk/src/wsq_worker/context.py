"""What a handler knows about the event it handles, and how it answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from wsq_worker.protocol import Event, Request, check_group, push_frame
from wsq_worker.publisher import AsyncPublisher

__all__ = ["Context", "Meta", "Request"]

_T = TypeVar("_T")


class Meta:
    """Where and when the gateway received the event (read-only).

    ``Meta(node, received_at, client_addr, close_code=None)``; the worker builds it from the
    event's timestamp and makes ``received_at`` only when a handler reads it.
    """

    __slots__ = ("_client_addr", "_close_code", "_node", "_received_at", "_ts_ms")

    def __init__(
        self, node: str, received_at: datetime, client_addr: str, close_code: int | None = None
    ) -> None:
        self._node = node
        self._received_at: datetime | None = received_at
        self._ts_ms = 0
        self._client_addr = client_addr
        self._close_code = close_code

    @classmethod
    def _of_event(cls, node: str, ts_ms: int, client_addr: str, close_code: int | None) -> Meta:
        meta = cls.__new__(cls)
        meta._node, meta._received_at, meta._ts_ms = node, None, ts_ms
        meta._client_addr, meta._close_code = client_addr, close_code
        return meta

    @property
    def node(self) -> str:
        """The gateway holding the connection."""
        return self._node

    @property
    def received_at(self) -> datetime:
        """When the gateway received the event (timezone-aware, UTC)."""
        if self._received_at is None:
            self._received_at = datetime.fromtimestamp(self._ts_ms / 1000, tz=UTC)
        return self._received_at

    @property
    def client_addr(self) -> str:
        """The client's address as the gateway saw it (may be empty)."""
        return self._client_addr

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code (``on_disconnect`` only)."""
        return self._close_code

    def _key(self) -> tuple[str, datetime, str, int | None]:
        return (self.node, self.received_at, self.client_addr, self.close_code)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Meta) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        node, received_at, client_addr, close_code = self._key()
        return (
            f"Meta(node={node!r}, received_at={received_at!r}, "
            f"client_addr={client_addr!r}, close_code={close_code!r})"
        )


class Context:
    """Passed to every handler: ``handler(ctx, data)``, ``on_connect(ctx)``, ``on_disconnect(ctx)``.

    ``action`` and ``id`` are None for connect and disconnect events; ``id`` is None for a
    message without id (which gets no reply). ``request`` is set in ``on_connect`` only: the
    upgrade request's path, query and forwarded headers, to tell who is connecting.
    ``publisher`` pushes anywhere else.

    The ``*_sync`` methods are for plain ``def`` handlers, which run in the worker's thread pool:
    they block until done, and raise RuntimeError on the event loop's thread.
    """

    __slots__ = (
        "_loop",
        "_send_frame",
        "action",
        "attempt",
        "connection_id",
        "id",
        "meta",
        "publisher",
        "request",
        "user_id",
    )

    def __init__(
        self,
        *,
        connection_id: str,
        user_id: str | None,
        action: str | None,
        id: str | None,
        meta: Meta,
        publisher: AsyncPublisher,
        send_frame: Callable[[str], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
        attempt: int = 1,
        request: Request | None = None,
    ) -> None:
        self.connection_id = connection_id
        self.user_id = user_id
        self.action = action
        self.id = id
        self.attempt = attempt
        """Which attempt this is: 1, then one more for each ``Retry`` and each time the event was
        claimed from a worker that died (so a handler can tell a first run from a re-run)."""
        self.meta = meta
        self.request = request
        """The HTTP request that opened the connection: its path, query and forwarded headers
        (``on_connect`` only; None for other events)."""
        self.publisher = publisher
        self._send_frame = send_frame
        self._loop = loop

    @classmethod
    def _of_event(
        cls,
        event: Event,
        attempt: int,
        publisher: AsyncPublisher,
        send_frame: Callable[[str], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
    ) -> Context:
        """The worker's constructor, once per event: what ``__init__`` sets, without its keyword
        arguments (less than half the time)."""
        ctx = cls.__new__(cls)
        ctx.connection_id, ctx.user_id, ctx.action, ctx.id = (
            event.connection_id,
            event.user_id,
            event.action,
            event.id,
        )
        ctx.attempt, ctx.request = attempt, event.request
        ctx.meta = Meta._of_event(event.node, event.ts, event.addr, event.close_code)
        ctx.publisher, ctx._send_frame, ctx._loop = publisher, send_frame, loop
        return ctx

    def send(self, action: str, data: Any = None) -> Awaitable[None]:
        """Push ``{"action": action, "data": data}`` to this connection: ``await ctx.send(...)``.

        Returns once the command is in Redis (it is batched with the worker's other writes);
        pushes arrive in the order they were awaited, before the handler's reply.
        Raises ``PublishError`` when Redis can't take it; let through a message handler, that
        runs the message again as its next attempt. Called off the worker's event loop (from a
        plain ``def`` handler) it raises RuntimeError at once: use ``send_sync()`` there.
        """
        self._check_loop("send")
        return self._send_frame(push_frame(action, data))

    def send_sync(self, action: str, data: Any = None) -> None:
        """``send()`` for plain ``def`` handlers: blocks until sent."""
        frame = push_frame(action, data)
        self._run_sync("send", lambda: self._send_frame(frame))

    def join(self, group: str) -> Awaitable[bool]:
        """Add this connection to ``group`` (``publisher.join()``); False when it is already gone:
        ``await ctx.join(group)``.

        Pushes to the group awaited afterwards reach this connection. Off the worker's event
        loop (a plain ``def`` handler) it raises RuntimeError at once: use ``join_sync()``.
        """
        self._check_loop("join")
        return self.publisher.join(self.connection_id, group)

    def leave(self, group: str) -> Awaitable[bool]:
        """Remove this connection from ``group``; False when it was not a member:
        ``await ctx.leave(group)``. Off the worker's event loop: ``leave_sync()``."""
        self._check_loop("leave")
        return self.publisher.leave(self.connection_id, group)

    def join_sync(self, group: str) -> bool:
        """``join()`` for plain ``def`` handlers: blocks until done."""
        check_group(group)
        return self._run_sync("join", lambda: self.join(group))

    def leave_sync(self, group: str) -> bool:
        """``leave()`` for plain ``def`` handlers: blocks until done."""
        check_group(group)
        return self._run_sync("leave", lambda: self.leave(group))

    def _check_loop(self, name: str) -> None:
        """Raise at once when ``ctx.<name>()`` is called off the worker's event loop: from a plain
        ``def`` handler its coroutine would never be awaited (and the push silently lost)."""
        try:
            running_loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running_loop = None
        if running_loop is not self._loop:
            raise RuntimeError(
                f"ctx.{name}() called off the worker's event loop (a plain `def` handler runs in a "
                f"thread): use ctx.{name}_sync() there, or make the handler `async def`"
            )

    def _run_sync(self, name: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Await ``call()`` on the worker's event loop from a handler thread, and wait for it."""
        try:
            running_loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running_loop = None
        if running_loop is self._loop:
            raise RuntimeError(
                f"{name}_sync() would block the event loop: use `await ctx.{name}()` in async handlers"
            )

        async def run() -> _T:
            return await call()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def __repr__(self) -> str:
        return (
            f"Context(connection_id={self.connection_id!r}, user_id={self.user_id!r}, "
            f"action={self.action!r}, id={self.id!r})"
        )
