"""The Lua scripts of protocol/lua/: each loads, documents its KEYS, ARGV and reply, takes every
key it touches in KEYS (no key built in Lua); the registry's scripts write once, record the
index changes they leave to their callers, and settle.lua removes an intent only once its index
agrees (wsq_protocol.membership)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from wsq_devkit import RedisCluster
from wsq_protocol import action_schemas
from wsq_protocol.action_schemas import RESTORE, START, publish_args
from wsq_protocol.cluster import async_redis
from wsq_protocol.codes import PROTOCOL_VERSION
from wsq_protocol.keys import REAPED_TTL_S, Keys
from wsq_protocol.membership import Intent, new_token, reserve, settle, sweep
from wsq_protocol.scripts import Script, connection_keys, run, script

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
        "claim", "commit", "drop_node", "drop_stale_consumers", "ensure_stream", "forget",
        "heartbeat", "history_append", "history_read", "index", "intend", "join", "keep_alive", "leave",
        "move_due",
        "publish_schemas", "reap", "register", "replay", "set_user", "settle", "withdraw",
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


# The scripts of one connection's life, on a real Redis.


@pytest.fixture(params=["single", "cluster"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """A client of a single Redis, then of a Redis Cluster (devkit's): every script's keys are
    in one slot, or the cluster refuses it (CROSSSLOT, or a non-local key in the script)."""
    if request.param == "single":
        client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        # The same commands: typed as the single client for the tests' annotations.
        client = cast(aioredis.Redis, async_redis(cluster.url, cluster=True))
    yield client
    await client.aclose()


async def call(redis: aioredis.Redis, name: str, keys: list[str], *args: Any) -> Any:
    return await run(redis, script(name), keys, args)


async def register(redis: aioredis.Redis, keys: Keys, user: str, groups: list[str], cid: str = CID) -> None:
    """What a gateway does for a new connection (a reservation first when it has a user), and a
    publisher's joins: every index agrees once each intent is settled."""
    token = new_token()
    if user:
        reservation = Intent("u", cid, token, user)
        assert await call(redis, "intend", [keys.node_intents(NODE)], reservation.member) == 1
        assert await reserve(redis, keys, reservation, 0)
    register_keys = [
        keys.connection(cid),
        keys.node_connections(NODE),
        keys.inbound_stream_of(NODE),
        keys.node_intents(NODE),
    ]
    event = ["v", "1", "type", "connect", "connection_id", cid]
    assert await call(redis, "register", register_keys, cid, NODE, 1, "127.0.0.1", user, token, *event) == 1
    for group in groups:
        reply = await call(
            redis, "join", join_keys(keys, cid), cid, group, 100000, new_token(), "type", "join"
        )
        assert reply[0] == 1
        assert await settle(redis, keys, NODE, [Intent.parse(reply[1])]) == []
    assert not await redis.exists(keys.node_intents(NODE))


def join_keys(keys: Keys, cid: str = CID) -> list[str]:
    return [
        keys.connection(cid),
        keys.connection_groups(cid),
        keys.node_stream(NODE),
        keys.node_intents(NODE),
    ]


async def disconnects(redis: aioredis.Redis, keys: Keys) -> list[dict[bytes, bytes]]:
    entries: Any = await redis.xrange(keys.inbound_stream_of(NODE))
    return [fields for _, fields in entries if fields[b"type"] == b"disconnect"]


async def test_forget_writes_one_event_and_records_the_index_removals(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    await register(redis, keys, "ann", ["a", "b"])
    assert await redis.smembers(keys.group_connections("a")) == {CID.encode()}
    assert await redis.hgetall(keys.user_nodes("ann")) == {NODE.encode(): b"1"}
    reply = await call(redis, "forget", connection_keys(keys, CID), 4000, CID, "tok")
    assert reply[0] == 1
    intents = [Intent.parse(member) for member in reply[1:]]
    expected = {Intent("u", CID, "tok", "ann"), Intent("g", CID, "tok", "a"), Intent("g", CID, "tok", "b")}
    assert set(intents) == expected
    assert await call(redis, "forget", connection_keys(keys, CID), 4000, CID, "tok") == 0
    (event,) = await disconnects(redis, keys)
    assert (event[b"close_code"], event[b"user_id"], event[b"v"]) == (b"4000", b"ann", b"1")
    assert not await redis.exists(
        keys.connection(CID), keys.connection_groups(CID), keys.node_connections(NODE)
    )
    # The indexes (other slots) still name it until the intents are settled.
    assert await redis.zcard(keys.node_intents(NODE)) == 3
    assert await redis.sismember(keys.group_connections("a"), CID)
    assert await settle(redis, keys, NODE, intents, holds=False) == []
    for key in (keys.group_connections("a"), keys.group_nodes("b"), keys.user_connections("ann")):
        assert not await redis.exists(key), key
    assert not await redis.exists(keys.user_nodes("ann"), keys.node_intents(NODE))


async def test_settle_keeps_an_intent_until_the_index_says_what_holds(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """A caller that wrote the index from an old belief (the connection left the group after it
    read) does not settle: settle.lua answers what holds, and the intent stays until it agrees."""
    keys = Keys(key_prefix)
    await register(redis, keys, "", ["a"])
    stale = Intent("g", CID, "t1", "a")
    await call(redis, "intend", [keys.node_intents(NODE)], stale.member)
    settle_keys = [keys.node_intents(NODE), keys.connection(CID), keys.connection_groups(CID)]
    assert await call(redis, "settle", settle_keys, stale.member, "0") == [1]  # it holds: not settled
    assert await redis.zscore(keys.node_intents(NODE), stale.member) is not None
    assert await call(redis, "settle", settle_keys, stale.member, "?") == [1]  # a read settles nothing
    assert await call(redis, "settle", settle_keys, stale.member, "1") == [1]  # agrees: settled
    assert not await redis.exists(keys.node_intents(NODE))
    # settle() loops until it agrees, whatever the caller believed.
    await call(redis, "intend", [keys.node_intents(NODE)], stale.member)
    assert await settle(redis, keys, NODE, [stale], holds=False) == []
    assert await redis.sismember(keys.group_connections("a"), CID), "written back: it holds"


async def test_the_index_counts_members_per_node_and_checks_the_limit_atomically(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    others = [f"gw-b.{'x' * 22}", f"gw-b.{'y' * 22}"]
    for cid in others:
        assert await reserve(redis, keys, Intent("u", cid, "t", "ann"), 2)
    assert not await reserve(redis, keys, Intent("u", CID, "t", "ann"), 2), "full"
    assert await reserve(redis, keys, Intent("u", others[0], "t", "ann"), 2), "already a member"
    assert await redis.hgetall(keys.user_nodes("ann")) == {b"gw-b": b"2"}
    index_keys = [keys.user_connections("ann"), keys.user_nodes("ann")]
    assert await call(redis, "index", index_keys, "-", others[0], "gw-b", 0) == 1
    assert await call(redis, "index", index_keys, "-", others[0], "gw-b", 0) == 0
    assert await redis.hgetall(keys.user_nodes("ann")) == {b"gw-b": b"1"}
    assert await call(redis, "index", index_keys, "-", others[1], "gw-b", 0) == 1
    assert not await redis.exists(*index_keys)


async def test_register_with_a_user_needs_its_reservation(redis: aioredis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    register_keys = [keys.connection(CID), keys.node_connections(NODE), keys.inbound_stream_of(NODE)]
    register_keys.append(keys.node_intents(NODE))
    assert (
        await call(redis, "register", register_keys, CID, NODE, 1, "::1", "ann", "none", "type", "connect")
        == 0
    )
    assert not await redis.exists(*register_keys)


async def test_join_and_leave_of_a_missing_connection_write_nothing(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    await redis.xadd(keys.node_stream(NODE), {"created": "1"})
    assert await call(redis, "join", join_keys(keys), CID, "g", 100000, "t", "type", "join") == 0
    assert await call(redis, "leave", join_keys(keys), CID, "g", 100000, "t", "type", "leave") == 0
    assert await redis.xlen(keys.node_stream(NODE)) == 1
    assert not await redis.exists(keys.node_intents(NODE), keys.connection_groups(CID))


async def test_reap_touches_only_a_stale_node_and_drop_node_waits_for_its_intents(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    await register(redis, keys, "", ["g"])
    orphan = f"{NODE}.AAAAAAAAAAAAAAAAAAAAAA"
    await redis.sadd(keys.node_connections(NODE), orphan)
    head = [keys.node_heartbeat(NODE), keys.node_reaped(NODE)]
    (now_s, _) = await redis.time()
    await redis.set(keys.node_heartbeat(NODE), now_s * 1000)
    assert await call(redis, "reap", head + connection_keys(keys, CID), 20000, "0", CID, NODE, "t") == -1
    assert await redis.exists(keys.connection(CID))
    assert not await redis.exists(head[1])
    await redis.set(keys.node_heartbeat(NODE), now_s * 1000 - 60000)
    reaped = await call(redis, "reap", head + connection_keys(keys, CID), 20000, "0", CID, NODE, "t")
    assert reaped == [1, Intent("g", CID, "t", "g").member.encode()]
    assert [e[b"close_code"] for e in await disconnects(redis, keys)] == [b"1006"]
    assert 0 < await redis.ttl(head[1]) <= REAPED_TTL_S
    gone = await call(redis, "reap", head + connection_keys(keys, orphan), 20000, "0", orphan, NODE, "t")
    assert gone == 0
    assert not await redis.exists(keys.node_connections(NODE))
    drop = [keys.node_heartbeat(NODE), keys.node_connections(NODE), keys.node_intents(NODE)]
    drop += [keys.node_stream(NODE), keys.node_sequence(NODE)]
    assert await call(redis, "drop_node", drop, 20000) == 0, "an intent is left"
    assert await sweep(redis, keys, NODE, older_than_ms=0) == 1
    assert not await redis.exists(keys.group_connections("g"))
    assert await call(redis, "drop_node", drop, 20000) == 1
    assert not await redis.exists(keys.node_heartbeat(NODE))
    assert len(await disconnects(redis, keys)) == 1


async def test_commit_refuses_a_write_to_a_key_not_in_keys(redis: aioredis.Redis) -> None:
    keys = Keys("t-commit")
    inbound, node_stream, other = (
        keys.inbound_stream_of(NODE),
        keys.node_stream(NODE),
        keys.node_stream("gw-b"),
    )
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


async def test_withdraw_deletes_and_names_only_entries_no_worker_read(redis: aioredis.Redis) -> None:
    """withdraw.lua (WSQ_TAKE_TIMEOUT_S): entries at or below the group's last-delivered-id were
    read and stay; those above are deleted and named, again by a second call (a lost reply), and
    all of them when the stream is gone (Redis lost it: not taken either)."""
    inbound = Keys("t-withdraw").inbound_stream_of(NODE)
    await redis.xgroup_create(inbound, "workers", id="0", mkstream=True)
    ids = [_text(await redis.xadd(inbound, {"n": str(n)})) for n in range(4)]
    await redis.xreadgroup("workers", "w1", {inbound: ">"}, count=2)  # the first two are read
    assert await call(redis, "withdraw", [inbound], "workers", *ids) == [i.encode() for i in ids[2:]]
    entries: Any = await redis.xrange(inbound)
    assert [_text(entry_id) for entry_id, _ in entries] == ids[:2]
    assert await call(redis, "withdraw", [inbound], "workers", *ids) == [i.encode() for i in ids[2:]]
    assert await redis.xreadgroup("workers", "w1", {inbound: ">"}) == []  # no worker ever sees them
    other = Keys("t-withdraw-none").inbound_stream_of(NODE)  # no group: nothing was read
    unread = _text(await redis.xadd(other, {"n": "0"}))
    assert await call(redis, "withdraw", [other], "workers", unread) == [unread.encode()]
    await redis.delete(inbound)
    assert await call(redis, "withdraw", [inbound], "workers", *ids) == [i.encode() for i in ids]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def test_publish_schemas_bumps_the_version_on_change_and_restores_only_a_lost_hash(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    key = Keys(key_prefix).schemas
    a, b = '{"type":"object"}', '{"type":"string"}'

    async def publish(mode: str, schemas: dict[str, str], removed: tuple[str, ...] = ()) -> int:
        return int(await call(redis, "publish_schemas", [key], *publish_args(mode, schemas, removed)))

    assert await publish(START, {"x": a, "y": b}) == 1
    assert await publish(START, {"x": a, "y": b}) == 0  # the same again: gateways reload nothing
    assert await publish(START, {"x": b}, removed=("y", "z")) == 2  # last to start wins
    assert await publish(RESTORE, {"x": a, "y": a}) == 0  # the hash is there: an older worker's are not
    assert action_schemas.published(await redis.hgetall(key)) == ("2", {"x": b})
    assert await publish(START, {}, removed=("x",)) == 3
    assert action_schemas.published(await redis.hgetall(key)) == ("3", {})  # $version stays
    await redis.delete(key)  # Redis lost its data
    assert await publish(RESTORE, {"x": a}) == 1
    assert action_schemas.published(await redis.hgetall(key)) == ("1", {"x": a})
