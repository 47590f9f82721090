"""The Lua scripts of protocol/lua/: each loads, documents its KEYS, ARGV and reply, takes every
key it touches in KEYS (no key built in Lua), and the stale/retry answers of forget.lua,
reap.lua and fan_out.lua write nothing, so that a caller's retry cannot write twice."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from wsq_protocol.codes import PROTOCOL_VERSION
from wsq_protocol.keys import REAPED_TTL_S, Keys
from wsq_protocol.scripts import STALE, Script, script
from wsq_protocol.scripts import connection_keys as core_connection_keys

LUA = Path(__file__).resolve().parents[1] / "lua"
NAMES = sorted(path.stem for path in LUA.glob("*.lua"))
HELPERS = sorted(LUA.glob("lib/*.lua"))
NODE = "gw-a"
CID = f"{NODE}.q2uE4nK0m5Zr8VtY1xWb7A"
# commit.lua runs the worker's writes as packed commands whose keys are also in ARGV; it refuses
# any write to a key not declared in KEYS (see its header and protocol/README.md, "Lua scripts").
KEYS_IN_ARGV = {"commit"}


def code_of(source: str) -> str:
    """``source`` without its comments (``--`` to the end of the line; no script has a ``--`` in
    a string)."""
    return "\n".join(line.split("--", 1)[0] for line in source.splitlines())


def test_every_script_is_listed() -> None:
    assert NAMES == [
        "claim", "commit", "drop_node", "drop_stale_consumers", "ensure_stream", "fan_out",
        "forget", "heartbeat", "join", "keep_alive", "leave", "move_due", "reap", "register",
        "replay", "set_user",
    ]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_each_script_loads_and_has_its_header(name: str) -> None:
    loaded = script(name)
    assert isinstance(loaded, Script)
    assert loaded.name == name
    assert len(loaded.sha) == 40
    assert not re.search(r"^-- include:", loaded.body, re.MULTILINE)  # expanded
    source = (LUA / f"{name}.lua").read_text()
    header = _header(source)
    assert header[0].startswith(f"-- {name}.lua: ")
    code = code_of(source)
    for used in sorted(set(re.findall(r"KEYS\[(\d+)\]", code)), key=int):
        assert any(line.startswith(f"-- KEYS[{used}]") for line in header), (name, used)
    if "ARGV" in code_of(loaded.body):
        assert any(line.startswith("-- ARGV[") for line in header), name
    assert any(line.startswith("-- Reply:") for line in header), name


def _header(source: str) -> list[str]:
    lines = []
    for line in source.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return lines


@pytest.mark.parametrize("name", NAMES)
def test_no_script_builds_a_key(name: str) -> None:
    code = code_of(script(name).body)
    # A key name built in Lua: a ':' glued to something with '..'.
    assert not re.search(r"""\.\.\s*['"][^'"]*:|['"][^'"]*:['"]\s*\.\.""", code), name
    assert "prefix" not in code, name
    if name in KEYS_IN_ARGV:  # each write's key is checked against KEYS before it runs
        assert "if not declared[ARGV[i + 2]] then" in code
    else:
        # The key of a keyed command always comes from KEYS (or a name bound to a KEYS[] entry).
        keyed = r"redis\.p?call\('(?:X(?!INFO|GROUP)\w+|S(?!CRIPT)\w+|H\w+|Z\w+|DEL|EXISTS|SET|GET)',\s*"
        for match in re.finditer(keyed + r"([^,)]+)", code):
            assert match.group(1).startswith(("KEYS[", "stream_of[", "key")), (name, match.group(0))


def test_helpers_are_included_only_by_header_lines() -> None:
    for path in HELPERS:
        assert path.read_text().startswith(f"-- lib/{path.name}: ")
    for name in NAMES:
        for line in (LUA / f"{name}.lua").read_text().splitlines():
            if "include:" in line:
                assert re.fullmatch(r"-- include: lib/\w+\.lua", line), (name, line)
                assert (LUA / line.removeprefix("-- include: ")).is_file()


def test_constants_baked_into_the_scripts_agree_with_the_protocol() -> None:
    (version,) = re.findall(r"local VERSION = '(\w+)'", (LUA / "lib/forget.lua").read_text())
    assert version == PROTOCOL_VERSION
    (ttl,) = re.findall(r"local REAPED_TTL_S = (\d+)", (LUA / "reap.lua").read_text())
    assert int(ttl) == REAPED_TTL_S


# The stale answers, on a real Redis.


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def run(redis: aioredis.Redis, name: str, keys: list[str], *args: Any) -> Any:
    return await redis.register_script(script(name).body)(keys=keys, args=list(args))


def connection_keys(keys: Keys, user: str, groups: list[str], cid: str = CID, node: str = NODE) -> list[str]:
    return core_connection_keys(keys, cid, node, user or None, groups)[0]


async def register(redis: aioredis.Redis, keys: Keys, user: str, groups: list[str], cid: str = CID) -> None:
    register_keys = [keys.connection(cid), keys.node_connections(NODE), keys.inbound_stream]
    if user:
        register_keys.append(keys.user_connections(user))
    event = ["v", "1", "type", "connect", "connection_id", cid]
    assert await run(redis, "register", register_keys, cid, NODE, 1, "127.0.0.1", user, 0, *event) == 1
    for group in groups:
        join_keys = [
            keys.connection(cid),
            keys.group_connections(group),
            keys.connection_groups(cid),
            keys.node_stream(NODE),
        ]
        assert await run(redis, "join", join_keys, cid, group, 100000, "type", "join") == 1


async def disconnects(redis: aioredis.Redis, keys: Keys) -> list[dict[bytes, bytes]]:
    entries: Any = await redis.xrange(keys.inbound_stream)
    return [fields for _, fields in entries if fields[b"type"] == b"disconnect"]


async def test_forget_with_stale_groups_writes_nothing_and_says_what_it_found(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    await register(redis, keys, "ann", ["a", "b"])
    # The gateway knew of group a only: b was joined meanwhile.
    stale = await run(redis, "forget", connection_keys(keys, "ann", ["a"]), 4000, CID, NODE, "ann", "a")
    assert stale[:3] == [STALE, NODE.encode(), b"ann"]
    assert sorted(stale[3:]) == [b"a", b"b"]
    assert await redis.exists(keys.connection(CID))
    assert await disconnects(redis, keys) == []
    assert await redis.sismember(keys.group_connections("a"), CID)
    # A wrong user is stale too.
    stale = await run(redis, "forget", connection_keys(keys, "", ["a", "b"]), 4000, CID, NODE, "", "a", "b")
    assert stale[:3] == [STALE, NODE.encode(), b"ann"]
    # The retry with what it found forgets it, once.
    found = connection_keys(keys, "ann", ["b", "a"])
    assert await run(redis, "forget", found, 4000, CID, NODE, "ann", "b", "a") == 1
    assert await run(redis, "forget", found, 4000, CID, NODE, "ann", "b", "a") == 0
    (event,) = await disconnects(redis, keys)
    assert (event[b"close_code"], event[b"user_id"], event[b"v"]) == (b"4000", b"ann", b"1")
    for key in (keys.connection(CID), keys.connection_groups(CID), keys.group_connections("a")):
        assert not await redis.exists(key)
    assert not await redis.exists(keys.user_connections("ann"), keys.node_connections(NODE))


async def test_reap_touches_only_a_stale_node_and_checks_its_keys(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    await register(redis, keys, "", ["g"])
    orphan = f"{NODE}.AAAAAAAAAAAAAAAAAAAAAA"
    await redis.sadd(keys.node_connections(NODE), orphan)
    head = [keys.nodes, keys.node_reaped(NODE)]
    (now_s, _) = await redis.time()
    await redis.zadd(keys.nodes, {NODE: now_s * 1000})
    fresh = await run(redis, "reap", head + connection_keys(keys, "", ["g"]), 20000, "0", CID, NODE, "", "g")
    assert fresh == -1
    assert await redis.exists(keys.connection(CID))
    assert not await redis.exists(head[1])
    await redis.zadd(keys.nodes, {NODE: now_s * 1000 - 60000})
    stale = await run(redis, "reap", head + connection_keys(keys, "", []), 20000, "0", CID, NODE, "")
    assert stale == [STALE, NODE.encode(), b"", b"g"]
    assert await disconnects(redis, keys) == []
    assert not await redis.exists(head[1])
    reaped = await run(redis, "reap", head + connection_keys(keys, "", ["g"]), 20000, "0", CID, NODE, "", "g")
    assert reaped == 1
    assert [e[b"close_code"] for e in await disconnects(redis, keys)] == [b"1006"]
    assert 0 < await redis.ttl(head[1]) <= REAPED_TTL_S
    gone = await run(
        redis, "reap", head + connection_keys(keys, "", [], orphan), 20000, "0", orphan, NODE, ""
    )
    assert gone == 0
    assert not await redis.exists(keys.node_connections(NODE))
    drop = [keys.nodes, keys.node_connections(NODE), keys.node_stream(NODE), keys.node_sequence(NODE)]
    assert await run(redis, "drop_node", drop, NODE, 20000) == 1
    assert await redis.zscore(keys.nodes, NODE) is None
    assert len(await disconnects(redis, keys)) == 1


async def test_fan_out_with_missing_nodes_writes_nothing_and_says_which(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    members = keys.group_connections("room")
    cids = [f"gw-a.{'a' * 22}", f"gw-a.{'b' * 22}", f"gw-b.{'c' * 22}", f"gw-c.{'d' * 22}"]
    await redis.sadd(members, *cids)
    for node in ("gw-a", "gw-b"):  # gw-c is gone: its stream no longer exists
        await redis.xadd(keys.node_stream(node), {"x": "1"})
        await redis.xtrim(keys.node_stream(node), maxlen=0)
    fields = ["v", "1", "type", "send"]
    stale = await run(redis, "fan_out", [members, keys.node_stream("gw-a")], 1, "gw-a", 100000, *fields)
    assert sorted(stale) == [b"gw-a", b"gw-b", b"gw-c"]
    assert [await redis.xlen(keys.node_stream(n)) for n in ("gw-a", "gw-b")] == [0, 0]
    nodes = ["gw-x", "gw-c", "gw-b", "gw-a"]  # more than needed is fine
    streams = [keys.node_stream(node) for node in nodes]
    assert await run(redis, "fan_out", [members, *streams], 4, " ".join(nodes), 100000, *fields) == 2
    assert [await redis.xlen(keys.node_stream(n)) for n in ("gw-a", "gw-b")] == [1, 1]
    assert not await redis.exists(keys.node_stream("gw-c"), keys.node_stream("gw-x"))
    with pytest.raises(aioredis.ResponseError, match="one node per node stream"):
        await run(redis, "fan_out", [members], 1, "gw-a", 100000, *fields)


async def test_commit_refuses_a_write_to_a_key_not_in_keys(redis: aioredis.Redis) -> None:
    keys = Keys("t-commit")
    inbound, node_stream, other = keys.inbound_stream, keys.node_stream(NODE), keys.node_stream("gw-b")
    await redis.xgroup_create(inbound, "workers", id="0", mkstream=True)
    raw_entry = await redis.xadd(inbound, {"v": "1"})
    entry = raw_entry.decode() if isinstance(raw_entry, bytes) else raw_entry
    await redis.xreadgroup("workers", "w1", {inbound: ">"})
    await redis.xadd(node_stream, {"created": "1"})

    def write(stream: str) -> list[str]:  # '*', its argument count, then the command
        return ["*7", "XADD", stream, "*", "v", "1", "frame", "{}"]

    commit = script("commit")
    command = (*write(node_stream), *write(other))
    reply = await redis.eval(commit.body, 2, inbound, node_stream, "workers", "0", entry, "2", *command)
    refused, skipped, error = reply
    assert (skipped, error) == (0, b"")
    assert refused[:2] == [1, 2]  # entry 1, its write 2: not declared
    assert b"not declared in KEYS" in refused[2]
    assert await redis.xlen(node_stream) == 2  # the declared write ran
    assert await redis.exists(other) == 0
    assert (await redis.xpending(inbound, "workers"))["pending"] == 1  # not acknowledged
