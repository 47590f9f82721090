"""The benchmark's smoke test: each workload, seconds long, on wsq and the bare baseline.

It checks that the workloads run and that their numbers are sane (counted, ordered, nothing
lost), never that they meet the performance targets: those are measured by the benchmark
itself, on a quiet machine (docs/benchmarks.md), not by timed tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = ("wsq", "bare")


def run_smoke(workload: str, tmp_path: Path, *options: str) -> dict[str, Any]:
    out = tmp_path / f"{workload}.json"
    argv = [sys.executable, "-m", "bench", workload, "--smoke", "--results", str(tmp_path)]
    argv += ["--json", str(out), *options]
    if workload == "soak":
        argv += ["--systems", "wsq"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def assert_latencies(result: dict[str, Any]) -> None:
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"], result


def test_roundtrip(tmp_path: Path) -> None:
    doc = run_smoke("roundtrip", tmp_path)
    for system in SYSTEMS:
        for load in ("high", "light"):
            result = doc["systems"][system][load]
            assert result["messages_per_s"] > 0, result
            assert (result["errors"], result["lost"]) == (0, 0), result
            assert_latencies(result)
            assert result["cpu_percent"]["server"] > 0
    assert doc["summary"]["ratios"]["high: wsq/bare msg/s"] > 0
    assert {t["target"] for t in doc["summary"]["targets"]} >= {"roundtrip p50 at light load <= 2 ms"}


def test_roundtrip_on_a_cluster_of_three_masters_with_three_gateways(tmp_path: Path) -> None:
    doc = run_smoke("roundtrip", tmp_path, "--systems", "wsq-cluster3", "--gateways", "3")
    result = doc["systems"]["wsq-cluster3"]["high"]
    assert (result["errors"], result["lost"]) == (0, 0), result
    masters = result["redis"]["masters"]
    assert len(masters) == 3
    # Each gateway's shard is on another master: every master takes part of the calls.
    assert all(master["calls_share"] > 0 for master in masters), masters
    assert sum(master["calls_share"] for master in masters) == pytest.approx(1.0, abs=0.01)
    assert result["redis"]["calls_per_message"] >= 2  # the event's XADD and the reply's
    assert {"server", "server1", "server2", "redis0", "redis1", "redis2"} <= set(result["cpu_percent"])


def test_push(tmp_path: Path) -> None:
    doc = run_smoke("push", tmp_path)
    for system in SYSTEMS:
        result = doc["systems"][system]
        assert result["sent"] > 0, result
        assert result["failed"] == 0, result
        assert result["delivered"] == result["sent"], result
        assert result["delivered_per_s"] > 0
        assert_latencies(result)


def test_fanout(tmp_path: Path) -> None:
    doc = run_smoke("fanout", tmp_path)
    for system in SYSTEMS:
        result = doc["systems"][system]
        assert result["connections"] == 200, result
        kinds = ["broadcast", "group"] if result["group"]["available"] else ["broadcast"]
        for kind in kinds:
            assert result[kind]["delivered_share"] == 1.0, result[kind]
            assert_latencies(result[kind])
    # Without groups in the SDK the runner says why and skips that half.
    assert doc["systems"]["wsq"]["group"].get("why") or doc["systems"]["wsq"]["group"]["available"]


def test_idle(tmp_path: Path) -> None:
    doc = run_smoke("idle", tmp_path)
    for system in SYSTEMS:
        result = doc["systems"][system]
        assert (result["connections"], result["failed_to_open"]) == (200, 0), result
        assert result["rss_after_kib"] > result["rss_before_kib"] > 0, result
        assert result["kib_per_connection"] > 0
        assert result["open_s"] > 0


def test_soak(tmp_path: Path) -> None:
    doc = run_smoke("soak", tmp_path)
    result = doc["systems"]["wsq"]
    assert result["messages_per_s"] > 0, result
    assert result["lost"] == 0, result
    assert len(result["samples"]) >= 3
    for role in ("server", "worker"):
        assert result["rss_reference_kib"][role] > 0
        assert role in result["rss_growth_percent"]


def test_worker_drain() -> None:
    """The worker alone handles every event it was given (the tool checks the replies itself)."""
    argv = [sys.executable, "-m", "bench.worker_drain", "--events", "300"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    match = re.fullmatch(
        r"worker drain: 300 events in ([0-9.]+) s \(.*\), ([0-9.]+) us of CPU per event\n", done.stdout
    )
    assert match is not None, done.stdout
    assert float(match[1]) > 0
    assert float(match[2]) > 0


def test_worker_drain_refuses_more_events_than_the_replies_can_hold() -> None:
    argv = [sys.executable, "-m", "bench.worker_drain", "--events", "100001"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 2
    assert "--events must be 1 to 100000" in done.stderr
