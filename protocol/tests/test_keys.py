"""``Keys`` agrees with protocol/keys.json both ways; ``wsq_protocol.resources`` finds keys.json
and the schemas in a source checkout and inside a built wheel; the three distributions depend on
what the issue allows (redis, and wsq-protocol pinned to one compatible range)."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from redis.crc import key_slot

from wsq_protocol import resources
from wsq_protocol.keys import CONSUMER_GROUP, DEFAULT_SHARDS, REAPED_TTL_S, Keys, shard_of, shards_from_env

PROTOCOL = Path(__file__).resolve().parents[1]
ROOT = PROTOCOL.parent
KEYS_JSON = json.loads((PROTOCOL / "keys.json").read_text(encoding="utf-8"))
# One value per placeholder, with the characters real ones hold (":" in a user id, "." in a
# connection id); a prefix may hold braces itself ("{app}").
VALUES = {"node": "gw-1", "connection_id": "gw-1.abcdefghijklmnopqrstuv", "user_id": "u:7", "group": "room/1"}
PLACEHOLDER = re.compile(r"\{(prefix|shard|node|connection_id|user_id|group)\}")
# Members of Keys that are not keys of keys.json (or are named otherwise: "shards" is a number).
NOT_KEYS = {"prefix", "shards", "shard_of", "shard_of_connection", "inbound_stream_of", "inbound_streams"}
RENAMED = {"shards_key": "shards"}


def public_members() -> set[str]:
    slots = {name for name in Keys.__slots__ if not name.startswith("_")}
    methods = {
        name for name, member in vars(Keys).items() if not name.startswith("_") and inspect.isfunction(member)
    }
    return slots | methods


def expand(template: str, prefix: str, shards: int, shard: int) -> tuple[str, str | None]:
    """A template filled in as any language would (plain text replacement), and its variable."""
    variables = [name for name in PLACEHOLDER.findall(template) if name not in ("prefix", "shard")]
    variable = variables[0] if variables else None
    if variable in ("node", "connection_id"):
        shard = zlib.crc32(VALUES["node"].encode()) % shards  # a connection's shard is its node's
    text = template.replace("{prefix}", prefix).replace("{shard}", str(shard))
    if variable is not None:
        text = text.replace("{" + variable + "}", VALUES[variable])
    return text, variable


@pytest.mark.parametrize("prefix", ["wsq", "t0a1:app", "{app}"])
@pytest.mark.parametrize("shards", [1, 16, 1024])
def test_every_key_of_keys_json_is_a_member_of_keys_filled_in(prefix: str, shards: int) -> None:
    keys = Keys(prefix, shards)
    shard = shards - 1
    for name, template in KEYS_JSON["keys"].items():
        assert len([v for v in PLACEHOLDER.findall(template) if v not in ("prefix", "shard")]) <= 1, name
        expected, variable = expand(template, prefix, shards, shard)
        member: Any = getattr(keys, {v: k for k, v in RENAMED.items()}.get(name, name))
        if variable is not None:
            built = member(VALUES[variable])
        elif "{shard}" in template:
            built = member(shard)
        else:
            built = member
        assert built == expected, name


def test_every_member_of_keys_is_a_key_of_keys_json() -> None:
    assert {RENAMED.get(name, name) for name in public_members() - NOT_KEYS} == set(KEYS_JSON["keys"])


def test_what_one_node_owns_shares_one_slot_and_each_index_its_own() -> None:
    """protocol/README.md, "Slots and shards": every script and every gateway batch touches one
    Redis Cluster slot."""
    keys = Keys("wsq", 16)
    node, cid = VALUES["node"], VALUES["connection_id"]
    owned = [
        keys.inbound_stream_of(node),
        keys.dead_letters(keys.shard_of(node)),
        keys.delayed(keys.shard_of(node)),
        *(getattr(keys, name)(node) for name in KEYS_JSON["keys"] if name.startswith("node_")),
        keys.connection(cid),
        keys.connection_groups(cid),
    ]
    assert len({key_slot(key.encode()) for key in owned}) == 1, owned
    assert key_slot(keys.user_connections("a}b").encode()) == key_slot(keys.user_nodes("a}b").encode())
    assert key_slot(keys.group_connections("g").encode()) == key_slot(keys.group_nodes("g").encode())
    assert key_slot(keys.group_history("g").encode()) == key_slot(keys.group_nodes("g").encode())
    assert len({key_slot(keys.inbound_stream(shard).encode()) for shard in range(16)}) == 16


def test_a_nodes_shard_is_crc32_of_its_id_mod_the_shards() -> None:
    # A fixed vector, for implementations in other languages.
    assert zlib.crc32(b"gw-1") == 0xA7FF34A6
    assert shard_of("gw-1", 16) == 0xA7FF34A6 % 16 == 6
    assert Keys("wsq", 16).shard_of_connection(VALUES["connection_id"]) == 6
    assert Keys("wsq", 1).inbound_stream_of("gw-1") == "{wsq:0}:inbound"


def test_the_number_of_shards_is_checked() -> None:
    assert shards_from_env({}) == DEFAULT_SHARDS == KEYS_JSON["shards"]["default"] == 16
    assert shards_from_env({"WSQ_SHARDS": " 3 "}) == 3
    for bad in ("0", "1025", "x", "2.5"):
        with pytest.raises(ValueError, match="WSQ_SHARDS"):
            shards_from_env({"WSQ_SHARDS": bad})
    with pytest.raises(ValueError, match="from 1 to 1024"):
        Keys("wsq", 0)


def test_the_constants_of_keys_json() -> None:
    assert KEYS_JSON["consumer_group"] == CONSUMER_GROUP
    assert KEYS_JSON["expire_s"]["node_reaped"] == REAPED_TTL_S


def test_keys_compare_by_prefix() -> None:
    assert Keys("a") == Keys("a") != Keys("b")
    assert Keys("a", 4) != Keys("a", 8)
    assert len({Keys("a"), Keys("a")}) == 1
    assert repr(Keys("a")) == "Keys('a', 16)"


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
    assert seen["node_stream"] == "{p:6}:node:gw-1:out"  # shard 6 of 16: see the crc32 vector above
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
