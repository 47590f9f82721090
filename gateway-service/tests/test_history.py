"""``$history``: the gateway reads a group's history for a member of the group, itself; others
get ``not_member``, bad data ``invalid_data``, Redis failing ``unavailable``, a ninth read in
flight ``overloaded``."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from gateway_harness import RunningGateway, receive_json

from wsq_devkit import wait_until_async
from wsq_devkit.contract import is_valid
from wsq_gateway.state import GATEWAY
from wsq_protocol import codec
from wsq_protocol.history import APPEND_SCRIPT, MAX_IN_FLIGHT, HistoryAppend, HistorySettings
from wsq_protocol.publishing import AsyncPublishing, MembershipWrite
from wsq_protocol.scripts import run

GROUP = "room:1"


async def joined(
    gateway: RunningGateway, redis: aioredis.Redis, group: str = GROUP
) -> aiohttp.ClientWebSocketResponse:
    """A socket whose connection is a member of ``group``, as its gateway knows it."""
    ws, welcome = await gateway.connect()
    cid = welcome["connection_id"]
    publishing = AsyncPublishing(redis, gateway.keys)
    assert await publishing.execute(MembershipWrite.join(gateway.keys, cid, group)) == 1
    await publishing.aclose()
    conn = gateway.server.app[GATEWAY].connections.get(cid)
    assert conn is not None

    async def member() -> bool:
        return group in (conn.groups or ())

    await wait_until_async(member, timeout=5, message="the gateway read the join")
    return ws


async def append(redis: aioredis.Redis, gateway: RunningGateway, n: int, group: str = GROUP) -> str:
    write = HistoryAppend.of(gateway.keys, group, "chat", codec.dumps({"n": n}), HistorySettings(100, 60.0))
    offset = await run(redis, APPEND_SCRIPT, [write.stream], write.args)
    assert isinstance(offset, bytes)
    return offset.decode()


async def request(ws: aiohttp.ClientWebSocketResponse, data: Any, frame_id: str = "h") -> dict[str, Any]:
    await ws.send_str(orjson.dumps({"action": "$history", "data": data, "id": frame_id}).decode())
    return await receive_json(ws)


async def test_a_member_reads_the_history_oldest_first(
    gateway: RunningGateway, redis: aioredis.Redis
) -> None:
    offsets = [await append(redis, gateway, n) for n in range(3)]
    ws = await joined(gateway, redis)
    reply = await request(ws, {"group": GROUP})
    assert is_valid("server-frame", reply)
    assert reply["action"] == "$history"
    assert reply["id"] == "h"
    page = reply["data"]
    assert [m["offset"] for m in page["messages"]] == offsets
    assert [m["data"] for m in page["messages"]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert (page["complete"], page["gap"]) == (True, False)
    after = (await request(ws, {"group": GROUP, "since": offsets[0], "limit": 1}))["data"]
    assert ([m["data"]["n"] for m in after["messages"]], after["complete"]) == ([1], False)
    empty = await request(ws, {"group": "room:2"})  # a group it is not in
    assert empty["data"]["code"] == "not_member"
    await ws.close()


async def test_a_non_member_gets_not_member(gateway: RunningGateway, redis: aioredis.Redis) -> None:
    await append(redis, gateway, 0)
    ws, _ = await gateway.connect()
    reply = await request(ws, {"group": GROUP}, "x1")
    assert reply["action"] == "$error"
    assert reply["data"]["code"] == "not_member"
    assert reply["id"] == "x1"
    assert is_valid("server-frame", reply)
    await ws.close()


@pytest.mark.parametrize(
    "data",
    [
        None,
        "room:1",
        {},
        {"group": "bad group"},
        {"group": GROUP, "limit": 0},
        {"group": GROUP, "since": "x"},
    ],
)
async def test_bad_data_gets_invalid_data(gateway: RunningGateway, data: Any) -> None:
    ws, _ = await gateway.connect()
    reply = await request(ws, data, "bad")
    assert (reply["action"], reply["data"]["code"], reply["id"]) == ("$error", "invalid_data", "bad")
    await ws.close()


async def test_redis_failing_gets_unavailable(
    gateway: RunningGateway, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = await joined(gateway, redis)

    async def failing(*args: Any) -> Any:
        raise aioredis.ConnectionError("Redis is gone")

    monkeypatch.setattr("wsq_gateway.history.run", failing)
    reply = await request(ws, {"group": GROUP}, "u")
    assert (reply["data"]["code"], reply["id"]) == ("unavailable", "u")
    monkeypatch.undo()
    assert (await request(ws, {"group": GROUP}, "again"))["action"] == "$history"  # the count went back
    await ws.close()


async def test_at_most_8_reads_in_flight_per_connection(
    gateway: RunningGateway, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await append(redis, gateway, 0)
    ws = await joined(gateway, redis)
    release = asyncio.Event()
    started = 0

    async def held(*args: Any) -> Any:
        nonlocal started
        started += 1
        await release.wait()
        return await run(*args)

    monkeypatch.setattr("wsq_gateway.history.run", held)
    for n in range(MAX_IN_FLIGHT + 1):
        await ws.send_str(
            orjson.dumps({"action": "$history", "data": {"group": GROUP}, "id": f"r{n}"}).decode()
        )
    refused = await receive_json(ws)  # the ninth, answered at once
    assert (refused["data"]["code"], refused["id"]) == ("overloaded", f"r{MAX_IN_FLIGHT}")

    async def all_started() -> bool:
        return started == MAX_IN_FLIGHT

    await wait_until_async(all_started, timeout=5, message="8 reads running")
    release.set()
    replies = [await receive_json(ws) for _ in range(MAX_IN_FLIGHT)]
    assert sorted(reply["id"] for reply in replies) == sorted(f"r{n}" for n in range(MAX_IN_FLIGHT))
    assert {reply["action"] for reply in replies} == {"$history"}
    # Answered, the reads make room again.
    assert (await request(ws, {"group": GROUP}, "next"))["action"] == "$history"
    await ws.close()
