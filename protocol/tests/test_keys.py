"""``Keys`` agrees with protocol/keys.json both ways; ``wsq_protocol.resources`` finds keys.json
and the schemas in a source checkout and inside a built wheel; the three distributions depend on
what the issue allows (redis, and wsq-protocol pinned to one compatible range)."""

from __future__ import annotations

import inspect
import json
import os
import string
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from wsq_protocol import resources
from wsq_protocol.keys import CONSUMER_GROUP, REAPED_TTL_S, Keys

PROTOCOL = Path(__file__).resolve().parents[1]
ROOT = PROTOCOL.parent
KEYS_JSON = json.loads((PROTOCOL / "keys.json").read_text(encoding="utf-8"))
# One value per placeholder, with the characters real ones hold (":" in a user id, "." in a
# connection id); a prefix may be a Redis hash tag ("{app}").
VALUES = {"node": "gw-1", "connection_id": "gw-1.abc", "user_id": "u:7", "group": "room/1"}


def public_members() -> set[str]:
    slots = {name for name in Keys.__slots__ if not name.startswith("_")}
    methods = {
        name for name, member in vars(Keys).items() if not name.startswith("_") and inspect.isfunction(member)
    }
    return slots | methods


def placeholders(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


@pytest.mark.parametrize("prefix", ["wsq", "t0a1:app", "{app}"])
def test_every_key_of_keys_json_is_a_member_of_keys_filled_in(prefix: str) -> None:
    keys = Keys(prefix)
    for name, template in KEYS_JSON["keys"].items():
        variables = [field for field in placeholders(template) if field != "prefix"]
        assert len(variables) <= 1, f"{name}: Keys fills in one variable part at the most"
        member: Any = getattr(keys, name)
        built = member(VALUES[variables[0]]) if variables else member
        assert built == template.format(prefix=prefix, **VALUES), name


def test_every_member_of_keys_is_a_key_of_keys_json() -> None:
    assert public_members() - {"prefix"} == set(KEYS_JSON["keys"])


def test_the_constants_of_keys_json() -> None:
    assert KEYS_JSON["consumer_group"] == CONSUMER_GROUP
    assert KEYS_JSON["expire_s"]["node_reaped"] == REAPED_TTL_S


def test_keys_compare_by_prefix() -> None:
    assert Keys("a") == Keys("a") != Keys("b")
    assert len({Keys("a"), Keys("a")}) == 1
    assert repr(Keys("a")) == "Keys('a')"


# Resources: one copy of keys.json, schemas/ and lua/, found in a checkout and in a wheel.


def test_a_source_checkout_reads_protocol_itself() -> None:
    assert Path(str(resources.data_root())) == PROTOCOL
    assert resources.keys_document() == KEYS_JSON
    assert json.loads(resources.read_text("schemas", "client-frame.schema.json"))["$schema"]


def test_a_built_wheel_carries_keys_json_and_the_schemas(tmp_path: Path) -> None:
    built = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(built), str(PROTOCOL)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = built.glob("wsq_protocol-*.whl")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    check = """
import json, sys
from wsq_protocol import resources
from wsq_protocol.keys import Keys
print(json.dumps({
    "package": resources.__file__,
    "root": str(resources.data_root()),
    "node_stream": Keys("p").node_stream("gw-1"),
    "schema": json.loads(resources.read_text("schemas", "client-frame.schema.json"))["$schema"],
}))
"""
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    result = subprocess.run(
        [sys.executable, "-c", check],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    seen = json.loads(result.stdout)
    assert Path(seen["package"]).is_relative_to(unpacked)
    assert Path(seen["root"]) == unpacked / "wsq_protocol" / "data"
    assert seen["node_stream"] == "p:node:gw-1:out"
    assert seen["schema"]


# Dependencies: `pip install ./worker-sdk` pulls redis and wsq-protocol only.


def project(folder: str) -> dict[str, Any]:
    with (ROOT / folder / "pyproject.toml").open("rb") as file:
        document: dict[str, Any] = tomllib.load(file)["project"]
    return document


def requirements(folder: str) -> dict[str, Requirement]:
    return {(r := Requirement(line)).name: r for line in project(folder)["dependencies"]}


def test_the_protocol_core_depends_on_redis_only() -> None:
    assert set(requirements("protocol")) == {"redis"}


def test_the_sdk_depends_on_redis_and_the_protocol_core_only() -> None:
    assert set(requirements("worker-sdk")) == {"redis", "wsq-protocol"}


@pytest.mark.parametrize("folder", ["gateway-service", "worker-sdk"])
def test_both_packages_pin_the_protocol_core_to_its_compatible_range(folder: str) -> None:
    version = Version(project("protocol")["version"])
    pinned = requirements(folder)["wsq-protocol"].specifier
    assert version in pinned
    # 0.x: a minor version may break, so the range is this minor version (>=0.2,<0.3).
    assert pinned == SpecifierSet(f">={version.major}.{version.minor},<{version.major}.{version.minor + 1}")
    assert pinned == requirements("worker-sdk")["wsq-protocol"].specifier
