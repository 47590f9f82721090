"""docs/benchmarks.png, drawn with matplotlib (bench/requirements.txt) from bench/results/*.json."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from bench.children import ROOT

DEFAULT_PNG = ROOT / "docs" / "benchmarks.png"
COLORS = {"wsq": "#2a7ab9", "bare": "#9a9a9a", "channels": "#0c4b33"}
FANOUT_BARS = (("broadcast", "p50"), ("broadcast", "p95"), ("broadcast", "p99"), ("group", "p95"))
LABELS = {"wsq": "wsq", "bare": "bare aiohttp", "channels": "Django Channels"}


def _pyplot() -> Any:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise SystemExit(
            "the plot needs matplotlib: .venv/bin/pip install -r bench/requirements.txt"
        ) from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _load(results: Path, workload: str) -> dict[str, Any]:
    path = results / f"{workload}.json"
    if not path.exists():
        return {}
    systems: dict[str, Any] = json.loads(path.read_text())["systems"]
    return {name: result for name, result in systems.items() if "error" not in result}


def _label(value: float) -> str:
    if not value:
        return ""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _bars(ax: Any, title: str, ylabel: str, groups: dict[str, dict[str, float | None]], log: bool) -> None:
    """One bar per system in each group (e.g. p50, p95, p99), labelled with its value."""
    systems = [name for name in COLORS if any(name in values for values in groups.values())]
    width = 0.8 / max(len(systems), 1)
    for index, system in enumerate(systems):
        xs = [g + index * width for g in range(len(groups))]
        ys = [values.get(system) or 0 for values in groups.values()]
        bars = ax.bar(xs, ys, width, label=LABELS[system], color=COLORS[system])
        ax.bar_label(bars, labels=[_label(y) for y in ys], fontsize=7)
    ax.set_xticks([g + width * (len(systems) - 1) / 2 for g in range(len(groups))], list(groups), fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)


def plot(results: Path, out: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    roundtrip = _load(results, "roundtrip")
    _bars(
        axes[0][0],
        "roundtrip throughput",
        "messages/s (log)",
        {
            f"{load} load": {name: r[load]["messages_per_s"] for name, r in roundtrip.items()}
            for load in ("high", "light")
        },
        log=True,
    )
    _bars(
        axes[0][1],
        "roundtrip latency",
        "ms (log)",
        {
            f"{load} {q}": {name: r[load][f"{q}_ms"] for name, r in roundtrip.items()}
            for load in ("light", "high")
            for q in ("p50", "p99")
        },
        log=True,
    )
    push = _load(results, "push")
    _bars(
        axes[0][2],
        "push: delivered messages/s",
        "messages/s (log)",
        {"delivered": {name: r["delivered_per_s"] for name, r in push.items()}},
        log=True,
    )
    fanout = _load(results, "fanout")
    connections = next((r["connections"] for r in fanout.values()), 0)
    _bars(
        axes[1][0],
        f"fanout to {connections:,} connections, send to receipt",
        "ms (log)",
        {
            f"{kind} {q}": {name: r[kind].get(f"{q}_ms") for name, r in fanout.items()}
            for kind, q in FANOUT_BARS
        },
        log=True,
    )
    idle = _load(results, "idle")
    connections = next((r["connections"] for r in idle.values()), 0)
    _bars(
        axes[1][1],
        f"idle: server RSS per connection ({connections:,} open)",
        "KiB",
        {"KiB per connection": {name: r["kib_per_connection"] for name, r in idle.items()}},
        log=False,
    )
    soak = _load(results, "soak").get("wsq")
    ax = axes[1][2]
    if soak:
        for role, color in (("server", COLORS["wsq"]), ("worker", "#e08a2c")):
            xs = [s["t_s"] / 60 for s in soak["samples"]]
            ys = [s[f"{role}_kib"] / 1024 for s in soak["samples"]]
            ax.plot(xs, ys, label="gateway" if role == "server" else "worker", color=color)
        ax.axvline(soak["reference_s"] / 60, color="#999", linestyle=":", linewidth=1)
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS MiB")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    ax.set_title(
        f"soak: RSS during {soak['seconds'] / 60:.0f} min of high-load roundtrips" if soak else "soak",
        fontsize=10,
    )
    fig.suptitle("wsq vs bare aiohttp vs Django Channels (everything on one 2-core machine)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
