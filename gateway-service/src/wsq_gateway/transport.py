"""HTTP and WebSocket endpoints: ``/ws`` (path from WSQ_PATH), ``/healthz``, ``/readyz``,
``/metrics`` (unless WSQ_METRICS is false)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from aiohttp import WebSocketError, WSMessage, WSMsgType, web

from wsq_gateway import admission
from wsq_gateway.admission import HOOK_TIMEOUT_CLOSE, Close, Refusal
from wsq_gateway.broker.inbound import now_ms
from wsq_gateway.connection import CLOSE_TIMEOUT_S, Connection
from wsq_gateway.errors import AuthenticationError, BrokerUnavailable
from wsq_gateway.history import read_history
from wsq_gateway.logs import CONNECTIONS, get_logger
from wsq_gateway.metrics import CONTENT_TYPE
from wsq_gateway.sessions import ResumeRequest, parse_resume_request
from wsq_gateway.state import GATEWAY, Gateway
from wsq_protocol.cluster import REDIS_FAILURES
from wsq_protocol.codes import ErrorCode
from wsq_protocol.errors import FrameError
from wsq_protocol.events import request_text
from wsq_protocol.frames import decode_client_frame, encode_error_frame, pong_frame
from wsq_protocol.ids import HISTORY, PING, new_connection_id, node_of

log = get_logger(CONNECTIONS)

READY_PING_TIMEOUT_S = 1.0
NO_STATUS = 1005  # RFC 6455: the client's close frame had no code
NO_CLOSE_FRAME = 1006  # RFC 6455: the connection ended without a close frame
BINARY_FRAME = encode_error_frame(ErrorCode.INVALID_FRAME, "binary frames are not supported; send JSON text")
OVERLOADED = "the gateway is overloaded; the frame was not queued, send it again later"
RATE_LIMITED = "too many frames: this one was dropped, slow down"
NO_WORKERS = "no worker is running: the frame was not queued, send it again later"


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for new connections: Redis answers and the gateway is not shutting down.

    Whether workers consume is reported (``workers``) but does not make the gateway unready:
    gateways start before workers in a rollout, and all of them share the same workers, so
    taking them out of the load balancer would only add refused connections to refused frames.
    Stalled workers (``workers.stalled``: live, yet taking nothing) do not either, for the same
    reasons: another gateway would hand its frames to the same busy workers."""
    gateway = request.app[GATEWAY]
    failed = gateway.supervisor.failed_task
    if failed is not None:  # the gateway stops: see supervisor.py
        status = {"status": "failed", "task": failed, "error": gateway.supervisor.reason}
        return web.json_response(status, status=503)
    if gateway.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not gateway.started:
        return web.json_response({"status": "starting: waiting for redis"}, status=503)
    try:
        await asyncio.wait_for(gateway.redis.ping(), READY_PING_TIMEOUT_S)
    except (*REDIS_FAILURES, TimeoutError) as exc:
        return web.json_response({"status": "redis unavailable", "error": str(exc)}, status=503)
    return web.json_response(
        {
            "status": "ready",
            "node": gateway.node_id,
            "connections": len(gateway.connections),
            "workers": _workers_report(gateway),
            "schemas": gateway.validators.report(),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of this gateway's metrics (README, "Metrics")."""
    gateway_metrics = request.app[GATEWAY].metrics
    assert gateway_metrics is not None  # the route exists only with metrics on
    return web.Response(body=gateway_metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


def _workers_report(gateway: Gateway) -> dict[str, object]:
    """The inbound stream's consumers, as the backlog watch last measured them."""
    consumers = gateway.inbound.consumers
    state = consumers.state
    return {
        "live": state.live_workers if consumers.measured else None,
        "consumers": state.consumers,  # live or not: a worker killed leaves its consumer behind
        "accepting_frames": not consumers.none_live,
        "lag": state.lag,
        "pending": state.pending,
        "backlog": state.backlog,
        "stalled": consumers.stalled,  # live, yet none read an event for WSQ_STALL_AFTER_S
        "oldest_unread_age_s": _rounded(consumers.oldest_unread_age_s),
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


_HTTP_ERRORS: dict[int, type[web.HTTPError]] = {
    403: web.HTTPForbidden,
    429: web.HTTPTooManyRequests,
    503: web.HTTPServiceUnavailable,
}


def _refuse(refusal: Refusal) -> web.HTTPError:
    return _HTTP_ERRORS[refusal.status](text=refusal.text)


def _admit(gateway: Gateway, request: web.Request) -> tuple[str | None, str, ResumeRequest | None]:
    """Checks before the upgrade: the connection's user id, client address and resume request
    (``?resume=``), or an HTTP error."""
    refusal = admission.gate(
        draining=gateway.draining,
        failed=gateway.supervisor.failed_task is not None,
        started=gateway.started,
        origin=request.headers.get("Origin"),
        origins=gateway.origins,
    )
    if refusal is not None:
        raise _refuse(refusal)
    try:
        user_id = gateway.authenticator.user_id(request)
    except AuthenticationError as exc:
        raise web.HTTPUnauthorized(
            text=str(exc), headers={"WWW-Authenticate": 'Bearer realm="wsq"'}
        ) from None
    try:
        resume = parse_resume_request(request.query)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return user_id, gateway.client_addr(request), resume


async def _user_refusal(gateway: Gateway, user_id: str) -> Refusal | None:
    """Why the user may not open one more connection: it holds WSQ_MAX_CONNECTIONS_PER_USER
    (on any gateway); None when it may."""
    held: int | None
    try:
        held = int(await gateway.redis.scard(gateway.keys.user_connections(user_id)))
    except REDIS_FAILURES:
        held = None  # not known: admission.user_refusal lets it through
    return admission.user_refusal(held, gateway.settings.max_connections_per_user)


async def _check_user_limit(gateway: Gateway, user_id: str) -> None:
    """HTTP 429 when the user holds WSQ_MAX_CONNECTIONS_PER_USER connections."""
    refusal = await _user_refusal(gateway, user_id)
    if refusal is not None:
        raise _refuse(refusal)


async def _close_socket(ws: web.WebSocketResponse, close: Close) -> None:
    await ws.close(code=close.code, message=close.reason.encode())


async def websocket(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    user_id, client_addr, resume = _admit(gateway, request)
    # Taken at the check, with no await in between, so a burst cannot pass the limit; given
    # back when this handler ends, whichever way it ends.
    slot = gateway.addr_slots.reserve(client_addr)
    if slot is None:
        raise _refuse(admission.ADDR_FULL)
    try:
        return await _websocket(gateway, request, user_id, client_addr, resume)
    finally:
        slot.release()


async def _websocket(
    gateway: Gateway,
    request: web.Request,
    user_id: str | None,
    client_addr: str,
    resume: ResumeRequest | None,
) -> web.StreamResponse:
    settings = gateway.settings
    ws = web.WebSocketResponse(
        heartbeat=settings.heartbeat_s,
        compress=False,
        # aiohttp closes with 1009 at max_msg_size bytes already: a frame of exactly
        # WSQ_MAX_MESSAGE_BYTES is the largest accepted.
        max_msg_size=settings.max_message_bytes + 1,
        decode_text=False,  # orjson checks UTF-8 itself: bad text gets $error, not a closed socket
        timeout=CLOSE_TIMEOUT_S,
    )
    sessions = gateway.sessions
    if resume is not None and sessions.enabled:
        # The session, if it is found, is already counted against its user's limit.
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        session = await _resume(gateway, resume, user_id, client_addr, ws, transport)
        if session is not None:
            await _serve(gateway, session, ws)
            return ws
    upgrade_request = _request_text(request, gateway.forwarded_headers)
    hook = settings.connect_hook
    limited_user = admission.limited_user(user_id, settings.max_connections_per_user)
    # The user's check and registration in one turn: its next upgrade here sees this one counted.
    async with gateway.user_turns.turn(limited_user):
        if limited_user is not None:
            if ws.prepared:  # after a refused resume: past the upgrade, the limit closes with 1008
                if await _user_refusal(gateway, limited_user) is not None:
                    await _close_socket(ws, admission.USER_FULL_CLOSE)
                    return ws
            else:
                await _check_user_limit(gateway, limited_user)
        if not ws.prepared:
            await ws.prepare(request)
        transport = request.transport
        if transport is None:  # the client went away during the handshake
            return ws
        conn = Connection(new_connection_id(gateway.node_id), user_id, client_addr, now_ms(), ws, transport)
        sessions.open(conn)
        gateway.add_connection(conn)
        if hook:
            conn.answer = asyncio.get_running_loop().create_future()
        try:
            registered = await gateway.inbound.connected(conn, hook=hook, request=upgrade_request)
        except BrokerUnavailable as exc:
            # Redis may have registered it before the reply was lost: forget it (a no-op if not).
            close = admission.broker_close(exc)
            gateway.forget_connection(conn, close.code)
            log.warning("could not register a connection", error=str(exc))
            await _close_socket(ws, close)
            return ws
    refused = admission.registration_close(registered)
    if refused is not None:  # another gateway registered one of the user's connections since our check
        gateway.drop_connection(conn, refused.code)  # nothing was written to Redis: nothing to forget there
        log.info("refused a connection: its user holds too many", user_id=conn.user_id)
        await _close_socket(ws, refused)
        return ws

    asked = False if resume is not None else None  # asked to resume: tell it this is a new one
    await _serve(gateway, conn, ws, welcome=lambda: sessions.connected(conn, resumed=asked), hook=bool(hook))
    return ws


async def _resume(
    gateway: Gateway,
    resume: ResumeRequest,
    user_id: str | None,
    client_addr: str,
    ws: web.WebSocketResponse,
    transport: asyncio.Transport,
) -> Connection | None:
    """The session the client resumes, released on ``ws`` with its ``$connected`` and replay;
    None when it can't be (a new connection follows)."""
    sessions = gateway.sessions
    home = node_of(resume.connection_id)
    if home == gateway.node_id:
        return sessions.resume_here(resume, user_id, ws, transport)
    guest = Connection(resume.connection_id, user_id, client_addr, now_ms(), ws, transport)
    guest.home = home
    guest.epoch = 0  # the home numbers the socket in its answer
    if await sessions.resume_elsewhere(resume, guest, user_id):
        return guest
    return None


async def _serve(
    gateway: Gateway,
    conn: Connection,
    ws: web.WebSocketResponse,
    *,
    welcome: Callable[[], bytes] | None = None,
    hook: bool = False,
) -> None:
    """Serve ``conn`` on its socket ``ws`` until the socket ends, then end or park the session.
    A new connection is released first with its ``welcome`` frame (``$connected``), once the
    connect ``hook``, if any, approved it; a resumed one comes released."""
    epoch = conn.epoch
    peer_code: int | None = None
    try:
        if welcome is not None:
            if hook and not await _approved(gateway, conn):
                return
            log.debug("connected", connection_id=conn.id, user_id=conn.user_id, addr=conn.addr)
            conn.release(welcome())
        peer_code = await _read_frames(gateway, conn)
    finally:
        if conn.ws is ws:
            # Our own code when the gateway closed it, else how the socket ended (_close_code_of).
            close_code = conn.close_code or peer_code or NO_CLOSE_FRAME
            gateway.socket_ended(conn, epoch, close_code)
            log.debug("disconnected", connection_id=conn.id, close_code=close_code)


async def _approved(gateway: Gateway, conn: Connection) -> bool:
    """Wait for a worker's accept or refuse (the connect hook); True when accepted."""
    assert conn.answer is not None
    try:
        answer = await asyncio.wait_for(conn.answer, gateway.settings.connect_timeout_s)
    except TimeoutError:
        log.warning("no worker answered the connect hook in time", connection_id=conn.id)
        await _close(conn, HOOK_TIMEOUT_CLOSE)
        return False
    finally:
        conn.answer = None
    verdict = admission.hook_verdict(answer, conn.user_id)
    if verdict is None:  # closed while waiting
        return False
    if isinstance(verdict, Close):
        if verdict.problem is not None:
            log.warning(
                "the connect hook named an unusable user id: refusing the connection",
                connection_id=conn.id,
                error=verdict.problem,
            )
        await _close(conn, verdict)
        return False
    if verdict.new_user is not None:
        previous = conn.user_id
        gateway.connections.set_user(conn, verdict.new_user)
        try:
            recorded = await gateway.inbound.set_user(conn, previous)
        except BrokerUnavailable as exc:
            await _close(conn, admission.broker_close(exc))
            return False
        refused = admission.registration_close(recorded)
        if refused is not None:  # the user the hook named already holds WSQ_MAX_CONNECTIONS_PER_USER
            log.info("refused a connection: its user holds too many", user_id=conn.user_id)
            await _close(conn, refused)
            return False
    return True


async def _close(conn: Connection, close: Close) -> None:
    await conn.close(close.code, close.reason)


def _request_text(request: web.Request, forwarded: tuple[str, ...]) -> str:
    """The connect event's ``request``: path, raw query string and the forwarded headers."""
    headers = {}
    for name in forwarded:
        values = request.headers.getall(name, ())
        if values:  # cookies split in several headers (HTTP/2) join with "; ", others with ", "
            headers[name] = _utf8_text(("; " if name == "cookie" else ", ").join(values))
    return request_text(request.path, request.rel_url.raw_query_string, headers)


def _utf8_text(header_value: str) -> str:
    """A header value as text JSON can carry: aiohttp keeps bytes that are not UTF-8 as lone
    surrogates, which no encoder takes; they become U+FFFD."""
    return header_value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _readable_id(raw: bytes) -> str | None:
    try:
        return decode_client_frame(raw).id
    except FrameError as exc:
        return exc.frame_id


def _close_code_of(msg: WSMessage) -> int:
    """The close code of a socket whose last message was ``msg``, as a plain int: the client's
    (1005 for a close frame without one), the one aiohttp closed with on a bad frame (1009 for
    one over max_msg_size, 1002...), else 1006: the client left without a close frame (TCP
    FIN or RST, or no pong to our pings)."""
    if msg.type is WSMsgType.CLOSE:
        return int(msg.data) or NO_STATUS
    if msg.type is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
        return int(msg.data.code)
    return NO_CLOSE_FRAME


async def _read_frames(gateway: Gateway, conn: Connection) -> int:
    """Read the client's frames until the socket closes; how it closed (``_close_code_of``)."""
    ws, settings = conn.ws, gateway.settings
    max_pending, rate, burst = settings.max_pending_bytes, settings.rate_limit, settings.rate_burst
    consumers, untaken = gateway.inbound.consumers, gateway.untaken
    validators = gateway.validators
    clock = asyncio.get_running_loop().time

    metrics = gateway.metrics
    if metrics is None:
        accepted, refused, ping, history, unavailable = None, None, None, None, None
    else:
        accepted, refused, ping, history, unavailable = (
            metrics.accepted,
            metrics.refused,
            metrics.ping,
            metrics.history,
            metrics.unavailable,
        )

    def rejected_by_redis(exc: BrokerUnavailable, frame_id: str | None) -> None:
        message = "the gateway cannot reach Redis; the frame was not queued, send it again later"
        if unavailable is not None:
            unavailable.inc()
        conn.deliver(encode_error_frame(ErrorCode.UNAVAILABLE, message, frame_id), max_pending)

    while True:
        msg = await ws.receive()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not conn.allow(clock(), rate, burst):
            frame_id = _readable_id(msg.data) if msg.type is WSMsgType.TEXT else None
            if refused is not None:
                refused(ErrorCode.RATE_LIMITED)
            conn.deliver(encode_error_frame(ErrorCode.RATE_LIMITED, RATE_LIMITED, frame_id), max_pending)
        elif msg.type is WSMsgType.TEXT:
            try:
                frame = decode_client_frame(msg.data)
            except FrameError as exc:
                if refused is not None:
                    refused(exc.code)
                conn.deliver(encode_error_frame(exc.code, exc.message, exc.frame_id), max_pending)
                continue
            frame_id = frame.id
            if frame.action == PING:
                if ping is not None:
                    ping.inc()
                conn.deliver(pong_frame(frame.data, frame_id), max_pending)
            elif frame.action == HISTORY:  # answered by the gateway: wsq_gateway.history
                code = read_history(gateway, conn, frame)
                if code is None:
                    if history is not None:
                        history.inc()
                elif refused is not None:
                    refused(code)
            elif (problem := validators.problem(frame.action, frame.data)) is not None:
                if refused is not None:
                    refused(ErrorCode.INVALID_DATA)
                conn.deliver(encode_error_frame(ErrorCode.INVALID_DATA, problem, frame_id), max_pending)
            elif consumers.none_live and await consumers.confirm_none_live():
                if refused is not None:
                    refused(ErrorCode.NO_WORKERS)
                conn.deliver(encode_error_frame(ErrorCode.NO_WORKERS, NO_WORKERS, frame_id), max_pending)
            elif gateway.inbound.message(
                conn,
                msg.data,
                functools.partial(rejected_by_redis, frame_id=frame_id),
                untaken.queued(conn, frame_id) if untaken.enabled and frame_id is not None else None,
            ):
                if accepted is not None:
                    accepted.get(frame.action).inc()
            else:
                if refused is not None:
                    refused(ErrorCode.OVERLOADED)
                conn.deliver(encode_error_frame(ErrorCode.OVERLOADED, OVERLOADED, frame_id), max_pending)
        elif msg.type is WSMsgType.BINARY:
            if refused is not None:
                refused(ErrorCode.INVALID_FRAME)
            conn.deliver(BINARY_FRAME, max_pending)
        else:  # CLOSE, CLOSING, CLOSED or ERROR (e.g. a frame over max_msg_size: aiohttp closed with 1009)
            return _close_code_of(msg)
