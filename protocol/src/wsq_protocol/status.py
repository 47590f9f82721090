"""The state of a deployment, read from Redis: the gateways, their connections, the workers'
consumer group on each inbound partition, the dead letters and the delayed retries.

``read_status()`` reads it all in four round trips (pipelines, which on a Redis Cluster client
span slots) and returns a JSON-able dict. ``wsq-worker status`` prints it (on a blocking
client, run at once), the gateway's HTTP API answers it (``POST /api/stats``).
"""

from __future__ import annotations

from typing import Any, TypedDict

from wsq_protocol.cluster import AsyncClient
from wsq_protocol.keys import CONSUMER_GROUP, Keys

__all__ = ["CONSUMER_LIVE_MS", "NODE_TIMEOUT_MS", "read_status"]

NODE_TIMEOUT_MS = 20_000
"""A gateway whose last heartbeat is older is stale (the gateways' default WSQ_NODE_TIMEOUT_S)."""
CONSUMER_LIVE_MS = 45_000
"""A consumer of the group idle this long or more is taken for a worker that is gone."""


class ShardStatus(TypedDict):
    shard: int
    length: int
    group: bool
    consumers: int
    live_consumers: int
    pending: int
    lag: int | None
    read: int | None  # entries the group has read since the stream began (Redis's entries-read)
    dead_letters: int
    delayed: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(info: Any, name: str) -> Any:
    """A field of an XINFO reply (redis-py gives dicts, keyed by str or bytes)."""
    if isinstance(info, dict):
        return info.get(name, info.get(name.encode()))
    return None


async def read_status(
    client: AsyncClient, keys: Keys, *, node_timeout_ms: int = NODE_TIMEOUT_MS
) -> dict[str, Any]:
    """Everything ``wsq-worker status`` shows (and the gateway API's ``stats`` answers), as a
    JSON-able dict (see worker-sdk/README.md)."""
    seconds, micros = await client.time()  # the heartbeats' clock: Redis's
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    shards = range(keys.shards)

    pipe = client.pipeline(transaction=False)
    pipe.zrange(keys.nodes, 0, -1, withscores=True)
    for shard in shards:
        pipe.exists(keys.inbound_stream(shard))
        pipe.xlen(keys.inbound_stream(shard))
        pipe.xlen(keys.dead_letters(shard))
        pipe.zcard(keys.delayed(shard))
    first = await pipe.execute()
    nodes = [(_text(node), int(score)) for node, score in first[0]]
    per_shard = [first[1 + 4 * shard : 5 + 4 * shard] for shard in shards]

    live = [(node, beat) for node, beat in nodes if now_ms - beat <= node_timeout_ms]
    stale = [(node, beat) for node, beat in nodes if now_ms - beat > node_timeout_ms]
    existing = [shard for shard in shards if per_shard[shard][0]]
    pipe = client.pipeline(transaction=False)
    for node, _ in live:
        pipe.scard(keys.node_connections(node))
    for shard in existing:
        pipe.xinfo_groups(keys.inbound_stream(shard))
    second = await pipe.execute()
    connections = [int(count) for count in second[: len(live)]]
    groups: dict[int, Any] = {}
    for shard, infos in zip(existing, second[len(live) :], strict=True):
        for info in infos:
            if _text(_field(info, "name")) == CONSUMER_GROUP:
                groups[shard] = info

    pipe = client.pipeline(transaction=False)
    for shard in groups:
        pipe.xinfo_consumers(keys.inbound_stream(shard), CONSUMER_GROUP)
    consumers_of = dict(zip(groups, (await pipe.execute()) if groups else [], strict=True))

    workers: dict[str, int] = {}  # consumer name -> its least idle time on any partition
    statuses: list[ShardStatus] = []
    for shard in shards:
        _, length, dead, delayed = (int(value) for value in per_shard[shard])
        group = groups.get(shard)
        consumers = consumers_of.get(shard, [])
        for consumer in consumers:
            name, idle = _text(_field(consumer, "name")), int(_field(consumer, "idle"))
            workers[name] = min(idle, workers.get(name, idle))
        lag = _field(group, "lag") if group is not None else length  # no group: none read
        statuses.append(
            {
                "shard": shard,
                "length": length,
                "group": group is not None,
                "consumers": len(consumers),
                "live_consumers": sum(int(_field(c, "idle")) < CONSUMER_LIVE_MS for c in consumers),
                "pending": int(_field(group, "pending")) if group is not None else 0,
                "lag": None if lag is None else int(lag),
                "read": _read(group),
                "dead_letters": dead,
                "delayed": delayed,
            }
        )
    lags = [status["lag"] for status in statuses]
    reads = [status["read"] for status in statuses if status["group"]]
    return {
        "prefix": keys.prefix,
        "shards": keys.shards,
        "time_ms": now_ms,
        "gateways": [
            {"node": node, "heartbeat_ms": beat, "age_ms": now_ms - beat, "connections": count}
            for (node, beat), count in zip(live, connections, strict=True)
        ],
        "stale_gateways": [
            {"node": node, "heartbeat_ms": beat, "age_ms": now_ms - beat} for node, beat in stale
        ],
        "workers": {
            "group": any(status["group"] for status in statuses),
            "live": sorted(name for name, idle in workers.items() if idle < CONSUMER_LIVE_MS),
            "stale": sorted(name for name, idle in workers.items() if idle >= CONSUMER_LIVE_MS),
        },
        "inbound": {
            "length": sum(status["length"] for status in statuses),
            "pending": sum(status["pending"] for status in statuses),
            "lag": None if None in lags else sum(lag or 0 for lag in lags),
            "read": None if None in reads else sum(read or 0 for read in reads),
        },
        "dead_letters": sum(status["dead_letters"] for status in statuses),
        "delayed": sum(status["delayed"] for status in statuses),
        "per_shard": [status for status in statuses if _busy(status)],
    }


def _read(group: Any) -> int | None:
    """The group's ``entries-read`` (Redis 7+): 0 with no group, or none read yet (Redis says
    nil then), None when Redis can't tell."""
    if group is None:
        return 0
    value = _field(group, "entries-read")
    if value is None:
        return 0 if _text(_field(group, "last-delivered-id")) == "0-0" else None
    return int(value)


def _busy(status: ShardStatus) -> bool:
    """A shard with something to show: events waiting, pending or lagging, dead or delayed."""
    counts = (status["length"], status["pending"], status["dead_letters"], status["delayed"])
    return any(counts) or status["lag"] != 0
