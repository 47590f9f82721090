"""The gateway's state, one object kept in the aiohttp app under :data:`GATEWAY`."""

from __future__ import annotations

import asyncio
import ipaddress

from aiohttp import web

from wsq_gateway.admission import Slots, Turns
from wsq_gateway.auth import Authenticator
from wsq_gateway.broker.batcher import RedisBatcher
from wsq_gateway.broker.inbound import Inbound
from wsq_gateway.broker.liveness import Liveness
from wsq_gateway.broker.outbound import Outbound
from wsq_gateway.broker.peers import Peers
from wsq_gateway.broker.registry import BATCHED_SCRIPTS, ensure_stream_command
from wsq_gateway.broker.untaken import Untaken
from wsq_gateway.connection import Connection, ConnectionIndex
from wsq_gateway.metrics import GatewayMetrics
from wsq_gateway.sessions import Sessions
from wsq_gateway.settings import Settings
from wsq_gateway.supervisor import Supervisor
from wsq_gateway.validation import Validators
from wsq_protocol.cluster import AsyncClient
from wsq_protocol.codes import CloseCode, ErrorCode
from wsq_protocol.frames import encode_error_frame
from wsq_protocol.keys import Keys

NOT_TAKEN = "no worker took the frame in time: it was withdrawn and will not run; send it again later"


class Gateway:
    """Settings, the Redis client and the pieces built on it, and the local connections."""

    def __init__(self, settings: Settings, redis: AsyncClient, blocking_redis: AsyncClient) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.redis = redis
        # XREAD BLOCK waits longer than the normal socket timeout: it gets a client of its own.
        self.blocking_redis = blocking_redis
        self.keys = Keys(settings.key_prefix, settings.shards)
        self.connections = ConnectionIndex()
        self.metrics = (
            GatewayMetrics(self.connections, max_actions=settings.metrics_max_actions)
            if settings.metrics
            else None
        )
        # Whatever this gateway writes on a new Redis connection (an empty one after a restart,
        # say), its stream exists first: replies to its events are appended with NOMKSTREAM.
        self.batcher = RedisBatcher(
            redis,
            sequence_key=self.keys.node_sequence(self.node_id),
            scripts=BATCHED_SCRIPTS,
            stall_s=settings.redis_timeout_s,
            on_connect=ensure_stream_command(self.keys, self.node_id),
        )
        self.inbound = Inbound(
            self.batcher,
            redis,
            self.keys,
            self.node_id,
            max_queued=settings.max_queued_frames,
            max_backlog=settings.max_inbound_backlog,
            max_per_user=settings.max_connections_per_user,
            worker_timeout_s=settings.worker_timeout_s,
            stall_after_s=settings.stall_after_s,
        )
        self.untaken = Untaken(
            redis, self.keys.inbound_stream_of(self.node_id), settings.take_timeout_s, self._not_taken
        )
        # Session resume: other gateways are written to (peers) for sessions that move.
        self.peers = self.inbound.peers = Peers(redis, self.keys)
        self.sessions = Sessions(
            node_id=self.node_id,
            connections=self.connections,
            peers=self.peers,
            window_s=settings.resume_window_s,
            buffer_frames=settings.resume_buffer_frames,
            buffer_bytes=settings.resume_buffer_bytes,
            forget=self.forget_connection,
            draining=lambda: self.draining,
        )
        self.outbound = Outbound(
            blocking_redis,
            self.batcher,
            self.keys,
            self.node_id,
            self.connections,
            settings.max_pending_bytes,
            split_reads=settings.redis_cluster,  # the node stream and the broadcast: two slots
            metrics=self.metrics,
            sessions=self.sessions,
            close=self.close_connection,
        )
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self.authenticator = Authenticator(secret, audience=settings.jwt_audience, issuer=settings.jwt_issuer)
        # Sockets and handshakes in progress by client address, counted from the check on.
        self.addr_slots = Slots(settings.max_connections_per_addr)
        self.user_turns = Turns()  # one admission of a user at a time: its check, then its registration
        self.liveness = Liveness(
            redis,
            self.keys,
            self.node_id,
            heartbeat_s=settings.node_heartbeat_s,
            timeout_s=settings.node_timeout_s,
            on_reaped=self.close_all,
            on_registry_lost=self.reregister_all,
        )
        self._proxies = settings.proxies
        self.origins = settings.origins  # parsed once, checked at every upgrade
        self.forwarded_headers = settings.forwarded_headers  # parsed once, copied at every upgrade
        # The action schemas workers published: frames' data is checked against them.
        self.validators = Validators(redis, self.keys.schemas, settings.schemas_refresh_s)
        self.supervisor = Supervisor()  # watches the background tasks (app.py starts them)
        self.started = False  # Redis reached, command reader running: ready for sockets
        self.draining = False
        self._drain_deadline: float | None = None  # loop time by which the drain must be over
        if self.metrics is not None:
            self._measure(self.metrics)

    def _measure(self, metrics: GatewayMetrics) -> None:
        self.batcher.on_batch = metrics.batch
        consumers = self.inbound.consumers
        metrics.gauges(
            redis_pending_writes=lambda: self.batcher.pending,
            redis_stalled=lambda: float(self.batcher.stalled),
            inbound_backlog=lambda: self.inbound.backlog,
            live_workers=lambda: consumers.state.live_workers if consumers.measured else -1,
            inbound_lag=lambda: consumers.state.lag,
            inbound_oldest_unread_seconds=lambda: consumers.oldest_unread_age_s or 0.0,
            workers_stalled=lambda: float(consumers.stalled),
            draining=lambda: float(self.draining),
            schemas=lambda: len(self.validators.by_action),
            schemas_failed=lambda: len(self.validators.failed),
            sessions_parked=lambda: self.sessions.parked,
            guest_sockets=lambda: len(self.connections.guests),
            peer_commands_pending=lambda: self.peers.pending,
        )
        self.sessions.count_resume = metrics.resumed

    def _not_taken(self, conn: Connection, frame_id: str) -> None:
        """A frame of ``conn`` was withdrawn, unread (``untaken``): answer it, if it is still here."""
        if self.metrics is not None:
            self.metrics.not_taken.inc()
        if self.connections.get(conn.id) is conn:
            conn.deliver(
                encode_error_frame(ErrorCode.NOT_TAKEN, NOT_TAKEN, frame_id), self.settings.max_pending_bytes
            )

    def start_draining(self) -> None:
        """Refuse new sockets (/readyz says 503) and start the WSQ_DRAIN_S clock (once)."""
        self.draining = True
        if self._drain_deadline is None:
            self._drain_deadline = asyncio.get_running_loop().time() + self.settings.drain_s

    def drain_time_left(self) -> float:
        """Seconds left of the drain's budget (all of it before the drain starts)."""
        if self._drain_deadline is None:
            return self.settings.drain_s
        return max(self._drain_deadline - asyncio.get_running_loop().time(), 0.0)

    def add_connection(self, conn: Connection) -> None:
        """A socket was accepted: index it (its address's slot was taken before the upgrade)."""
        self.connections.add(conn)
        if self.metrics is not None:
            self.metrics.opened.inc()

    def drop_connection(self, conn: Connection, close_code: int) -> bool:
        """Drop it from the local indexes (counted as closed with ``close_code``); False when
        already dropped."""
        if not self.connections.remove(conn):
            return False
        if self.metrics is not None:
            self.metrics.closed.get(close_code).inc()
        return True

    def forget_connection(self, conn: Connection, close_code: int) -> None:
        """The connection ended: drop it and emit its disconnect event. Once per connection: a
        second call does nothing."""
        self.sessions.forgotten(conn)
        if self.drop_connection(conn, close_code):
            self.inbound.disconnected(conn, close_code)

    def socket_ended(self, conn: Connection, epoch: int, close_code: int) -> None:
        """The socket ``epoch`` of ``conn`` ended with ``close_code``: the connection ends, or
        waits for a resume (sessions.py)."""
        if self.sessions.enabled:
            self.sessions.ended(conn, epoch, close_code)
        else:
            self.forget_connection(conn, close_code)

    async def close_connection(self, conn: Connection, code: int, reason: str) -> None:
        """Close ``conn`` (a publisher's disconnect...), wherever its socket is, if anywhere."""
        if not self.sessions.close(conn, code):
            await conn.close(code, reason)

    async def reregister_all(self) -> None:
        """Redis restarted empty: record the live connections (and their groups) again."""
        self.inbound.reregister(self.connections.all())

    async def close_all(self) -> None:
        """Close every socket with 1012, and end the sessions homed here: clients reconnect
        (elsewhere, when this one drains), and resume the sessions of other gateways."""
        conns = [*self.connections.all(), *self.connections.guests.values()]
        await asyncio.gather(
            *(
                self.close_connection(conn, CloseCode.SERVICE_RESTART, "service restart, reconnect")
                for conn in conns
            ),
            return_exceptions=True,
        )

    def client_addr(self, request: web.Request) -> str:
        """The client's address: the peer's, or the one a trusted proxy says it forwards."""
        remote = request.remote or ""
        if not self._proxies or not _within(remote, self._proxies):
            return remote
        hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
        client = remote
        for hop in reversed(hops):  # the right-most address no trusted proxy added is the client
            if not _is_address(hop):  # no proxy wrote that (it is the client's own text): stop here
                break
            client = hop
            if not _within(hop, self._proxies):
                break
        return client


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _within(addr: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in network for network in networks)


GATEWAY = web.AppKey("gateway", Gateway)
