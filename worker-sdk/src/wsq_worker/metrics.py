"""Prometheus metrics of one worker, on a port of their own (``Worker(metrics_port=...)``,
``WSQ_METRICS_PORT``, ``wsq-worker --metrics-port``).

prometheus-client is an optional dependency (``pip install 'wsq-worker[metrics]'``): the SDK
stays light for publishers and for workers that are not scraped. This module is imported only
when a metrics port is asked for; without the extra, the worker fails at start with that
command in the message (``preflight.check_metrics_available``).

Each worker has a registry of its own, with prometheus-client's process, platform and GC
collectors; the exposition is served by prometheus-client's HTTP server in a daemon thread.
Consumer lag is read with ``XINFO GROUPS`` every ``LAG_INTERVAL_S``, never per event.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from redis.exceptions import RedisError

from wsq_worker import constants

if TYPE_CHECKING:
    from wsq_worker.loops import Run

__all__ = ["OUTCOMES", "WorkerMetrics"]

logger = logging.getLogger("wsq_worker.metrics")

OUTCOMES = ("ok", "error", "retry", "dead_lettered", "refused")
OTHER = "other"
MAX_ACTIONS = 200  # distinct action labels: a default handler sees whatever clients send
LAG_INTERVAL_S = 5.0
HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """The worker's metrics; ``run`` is read when scraped (in flight) and every few seconds (lag)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self._events = Counter(
            "wsq_worker_events",
            "Inbound events handled, by action ($connect, $disconnect for lifecycle events) and "
            "outcome: ok, error (the handler raised, or no handler), retry (runs again later), "
            "dead_lettered, refused (Redis refused the event's writes after it was handled: it "
            "runs again; counted on top of the handling's outcome).",
            ["action", "outcome"],
            registry=registry,
        )
        self._seconds = Histogram(
            "wsq_worker_handler_seconds",
            "Time from an event's start to its writes queued (its handler, mostly), by action.",
            ["action"],
            buckets=HANDLER_BUCKETS,
            registry=registry,
        )
        self._children: dict[str, tuple[dict[str, Counter], Histogram]] = {}
        self.retries = Counter(
            "wsq_worker_retries",
            "Messages scheduled to run again (Retry, or a refused write).",
            registry=registry,
        )
        self.dead_letters = Counter(
            "wsq_worker_dead_letters",
            "Events moved to the dead letters (attempts used up).",
            registry=registry,
        )
        in_flight = Gauge("wsq_worker_in_flight", "Events being handled now.", registry=registry)
        in_flight.set_function(lambda: len(run.in_flight))
        queued = Gauge("wsq_worker_queued", "Events read and waiting for a free slot.", registry=registry)
        queued.set_function(lambda: len(run.queued))
        self._lag = Gauge(
            "wsq_worker_consumer_lag",
            "Entries of the inbound partition not read yet by the workers' group (XINFO GROUPS lag).",
            ["partition"],
            registry=registry,
        )
        self._pending = Gauge(
            "wsq_worker_consumer_pending",
            "Entries of the inbound partition read but not acknowledged (XINFO GROUPS pending).",
            ["partition"],
            registry=registry,
        )
        self._server: Any = None

    def _of(self, action: str) -> tuple[dict[str, Counter], Histogram]:
        children = self._children.get(action)
        if children is None:
            label = action if len(self._children) < MAX_ACTIONS else OTHER
            children = self._children.get(label)
            if children is None:
                counters = {
                    outcome: self._events.labels(action=label, outcome=outcome) for outcome in OUTCOMES
                }
                children = self._children[label] = (counters, self._seconds.labels(action=label))
        return children

    def event(self, action: str, outcome: str, seconds: float | None) -> None:
        counters, histogram = self._of(action)
        counters[outcome].inc()
        if seconds is not None:
            histogram.observe(seconds)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the HTTP server (a daemon thread); the port it listens on."""
        started = start_http_server(port, addr=addr, registry=self.registry)
        self._server = started[0] if isinstance(started, tuple) else None
        return int(self._server.server_port) if self._server is not None else port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    async def watch_lag(self, sleep: Callable[[float], Any]) -> None:
        """Read every partition's lag and pending count every LAG_INTERVAL_S, until ``sleep``
        says the worker stops (returns True)."""
        run = self._run
        keys = run.keys
        while True:
            for shard in range(run.worker.shards):
                with contextlib.suppress(RedisError, OSError):
                    groups = await run.client.xinfo_groups(keys.inbound_stream(shard))
                    self._record(str(shard), groups)
            if await sleep(LAG_INTERVAL_S):
                return

    def _record(self, partition: str, groups: Any) -> None:
        for group in groups:
            name = group.get("name", group.get(b"name"))
            if name in (constants.CONSUMER_GROUP, constants.CONSUMER_GROUP.encode()):
                lag = group.get("lag", group.get(b"lag"))
                pending = group.get("pending", group.get(b"pending"))
                if lag is not None:
                    self._lag.labels(partition=partition).set(float(lag))
                if pending is not None:
                    self._pending.labels(partition=partition).set(float(pending))
