"""What ``wsq-worker status`` reads from Redis and prints: the gateways, their connections, the
workers' consumer group on each inbound partition, the dead letters and the delayed retries.

``read_status()`` is the protocol core's (``wsq_protocol.status``, which the gateway's HTTP API
answers too) run on a blocking client; ``format_status()`` makes the human table of it.
"""

from __future__ import annotations

from typing import Any, cast

from wsq_protocol.cluster import AsyncClient, SyncClient
from wsq_protocol.keys import Keys
from wsq_protocol.status import CONSUMER_LIVE_MS, NODE_TIMEOUT_MS
from wsq_protocol.status import read_status as read_status_async
from wsq_worker.publisher import _AwaitableRedis, _run_at_once

__all__ = ["CONSUMER_LIVE_MS", "NODE_TIMEOUT_MS", "format_status", "read_status"]


def read_status(client: SyncClient, keys: Keys, *, node_timeout_ms: int = NODE_TIMEOUT_MS) -> dict[str, Any]:
    """Everything ``wsq-worker status`` shows, as a JSON-able dict (see worker-sdk/README.md): the
    protocol core's ``read_status`` (the gateway's HTTP API answers the same), on a blocking client."""
    awaitable = cast("AsyncClient", _AwaitableRedis(client))  # what the helper calls, awaited
    return _run_at_once(read_status_async(awaitable, keys, node_timeout_ms=node_timeout_ms))


def _seconds(milliseconds: int) -> str:
    return f"{milliseconds / 1000:.1f} s"


def _lag(lag: int | None) -> str:
    return "?" if lag is None else str(lag)


def format_status(status: dict[str, Any]) -> str:
    """The human form of ``read_status()``: a few lines and a table of the busy shards."""
    lines = [f"prefix {status['prefix']!r}, {status['shards']} shards"]
    gateways, stale = status["gateways"], status["stale_gateways"]
    if gateways:
        total = sum(gateway["connections"] for gateway in gateways)
        lines.append(f"gateways: {len(gateways)} alive, {total} connection{'' if total == 1 else 's'}")
        width = max(len(gateway["node"]) for gateway in gateways)
        for gateway in gateways:
            lines.append(
                f"  {gateway['node']:<{width}}  {gateway['connections']:>7} connections  "
                f"heartbeat {_seconds(gateway['age_ms'])} ago"
            )
    else:
        lines.append("gateways: no gateway alive")
    for gateway in stale:
        lines.append(f"  stale: {gateway['node']} (last heartbeat {_seconds(gateway['age_ms'])} ago)")
    workers, inbound = status["workers"], status["inbound"]
    if workers["group"]:
        line = f"workers: {len(workers['live'])} live"
        if workers["stale"]:
            line += f", {len(workers['stale'])} idle for {CONSUMER_LIVE_MS // 1000} s or more"
        lines.append(line)
    else:
        lines.append("workers: no worker has read the inbound stream yet")
    lines.append(
        f"inbound: {inbound['length']} in the stream, {inbound['pending']} pending, "
        f"lag {_lag(inbound['lag'])}"
    )
    lines.append(f"dead letters: {status['dead_letters']}, delayed retries: {status['delayed']}")
    if status["per_shard"]:
        header = ("shard", "length", "pending", "lag", "consumers", "dead", "delayed")
        rows = [
            (
                str(row["shard"]),
                str(row["length"]),
                str(row["pending"]),
                _lag(row["lag"]),
                f"{row['live_consumers']}/{row['consumers']}" if row["group"] else "-",
                str(row["dead_letters"]),
                str(row["delayed"]),
            )
            for row in status["per_shard"]
        ]
        widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
        lines.append("")
        for row in (header, *rows):
            lines.append(
                "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            )
    return "\n".join(lines)
