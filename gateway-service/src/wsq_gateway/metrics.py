"""Prometheus metrics of one gateway, served at ``GET /metrics`` (README, "Metrics").

Every metric lives in a registry of the gateway's own (two gateways in one process, as in the
tests, do not collide), with prometheus-client's process, platform and GC collectors.

The hot path only calls ``inc()`` on label children bound once: the children of every error
code and command type are made here, those of an action or a close code the first time it is
seen, up to a cap of distinct values (then ``other``: a client cannot grow the label set).
What can be read when scraped (open connections, outbox bytes, queued writes) is a gauge
computed then, which costs the hot path nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from wsq_protocol.codes import ErrorCode
from wsq_protocol.frames import FRAME_INVALID, FRAME_NOT_JSON

if TYPE_CHECKING:
    from wsq_gateway.connection import ConnectionIndex

__all__ = ["CONTENT_TYPE", "DROP_REASONS", "OTHER", "GatewayMetrics", "LabelCache"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER = "other"
MAX_CLOSE_CODES = 50  # distinct close codes labelled (clients may close with any of 3000-4999)
COMMAND_TYPES = (
    *("send", "disconnect", "accept", "refuse", "join", "leave"),
    *("resume", "resumed", "relay", "detach"),  # between gateways (session resume)
    "malformed",
)
RESUME_OUTCOMES = ("recovered", "unrecovered", "refused")
# Why a command was dropped: not a command the gateway can run (decode_command refused it), or a
# send whose frame is not JSON, or JSON that is not a server frame (frames.server_frame_problem).
DROP_REASONS = ("malformed", FRAME_NOT_JSON, FRAME_INVALID)
# Seconds: a batch's round trip to Redis is well under a millisecond on a LAN, seconds in an outage.
BATCH_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LabelCache:
    """The children of a labelled metric by one label's value, made on first sight, at most
    ``cap`` of them: further values share the child labelled ``other``."""

    __slots__ = ("_cap", "_children", "_make", "_other")

    def __init__(self, make: Callable[[str], Counter], cap: int, known: Iterable[str] = ()) -> None:
        self._make = make
        self._cap = cap
        self._children: dict[object, Counter] = {value: make(value) for value in known}
        self._other: Counter | None = None

    def get(self, value: object) -> Counter:
        child = self._children.get(value)
        if child is None:
            child = self._add(value)
        return child

    def _add(self, value: object) -> Counter:
        if len(self._children) >= self._cap:
            if self._other is None:
                self._other = self._make(OTHER)
            return self._other
        child = self._children[value] = self._make(str(value))
        return child


class GatewayMetrics:
    """The gateway's metrics; ``connections`` is read when scraped."""

    def __init__(self, connections: ConnectionIndex, *, max_actions: int) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self._connections = connections

        open_connections = Gauge(
            "wsq_gateway_connections", "WebSocket connections open on this gateway.", registry=registry
        )
        open_connections.set_function(lambda: len(connections))
        outbox = Gauge(
            "wsq_gateway_outbox_bytes",
            "Bytes waiting in the connections' outboxes (clients slower than their frames), summed.",
            registry=registry,
        )
        outbox.set_function(self._outbox_bytes)
        self.opened = Counter(
            "wsq_gateway_connections_opened", "WebSocket connections accepted (upgraded).", registry=registry
        )
        closed = Counter(
            "wsq_gateway_connections_closed",
            "WebSocket connections ended, by close code (the gateway's own, or the client's; 1006: "
            "no close frame).",
            ["code"],
            registry=registry,
        )
        self.closed = LabelCache(lambda code: closed.labels(code=code), MAX_CLOSE_CODES)

        frames_in = Counter(
            "wsq_gateway_frames_in",
            "Client frames received, by outcome: accepted (queued for the workers, labelled by its "
            "action), ping (answered with $pong), history (a $history read started), or the $error code "
            "it was answered with.",
            ["outcome", "action"],
            registry=registry,
        )
        self.accepted = LabelCache(
            lambda action: frames_in.labels(outcome="accepted", action=action), max_actions
        )
        self.ping = frames_in.labels(outcome="ping", action="")
        self.history = frames_in.labels(outcome="history", action="")
        self._refused = {code: frames_in.labels(outcome=code.value, action="") for code in ErrorCode}
        errors = Counter(
            "wsq_gateway_errors",
            "$error frames the gateway sent to clients, by code.",
            ["code"],
            registry=registry,
        )
        self._errors = {code: errors.labels(code=code.value) for code in ErrorCode}
        self.unavailable = self._errors[ErrorCode.UNAVAILABLE]  # a frame queued that Redis then refused
        self.not_taken = self._errors[ErrorCode.NOT_TAKEN]  # a frame queued that no worker read in time

        commands = Counter(
            "wsq_gateway_commands",
            "Commands read from Redis (replies and pushes of workers and publishers), by type.",
            ["type"],
            registry=registry,
        )
        self.commands = {kind: commands.labels(type=kind) for kind in COMMAND_TYPES}
        self.sends = self.commands["send"]
        dropped = Counter(
            "wsq_gateway_commands_dropped",
            "Commands read from Redis and dropped, by reason: malformed (not a command the gateway "
            "can run), frame_not_json or frame_invalid (a send whose frame is not a server frame). "
            "Each is counted as type malformed in wsq_gateway_commands too.",
            ["reason"],
            registry=registry,
        )
        self.commands_dropped = {reason: dropped.labels(reason=reason) for reason in DROP_REASONS}
        self.frames_out = Counter(
            "wsq_gateway_frames_out",
            "Frames of commands written (or queued) to sockets: one per recipient.",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "wsq_gateway_redis_batch_seconds",
            "Time one batch of writes (a MULTI/EXEC pipeline) took to be answered by Redis.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_writes = Histogram(
            "wsq_gateway_redis_batch_writes",
            "Writes (client frames, connects, disconnects...) in one batch to Redis.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=registry,
        )
        resumes = Counter(
            "wsq_gateway_resumes",
            "Session resumes, by outcome: recovered (every missed frame replayed), unrecovered (the "
            "same session, some frames no longer kept), refused (a new connection instead). Counted by "
            "the session's home, and by a guest whose home did not answer.",
            ["outcome"],
            registry=registry,
        )
        self._resumes = {outcome: resumes.labels(outcome=outcome) for outcome in RESUME_OUTCOMES}
        # Methods are the API's routes (or "unknown"), statuses the few it answers: bounded.
        self._api_requests = Counter(
            "wsq_gateway_api_requests",
            "HTTP server API requests answered, by method (unknown: no such route) and HTTP status.",
            ["method", "status"],
            registry=registry,
        )

    def resumed(self, outcome: str) -> None:
        """A session resume answered: ``recovered``, ``unrecovered`` or ``refused``."""
        self._resumes[outcome].inc()

    def refused(self, code: ErrorCode) -> None:
        """A client frame was answered with ``$error`` ``code``."""
        self._refused[code].inc()
        self._errors[code].inc()

    def batch(self, seconds: float, writes: int) -> None:
        self.batch_seconds.observe(seconds)
        self.batch_writes.observe(writes)

    def api_request(self, method: str, status: int) -> None:
        self._api_requests.labels(method=method, status=str(status)).inc()

    def gauges(self, **values: Callable[[], float]) -> None:
        """More gauges read when scraped (``name=reader``), from pieces built after this object."""
        for name, reader in values.items():
            gauge = Gauge(f"wsq_gateway_{name}", _GAUGE_HELP[name], registry=self.registry)
            gauge.set_function(reader)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _outbox_bytes(self) -> float:
        return float(sum(conn.pending_bytes for conn in self._connections.by_id.values()))


_GAUGE_HELP = {
    "redis_pending_writes": "Writes to Redis not settled yet: queued, in flight or in doubt.",
    "redis_stalled": "1 while Redis does not answer a batch in time (new writes fail at once).",
    "inbound_backlog": "Events waiting for workers in the inbound stream, as last measured (all gateways).",
    "live_workers": "Workers reading the inbound stream, as last measured (-1: not measured yet).",
    "inbound_lag": "Events in this gateway's inbound partition no worker has read yet, as last measured.",
    "inbound_oldest_unread_seconds": "Age of the oldest event no worker has read yet (0: none), as last "
    "measured.",
    "workers_stalled": "1 while workers are live but none has read an event for WSQ_STALL_AFTER_S with "
    "events waiting unread.",
    "draining": "1 once the gateway drains (SIGTERM).",
    "schemas": "Actions whose frames' data this gateway validates against the schema workers published.",
    "schemas_failed": "Actions whose published schema does not compile here: their frames pass unvalidated.",
    "sessions_parked": "Resumable connections homed here whose socket was lost, waiting for a resume "
    "(WSQ_RESUME_WINDOW_S).",
    "guest_sockets": "Sockets held here for sessions homed on other gateways (resumed here).",
    "peer_commands_pending": "Commands to other gateways (session resume) queued, not written yet.",
}
