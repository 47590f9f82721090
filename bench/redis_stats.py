"""What each Redis master did during a measured window: ``INFO cpu`` and ``INFO commandstats``
read before and after, per message.

* ``cpu_us_per_message``: the master's ``used_cpu_user`` + ``used_cpu_sys`` delta (the whole
  process: commands, networking, cluster bus, background work) in microseconds, over the
  messages the load generators counted in the window;
* ``commands_us_per_message``: the ``usec`` of ``INFO commandstats`` summed over commands (the
  time inside commands only, Lua included);
* ``calls_share``: this master's share of every master's command calls, which shows how the
  load splits across the shards of a Redis Cluster.

The ``INFO`` and ``HELLO`` calls of the samples (a connection each) are left out of the counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis

IGNORED = frozenset({"info", "hello"})  # the samples' own calls (a connection each)
TOP_COMMANDS = 6  # commands listed per master, by calls


@dataclass(frozen=True)
class CommandStat:
    calls: int
    usec: int


@dataclass(frozen=True)
class RedisSample:
    """One server's counters at one moment."""

    name: str  # host:port
    cpu_s: float  # used_cpu_user + used_cpu_sys
    commands: Mapping[str, CommandStat] = field(default_factory=dict)


def parse_info(text: str) -> dict[str, str]:
    """The ``field:value`` lines of an ``INFO`` reply (section headers and blanks skipped)."""
    fields: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key] = value
    return fields


def parse_commandstats(fields: Mapping[str, str]) -> dict[str, CommandStat]:
    """``cmdstat_<name>:calls=N,usec=N,...`` fields as ``{name: CommandStat}`` (a subcommand
    keeps its ``|``: ``cluster|slots``)."""
    stats: dict[str, CommandStat] = {}
    for key, value in fields.items():
        if not key.startswith("cmdstat_"):
            continue
        numbers = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
        stats[key.removeprefix("cmdstat_")] = CommandStat(int(numbers["calls"]), int(numbers["usec"]))
    return stats


def sample_from_info(name: str, text: str) -> RedisSample:
    """A sample from the text of ``INFO cpu`` and ``INFO commandstats`` (one reply or both)."""
    fields = parse_info(text)
    cpu_s = float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])
    return RedisSample(name, cpu_s, parse_commandstats(fields))


def sample(url: str) -> RedisSample:
    """Read ``url``'s counters now (a plain connection to that one server)."""
    parts = urlsplit(url)
    client = redis.Redis(
        host=parts.hostname or "127.0.0.1", port=parts.port or 6379, decode_responses=True, socket_timeout=5
    )
    client.set_response_callback("INFO", lambda reply, **options: reply)
    try:
        text = "\n".join(str(client.info(section)) for section in ("cpu", "commandstats"))  # as text
    finally:
        client.close()
    return sample_from_info(f"{parts.hostname}:{parts.port}", text)


def sample_all(urls: Sequence[str]) -> list[RedisSample]:
    return [sample(url) for url in urls]


def load_per_message(
    before: Sequence[RedisSample], after: Sequence[RedisSample], messages: int
) -> dict[str, Any]:
    """Each server's work between two samples (same servers, same order), per message."""
    per_message = max(messages, 1)
    masters: list[dict[str, Any]] = []
    all_calls = 0
    for start, end in zip(before, after, strict=True):
        if start.name != end.name:
            raise ValueError(f"samples of {start.name} and {end.name} do not match")
        calls: dict[str, int] = {}
        usec = 0
        for command, stat in end.commands.items():
            if command in IGNORED:
                continue
            first = start.commands.get(command, CommandStat(0, 0))
            if stat.calls > first.calls:
                calls[command] = stat.calls - first.calls
            usec += stat.usec - first.usec
        total_calls = sum(calls.values())
        all_calls += total_calls
        top = sorted(calls.items(), key=lambda item: (-item[1], item[0]))[:TOP_COMMANDS]
        masters.append(
            {
                "server": end.name,
                "calls": total_calls,
                "calls_per_message": round(total_calls / per_message, 3),
                "cpu_us_per_message": round((end.cpu_s - start.cpu_s) * 1e6 / per_message, 2),
                "commands_us_per_message": round(usec / per_message, 2),
                "top_calls_per_message": {name: round(count / per_message, 3) for name, count in top},
            }
        )
    for master in masters:
        master["calls_share"] = round(master["calls"] / all_calls, 3) if all_calls else None
    return {
        "messages": messages,
        "masters": masters,
        "cpu_us_per_message": round(sum(m["cpu_us_per_message"] for m in masters), 2),
        "commands_us_per_message": round(sum(m["commands_us_per_message"] for m in masters), 2),
        "calls_per_message": round(all_calls / per_message, 3),
    }


def render_load(system: str, load: Mapping[str, Any]) -> list[str]:
    """The per-master lines of the printed report."""
    lines = [
        f"  {system}: Redis per message, {len(load['masters'])} server(s): "
        f"{load['cpu_us_per_message']:.2f} µs CPU in all, {load['commands_us_per_message']:.2f} µs "
        f"in commands, {load['calls_per_message']:.2f} calls"
    ]
    for master in load["masters"]:
        share = "-" if master["calls_share"] is None else f"{100 * master['calls_share']:.1f} %"
        top = ", ".join(f"{name} {count:.2f}" for name, count in master["top_calls_per_message"].items())
        lines.append(
            f"    {master['server']:>15}  {master['cpu_us_per_message']:7.2f} µs CPU  "
            f"{master['commands_us_per_message']:7.2f} µs cmds  calls {share:>7}  ({top})"
        )
    return lines
