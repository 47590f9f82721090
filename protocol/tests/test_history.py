"""Per-group history (wsq_protocol.history): the settings and checks, the request of a
``$history`` frame, and history_append.lua / history_read.lua on a real Redis, single and
cluster: order, the size cap, the TTL, paging forward with since, complete and gap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from wsq_devkit import RedisCluster, wait_until_async
from wsq_protocol import codec
from wsq_protocol.cluster import async_redis
from wsq_protocol.history import (
    APPEND_SCRIPT,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    READ_SCRIPT,
    HistoryAppend,
    HistoryEntry,
    HistoryPage,
    HistoryRead,
    HistorySettings,
    check_since,
    decode_page,
    history_settings_from_env,
    parse_request,
)
from wsq_protocol.keys import Keys
from wsq_protocol.scripts import run

GROUP = "room/1"


def test_settings_default_to_100_entries_and_300_seconds() -> None:
    assert history_settings_from_env({}) == HistorySettings(100, 300.0)
    assert history_settings_from_env({"WSQ_HISTORY_SIZE": "5", "WSQ_HISTORY_TTL_S": "0.5"}) == (5, 0.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WSQ_HISTORY_SIZE", "0"),
        ("WSQ_HISTORY_SIZE", "10001"),
        ("WSQ_HISTORY_SIZE", "1.5"),
        ("WSQ_HISTORY_TTL_S", "0"),
        ("WSQ_HISTORY_TTL_S", "nan"),
        ("WSQ_HISTORY_TTL_S", "inf"),
        ("WSQ_HISTORY_TTL_S", "-1"),
        ("WSQ_HISTORY_TTL_S", "soon"),
    ],
)
def test_bad_settings_raise_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        history_settings_from_env({name: value})


def test_the_append_carries_only_text() -> None:
    append = HistoryAppend.of(Keys("wsq"), GROUP, "chat", '{"text":"hi"}', HistorySettings(10, 1.5))
    assert append.stream == "{wsq:group:room/1}:history"
    assert append.args == ("10", "1500", "chat", '{"text":"hi"}')
    assert append.command == ("EVALSHA", APPEND_SCRIPT.sha, 1, append.stream, *append.args)
    assert all(type(item) in (str, int) for item in append.command)


@pytest.mark.parametrize(
    ("group", "action", "settings"),
    [
        ("", "chat", HistorySettings()),
        ("bad group", "chat", HistorySettings()),
        (GROUP, "$chat", HistorySettings()),
        (GROUP, "chat", HistorySettings(0, 1.0)),
        (GROUP, "chat", HistorySettings(True, 1.0)),
        (GROUP, "chat", HistorySettings(10, 0.0)),
        (GROUP, "chat", HistorySettings(10, float("nan"))),
    ],
)
def test_a_bad_append_raises_value_error(group: str, action: str, settings: HistorySettings) -> None:
    with pytest.raises(ValueError, match=r"group name|action|history size|history TTL"):
        HistoryAppend.of(Keys("wsq"), group, action, "null", settings)


def test_a_read_checks_since_and_limit() -> None:
    read = HistoryRead.of(Keys("wsq"), GROUP, "1700000000000-3", 5)
    assert (read.keys, read.args) == (["{wsq:group:room/1}:history"], ["1700000000000-3", "5"])
    assert HistoryRead.of(Keys("wsq"), GROUP).args == ["", str(DEFAULT_LIMIT)]
    for since in ("", "17", "1-2-3", "a-1", 5):
        with pytest.raises(ValueError, match="since is null or an offset"):
            check_since(since)
    for limit in (0, MAX_LIMIT + 1, 1.0, True, "5"):
        with pytest.raises(ValueError, match="limit is an integer"):
            HistoryRead.of(Keys("wsq"), GROUP, None, limit)  # type: ignore[arg-type]


def test_parse_request_takes_group_since_and_limit() -> None:
    assert parse_request({"group": GROUP}) == (GROUP, None, DEFAULT_LIMIT)
    assert parse_request({"group": GROUP, "since": "1-0", "limit": 3}) == (GROUP, "1-0", 3)
    assert parse_request({"group": GROUP, "since": None}) == (GROUP, None, DEFAULT_LIMIT)


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "room",
        {},
        {"group": ""},
        {"group": 5},
        {"group": GROUP, "limit": 0},
        {"group": GROUP, "limit": "5"},
        {"group": GROUP, "since": "yesterday"},
        {"group": GROUP, "extra": 1},
    ],
)
def test_parse_request_refuses_bad_data(data: Any) -> None:
    with pytest.raises(ValueError, match="data"):
        parse_request(data)


def test_decode_page_orders_oldest_first_and_finds_gaps() -> None:
    def entry(offset: str, n: int) -> list[Any]:
        return [offset.encode(), [b"action", b"chat", b"data", codec.dumps({"n": n}).encode(), b"ts", b"7"]]

    newest_first = [entry("5-0", 5), entry("4-0", 4)]
    page = decode_page([newest_first, 1, b"1-0"], None)
    assert page == HistoryPage(
        [HistoryEntry("4-0", "chat", {"n": 4}, 7), HistoryEntry("5-0", "chat", {"n": 5}, 7)], False, False
    )
    assert decode_page([[entry("2-0", 2)], 0, b"2-0"], "1-0") == HistoryPage(
        [HistoryEntry("2-0", "chat", {"n": 2}, 7)], True, True
    )
    assert decode_page([[], 0, b"2-0"], "2-0").gap is False
    assert decode_page([[], 0, b"10-0"], "9-5").gap is True
    assert decode_page([[], 0, b"10-0"], "10-0").gap is False
    assert decode_page([[], 0, b""], "9-5") == HistoryPage([], True, False)  # gone: empty, no gap known
    assert page.as_json()["messages"][0] == {"offset": "4-0", "action": "chat", "data": {"n": 4}, "ts": 7}


# On a real Redis.


@pytest.fixture(params=["single", "cluster"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    if request.param == "single":
        client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        client = cast(aioredis.Redis, async_redis(cluster.url, cluster=True))
    yield client
    await client.aclose()


async def append(redis: aioredis.Redis, keys: Keys, n: int, settings: HistorySettings) -> str:
    write = HistoryAppend.of(keys, GROUP, "chat", codec.dumps({"n": n}), settings)
    offset = await run(redis, APPEND_SCRIPT, [write.stream], write.args)
    return cast(bytes, offset).decode()


async def read(redis: aioredis.Redis, keys: Keys, since: str | None = None, limit: int = 100) -> HistoryPage:
    request = HistoryRead.of(keys, GROUP, since, limit)
    return request.page(await run(redis, READ_SCRIPT, request.keys, request.args))


async def test_appends_are_read_back_in_order_and_paged_forward(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    assert await read(redis, keys) == HistoryPage([], True, False)
    offsets = [await append(redis, keys, n, HistorySettings(100, 60.0)) for n in range(5)]
    page = await read(redis, keys)
    assert [entry.offset for entry in page.messages] == offsets
    assert [entry.data for entry in page.messages] == [{"n": n} for n in range(5)]
    assert {entry.action for entry in page.messages} == {"chat"}
    assert all(entry.ts > 1_600_000_000_000 for entry in page.messages)
    assert (page.complete, page.gap) == (True, False)
    newest = await read(redis, keys, limit=2)  # the newest two, oldest first; older ones left out
    assert ([entry.data["n"] for entry in newest.messages], newest.complete) == ([3, 4], False)
    after = await read(redis, keys, since=offsets[0], limit=3)  # forward from an offset
    assert ([entry.data["n"] for entry in after.messages], after.complete, after.gap) == (
        [1, 2, 3],
        False,
        False,
    )
    rest = await read(redis, keys, since=after.messages[-1].offset, limit=3)
    assert ([entry.data["n"] for entry in rest.messages], rest.complete) == ([4], True)
    assert (await read(redis, keys, since=offsets[-1])) == HistoryPage([], True, False)


async def test_the_history_keeps_at_most_size_entries_and_reports_the_gap(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    offsets = [await append(redis, keys, n, HistorySettings(3, 60.0)) for n in range(6)]
    assert await redis.xlen(keys.group_history(GROUP)) == 3  # exact MAXLEN
    page = await read(redis, keys)
    assert [entry.data["n"] for entry in page.messages] == [3, 4, 5]
    assert page.complete
    trimmed = await read(redis, keys, since=offsets[1])  # 2 was trimmed after offsets[1]
    assert ([entry.data["n"] for entry in trimmed.messages], trimmed.gap) == ([3, 4, 5], True)
    kept = await read(redis, keys, since=offsets[3])
    assert ([entry.data["n"] for entry in kept.messages], kept.gap) == ([4, 5], False)


async def test_the_history_expires_ttl_after_its_last_append(redis: aioredis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    key = keys.group_history(GROUP)
    await append(redis, keys, 0, HistorySettings(10, 60.0))
    assert 0 < await redis.pttl(key) <= 60_000
    await append(redis, keys, 1, HistorySettings(10, 0.2))  # a shorter TTL: the last append's
    assert 0 < await redis.pttl(key) <= 200
    # 0 (written with a 60 s TTL, but older than the last append's 0.2 s only once time passes)
    # and 1 go together once the stream expires.

    async def gone() -> bool:
        return (await read(redis, keys)).messages == []

    await wait_until_async(gone, timeout=5.0, message="the history expired")
    assert not await redis.exists(key)


async def test_entries_older_than_ttl_are_trimmed_at_the_next_append(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    first = await append(redis, keys, 0, HistorySettings(10, 60.0))

    async def older_than_50_ms() -> bool:
        now_s, now_us = await redis.time()
        return now_s * 1000 + now_us // 1000 > int(first.split("-")[0]) + 50

    await wait_until_async(older_than_50_ms, timeout=5.0, message="50 ms passed on Redis's clock")
    await append(redis, keys, 1, HistorySettings(10, 0.05))
    assert [entry.data["n"] for entry in (await read(redis, keys)).messages] == [1]
