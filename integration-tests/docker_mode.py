"""Which modes the end-to-end tests run in, and saying so at the top and bottom of the run.

Process mode always runs: redis-server, gateways and workers as processes on this machine
(conftest.py's fixtures). Docker mode (test_docker_mode.py) runs the same system through
`docker compose up` with the real images, when asked for with WSQ_IT_DOCKER=1 and a
Docker engine with the compose plugin answers; otherwise its tests are skipped, and this
module's hooks print why, so a run never leaves it out silently.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest

SWITCH = "WSQ_IT_DOCKER"


@functools.cache
def docker_mode() -> tuple[bool, str]:
    """(enabled, the reason or the engine's description)."""
    if os.environ.get(SWITCH) != "1":
        return False, f"{SWITCH} is not 1 (set {SWITCH}=1 on a machine with a Docker engine to run it)"
    docker = shutil.which("docker")
    if docker is None:
        return False, f"{SWITCH}=1, but there is no docker command on PATH"
    try:
        engine = subprocess.run(
            [docker, "version", "--format", "{{.Server.Version}}"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        compose = subprocess.run(
            [docker, "compose", "version", "--short"], check=False, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return False, f"{SWITCH}=1, but the docker command did not answer within 30 s"
    if engine.returncode != 0 or not engine.stdout.strip():
        last = (engine.stderr.strip().splitlines() or ["no answer"])[-1]
        return False, f"{SWITCH}=1, but no Docker engine answers: {last}"
    if compose.returncode != 0:
        return False, f"{SWITCH}=1, but the docker compose plugin (v2) is missing"
    return True, f"Docker engine {engine.stdout.strip()}, compose {compose.stdout.strip()}"


def _lines() -> list[str]:
    enabled, detail = docker_mode()
    docker = f"runs against `docker compose up` ({detail})" if enabled else f"SKIPPED: {detail}"
    return [
        "wsq end-to-end, process mode: runs (redis-server, gateway and worker processes here)",
        f"wsq end-to-end, Docker mode: {docker}",
    ]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return _lines()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _lines():
        terminalreporter.write_line(line)
