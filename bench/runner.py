"""``python -m bench WORKLOAD``: start each system in turn, run the workload on it, print and save.

    .venv/bin/python -m bench roundtrip              # wsq, bare aiohttp, Django Channels, in turn
    .venv/bin/python -m bench fanout --systems wsq,bare
    .venv/bin/python -m bench all                    # roundtrip, push, fanout, idle, then the plot
    .venv/bin/python -m bench soak                   # 5 minutes of high-load roundtrips on wsq
    .venv/bin/python -m bench plot                   # docs/benchmarks.png from bench/results/
    .venv/bin/python -m bench roundtrip --smoke      # seconds long, without Channels (what CI runs)

Results go to bench/results/<workload>.json (and a timestamped copy); ``--json PATH`` writes
them there too.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import uvloop

from bench import plot
from bench.children import ROOT
from bench.report import render, summarize
from bench.systems import SYSTEMS
from bench.workloads import FULL, SMOKE, WORKLOADS, Options
from wsq_devkit import find_redis_server

RESULTS = ROOT / "bench" / "results"
MEASURED = ("roundtrip", "push", "fanout", "idle")  # what ``all`` runs; the soak is run on its own


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE to its hard limit, for this process and the children it starts."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machine(sources: str) -> dict[str, Any]:
    """The machine and software the numbers were measured on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    mem_kib = int(
        next(
            line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
        ).split()[1]
    )
    redis = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True, check=False)
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "protocol", "gateway-service/src", "worker-sdk/src"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": redis.stdout.split()[2] if redis.stdout else "?",
        "packages": {
            name: importlib.metadata.version(name)
            for name in ("aiohttp", "uvloop", "redis", "hiredis", "orjson")
        },
        "commit": commit.stdout.strip(),
        "uncommitted_src_files": len(changed.stdout.splitlines()),
        "measured_sources": sources,
        "loadavg": os.getloadavg(),
    }


async def run_workload(workload: str, systems: list[str], options: Options, sources: str) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    started = time.time()
    for name in systems:
        print(f"bench: {workload} on {SYSTEMS[name].label}", flush=True)
        try:
            async with AsyncExitStack() as stack:
                running = await SYSTEMS[name].start(stack, options.gateways)
                results[name] = await WORKLOADS[workload](running, options)
        except Exception as exc:  # one system failing must not lose the others' numbers
            print(f"bench: {workload} on {name} failed: {exc!r}", file=sys.stderr, flush=True)
            results[name] = {"error": repr(exc)}
    doc = {
        "workload": workload,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": machine(sources),
        "sizes": dataclasses.asdict(options.sizes),
        "gateways": options.gateways,
        "systems": results,
    }
    doc["summary"] = summarize(workload, results)
    return doc


def save(doc: dict[str, Any], results_dir: Path) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1)
    (results_dir / f"{doc['workload']}.json").write_text(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results_dir / "history").mkdir(exist_ok=True)
    (results_dir / "history" / f"{doc['workload']}-{stamp}.json").write_text(text)


def use_sources_of(rev: str) -> str:
    """Export gateway-service/src and worker-sdk/src at ``rev``, and protocol/ where ``rev`` has
    the protocol core (its sources and the keys.json, lua/ and schemas/ it reads), outside the
    repository, where no linter sees them; put them first on the children's PYTHONPATH, ahead
    of the editable installs; return the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    target = Path(tempfile.gettempdir()) / f"wsq-bench-src-{commit}"
    if not target.exists():
        target.mkdir(parents=True)
        core = ["protocol"] if _has_path(commit, "protocol/src") else []
        archive = subprocess.run(
            ["git", "archive", commit, *core, "gateway-service/src", "worker-sdk/src"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    paths = [str(target / folder / "src") for folder in ("protocol", "gateway-service", "worker-sdk")]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, os.environ.get("PYTHONPATH")]))
    return commit


def _has_path(commit: str, path: str) -> bool:
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", commit, path], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return bool(listed.stdout.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workload", choices=[*WORKLOADS, "all", "plot"])
    parser.add_argument("--smoke", action="store_true", help="seconds-long sizes, and no Channels by default")
    parser.add_argument("--systems", help=f"comma-separated, of {', '.join(SYSTEMS)}")
    parser.add_argument("--duration", type=float, help="seconds of each measured window (roundtrip, push)")
    parser.add_argument("--connections", type=int, help="connections of fanout and idle (default 10000)")
    parser.add_argument("--rounds", type=int, help="fanout rounds")
    parser.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="wsq's gateway processes, the load spread over them (on a cluster: on each master in turn)",
    )
    parser.add_argument("--soak-seconds", type=float, help="length of the soak (default 300)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="record wsq's processes with py-spy")
    parser.add_argument(
        "--src",
        metavar="REV",
        help="measure the gateway and the SDK as committed at REV (git archive), not the working tree",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to save (default bench/results)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to PATH")
    parser.add_argument(
        "--plot", type=Path, default=plot.DEFAULT_PNG, help="the plot written by all and plot"
    )
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    sizes = SMOKE if args.smoke else FULL
    changes: dict[str, Any] = {}
    if args.duration is not None:
        changes |= {"duration_s": args.duration, "push_seconds": args.duration}
    if args.connections is not None:
        changes |= {"fanout_connections": args.connections, "idle_connections": args.connections}
    if args.rounds is not None:
        changes["fanout_rounds"] = args.rounds
    if args.soak_seconds is not None:
        changes |= {"soak_s": args.soak_seconds, "soak_reference_s": min(60.0, args.soak_seconds / 5)}
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    return Options(dataclasses.replace(sizes, **changes), args.profile, args.gateways)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workload == "plot":
        print(f"bench: wrote {plot.plot(args.results, args.plot)}")
        return 0
    limit = raise_open_files_limit()
    workloads = list(MEASURED) if args.workload == "all" else [args.workload]
    if args.systems:
        systems = args.systems.split(",")
    elif args.workload == "soak":
        systems = ["wsq"]
    else:
        systems = ["wsq", "bare"] if args.smoke else ["wsq", "bare", "channels"]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        sys.exit(f"bench: unknown systems {', '.join(sorted(unknown))}")
    options = options_from(args)
    sources = "working tree"
    if args.src:
        sources = f"commit {use_sources_of(args.src)}"
    print(f"bench: measuring the gateway and the SDK of the {sources}", flush=True)
    print(f"bench: open files limit {limit}; systems {', '.join(systems)}", flush=True)
    docs = {}
    failed = False
    for workload in workloads:
        doc = uvloop.run(run_workload(workload, systems, options, sources))
        save(doc, args.results)
        print(render(doc), flush=True)
        docs[workload] = doc
        failed |= any("error" in result for result in doc["systems"].values())
    if args.json:
        args.json.write_text(json.dumps(docs if len(docs) > 1 else docs[workloads[0]], indent=1))
    if args.workload == "all" and not args.smoke:
        print(f"bench: wrote {plot.plot(args.results, args.plot)}")
    return int(failed)
