"""Real gateway and worker processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path


class ManagedProcess:
    """A child process whose combined output goes to a log file that tests can read.

    The process is stopped (SIGTERM, then SIGKILL) by ``stop()`` or when used as a
    context manager. ``own_process_group=True`` starts it in a process group of its own, out
    of reach of a terminal's Ctrl-C: its owner alone stops it, in the order it chooses.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str | Path | None = None,
        *,
        own_process_group: bool = False,
    ) -> None:
        self.name = name
        self.own_process_group = own_process_group
        self.argv = list(argv)
        self.env = {**os.environ, **env}
        self.cwd = cwd
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept open for the process' life
            prefix=f"wsq-{name}-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def python_module(
        cls,
        name: str,
        module: str,
        *args: str,
        env: Mapping[str, str],
        cwd: str | Path | None = None,
        own_process_group: bool = False,
    ) -> ManagedProcess:
        """``python -m module args...`` with this interpreter."""
        return cls(name, [sys.executable, "-m", module, *args], env, cwd, own_process_group=own_process_group)

    def start(self) -> ManagedProcess:
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            process_group=0 if self.own_process_group else None,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        """The process' resident memory (VmRSS), in KiB (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.name}: has it exited?")

    def output(self) -> str:
        """Everything the process printed so far (empty once the log is closed)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._log.close()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_module(
    module: str,
    *args: str,
    cwd: str | Path | None = None,
    variables: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` to its end, its output captured as text. With ``variables``,
    the environment has only those ``WSQ_*`` variables (none inherited from the test's)."""
    env = None
    if variables is not None:
        env = {name: value for name, value in os.environ.items() if not name.startswith("WSQ_")}
        env |= variables
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
