"""What the runner prints and saves: each workload's numbers, the ratios between systems, the targets.

Only ratios are compared with targets (the machine is shared and noisy), except the absolute
limits the issue sets: 2 ms p50 at light load, 18 KiB per idle connection, 10 % RSS growth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bench.redis_stats import render_load

Results = Mapping[str, Mapping[str, Any]]  # system name -> its results (or {"error": ...})


def _get(results: Results, system: str, *path: str) -> float | None:
    node: Any = results.get(system)
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _target(text: str, value: float | None, limit: float, ok: Callable[[float], bool]) -> dict[str, Any]:
    return {"target": text, "value": value, "limit": limit, "met": None if value is None else ok(value)}


def summarize(workload: str, results: Results) -> dict[str, Any]:
    """Ratios and targets of one workload."""
    ratios: dict[str, float | None] = {}
    targets: list[dict[str, Any]] = []
    if workload == "roundtrip":
        for load in ("high", "light"):
            wsq = _get(results, "wsq", load, "messages_per_s")
            ratios[f"{load}: wsq/bare msg/s"] = _ratio(wsq, _get(results, "bare", load, "messages_per_s"))
            ratios[f"{load}: wsq/channels msg/s"] = _ratio(
                wsq, _get(results, "channels", load, "messages_per_s")
            )
            for other in results:  # wsq on a Redis Cluster (wsq-cluster1, wsq-cluster3)
                if other.startswith("wsq-"):
                    rate = _get(results, other, load, "messages_per_s")
                    ratios[f"{load}: {other}/bare msg/s"] = _ratio(
                        rate, _get(results, "bare", load, "messages_per_s")
                    )
                    ratios[f"{load}: {other}/wsq msg/s"] = _ratio(rate, wsq)
        targets += [
            _target(
                "roundtrip msg/s at high load >= 0.40 x bare aiohttp echo",
                ratios["high: wsq/bare msg/s"],
                0.40,
                lambda v: v >= 0.40,
            ),
            _target(
                "roundtrip msg/s at high load >= 20 x Django Channels",
                ratios["high: wsq/channels msg/s"],
                20,
                lambda v: v >= 20,
            ),
            _target(
                "roundtrip p50 at light load <= 2 ms", _get(results, "wsq", "light", "p50_ms"), 2.0, _le(2.0)
            ),
        ]
    elif workload == "push":
        wsq = _get(results, "wsq", "delivered_per_s")
        ratios["wsq/bare delivered/s"] = _ratio(wsq, _get(results, "bare", "delivered_per_s"))
        ratios["wsq/channels delivered/s"] = _ratio(wsq, _get(results, "channels", "delivered_per_s"))
        targets.append(
            _target("push: every push delivered", _get(results, "wsq", "delivered_share"), 1.0, _ge(1.0))
        )
    elif workload == "fanout":
        for kind in ("broadcast", "group"):
            # The bare server's "group" is the same loop over its sockets, measured again.
            bare_p95 = _get(results, "bare", kind, "p95_ms")
            ratios[f"{kind}: wsq/bare p95"] = _ratio(_get(results, "wsq", kind, "p95_ms"), bare_p95)
            ratios[f"{kind}: wsq/channels p95"] = _ratio(
                _get(results, "wsq", kind, "p95_ms"), _get(results, "channels", kind, "p95_ms")
            )
            if kind == "group" and _get(results, "wsq", "group", "p95_ms") is None:
                continue
            targets += [
                _target(
                    f"fanout ({kind}) p95 <= 1.25 x the bare aiohttp broadcast loop's p95",
                    ratios[f"{kind}: wsq/bare p95"],
                    1.25,
                    _le(1.25),
                ),
                _target(
                    f"fanout ({kind}): 100% delivered",
                    _get(results, "wsq", kind, "delivered_share"),
                    1.0,
                    _ge(1.0),
                ),
            ]
    elif workload == "idle":
        wsq = _get(results, "wsq", "kib_per_connection")
        ratios["wsq/bare KiB per connection"] = _ratio(wsq, _get(results, "bare", "kib_per_connection"))
        ratios["wsq/channels KiB per connection"] = _ratio(
            wsq, _get(results, "channels", "kib_per_connection")
        )
        targets.append(_target("idle: gateway RSS per open connection <= 18 KiB", wsq, 18.0, _le(18.0)))
    elif workload == "soak":
        growth = _get(results, "wsq", "rss_growth_percent", "server")
        targets.append(
            _target(
                "soak: gateway RSS at the end within 10% of its value after the reference time",
                growth,
                10.0,
                lambda v: abs(v) <= 10.0,
            )
        )
    return {"ratios": ratios, "targets": targets}


def _le(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


def _ge(limit: float) -> Callable[[float], bool]:
    return lambda value: value >= limit


# ---- printing -------------------------------------------------------------------------------

_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "roundtrip": [
        ("messages_per_s", "msg/s"),
        ("p50_ms", "p50 ms"),
        ("p95_ms", "p95 ms"),
        ("p99_ms", "p99 ms"),
        ("errors", "errors"),
        ("lost", "lost"),
    ],
    "push": [
        ("sent_per_s", "sent/s"),
        ("delivered_per_s", "delivered/s"),
        ("delivered_share", "share"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("failed", "failed"),
    ],
    "fanout": [
        ("delivered_share", "share"),
        ("p50_ms", "p50 ms"),
        ("p95_ms", "p95 ms"),
        ("p99_ms", "p99 ms"),
        ("max_ms", "max ms"),
    ],
    "idle": [
        ("connections", "conns"),
        ("open_s", "open s"),
        ("rss_before_kib", "RSS0 KiB"),
        ("rss_after_kib", "RSS KiB"),
        ("kib_per_connection", "KiB/conn"),
        ("redis_bytes_per_connection", "Redis B/conn"),
    ],
    "soak": [("messages_per_s", "msg/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("lost", "lost")],
}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(title: str, columns: list[tuple[str, str]], rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [title, "  " + f"{'system':10}" + "".join(f"{label:>13}" for _, label in columns) + "  cpu %"]
    for system, row in rows.items():
        if "error" in row:
            lines.append(f"  {system:10}  FAILED: {row['error']}")
            continue
        cpu = " ".join(f"{role} {value:.0f}" for role, value in row.get("cpu_percent", {}).items())
        lines.append(
            "  " + f"{system:10}" + "".join(f"{_cell(row.get(key)):>13}" for key, _ in columns) + f"  {cpu}"
        )
    return lines


def render(doc: Mapping[str, Any]) -> str:
    """A workload's results as text: tables, ratios, targets."""
    workload: str = doc["workload"]
    results: Results = doc["systems"]
    columns = _COLUMNS[workload]
    lines: list[str] = []
    if workload == "roundtrip":
        for load in ("high", "light"):
            rows = {name: r.get(load, r) for name, r in results.items()}
            shape: Mapping[str, Any] = next((r for r in rows.values() if "clients" in r), {})
            title = (
                f"roundtrip, {shape.get('clients')} clients x {shape.get('inflight')} in flight ({load} load)"
            )
            lines += _table(title, columns, rows)
            for name, row in rows.items():
                if "redis" in row:
                    lines += render_load(name, row["redis"])
    elif workload == "fanout":
        for kind in ("broadcast", "group"):
            rows = {name: r.get(kind, r) for name, r in results.items()}
            if all(row.get("available") is False for row in rows.values() if "error" not in row and row):
                why = next(row.get("why") for row in rows.values() if row.get("available") is False)
                lines.append(f"fanout ({kind}): not available: {why}")
                continue
            connections = next((r.get("connections") for r in results.values() if "connections" in r), None)
            lines += _table(f"fanout ({kind}) to {connections} connections", columns, rows)
    else:
        lines += _table(workload, columns, results)
    summary = doc["summary"]
    ratios = ", ".join(
        f"{name} {_cell(value)}" for name, value in summary["ratios"].items() if value is not None
    )
    if ratios:
        lines.append(f"ratios: {ratios}")
    for target in summary["targets"]:
        state = {True: "MET    ", False: "NOT MET", None: "n/a    "}[target["met"]]
        lines.append(f"  [{state}] {target['target']}: {_cell(target['value'])}")
    return "\n".join(lines)
