"""Numbers: latency histograms that merge across processes, percentiles, process memory.

Standard library only: the Django Channels publisher imports nothing from wsq's venv.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

_STEP = 1.01  # each bucket is 1 % wide: percentiles are exact to 1 %
_LOG_STEP = math.log(_STEP)


class Histogram:
    """Latencies in microseconds, counted in buckets, so processes can merge theirs.

    Bucket 0 holds values under 1 µs; bucket ``b`` holds ``[1.01**(b-1), 1.01**b)`` µs.
    """

    __slots__ = ("counts", "total")

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})
        self.total = sum(self.counts.values())

    def add(self, micros: float) -> None:
        bucket = int(math.log(micros) / _LOG_STEP) + 1 if micros >= 1 else 0
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.total += 1

    def merge(self, other: Histogram) -> None:
        for bucket, count in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + count
        self.total += other.total

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) in microseconds, None when empty."""
        if not self.total:
            return None
        rank = max(1, math.ceil(q / 100 * self.total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return 0.5 if bucket == 0 else _STEP ** (bucket - 0.5)
        raise AssertionError("unreachable: the counts add up to the total")

    def summary_ms(self) -> dict[str, float | None]:
        """p50, p95, p99 and max in milliseconds."""
        return {
            name: None if (value := self.percentile(q)) is None else round(value / 1000, 3)
            for name, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99), ("max_ms", 100))
        }

    def to_json(self) -> dict[str, int]:
        return {str(bucket): count for bucket, count in self.counts.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> Histogram:
        return cls({int(bucket): count for bucket, count in data.items()})


def rss_kib(pid: int) -> int:
    """The resident set size of a process (``VmRSS`` in ``/proc/<pid>/status``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process used so far (``/proc/<pid>/stat``), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
