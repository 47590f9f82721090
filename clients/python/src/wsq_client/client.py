"""The client: one WebSocket to a wsq gateway at a time, requests matched to their replies by
``id``, pushes handed to listeners, and reconnection with backoff (``policy``).

Offline policy: while the client is not connected (before the first connection, or between a
drop and the next), ``request()`` and ``send()`` wait for the connection, up to the request's
timeout; nothing is queued inside the client beyond those waiting calls, and nothing already
sent is ever sent again: a request in flight when the socket drops fails with
``ConnectionLost`` (it may or may not have run).

Session resume (protocol/README.md, "Session resume"): when the gateway's ``$connected`` carries
a ``resume_token`` (and ``resume`` is on), every later frame carries ``seq`` (1, 2, 3... per
connection). The client handles each number once and in order: a number it has seen is a
duplicate, dropped; a number that skips one means a frame was lost, so the client abandons the
socket (without a close frame, which would end the session) and resumes. After a lost socket
it reconnects with ``?resume=<token>&after=<last seq>``: requests in flight stay pending while
it does, and get their reply from the replay when the gateway says ``recovered``; otherwise they
fail with ``SessionLost`` (a ``ConnectionLost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from wsq_client.exceptions import ClientClosed, ConnectionLost, RequestTimeout, ServerError, SessionLost
from wsq_client.policy import SESSION_RESUMED, Backoff, reconnects_after_close, reconnects_after_status

__all__ = ["Client", "Push", "StateChange", "connect"]

log = logging.getLogger("wsq_client")

State = Literal["idle", "connecting", "open", "reconnecting", "closed"]
NO_CLOSE_FRAME = 1006
BAD_REQUEST = 400  # the gateway refused a resume token or an ``after`` that is not one


@dataclass(frozen=True)
class Push:
    """A frame without ``id`` from the server: a push (or an ``$error`` about a frame sent
    without ``id``)."""

    action: str
    data: Any


@dataclass(frozen=True)
class StateChange:
    """What ``on_state`` listeners get: the new state, and what goes with it."""

    state: State
    connection_id: str | None = None  # open: the connection's id (from $connected)
    user_id: str | None = None  # open: its user (None: anonymous)
    attempt: int = 0  # reconnecting: the attempt it waits for (1, 2...)
    delay: float = 0.0  # reconnecting: seconds before it
    code: int | None = None  # reconnecting or closed: the close code (or None: no socket yet)
    reason: str = ""  # the close reason, or the error that stopped the connection
    # open, after the client asked to resume a session (None otherwise): whether the gateway
    # still had it (same connection id, user and groups), and whether every frame sent to it
    # meanwhile follows (False: some were lost, the application reloads its state).
    resumed: bool | None = None
    recovered: bool | None = None


class _Refused(Exception):
    """The handshake or the socket ended in a way the policy does not retry."""

    def __init__(
        self, message: str, code: int | None = None, reason: str = "", status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.status = status


Handler = Callable[[Any], Any]
StateHandler = Callable[[StateChange], Any]


class Client:
    """A wsq client. ``await Client(url).connect()`` or ``async with connect(url) as client``.

    ``token`` (or ``get_token``, called before every connection: tokens expire) is sent as
    ``Authorization: Bearer``. ``request_timeout`` bounds each request, including the time it
    waits for a connection. ``reconnect`` (default on) reconnects per ``policy`` with
    ``backoff``, for ever or ``max_attempts`` times in a row. ``resume`` (default on) resumes the
    connection's session after a lost socket when the gateway offers it (a ``resume_token`` in
    ``$connected``); off, or with a gateway that offers none, every reconnection is a new
    connection.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: Callable[[], str | Awaitable[str | None] | None] | None = None,
        request_timeout: float = 10.0,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
        open_timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        ping_interval: float | None = 20.0,
        max_size: int | None = 2**20,
        ssl: Any = None,
        resume: bool = True,
    ) -> None:
        if token is not None and get_token is not None:
            raise ValueError("pass token or get_token, not both")
        self.url = url
        self._token = token
        self._get_token = get_token
        self.request_timeout = request_timeout
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts
        self._open_timeout = open_timeout
        self._headers = dict(headers or {})
        self._ping_interval = ping_interval
        self._max_size = max_size
        self._ssl = ssl
        self.resume = resume
        self.state: State = "idle"
        self.connection_id: str | None = None
        self.user_id: str | None = None
        self._ws: ClientConnection | None = None
        self._opened: asyncio.Event | None = None  # set while a connection is open
        self._closed: asyncio.Event | None = None  # set once closed for good
        self._closed_error: ClientClosed | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_urlsafe(6)
        self._handlers: dict[str, list[Handler]] = {}
        self._state_handlers: list[StateHandler] = []
        self._push_queues: list[asyncio.Queue[Push]] = []
        self._closing = False
        # Session resume: the token of the session to resume (None: nothing to resume), the last
        # seq handled, whether the next seq starts a new count (after a resume without recovery),
        # the close of the socket whose requests wait for the resume, and the sockets abandoned
        # after a gap (read until the gateway closes them with 3012, or dropped without a close
        # frame once the resume is answered: a close frame would end the session).
        self._resume_token: str | None = None
        self._last_seq = 0
        self._rebase = False
        self._lost: tuple[int, str] | None = None
        self._abandoned: dict[ClientConnection, asyncio.Task[None]] = {}
        self._resume_refused = False  # the last resume was refused (HTTP 400): the next open says so

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last frame handled on this connection (0: none yet, or the gateway
        numbers no frames: session resume off)."""
        return self._last_seq

    @property
    def resumable(self) -> bool:
        """Whether a lost socket would be resumed: the gateway gave a resume token, and ``resume``
        and ``reconnect`` are on."""
        return self._resume_token is not None

    # Lifecycle.

    async def connect(self) -> Self:
        """Connect; returns once the first connection is open (``$connected`` read). Raises
        ``ClientClosed`` when it can't be (refused, or attempts exhausted)."""
        if self._task is not None:
            raise RuntimeError("connect() was called already")
        self._opened, self._closed = asyncio.Event(), asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="wsq-client")
        await self._wait_open(None)
        return self

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket (``code``, ``reason``) and stop reconnecting; waiting and in-flight
        requests fail (``ClientClosed`` or ``ConnectionLost``)."""
        self._closing = True
        ws = self._ws
        for socket in [ws, *self._abandoned]:  # a close frame ends the session on the gateway
            if socket is not None:
                with contextlib.suppress(Exception):
                    await socket.close(code, reason)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._finish(ClientClosed("the client was closed", code, reason))

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # Frames.

    async def request(self, action: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Send ``{"action", "data", "id"}`` and return the reply's ``data``. Raises
        ``ServerError`` (``$error``), ``RequestTimeout``, ``ConnectionLost`` or ``ClientClosed``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.request_timeout if timeout is None else timeout)
        ws = await self._wait_open(deadline)
        frame_id = f"{self._id_prefix}-{next(self._ids)}"
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[frame_id] = future
        try:
            try:
                await ws.send(_encode(action, data, frame_id))
            except ConnectionClosed as exc:  # it may have gone out before the socket closed
                raise ConnectionLost(_code(exc), _reason(exc)) from None
            async with asyncio.timeout_at(deadline):
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()
            raise RequestTimeout(f"no answer to {action!r} within the timeout") from None
        finally:
            self._pending.pop(frame_id, None)

    async def history(
        self, group: str, *, since: str | None = None, limit: int | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """A page of ``group``'s history (the pushes sent with ``history=True``), read by the
        gateway itself for a member of the group (else ``ServerError`` ``not_member``):
        ``{"messages": [{"offset", "action", "data", "ts"}], "complete", "gap"}``, oldest
        first. Without ``since`` the newest ``limit`` (1-1000, default 100); with ``since`` (a
        message's ``offset``) the messages after it. Raises as ``request()``."""
        data: dict[str, Any] = {"group": group, "since": since}
        if limit is not None:
            data["limit"] = limit
        page: dict[str, Any] = await self.request("$history", data, timeout=timeout)
        return page

    async def send(self, action: str, data: Any = None, *, timeout: float | None = None) -> None:
        """Send ``{"action", "data"}`` without an id: no reply comes (errors arrive as ``$error``
        pushes). Waits for a connection up to ``timeout`` (default: ``request_timeout``); raises
        ``RequestTimeout`` or ``ClientClosed`` when there is none, ``ConnectionLost`` when the
        socket closed as it was sent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.request_timeout if timeout is None else timeout)
        ws = await self._wait_open(deadline)
        try:
            await ws.send(_encode(action, data, None))
        except ConnectionClosed as exc:
            raise ConnectionLost(_code(exc), _reason(exc)) from None

    def on(self, action: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(data)`` (a function or a coroutine function) for every push of ``action``
        (``"*"``: every push, called with the :class:`Push`); returns the function that stops it."""
        self._handlers.setdefault(action, []).append(handler)

        def off() -> None:
            with contextlib.suppress(ValueError):
                self._handlers.get(action, []).remove(handler)

        return off

    def on_state(self, handler: StateHandler) -> Callable[[], None]:
        """Call ``handler(StateChange)`` at every change of state; returns the function that stops it."""
        self._state_handlers.append(handler)
        return lambda: self._state_handlers.remove(handler) if handler in self._state_handlers else None

    async def pushes(self) -> AsyncIterator[Push]:
        """Every push from now on, in order, until the client closes."""
        queue: asyncio.Queue[Push] = asyncio.Queue()
        self._push_queues.append(queue)
        try:
            while True:
                if self.state == "closed" and queue.empty():
                    return
                get = asyncio.ensure_future(queue.get())
                closed = asyncio.ensure_future(self._wait_closed())
                done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                if get in done:
                    yield get.result()
                else:
                    get.cancel()
        finally:
            self._push_queues.remove(queue)

    async def next_push(self, action: str, *, timeout: float | None = None) -> Any:
        """The ``data`` of the next push of ``action`` (skipping others); RequestTimeout after
        ``timeout`` (default: ``request_timeout``)."""
        try:
            async with asyncio.timeout(self.request_timeout if timeout is None else timeout):
                async for push in self.pushes():
                    if push.action == action:
                        return push.data
        except TimeoutError:
            raise RequestTimeout(f"no push {action!r} within the timeout") from None
        raise ClientClosed("the client closed before the push came")

    # The connection loop.

    async def _run(self) -> None:
        attempt = 0
        code: int | None = None
        reason = ""
        while True:
            self._set_state(StateChange("connecting" if attempt == 0 else "reconnecting", code=code))
            resuming = self._resume_token is not None
            try:
                ws, hello = await self._open(self._resume_url() if resuming else self.url)
            except _Refused as exc:
                if resuming and exc.status == BAD_REQUEST:  # the token is not (or no longer) one
                    self._end_session(resumed=False)
                    self._resume_refused = True
                    attempt += 1
                    if not await self._wait_to_retry(attempt, code, str(exc)):
                        return
                    continue
                self._finish(ClientClosed(str(exc), exc.code, exc.reason))
                return
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                code, reason = _code(exc) if isinstance(exc, ConnectionClosed) else None, str(exc)
                attempt += 1
                if not await self._wait_to_retry(attempt, code, reason):
                    return
                continue
            attempt = 0
            resumed, recovered = self._start_session(hello, resuming)
            self._ws = ws
            self._set_state(
                StateChange(
                    "open",
                    connection_id=self.connection_id,
                    user_id=self.user_id,
                    resumed=resumed,
                    recovered=recovered,
                )
            )
            assert self._opened is not None
            self._opened.set()
            closed = await self._read(ws)
            self._opened.clear()
            self._ws = None
            if closed is None:  # a frame is missing: the socket is abandoned, the session resumed
                code, reason = None, f"a frame was missing after seq {self._last_seq}: resuming"
                self._lost = (NO_CLOSE_FRAME, reason)
            else:
                code, reason = closed
                reconnecting = self.reconnect and reconnects_after_close(code) and not self._closing
                if reconnecting and self._resume_token is not None:
                    self._lost = (code, reason)  # the requests in flight wait for the resume
                else:
                    self._resume_token = None
                    self._fail_pending(ConnectionLost(code, reason))
                if self._closing:
                    return
                if not reconnecting:
                    self._finish(ClientClosed(_closed_message(code), code, reason))
                    return
            attempt = 1
            if not await self._wait_to_retry(attempt, code, reason):
                return

    def _start_session(self, hello: dict[str, Any], resuming: bool) -> tuple[bool | None, bool | None]:
        """Take in a ``$connected``: the connection, its token, where its numbering stands, and the
        requests a lost socket left in flight (kept when the session was recovered, failed
        otherwise). Returns ``resumed`` and ``recovered`` (None when no resume was asked)."""
        resumed: bool | None = False if self._resume_refused else None
        recovered: bool | None = resumed
        self._resume_refused = False
        if resuming:
            resumed = hello.get("resumed") is True
            recovered = resumed and hello.get("recovered") is True
            if not recovered:
                self._end_session(resumed=resumed)
        self._lost = None
        if not resumed:
            self._last_seq = 0
        self._rebase = bool(resumed and not recovered)  # numbering goes on past the lost frames
        token = hello.get("resume_token")
        if not (self.resume and self.reconnect):  # resuming is reconnecting
            self._resume_token = None
        elif isinstance(token, str) and token:
            self._resume_token = token
        elif not resumed:
            self._resume_token = None
        self.connection_id = hello.get("connection_id")
        self.user_id = hello.get("user_id")
        for ws in list(self._abandoned):  # the gateway answered the resume: done with them
            ws.transport.abort()
        return resumed, recovered

    def _end_session(self, *, resumed: bool) -> None:
        """The frames of the lost socket's session are gone: fail the requests that waited."""
        code, reason = self._lost or (NO_CLOSE_FRAME, "")
        self._fail_pending(SessionLost(code, reason, resumed=resumed))
        self._lost = None
        if not resumed:
            self._resume_token = None

    def _resume_url(self) -> str:
        """The URL with ``resume`` and ``after`` added to its query (its other parameters kept)."""
        assert self._resume_token is not None
        parts = urlsplit(self.url)
        kept = [
            field
            for field in parts.query.split("&")
            if field and field.split("=")[0] not in {"resume", "after"}
        ]
        kept.append(urlencode({"resume": self._resume_token, "after": self._last_seq}))
        return urlunsplit(parts._replace(query="&".join(kept)))

    async def _wait_to_retry(self, attempt: int, code: int | None, reason: str) -> bool:
        if not self.reconnect or (self.max_attempts is not None and attempt > self.max_attempts):
            self._finish(ClientClosed(f"could not connect: {reason}", code, reason))
            return False
        delay = self.backoff.delay(attempt)
        self._set_state(StateChange("reconnecting", attempt=attempt, delay=delay, code=code, reason=reason))
        await asyncio.sleep(delay)
        return True

    async def _open(self, url: str) -> tuple[ClientConnection, dict[str, Any]]:
        headers = dict(self._headers)
        token = self._token
        if self._get_token is not None:
            got = self._get_token()
            token = await got if inspect.isawaitable(got) else got
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            ws = await ws_connect(
                url,
                additional_headers=headers,
                open_timeout=self._open_timeout,
                ping_interval=self._ping_interval,
                max_size=self._max_size,
                ssl=self._ssl,
            )
        except InvalidURI as exc:
            raise _Refused(f"not a WebSocket URL: {exc}") from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            if not reconnects_after_status(status):
                message = f"the gateway refused the connection: HTTP {status}"
                raise _Refused(message, None, str(exc), status) from None
            raise
        try:
            async with asyncio.timeout(self._open_timeout):
                hello = json.loads(await ws.recv())
        except BaseException:
            await ws.close()
            raise
        if not isinstance(hello, dict) or hello.get("action") != "$connected":
            await ws.close()
            raise _Refused(f"not a wsq gateway: the first frame was {hello!r}")
        data = hello.get("data")
        return ws, data if isinstance(data, dict) else {}

    async def _read(self, ws: ClientConnection) -> tuple[int, str] | None:
        """Hand every frame to its request or listeners until the socket closes: its close code
        and reason; None when a frame is missing (the socket is abandoned to resume)."""
        try:
            async for message in ws:
                try:
                    frame = json.loads(message)
                except ValueError:
                    log.warning("dropped a frame that is not JSON")
                    continue
                if not isinstance(frame, dict):
                    continue
                verdict = self._sequence(frame.get("seq"))
                if verdict == "gap":
                    log.info("seq %s after %s: a frame is missing, resuming", frame["seq"], self._last_seq)
                    self._abandon(ws)
                    return None
                if verdict == "handle":
                    self._dispatch(frame)
        except ConnectionClosed:
            pass
        return _code_of(ws), _reason_of(ws)

    def _sequence(self, seq: Any) -> Literal["handle", "drop", "gap"]:
        """What to do with a frame numbered ``seq``: handle it (the next one), drop it (seen
        already) or resume (one is missing before it)."""
        if self._resume_token is None or not isinstance(seq, int) or isinstance(seq, bool):
            return "handle"  # resume is off: frames are handled as they come
        if seq <= self._last_seq:
            return "drop"
        if seq != self._last_seq + 1 and not self._rebase:
            return "gap"
        self._last_seq = seq
        self._rebase = False
        return "handle"

    def _abandon(self, ws: ClientConnection) -> None:
        """Stop handling ``ws``'s frames, without a close frame (one would end the session): read
        and drop them until the gateway closes it (3012, once the new socket took over) or the
        resume is answered (then the client drops it)."""

        async def drain() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for _ in ws:
                    pass
            self._abandoned.pop(ws, None)

        self._abandoned[ws] = asyncio.create_task(drain(), name="wsq-client-abandoned")

    def _dispatch(self, frame: dict[str, Any]) -> None:
        action, data, frame_id = frame.get("action"), frame.get("data"), frame.get("id")
        if frame_id is not None:
            future = self._pending.get(frame_id)
            if future is None or future.done():
                return  # an answer nobody waits for any more (timed out)
            if action == "$error" and isinstance(data, dict):
                future.set_exception(ServerError(str(data.get("code")), str(data.get("message", ""))))
            else:
                future.set_result(data)
            return
        if not isinstance(action, str):
            return
        push = Push(action, data)
        for queue in self._push_queues:
            queue.put_nowait(push)
        for handler in [*self._handlers.get(action, ()), *self._handlers.get("*", ())]:
            self._call(handler, push if handler in self._handlers.get("*", ()) else data)

    def _call(self, handler: Callable[[Any], Any], argument: Any) -> None:
        try:
            result = handler(argument)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(_log_failure)
        except Exception:
            log.exception("a push handler failed")

    # State.

    async def _wait_open(self, deadline: float | None) -> ClientConnection:
        if self._opened is None:
            raise ClientClosed("connect() was not called")
        while True:
            if self._closed_error is not None:
                raise self._closed_error
            ws = self._ws
            if ws is not None and self._opened.is_set():
                return ws
            opened = asyncio.ensure_future(self._opened.wait())
            closed = asyncio.ensure_future(self._wait_closed())
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.wait({opened, closed}, return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                raise RequestTimeout("no connection within the timeout") from None
            finally:
                opened.cancel()
                closed.cancel()

    async def _wait_closed(self) -> None:
        if self._closed is None:
            raise ClientClosed("connect() was not called")
        await self._closed.wait()

    def _set_state(self, change: StateChange) -> None:
        self.state = change.state
        for handler in list(self._state_handlers):
            self._call(handler, change)

    def _fail_pending(self, exc: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)

    def _finish(self, exc: ClientClosed) -> None:
        if self._closed_error is not None:
            return
        self._closed_error = exc
        if self._closed is not None:
            self._closed.set()
        if self._lost is not None:  # in flight on a lost socket, and no resume will come
            self._fail_pending(ConnectionLost(*self._lost))
        self._fail_pending(exc)
        self._resume_token = None
        for ws, task in list(self._abandoned.items()):
            ws.transport.abort()
            task.cancel()
        self._abandoned.clear()
        self._set_state(StateChange("closed", code=exc.code, reason=exc.reason or str(exc)))


def connect(url: str, **options: Any) -> Client:
    """``async with connect(url, token=...) as client:`` — a :class:`Client`, connected on entry
    and closed on exit."""
    return Client(url, **options)


def _closed_message(code: int) -> str:
    if code == SESSION_RESUMED:
        return "the session was resumed on another socket (3012): someone else holds its resume token now"
    return f"the server closed the connection with {code}"


def _encode(action: str, data: Any, frame_id: str | None) -> str:
    frame: dict[str, Any] = {"action": action, "data": data}
    if frame_id is not None:
        frame["id"] = frame_id
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _code(exc: ConnectionClosed) -> int:
    return exc.rcvd.code if exc.rcvd is not None else NO_CLOSE_FRAME


def _reason(exc: ConnectionClosed) -> str:
    return exc.rcvd.reason if exc.rcvd is not None else ""


def _code_of(ws: ClientConnection) -> int:
    """The close code the server sent (websockets says 1006 when no close frame came)."""
    return ws.close_code if ws.close_code is not None else NO_CLOSE_FRAME


def _reason_of(ws: ClientConnection) -> str:
    return ws.close_reason or ""


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a push handler failed", exc_info=task.exception())
