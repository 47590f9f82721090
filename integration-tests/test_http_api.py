"""The gateway's HTTP server API (README, "HTTP server API"), as a backend in another language
uses it: a real gateway process, a real HTTP client, WebSocket clients receiving what it sends."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from system_harness import JWT_SECRET, Client, GatewayProcess, StartGateway, token

from wsq_devkit import RedisServer, TcpProxy, free_port, wait_until_async

KEY = "first-api-key-0123456789"
SECOND_KEY = "second-api-key-9876543210"


def start_api_gateway(start_gateway: StartGateway, **env: str) -> tuple[GatewayProcess, str]:
    """A gateway with the API on a port of its own (and JWT users); the API's base URL."""
    port = free_port()
    env = {
        "WSQ_API_KEYS": f"{KEY},{SECOND_KEY}",
        "WSQ_API_PORT": str(port),
        "WSQ_JWT_SECRET": JWT_SECRET,
        **env,
    }
    return start_gateway(**env), f"http://127.0.0.1:{port}/api"


async def call(
    session: aiohttp.ClientSession,
    api: str,
    method: str,
    params: Any = None,
    *,
    key: str | None = KEY,
    **kw: Any,
) -> tuple[int, dict[str, Any]]:
    """POST /api/<method>: the status and the JSON body."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with session.post(f"{api}/{method}", json=params, headers=headers, **kw) as resp:
        assert resp.content_type == "application/json", await resp.text()
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def ok(session: aiohttp.ClientSession, api: str, method: str, params: Any = None) -> Any:
    status, body = await call(session, api, method, params)
    assert status == 200, body
    return body["result"]


async def connect(session: aiohttp.ClientSession, gateway: GatewayProcess, user: str) -> Client:
    return await Client.connect(session, gateway.ws_url, params={"token": token(user)})


async def no_more_frames(client: Client, session: aiohttp.ClientSession, api: str) -> None:
    """Nothing else was queued for ``client``: the next frame is a marker pushed now."""
    await ok(session, api, "send", {"target": "connection", "to": client.connection_id, "action": "marker"})
    assert await client.receive() == {"action": "marker", "data": None}


async def test_pushes_groups_and_presence_across_gateways(
    start_gateway: StartGateway, session: aiohttp.ClientSession
) -> None:
    """Two gateways (in cluster mode their keys in different slots): the API of the first reaches
    sockets on both, by connection, user, group (with exclude) and everyone."""
    gateway, api = start_api_gateway(start_gateway)
    other = start_gateway(WSQ_JWT_SECRET=JWT_SECRET)
    ann1, ann2 = await connect(session, gateway, "ann"), await connect(session, other, "ann")
    bob = await connect(session, other, "bob")

    assert await ok(
        session, api, "send", {"target": "connection", "to": bob.connection_id, "action": "hi"}
    ) == {"written": 1}
    assert await bob.receive() == {"action": "hi", "data": None}
    pushed = {"target": "user", "to": "ann", "action": "for_ann", "data": {"n": 1}}
    assert await ok(session, api, "send", pushed) == {"written": 2}  # two gateways hold ann
    for client in (ann1, ann2):
        assert await client.receive() == {"action": "for_ann", "data": {"n": 1}}
    await no_more_frames(bob, session, api)

    for client in (ann1, bob):
        assert await ok(session, api, "join", {"connection_id": client.connection_id, "group": "room:1"}) == {
            "joined": True
        }
    members = await ok(session, api, "group_members", {"group": "room:1"})
    assert members == {"connections": sorted([ann1.connection_id, bob.connection_id])}
    said = {"target": "group", "to": "room:1", "action": "said", "data": "x", "exclude": ann1.connection_id}
    assert (await ok(session, api, "send", said))["written"] >= 1
    assert await bob.receive() == {"action": "said", "data": "x"}
    assert await ok(session, api, "leave", {"connection_id": bob.connection_id, "group": "room:1"}) == {
        "left": True
    }
    assert await ok(session, api, "leave", {"connection_id": bob.connection_id, "group": "room:1"}) == {
        "left": False
    }
    await ok(session, api, "send", {"target": "group", "to": "room:1", "action": "said", "data": "y"})
    assert await ann1.receive() == {"action": "said", "data": "y"}
    await no_more_frames(ann1, session, api)  # "x" was excluded
    await no_more_frames(bob, session, api)  # left before "y"

    await ok(session, api, "send", {"target": "all", "action": "news", "data": [1]})
    for client in (ann1, ann2, bob):
        assert await client.receive() == {"action": "news", "data": [1]}

    assert await ok(session, api, "connections", {"user_id": "ann"}) == {
        "connections": sorted([ann1.connection_id, ann2.connection_id])
    }
    assert await ok(session, api, "is_online", {"user_id": "bob"}) == {"online": True}
    assert await ok(session, api, "is_online", {"user_id": "nobody"}) == {"online": False}
    info = (await ok(session, api, "connection_info", {"connection_id": ann1.connection_id}))["connection"]
    assert (info["node"], info["user_id"], info["groups"]) == (gateway.node_id, "ann", ["room:1"])
    assert info["connected_since"].endswith("Z")
    missing = f"{gateway.node_id}.{'A' * 22}"
    assert await ok(session, api, "connection_info", {"connection_id": missing}) == {"connection": None}

    stats = await ok(session, api, "stats")
    by_node = {row["node"]: row["connections"] for row in stats["gateways"]}
    assert by_node == {gateway.node_id: 1, other.node_id: 2}

    # Disconnect: the client sees the code and reason; a user's connections all close.
    closed = {"target": "connection", "to": bob.connection_id, "code": 4001, "reason": "bye"}
    assert await ok(session, api, "disconnect", closed) == {"written": 1}
    assert await bob.close_code() == (4001, "bye")
    await ok(session, api, "disconnect", {"target": "user", "to": "ann", "code": 3000})
    for client in (ann1, ann2):
        assert (await client.close_code())[0] == 3000


@pytest.mark.single_redis
async def test_batch_runs_each_command_with_its_own_result(
    start_gateway: StartGateway, session: aiohttp.ClientSession
) -> None:
    gateway, api = start_api_gateway(start_gateway)
    client = await connect(session, gateway, "ann")
    cid = client.connection_id
    commands: list[dict[str, Any]] = [
        {"method": "send", "params": {"target": "connection", "to": cid, "action": "n", "data": n}}
        for n in range(5)
    ]
    commands.insert(2, {"method": "send", "params": {"target": "user", "to": "", "action": "n"}})
    commands.append({"method": "join", "params": {"connection_id": cid, "group": "g"}})
    commands.append({"method": "is_online", "params": {"user_id": "ann"}})
    results = (await ok(session, api, "batch", {"commands": commands}))["results"]
    assert results[2]["error"]["code"] == "invalid_user_id"
    assert [r["result"] for n, r in enumerate(results) if n != 2] == [{"written": 1}] * 5 + [
        {"joined": True},
        {"online": True},
    ]
    for n in range(5):  # in the batch's order
        assert await client.receive() == {"action": "n", "data": n}
    status, body = await call(session, api, "batch", {"commands": [{"method": "batch", "params": {}}]})
    assert (status, body["error"]["code"]) == (422, "invalid_params")


async def test_history_over_the_api(start_gateway: StartGateway, session: aiohttp.ClientSession) -> None:
    """send with "history": true keeps the push in the group's history (its offset in the
    result); the method history reads it back, as a member's $history does."""
    gateway, api = start_api_gateway(start_gateway)
    client = await connect(session, gateway, "ann")
    await ok(session, api, "join", {"connection_id": client.connection_id, "group": "room:1"})
    offsets = []
    for n in range(3):
        params = {"target": "group", "to": "room:1", "action": "said", "data": n, "history": True}
        result = await ok(session, api, "send", params)
        assert result["written"] == 1
        offsets.append(result["offset"])
        assert await client.receive() == {"action": "said", "data": n}
    page = await ok(session, api, "history", {"group": "room:1"})
    assert [(m["offset"], m["data"]) for m in page["messages"]] == list(zip(offsets, range(3), strict=True))
    assert (page["complete"], page["gap"]) == (True, False)
    after = await ok(session, api, "history", {"group": "room:1", "since": offsets[0], "limit": 1})
    assert ([m["data"] for m in after["messages"]], after["complete"]) == ([1], False)
    sized = {
        "target": "group",
        "to": "room:1",
        "action": "said",
        "data": 3,
        "history": True,
        "history_size": 2,
    }
    await ok(session, api, "send", sized)
    assert [m["data"] for m in (await ok(session, api, "history", {"group": "room:1"}))["messages"]] == [2, 3]
    assert (await client.request("$history", {"group": "room:1"}, "h"))["data"]["messages"][-1]["data"] == 3


@pytest.mark.single_redis
async def test_keys(start_gateway: StartGateway, session: aiohttp.ClientSession) -> None:
    """No key or a wrong one: 401 (the document needs none); either key of the list works, as a
    bearer token or X-API-Key."""
    gateway, api = start_api_gateway(start_gateway)
    for key in (None, "wrong-key-0123456789", KEY[:-1], KEY + "x"):
        status, body = await call(session, api, "stats", key=key)
        assert (status, body["error"]["code"], body["error"]["retryable"]) == (401, "unauthorized", False)
    assert (await call(session, api, "stats", key=SECOND_KEY))[0] == 200
    async with session.post(f"{api}/stats", headers={"X-API-Key": SECOND_KEY}) as resp:
        assert resp.status == 200
    async with session.get(f"{api}/openapi.json") as resp:
        assert resp.status == 200
        assert (await resp.json())["openapi"].startswith("3.1")
    output = gateway.process.output()  # debug logs, every request above
    assert "http api listening" in output
    assert all(key not in output for key in (KEY, SECOND_KEY, KEY[:-1])), "a key was logged"


@pytest.mark.single_redis
async def test_api_is_off_without_keys(start_gateway: StartGateway, session: aiohttp.ClientSession) -> None:
    port = free_port()
    gateway = start_gateway(WSQ_API_PORT=str(port))
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.post(f"http://127.0.0.1:{port}/api/stats", headers={"Authorization": f"Bearer {KEY}"})
    async with session.post(gateway.http_url("/api/stats")) as resp:  # never on the WebSocket port
        assert resp.status == 404


BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("send", b"{not json", 400, "invalid_json"),
    ("send", [1, 2], 400, "invalid_json"),
    ("send", {"target": "all"}, 422, "invalid_params"),
    ("send", {"target": "all", "action": "a", "extra": 1}, 422, "invalid_params"),
    ("send", {"target": "room", "to": "x", "action": "a"}, 422, "invalid_params"),
    ("send", {"target": "all", "to": "x", "action": "a"}, 422, "invalid_params"),
    (
        "send",
        {"target": "user", "to": "ann", "action": "a", "exclude": "gw.AAAAAAAAAAAAAAAAAAAAAA"},
        422,
        "invalid_params",
    ),
    ("send", {"target": "connection", "to": "nope", "action": "a"}, 422, "invalid_connection_id"),
    ("send", {"target": "user", "to": "a\nb", "action": "a"}, 422, "invalid_user_id"),
    ("send", {"target": "user", "to": "é" * 200, "action": "a"}, 422, "invalid_user_id"),
    ("send", {"target": "group", "to": "no space", "action": "a"}, 422, "invalid_group"),
    ("send", {"target": "all", "action": "$error"}, 422, "invalid_action"),
    ("send", {"target": "all", "action": 7}, 422, "invalid_params"),
    ("disconnect", {"target": "all", "code": 1001}, 422, "invalid_close"),
    ("disconnect", {"target": "all", "code": True}, 422, "invalid_close"),
    ("disconnect", {"target": "all", "reason": "x" * 124}, 422, "invalid_close"),
    ("join", {"connection_id": "gw.AAAAAAAAAAAAAAAAAAAAAA"}, 422, "invalid_params"),
    ("stats", {"verbose": True}, 422, "invalid_params"),
    ("send", {"target": "user", "to": "ann", "action": "a", "history": True}, 422, "invalid_params"),
    ("send", {"target": "group", "to": "g", "action": "a", "history": 1}, 422, "invalid_params"),
    (
        "send",
        {"target": "group", "to": "g", "action": "a", "history": True, "history_size": 0},
        422,
        "invalid_params",
    ),
    ("send", {"target": "group", "to": "g", "action": "a", "history_ttl_s": 5}, 422, "invalid_params"),
    ("history", {"group": "bad group"}, 422, "invalid_group"),
    ("history", {"group": "g", "since": "yesterday"}, 422, "invalid_params"),
    ("history", {"group": "g", "limit": 1001}, 422, "invalid_params"),
    ("history", {}, 422, "invalid_params"),
    ("nothing", {}, 404, "not_found"),
    ("send", {"target": "all", "action": "a", "data": "x" * 5000}, 413, "body_too_large"),
]


@pytest.mark.single_redis
async def test_bad_requests_get_documented_codes(
    start_gateway: StartGateway, session: aiohttp.ClientSession
) -> None:
    gateway, api = start_api_gateway(start_gateway, WSQ_API_MAX_BODY_BYTES="4096")
    for method, params, status, code in BAD_REQUESTS:
        kw: dict[str, Any] = {"data": params} if isinstance(params, bytes) else {"json": params}
        headers = {"Authorization": f"Bearer {KEY}"}
        async with session.post(f"{api}/{method}", headers=headers, **kw) as resp:
            body = await resp.json()
            assert (resp.status, body["error"]["code"]) == (status, code), (method, params, body)
            assert body["error"]["retryable"] is False
    async with session.get(f"{api}/send", headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (405, "method_not_allowed")

    async with session.get(gateway.http_url("/metrics")) as resp:
        metrics = await resp.text()
    assert 'wsq_gateway_api_requests_total{method="send",status="422"}' in metrics
    assert 'wsq_gateway_api_requests_total{method="unknown",status="404"}' in metrics


@pytest.mark.single_redis
async def test_redis_failures_say_whether_to_retry(
    start_gateway: StartGateway, session: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    """A write whose reply is lost may have run: 502 maybe_written, not retryable; Redis gone:
    503 unavailable, retryable (nothing was done)."""
    with TcpProxy(redis_server.port) as proxy:
        gateway, api = start_api_gateway(
            start_gateway, WSQ_REDIS_URL=proxy.url(), WSQ_REDIS_TIMEOUT_S="1", WSQ_DRAIN_S="2"
        )
        client = await connect(session, gateway, "ann")
        to_ann = {"target": "connection", "to": client.connection_id, "action": "a"}
        await ok(session, api, "send", to_ann)
        proxy.drop_replies()
        status, body = await call(session, api, "send", to_ann)
        assert (status, body["error"]["code"], body["error"]["retryable"]) == (502, "maybe_written", False)
        proxy.cut(60)

        async def unavailable() -> dict[str, Any] | None:
            status, body = await call(session, api, "is_online", {"user_id": "ann"})
            return body if status == 503 else None

        body = await wait_until_async(unavailable, timeout=20, message="503 while Redis is gone")
        assert (body["error"]["code"], body["error"]["retryable"]) == ("unavailable", True)
        status, body = await call(session, api, "send", to_ann)
        assert (status, body["error"]["code"], body["error"]["retryable"]) == (503, "unavailable", True)
