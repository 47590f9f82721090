"""``wsq-worker top``: ``wsq-worker status`` redrawn every few seconds, with rates.

Each refresh reads the status (``status.read_status``) and shows it under a line of rates,
computed from the previous refresh: events read by the workers per second (the consumer
groups' ``entries-read``, summed over the inbound partitions), connections opened or closed,
dead letters added. A Redis failure is shown in place of the status, and the next refresh
tries again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from wsq_worker.status import format_status
from wsq_worker.terminal import Screen

__all__ = ["format_rates", "watch"]


def _connections(status: dict[str, Any]) -> int:
    return sum(gateway["connections"] for gateway in status["gateways"])


def _signed(value: int) -> str:
    return f"{value:+d}"


def format_rates(status: dict[str, Any], previous: dict[str, Any] | None) -> str:
    """The rates since ``previous`` (over the Redis time between the two reads)."""
    if previous is None:
        return "rates: from the next refresh on"
    seconds = (status["time_ms"] - previous["time_ms"]) / 1000
    if seconds <= 0:
        return "rates: from the next refresh on"
    read, before = status["inbound"]["read"], previous["inbound"]["read"]
    # A partition's group made again (Redis emptied) counts from 0: no rate across that.
    rate = "?" if read is None or before is None or read < before else f"{(read - before) / seconds:.1f}"
    return (
        f"rates over {seconds:.1f} s: {rate} events read/s, "
        f"connections {_signed(_connections(status) - _connections(previous))}, "
        f"dead letters {_signed(status['dead_letters'] - previous['dead_letters'])}"
    )


def watch(
    read: Callable[[], dict[str, Any]],
    screen: Screen,
    *,
    interval: float,
    iterations: int,
    failures: tuple[type[BaseException], ...],
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show the status every ``interval`` seconds, ``iterations`` times (0: until interrupted);
    how many refreshes failed."""
    previous: dict[str, Any] | None = None
    failed, shown = 0, 0
    while True:
        stamp = datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        header = f"wsq-worker top, {stamp}, every {interval:g} s (Ctrl-C to quit)"
        try:
            status = read()
        except failures as exc:
            failed += 1
            screen.show(f"{header}\nRedis failed: {exc} (trying again)")
        else:
            screen.show(f"{header}\n{format_rates(status, previous)}\n{format_status(status)}")
            previous = status
        shown += 1
        if iterations and shown >= iterations:
            return failed
        sleep(interval)
