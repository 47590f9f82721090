"""Sampling profiles of the processes under test, with py-spy (bench/requirements.txt).

``--profile DIR`` makes the runner record each wsq process (gateway, worker) during every
measured window into ``DIR/<workload>-<role>.txt`` (py-spy's raw, collapsed-stack format:
also readable by speedscope and flamegraph.pl). ``python -m bench.profiling FILE...`` lists
the functions that took the most samples, by their own time and with what they call.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

SAMPLES_PER_S = 200
_LINE_NUMBER = re.compile(r":\d+\)$")


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install -r bench/requirements.txt")
    return found


@asynccontextmanager
async def profiling(pids: Mapping[str, int], out_dir: Path | None, label: str) -> AsyncIterator[None]:
    """Record ``pids`` (role -> pid) while the body runs; nothing when ``out_dir`` is None.

    ``out_dir`` must exist (the runner creates it).
    """
    if out_dir is None:
        yield
        return
    recorders = [
        await asyncio.create_subprocess_exec(
            _py_spy(),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(SAMPLES_PER_S),
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out_dir / f"{label}-{role}.txt"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for role, pid in pids.items()
    ]
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        for recorder in recorders:
            try:
                await asyncio.wait_for(recorder.wait(), 30)
            except TimeoutError:
                recorder.kill()
                await recorder.wait()


def _frames(stack: str) -> list[str]:
    """The Python frames of one collapsed stack, outermost first, without line numbers."""
    return [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";") if frame.endswith(")")]


def summarize(path: Path, top: int = 25) -> str:
    """The functions with the most samples in a raw py-spy file: own time, and total."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = _frames(stack)
        samples += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{path.name}: {samples} samples ({samples / SAMPLES_PER_S:.1f} s of CPU)"]
    for title, counter in (("own time", own), ("total time (with callees)", total)):
        lines.append(f"  top {top} by {title}:")
        lines += [
            f"    {100 * count / max(samples, 1):5.1f}%  {frame}" for frame, count in counter.most_common(top)
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(summarize(Path(name)))
