#!/usr/bin/env python3
"""wsq's developer commands. Needs only Python 3.11+; everything else goes into ./.venv.

    python3 dev.py demo     # Redis (embedded unless WSQ_REDIS_URL is set), gateway, chat worker and page
    python3 dev.py test     # the whole test suite (extra arguments go to pytest)
    python3 dev.py check    # ruff, mypy --strict and the deployment linters, as CI runs them

The first run creates .venv and installs what the command needs: `demo` only the packages
(editable, requirements-demo.txt), `test` and `check` the packages and the dev tools as well
(requirements-dev.txt). Later runs install again only when a command needs more than is
installed, or when a requirements file or a pyproject.toml changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".wsq-installed"
# The install sets, smallest first; each contains the ones before it (requirements-dev.txt
# includes requirements-demo.txt). The stamp records which set is installed, and the digest
# of every file the install read.
INSTALL_SETS = {"demo": "requirements-demo.txt", "dev": "requirements-dev.txt"}
INSTALL_INPUTS = [
    "requirements-demo.txt",
    "requirements-dev.txt",
    "protocol/pyproject.toml",
    "gateway-service/pyproject.toml",
    "worker-sdk/pyproject.toml",
    "devkit/pyproject.toml",
    "clients/python/pyproject.toml",
]
TYPED_TREES = [
    "dev.py",
    "protocol/src",
    "gateway-service/src",
    "worker-sdk/src",
    "devkit/src",
    "clients/python/src",
    "clients/python/tests",
    "examples/chat",
    "examples/jwt",
    "bench",
    "gateway-service/tests",
    "worker-sdk/tests",
    "integration-tests",
    "protocol/tests",
    "devkit/tests",
]
# Kubernetes versions k8s/ must validate against: an old supported one and the newest.
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".hypothesis"}


def _files(match: str) -> list[str]:
    """Repository files whose name matches ``match`` (a glob), outside caches and the venv."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        found += [str(Path(folder, f).relative_to(ROOT)) for f in files if Path(folder, f).match(match)]
    return sorted(found)


def _inputs_digest() -> str:
    digest = hashlib.sha256()
    for name in INSTALL_INPUTS:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def install_plan(stamp: str | None, needed: str, digest: str) -> str | None:
    """The set to install for a command that needs the set ``needed``, or None when the venv
    already holds it (or a larger set) from the same inputs. ``stamp`` is the stamp file's text.

    A stale install is redone at least at its own size, so a venv that had the dev tools keeps
    them up to date even when the demo is what runs next.
    """
    order = list(INSTALL_SETS)
    installed: str | None = None
    try:
        recorded = json.loads(stamp) if stamp else None
    except ValueError:  # not JSON: an older dev.py's stamp, a bare digest of everything it installed
        recorded = None
    if isinstance(recorded, dict):
        if recorded.get("set") in INSTALL_SETS:
            installed = recorded["set"]
            if recorded.get("digest") == digest and order.index(installed) >= order.index(needed):
                return None
    elif stamp:
        installed = "dev"  # before install sets existed, every venv had everything
    if installed is not None and order.index(installed) > order.index(needed):
        return installed
    return needed


def ensure_venv(needed: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be started by an older python3
        sys.exit(f"wsq needs Python 3.11 or newer (this is {sys.version.split()[0]})")
    if not PYTHON.exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = _inputs_digest()
    install = install_plan(STAMP.read_text() if STAMP.exists() else None, needed, digest)
    if install is None:
        return
    what = "wsq's packages" if install == "demo" else "wsq's packages and its development tools"
    print(f"dev.py: installing {what} into .venv ({INSTALL_SETS[install]})", flush=True)
    STAMP.unlink(missing_ok=True)  # an interrupted install must not look complete
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True, cwd=ROOT)
    subprocess.run([*pip, "install", "-r", INSTALL_SETS[install]], check=True, cwd=ROOT)
    STAMP.write_text(json.dumps({"set": install, "digest": digest}))


def run(argv: list[str]) -> int:
    return subprocess.run(argv, cwd=ROOT, check=False).returncode


def cmd_test(args: list[str]) -> int:
    return run([str(PYTHON), "-m", "pytest", *args])


def cmd_check(_: list[str]) -> int:
    bin_dir = PYTHON.parent
    manifests = [f for f in _files("*.yaml") if f.startswith("k8s/") and not f.endswith("kustomization.yaml")]
    versions = [arg for version in KUBERNETES_VERSIONS for arg in ("-k", version)]
    steps = [
        [str(PYTHON), "-m", "ruff", "check", "."],
        [str(PYTHON), "-m", "ruff", "format", "--check", "."],
        *([str(PYTHON), "-m", "mypy", tree] for tree in TYPED_TREES),
        # Deployment files: every Dockerfile, all YAML, every Kubernetes manifest (strict:
        # unknown fields are errors; KEDA's ScaledObject, a custom resource, has no schema
        # there and only warns: test_deploy.py validates it, and renders the overlays).
        [str(bin_dir / "hadolint"), *_files("Dockerfile")],
        [str(bin_dir / "yamllint"), "--strict", "."],
        [str(bin_dir / "kubernetes-validate"), "--strict", "--quiet", *versions, *manifests],
    ]
    failed = 0
    for step in steps:
        shown = step[2:] if step[0] == str(PYTHON) else [Path(step[0]).name, *step[1:]]
        print("$", " ".join(shown), flush=True)
        failed |= run(step) != 0
    return int(failed)


def cmd_demo(args: list[str]) -> int:
    # Become the demo runner, so Ctrl-C and SIGTERM reach it directly and it can stop
    # its processes cleanly.
    os.chdir(ROOT)
    os.execv(PYTHON, [str(PYTHON), "examples/chat/run.py", *args])


COMMANDS = {"demo": cmd_demo, "test": cmd_test, "check": cmd_check}
NEEDS = {"demo": "demo", "test": "dev", "check": "dev"}  # the install set each command needs


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        return 2
    ensure_venv(NEEDS[sys.argv[1]])
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
