"""wsq on a real Redis Cluster (3 masters, a replica each: devkit's ``redis_cluster``).

Telling a cluster from a single Redis and building the client each needs; every script's KEYS
in one slot, and every script running on the cluster; the pipes: a batch spread over the
masters with its replies in order and each command's error in its place, a pipe bound to one
slot (transactions included), a slot moved under a pipe (MOVED) or moving (ASK), NOSCRIPT
answered by EVAL, and a master lost mid-traffic with a replica promoted."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.exceptions import MovedError, NoScriptError, ResponseError

from wsq_devkit import RedisCluster, RedisServer, wait_until_async
from wsq_devkit.redis_typing import execute_command
from wsq_protocol.cluster import (
    async_redis,
    check_redis_url,
    is_cluster,
    is_cluster_sync,
    open_async_redis,
    open_sync_redis,
    sync_redis,
)
from wsq_protocol.keys import Keys
from wsq_protocol.membership import Intent
from wsq_protocol.pipe import CheckedConnection, RedisPipe, WriteInDoubt
from wsq_protocol.routing import ClusterUnavailable, RoutedPipe, SlotPipe, slot_of
from wsq_protocol.scripts import Script, connection_keys, run, script

NODE = "gw-a"
CID = f"{NODE}.q2uE4nK0m5Zr8VtY1xWb7A"
SHARDS = 16
SCRIPTS = sorted(path.stem for path in (Path(__file__).resolve().parents[1] / "lua").glob("*.lua"))


class Opened:
    """Cluster clients and pipes a test opened, closed when it ends (pipes first)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pipes: list[RedisPipe | RoutedPipe] = []
        self._clients: list[redis.asyncio.Redis | AsyncRedisCluster] = []

    def client(self, **options: Any) -> AsyncRedisCluster:
        client = async_redis(self.url, cluster=True, **options)
        assert isinstance(client, AsyncRedisCluster)
        self._clients.append(client)
        return client

    def pipe(self, client: AsyncRedisCluster, **options: Any) -> RedisPipe:
        pipe = RedisPipe(client, **options)
        self._pipes.append(pipe)
        return pipe

    def routed(self, client: redis.asyncio.Redis | AsyncRedisCluster, **options: Any) -> RoutedPipe:
        pipe = RoutedPipe(client, **options)
        self._pipes.append(pipe)
        return pipe

    async def aclose(self) -> None:
        for pipe in self._pipes:
            await pipe.aclose()
        for client in self._clients:
            await client.aclose()


@pytest.fixture
async def opened(redis_cluster: RedisCluster) -> AsyncIterator[Opened]:
    resources = Opened(redis_cluster.url)
    yield resources
    await resources.aclose()


def spread_keys(prefix: str, count: int) -> list[str]:
    """``count`` keys over the shards' hash tags (and so over every master)."""
    return [f"{{{prefix}:{n % SHARDS}}}:k{n}" for n in range(count)]


# Telling a cluster, and its client.


async def test_a_cluster_is_told_from_a_single_redis(redis_cluster: RedisCluster, redis_url: str) -> None:
    for url, expected in ((redis_url, False), (redis_cluster.url, True)):
        plain = redis.asyncio.Redis.from_url(url)
        try:
            assert await is_cluster(plain) is expected
        finally:
            await plain.aclose()
        with redis.Redis.from_url(url) as blocking:
            assert is_cluster_sync(blocking) is expected
        client = await open_async_redis(url)
        try:
            assert isinstance(client, AsyncRedisCluster) is expected
            assert await is_cluster(client) is expected
            await client.set("open-async", "1")
        finally:
            await client.aclose()
        made = open_sync_redis(url)
        try:
            assert isinstance(made, SyncRedisCluster) is expected
            assert is_cluster_sync(made) is expected
        finally:
            made.close()


async def test_an_info_redis_refuses_still_tells_a_single_redis(redis_server: RedisServer) -> None:
    admin = redis.asyncio.Redis.from_url(redis_server.url)
    await execute_command(admin, "ACL", "SETUSER", "no-info-c", "on", ">pw", "+@all", "-info", "~*")
    client = redis.asyncio.Redis.from_url(redis_server.url, username="no-info-c", password="pw")
    try:
        assert await is_cluster(client) is False
    finally:
        await client.aclose()
        await execute_command(admin, "ACL", "DELUSER", "no-info-c")
        await admin.aclose()


async def test_the_cluster_client_checks_every_argument_on_every_node(opened: Opened) -> None:
    client = opened.client()
    await client.initialize()
    assert {node.connection_class for node in client.get_nodes()} == {CheckedConnection}
    with pytest.raises(TypeError, match="only bytes, str, int and float"):
        await client.set("checked", True)
    blocking = sync_redis(opened.url, cluster=True)
    try:
        assert isinstance(blocking, SyncRedisCluster)
        assert blocking.set("sync-cluster", "1")
    finally:
        blocking.close()


# Every script's keys in one slot; every script runs on the cluster.


def script_keys(keys: Keys) -> dict[str, list[list[str]]]:
    """Each script's KEYS as wsq's processes pass them (protocol/lua headers): one or more
    examples each."""
    shard = keys.shard_of(NODE)
    inbound, node_stream, intents = (
        keys.inbound_stream(shard),
        keys.node_stream(NODE),
        keys.node_intents(NODE),
    )
    connection, groups = keys.connection(CID), keys.connection_groups(CID)
    head = [keys.node_heartbeat(NODE), keys.node_reaped(NODE)]
    return {
        "claim": [[inbound]],
        "commit": [[inbound, node_stream, keys.dead_letters(shard), keys.delayed(shard)]],
        "drop_node": [
            [
                keys.node_heartbeat(NODE),
                keys.node_connections(NODE),
                intents,
                node_stream,
                keys.node_sequence(NODE),
            ]
        ],
        "drop_stale_consumers": [[inbound]],
        "ensure_stream": [[node_stream]],
        "forget": [connection_keys(keys, CID)],
        "heartbeat": [[node_stream, keys.node_heartbeat(NODE), keys.node_reaped(NODE)]],
        "history_append": [[keys.group_history("g")]],
        "history_read": [[keys.group_history("g")]],
        "index": [
            [keys.user_connections("ann"), keys.user_nodes("ann")],
            [keys.group_connections("g"), keys.group_nodes("g")],
        ],
        "intend": [[intents]],
        "join": [[connection, groups, node_stream, intents]],
        "keep_alive": [[inbound]],
        "leave": [[connection, groups, node_stream, intents]],
        "move_due": [[keys.delayed(shard), inbound]],
        "publish_schemas": [[keys.schemas]],
        "reap": [head + connection_keys(keys, CID)],
        "register": [[connection, keys.node_connections(NODE), keys.inbound_stream_of(NODE), intents]],
        "replay": [[keys.dead_letters(shard), inbound]],
        "set_user": [[connection, intents]],
        "settle": [[intents, connection, groups]],
        "withdraw": [[inbound]],
    }


def test_each_script_is_given_keys_of_one_slot() -> None:
    for shards in (1, SHARDS, 1024):
        table = script_keys(Keys("wsq", shards))
        assert sorted(table) == SCRIPTS
        for name, examples in table.items():
            for keys in examples:
                assert len({slot_of(key) for key in keys}) == 1, (name, keys)


def script_args(name: str) -> list[Any]:
    intent = Intent("g", CID, "t", "g").member
    args: dict[str, list[Any]] = {
        "claim": ["workers", "c1", 0, "0-0", 10],
        "commit": ["workers", "0"],
        "drop_node": [20000],
        "drop_stale_consumers": ["workers", 60000, "c1"],
        "ensure_stream": [],
        "forget": [4000, CID, "t"],
        "heartbeat": [],
        "history_append": [100, 300000, "chat", '{"text":"hi"}'],
        "history_read": ["", 10],
        "index": ["+", CID, NODE, 0],
        "intend": [intent],
        "join": [CID, "g", 100000, "t", "type", "join"],
        "keep_alive": ["workers", "c1"],
        "leave": [CID, "g", 100000, "t", "type", "leave"],
        "move_due": [10],
        "publish_schemas": ["start", 1, "chat", '{"type":"object"}', "gone"],
        "reap": [20000, "1", CID, NODE, "t"],
        "register": [CID, NODE, 1, "::1", "", "none", "type", "connect"],
        "replay": ["0-1"],
        "set_user": [CID, "ann", "", "t"],
        "settle": [intent, "?"],
        "withdraw": ["workers", "1-0"],
    }
    return args[name]


@pytest.mark.parametrize("name", sorted(script_keys(Keys("wsq"))))
async def test_each_script_runs_on_the_cluster(opened: Opened, key_prefix: str, name: str) -> None:
    client = opened.client()
    keys = Keys(key_prefix, SHARDS)
    inbound = keys.inbound_stream(keys.shard_of(NODE))
    await client.xgroup_create(inbound, "workers", id="0", mkstream=True)
    for example in script_keys(keys)[name]:
        await run(client, script(name), example, script_args(name))  # no CROSSSLOT, no non-local key


# RoutedPipe: a batch over the masters.


async def test_a_routed_batch_goes_to_every_master_with_its_replies_in_order(
    opened: Opened, redis_cluster: RedisCluster, key_prefix: str
) -> None:
    client = opened.client()
    pipe = opened.routed(client)
    keys = spread_keys(key_prefix, 48)
    replies = await pipe.execute([(key, ("SET", key, n)) for n, key in enumerate(keys)])
    assert replies == [b"OK"] * len(keys)
    replies = await pipe.execute([(key, ("INCRBY", key, 1000)) for key in keys])
    assert replies == [1000 + n for n in range(len(keys))]
    owners = {redis_cluster.master_of_slot(slot_of(key)).port for key in keys}
    assert len(owners) == 3
    for key in keys[:6]:  # each on its own slot's master
        with redis.Redis(port=redis_cluster.master_of_slot(slot_of(key)).port) as direct:
            assert int(direct.get(key) or 0) >= 1000


async def test_each_commands_error_is_in_its_place(
    opened: Opened, redis_server: RedisServer, key_prefix: str
) -> None:
    keys = spread_keys(key_prefix, 6)
    failing = Script.of("failing", "return redis.error_reply('ERR refused ' .. KEYS[1])")

    async def batch(pipe: RoutedPipe) -> list[Any]:
        return await pipe.execute(
            [
                (keys[0], ("SET", keys[0], "text")),
                (keys[0], ("INCR", keys[0])),  # not an integer
                (keys[1], ("INCR", keys[1])),
                (keys[2], failing.eval([keys[2]])),
                (keys[3], ("LPUSH", keys[3], "x")),
                (keys[3], ("GET", keys[3])),  # WRONGTYPE
                (keys[4], ("GET", keys[4])),
            ]
        )

    single = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        for replies in (await batch(opened.routed(opened.client())), await batch(opened.routed(single))):
            assert replies[0] == b"OK"
            assert isinstance(replies[1], ResponseError)
            assert "not an integer" in str(replies[1])
            assert replies[2] == 1
            assert isinstance(replies[3], ResponseError)
            assert f"refused {keys[2]}" in str(replies[3])
            assert replies[4] == 1
            assert isinstance(replies[5], ResponseError)
            assert str(replies[5]).startswith("WRONGTYPE")
            assert replies[6] is None
    finally:
        await single.aclose()


async def test_a_single_redis_lost_puts_its_error_in_every_place() -> None:
    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url, socket_connect_timeout=0.5)
        pipe = RoutedPipe(client, resend=False)
        try:
            assert await pipe.execute([("a", ("SET", "a", "1")), ("b", ("GET", "a"))]) == [b"OK", b"1"]
            server.stop()
            replies = await pipe.execute([("a", ("SET", "a", "2")), ("b", ("GET", "a"))])
            assert [type(reply) for reply in replies] == [redis.ConnectionError] * 2
        finally:
            await pipe.aclose()
            await client.aclose()


async def test_a_command_given_the_wrong_key_fails_in_place(
    opened: Opened, redis_cluster: RedisCluster, key_prefix: str
) -> None:
    """A key of another slot than the one the caller named: its MOVED is an error, not followed
    for ever."""
    keys = spread_keys(key_prefix, SHARDS)
    owner = redis_cluster.master_of_slot
    wrong = next(key for key in keys if owner(slot_of(key)) is not owner(slot_of(keys[0])))
    pipe = opened.routed(opened.client(), failover_s=2)
    replies = await pipe.execute([(keys[0], ("SET", wrong, "1")), (keys[0], ("SET", keys[0], "1"))])
    assert isinstance(replies[0], MovedError)
    assert replies[0].slot_id == slot_of(wrong)
    assert replies[1] == b"OK"


# SlotPipe: RedisPipe(cluster, key=...).


async def test_a_pipe_on_a_cluster_is_bound_to_its_keys_slot(
    opened: Opened, redis_cluster: RedisCluster, key_prefix: str
) -> None:
    client = opened.client()
    with pytest.raises(TypeError, match="key="):
        RedisPipe(client)
    tag = f"{{{key_prefix}:3}}"
    pipe = opened.pipe(client, key=f"{tag}:inbound")
    assert isinstance(pipe, SlotPipe)
    assert pipe.slot == slot_of(tag)
    await pipe.connect()
    replies = await pipe.execute(
        [
            ("MULTI",),
            ("XADD", f"{tag}:inbound", "*", "n", "1"),
            ("SET", f"{tag}:seq", 7),
            ("EXEC",),
            ("GET", f"{tag}:seq"),
        ]
    )
    assert replies[:4:3] == [b"OK", [replies[3][0], b"OK"]]
    assert replies[4] == b"7"
    with redis.Redis(port=redis_cluster.master_of_slot(pipe.slot).port) as direct:
        assert direct.xlen(f"{tag}:inbound") == 1
    with pytest.raises(TypeError, match="argument 1 is a bool"):
        pipe.pack(("SET", True))


@pytest.mark.parametrize("kind", ["slot pipe", "routed pipe", "slot pipe transaction"])
async def test_a_slot_moved_to_another_master_is_followed(
    opened: Opened, redis_cluster: RedisCluster, key_prefix: str, kind: str
) -> None:
    """The pipe's slot map says the old master: it answers MOVED, the pipe sends the commands
    (a whole transaction) to the new one."""
    client = opened.client()
    tag = f"{{{key_prefix}:moving}}"
    key, slot = f"{tag}:n", slot_of(tag)
    pipe: Any = opened.routed(client) if kind == "routed pipe" else opened.pipe(client, key=key)

    async def incr() -> list[Any]:
        if kind == "routed pipe":
            return list(await pipe.execute([(key, ("INCR", key)), (key, ("GET", key))]))
        if kind == "slot pipe":
            return list(await pipe.execute([("INCR", key), ("GET", key)]))
        replies = await pipe.execute([("MULTI",), ("INCR", key), ("GET", key), ("EXEC",)])
        assert replies[:3] == [b"OK", b"QUEUED", b"QUEUED"]
        return list(replies[3])

    assert await incr() == [1, b"1"]
    source = redis_cluster.master_of_slot(slot)
    target = next(master for master in redis_cluster.masters() if master is not source)
    redis_cluster.move_slot(slot, target)
    try:
        assert client.nodes_manager.get_node_from_slot(slot).port == source.port  # stale
        assert await incr() == [2, b"2"]
        assert client.nodes_manager.get_node_from_slot(slot).port == target.port  # followed
        with redis.Redis(port=target.port) as direct:
            assert direct.get(key) == b"2"
    finally:
        redis_cluster.move_slot(slot, source)
    assert await incr() == [3, b"3"]


@pytest.mark.parametrize("kind", ["slot pipe", "routed pipe"])
async def test_a_key_of_a_migrating_slot_is_asked_where_it_went(
    opened: Opened, redis_cluster: RedisCluster, key_prefix: str, kind: str
) -> None:
    """While a slot migrates, its old master runs the commands of the keys it still holds and
    answers ASK for the others: the pipe sends those to the new master after ASKING."""
    client = opened.client()
    tag = f"{{{key_prefix}:asking}}"
    stays, goes, new = f"{tag}:stays", f"{tag}:goes", f"{tag}:new"
    slot = slot_of(tag)
    pipe: Any = opened.routed(client) if kind == "routed pipe" else opened.pipe(client, key=tag)

    async def send(*commands: tuple[Any, ...]) -> list[Any]:
        if kind == "routed pipe":
            return list(await pipe.execute([(tag, command) for command in commands]))
        return list(await pipe.execute(commands))

    assert await send(("SET", stays, "s"), ("SET", goes, "g")) == [b"OK", b"OK"]
    source = redis_cluster.master_of_slot(slot)
    target = next(master for master in redis_cluster.masters() if master is not source)
    redis_cluster.start_moving_slot(slot, target)
    try:
        assert redis_cluster.migrate_keys(slot, source, target, [goes]) == 1
        replies = await send(("GET", stays), ("APPEND", goes, "+"), ("GET", goes), ("SET", new, "n"))
        assert replies == [b"s", 2, b"g+", b"OK"]
        with redis.Redis(port=target.port) as direct, pytest.raises(MovedError):
            direct.get(goes)  # without ASKING the new master sends a client back to the old one
        redis_cluster.migrate_keys(slot, source, target)
        redis_cluster.finish_moving_slot(slot, target)
        assert await send(("GET", stays), ("GET", goes), ("GET", new)) == [b"s", b"g+", b"n"]
    finally:
        redis_cluster.move_slot(slot, source)


@pytest.mark.parametrize("kind", ["slot pipe", "routed pipe"])
async def test_noscript_is_answered_by_the_scripts_eval(opened: Opened, key_prefix: str, kind: str) -> None:
    client = opened.client()
    tag = f"{{{key_prefix}:scripts}}"
    known = Script.of("known", f"return redis.call('INCR', KEYS[1]) -- {key_prefix}")
    unknown = Script.of("unknown", f"return 1 -- {key_prefix}")
    commands = [known.call([f"{tag}:n"]), unknown.call([f"{tag}:n"]), known.call([f"{tag}:n"])]
    if kind == "routed pipe":
        replies = await opened.routed(client, scripts=[known]).execute([(tag, c) for c in commands])
    else:
        replies = await opened.pipe(client, key=tag, scripts=[known]).execute(commands)
    assert replies[0] == 1
    assert isinstance(replies[1], NoScriptError)  # a script it was not given
    assert replies[2] == 2


async def test_noscript_is_answered_by_eval_on_a_single_redis_too(redis_url: str, key_prefix: str) -> None:
    known = Script.of("known", f"return redis.call('INCR', KEYS[1]) -- single {key_prefix}")
    client = redis.asyncio.Redis.from_url(redis_url)
    pipe = RedisPipe(client, scripts=[known])
    try:
        # Sent again after the batch: a command after it ran before it (the GET).
        assert await pipe.execute([known.call([key_prefix]), ("GET", key_prefix)]) == [1, None]
        assert await pipe.execute([known.call([key_prefix])]) == [2]  # EVAL taught it
        await client.script_flush()
        replies = await pipe.execute([("MULTI",), known.call([key_prefix]), ("EXEC",)])
        [in_transaction] = replies[2]  # inside a transaction: left as Redis said
        assert isinstance(in_transaction, NoScriptError)
        assert await pipe.execute([known.call([key_prefix])]) == [3]
    finally:
        await pipe.aclose()
        await client.aclose()


# A master lost mid-traffic.


@pytest.mark.faults
@pytest.mark.parametrize("kill", [True, False], ids=["sigkill", "sigterm"])
async def test_the_pipes_go_on_through_a_fail_over(
    opened: Opened, redis_cluster: RedisCluster, key_prefix: str, kill: bool
) -> None:
    """Batches run without pause while a master dies and its replica takes over: each batch
    gets every reply (none lost, none an error), on the new master once it is promoted."""
    client = opened.client(socket_connect_timeout=0.5, socket_timeout=5)
    keys = spread_keys(key_prefix, 32)
    routed = opened.routed(client)
    lost_tag = f"{{{key_prefix}:0}}"
    slot_pipe = opened.pipe(client, key=lost_tag)
    victim = redis_cluster.master_of_slot(slot_of(lost_tag))
    counts = itertools.count(1)
    batches = 0
    longest = 0.0  # the longest batch: one waited for the promotion
    stop = asyncio.Event()

    async def traffic() -> None:
        nonlocal batches, longest
        while not stop.is_set():
            n, started = next(counts), time.monotonic()
            replies = await routed.execute([(key, ("SET", key, n)) for key in keys])
            assert replies == [b"OK"] * len(keys), replies
            replies = await slot_pipe.execute([("MULTI",), ("SET", f"{lost_tag}:m", n), ("EXEC",)])
            assert replies[2] == [b"OK"], replies
            batches += 1
            longest = max(longest, time.monotonic() - started)
            await asyncio.sleep(0)

    runner = asyncio.create_task(traffic())
    try:
        await wait_for(lambda: batches >= 5)
        promoted = await asyncio.to_thread(redis_cluster.fail_over, victim, kill=kill)
        after = batches
        await wait_for(lambda: batches >= after + 5)
        assert not runner.done()
        assert longest > 0.5, "no batch met the lost master"
        assert client.nodes_manager.get_node_from_slot(slot_of(lost_tag)).port == promoted.port
        with redis.Redis(port=promoted.port) as direct:
            assert int(direct.get(f"{lost_tag}:m") or 0) >= after
    finally:
        stop.set()
        await runner
        await asyncio.to_thread(redis_cluster.rejoin, victim)


async def test_a_slot_no_master_serves_gives_up_after_failover_s(
    opened: Opened, redis_cluster: RedisCluster, key_prefix: str
) -> None:
    """A master stopped with no replica promoted (its replica stopped first): the pipe tries
    for failover_s, then ClusterUnavailable, raised by a slot pipe and in place by a routed one."""
    client = opened.client(socket_connect_timeout=0.5)
    keys = spread_keys(key_prefix, SHARDS)
    tag = f"{{{key_prefix}:5}}"
    master = redis_cluster.master_of_slot(slot_of(tag))
    [replica] = redis_cluster.replicas_of(master)
    slot_pipe = opened.pipe(client, key=tag, failover_s=1.0)
    routed = opened.routed(client, failover_s=1.0)
    await slot_pipe.connect()
    replica.stop()
    master.stop()
    try:
        # The routed pipe first: the other masters answer its first round at once, before the
        # cluster notices the lost master (cluster-node-timeout, 1 s here) and, its slots
        # covered by no one, answers CLUSTERDOWN on every master.
        replies = await routed.execute([(key, ("SET", key, "1")) for key in keys])
        served = {key for key in keys if redis_cluster_owner_port(client, key) != master.port}
        for key, reply in zip(keys, replies, strict=True):
            if key in served:
                assert reply == b"OK"
            else:
                assert isinstance(reply, ClusterUnavailable)
        assert len(served) < len(keys)
        with pytest.raises(ClusterUnavailable):
            await slot_pipe.execute([("SET", tag, "1")])
    finally:
        master.start()
        replica.start()
        await asyncio.to_thread(redis_cluster.wait_ok, replicas_per_master=1)


def redis_cluster_owner_port(client: AsyncRedisCluster, key: str) -> int:
    return int(client.nodes_manager.get_node_from_slot(slot_of(key)).port)


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    async def check() -> bool:
        return condition()

    await wait_until_async(check, timeout=timeout)


# A connection lost, or a master stalled, after a batch was sent.


@pytest.mark.faults
async def test_a_batch_lost_with_its_master_is_never_sent_twice_unless_allowed(
    opened: Opened, redis_cluster: RedisCluster, key_prefix: str
) -> None:
    """A blocking command is waiting on a master when it dies: a writes pipe raises
    WriteInDoubt, a routed pipe with resend=False puts the ConnectionError in its place (the
    other masters' replies kept), one with resend=True sends it again to the new master."""
    client = opened.client(socket_connect_timeout=0.5)
    keys = spread_keys(key_prefix, SHARDS)
    lost = keys[0]
    victim = redis_cluster.master_of_slot(slot_of(lost))
    elsewhere = next(key for key in keys if redis_cluster.master_of_slot(slot_of(key)) is not victim)
    writes = opened.pipe(client, key=lost, writes=True)
    once = opened.routed(client, resend=False)
    again = opened.routed(client, resend=True)

    async def waiting(pipe: Any) -> Any:
        if isinstance(pipe, RoutedPipe):
            return await pipe.execute([(elsewhere, ("SET", elsewhere, "1")), (lost, ("BLPOP", lost, 10))])
        return await pipe.execute([("BLPOP", lost, 10)])

    async def blocked() -> bool:
        with redis.Redis(port=victim.port) as direct:
            return int(direct.info("clients")["blocked_clients"]) == 3

    tasks = [asyncio.create_task(waiting(pipe)) for pipe in (writes, once, again)]
    try:
        await wait_until_async(blocked)
        promoted = await asyncio.to_thread(redis_cluster.fail_over, victim)
        with pytest.raises(WriteInDoubt):
            await tasks[0]
        replies = await tasks[1]
        assert replies[0] == b"OK"
        assert isinstance(replies[1], redis.ConnectionError)
        with redis.Redis(port=promoted.port) as direct:
            direct.rpush(lost, "pushed")
        assert await tasks[2] == [b"OK", [lost.encode(), b"pushed"]]
        # The pipes go on, on the new master.
        assert await writes.execute([("SET", lost, "after")]) == [b"OK"]
        assert await once.execute([(lost, ("GET", lost))]) == [b"after"]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.to_thread(redis_cluster.rejoin, victim)


@pytest.mark.faults
async def test_a_stalled_master_times_out_its_commands_only(
    opened: Opened, redis_cluster: RedisCluster, key_prefix: str
) -> None:
    """A master that stops answering (SIGSTOP) for longer than socket_timeout: a routed batch
    gets the others' replies and a TimeoutError in place of its commands; a slot pipe raises it
    (with resend=False: else they would be sent again until failover_s)."""
    client = opened.client(socket_timeout=0.3)
    keys = spread_keys(key_prefix, SHARDS)
    stalled_key = keys[0]
    stalled = redis_cluster.master_of_slot(slot_of(stalled_key))
    routed = opened.routed(client, resend=False)
    slot_pipe = opened.pipe(client, key=stalled_key, resend=False)
    batch = [(key, ("SET", key, "1")) for key in keys]
    assert await routed.execute(batch) == [b"OK"] * len(keys)
    await slot_pipe.connect()
    stalled.pause()
    try:
        replies = await routed.execute(batch)
        with pytest.raises(redis.TimeoutError):
            await slot_pipe.execute([("GET", stalled_key)])
    finally:
        stalled.resume()
    for key, reply in zip(keys, replies, strict=True):
        if redis_cluster.master_of_slot(slot_of(key)) is stalled:
            assert isinstance(reply, redis.TimeoutError)
        else:
            assert reply == b"OK"
    await asyncio.to_thread(redis_cluster.wait_ok, replicas_per_master=1)
    assert await routed.execute(batch) == [b"OK"] * len(keys)  # connected again, in step
    assert await slot_pipe.execute([("GET", stalled_key)]) == [b"1"]


@pytest.mark.parametrize(
    "url",
    ["redis://localhost:6379/0", "rediss://user:pw@redis.example/1", "unix:///run/redis.sock", "REDIS://h"],
)
def test_check_redis_url_takes_what_redis_py_connects_with(url: str) -> None:
    assert check_redis_url(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://user:hunter2@h:6379/0", "must be a redis://, rediss:// (TLS) or unix:// URL, not http://"),
        ("user:hunter2@h:6379", "must be a redis://, rediss:// (TLS) or unix:// URL"),
        ("redis://user:hunter2@h:port/0", "is not a usable Redis URL: Port could not be cast"),
    ],
)
def test_check_redis_url_says_what_is_wrong_without_the_url(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="URL") as raised:
        check_redis_url(url)
    assert str(raised.value).startswith(message)
    assert "hunter2" not in str(raised.value)
