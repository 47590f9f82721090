"""The whole pipeline with real processes: client -> gateway -> Redis -> worker -> client."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
import redis
from system_harness import JWT_SECRET, Client, RedisTarget, StartGateway, StartWorker, inbound_pending, token

from wsq_devkit import wait_until
from wsq_devkit.contract import is_valid
from wsq_protocol.keys import Keys


def is_welcome(frame: dict[str, object]) -> bool:
    return frame["action"] == "welcome"


async def test_request_reply_and_pushes_from_the_handler(
    start_gateway: StartGateway, start_worker: StartWorker, session: aiohttp.ClientSession
) -> None:
    gateway = start_gateway()
    start_worker()
    client = await Client.connect(session, gateway.ws_url)
    welcome = await client.receive()
    assert welcome == {"action": "welcome", "data": {"connection_id": client.connection_id}}

    reply = await client.request("echo", {"hello": ["world", 1, None]}, id="e1")
    assert reply == {"action": "echo", "data": {"hello": ["world", 1, None]}, "id": "e1"}
    assert is_valid("server-frame", reply)

    # pushes made by the handler arrive in order, before the reply
    await client.send("push_twice", None, id="p1")
    frames = [await client.receive() for _ in range(3)]
    assert frames == [
        {"action": "pushed", "data": 1},
        {"action": "pushed", "data": 2},
        {"action": "push_twice", "data": "done", "id": "p1"},
    ]
    # a frame without id gets no reply: the next answer is the one for the next id
    await client.send("echo", "no reply wanted")
    assert await client.request("echo", 2, id="e2") == {"action": "echo", "data": 2, "id": "e2"}
    # sync handlers reply the same way
    assert await client.request("sync_echo", [1], id="s1") == {"action": "sync_echo", "data": [1], "id": "s1"}
    await client.close()


async def test_every_bad_input_gets_its_error_code(
    start_gateway: StartGateway, start_worker: StartWorker, session: aiohttp.ClientSession
) -> None:
    gateway = start_gateway()
    start_worker()
    client = await Client.connect(session, gateway.ws_url)
    await client.receive()  # welcome

    async def error_for(raw: str | bytes) -> dict[str, object]:
        if isinstance(raw, bytes):
            await client.ws.send_bytes(raw)
        else:
            await client.ws.send_str(raw)
        frame = await client.receive()
        assert frame["action"] == "$error", frame
        assert is_valid("server-frame", frame)
        return frame

    assert (await error_for("{oops"))["data"]["code"] == "invalid_json"  # type: ignore[index]
    assert (await error_for('"a string"'))["data"]["code"] == "invalid_frame"  # type: ignore[index]
    bad_action = await error_for('{"action": "has space", "id": "b1"}')
    assert (bad_action["data"]["code"], bad_action["id"]) == ("invalid_frame", "b1")  # type: ignore[index]
    bad_id = await error_for('{"action": "echo", "id": 42}')
    assert bad_id["data"]["code"] == "invalid_frame"  # type: ignore[index]
    assert (await error_for(b"binary"))["data"]["code"] == "invalid_frame"  # type: ignore[index]
    reserved = await error_for('{"action": "$disconnect", "id": "b2"}')
    assert (reserved["data"]["code"], reserved["id"]) == ("reserved_action", "b2")  # type: ignore[index]

    unknown = await client.request("no_such_action", None, id="u1")
    assert unknown["action"] == "$error"
    assert unknown["data"]["code"] == "unknown_action"
    assert "no_such_action" in unknown["data"]["message"]
    failed = await client.request("fail", None, id="f1")
    assert (failed["action"], failed["data"]["code"]) == ("$error", "handler_error")
    assert "RuntimeError" not in failed["data"]["message"], "tracebacks stay in the worker's log"
    # the socket is still usable after all of that
    assert await client.request("echo", "still here", id="ok") == {
        "action": "echo",
        "data": "still here",
        "id": "ok",
    }
    await client.close()


async def test_default_handler_takes_unknown_actions(
    start_gateway: StartGateway, start_worker: StartWorker, session: aiohttp.ClientSession
) -> None:
    gateway = start_gateway()
    start_worker("sample_app:worker_with_default")
    client = await Client.connect(session, gateway.ws_url)
    reply = await client.request("anything.else", {"x": 1}, id="d1")
    assert reply == {
        "action": "anything.else",
        "data": {"fallback_for": "anything.else", "data": {"x": 1}},
        "id": "d1",
    }
    await client.close()


def publish(redis_target: RedisTarget, key_prefix: str, code: str) -> None:
    """Run publisher code in a separate Python process, as a web view or a cron job would."""
    script = "from wsq_worker import Publisher\npub = Publisher.from_env()\n" + code
    env = {**redis_target.env, "WSQ_KEY_PREFIX": key_prefix}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=30)


async def test_push_to_a_connection_a_user_and_everyone_from_another_process(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    redis_target: RedisTarget,
    key_prefix: str,
) -> None:
    gateway = start_gateway(WSQ_JWT_SECRET=JWT_SECRET)
    start_worker()
    ann1 = await Client.connect(session, gateway.ws_url, params={"token": token("ann")})
    ann2 = await Client.connect(session, gateway.ws_url, headers={"Authorization": f"Bearer {token('ann')}"})
    bob = await Client.connect(session, gateway.ws_url, params={"token": token("bob")})
    for client in (ann1, ann2, bob):
        await client.receive_until(is_welcome)

    publish(redis_target, key_prefix, f"pub.to({bob.connection_id!r}).send('direct', {{'n': 1}})")
    assert await bob.receive() == {"action": "direct", "data": {"n": 1}}

    publish(redis_target, key_prefix, "pub.to_user('ann').send('for_ann', 2)")
    assert await ann1.receive() == {"action": "for_ann", "data": 2}
    assert await ann2.receive() == {"action": "for_ann", "data": 2}

    publish(redis_target, key_prefix, "pub.broadcast().send('announcement', 'hi all')")
    for client in (ann1, ann2, bob):
        assert await client.receive() == {"action": "announcement", "data": "hi all"}
    # bob received nothing meant for ann: his next frame is this one
    publish(redis_target, key_prefix, f"pub.to({bob.connection_id!r}).send('last', 3)")
    assert await bob.receive() == {"action": "last", "data": 3}

    publish(
        redis_target, key_prefix, f"pub.to({ann2.connection_id!r}).disconnect(code=4000, reason='kicked')"
    )
    assert await ann2.close_code() == (4000, "kicked")
    for client in (ann1, bob):
        await client.close()


async def test_connect_and_disconnect_events_reach_the_hooks(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    gateway = start_gateway(WSQ_JWT_SECRET=JWT_SECRET)
    start_worker()
    client = await Client.connect(session, gateway.ws_url, params={"token": token("u7")})
    await client.receive_until(is_welcome)
    (connected,) = [json.loads(x) for x in redis_client.lrange(f"{key_prefix}:test:connects", 0, -1)]
    assert (connected["connection_id"], connected["user_id"], connected["node"]) == (
        client.connection_id,
        "u7",
        gateway.node_id,
    )
    await client.ws.close(code=4100)

    def disconnects() -> list[dict[str, object]]:
        return [json.loads(x) for x in redis_client.lrange(f"{key_prefix}:test:disconnects", 0, -1)]

    (gone,) = wait_until(disconnects, timeout=10, message="on_disconnect ran")
    assert (gone["connection_id"], gone["user_id"], gone["close_code"]) == (client.connection_id, "u7", 4100)


async def test_jwt_is_required_when_configured(
    start_gateway: StartGateway, session: aiohttp.ClientSession
) -> None:
    gateway = start_gateway(WSQ_JWT_SECRET=JWT_SECRET)
    for params in (
        {},
        {"token": "nonsense"},
        {"token": token("x", exp=int(time.time()) - 5)},
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(gateway.ws_url, params=params)
        assert caught.value.status == 401
    client = await Client.connect(session, gateway.ws_url, params={"token": token("ok")})
    assert client.user_id == "ok"
    await client.close()


@pytest.mark.parametrize("slow_action", ["slow_async", "slow_sync"])
async def test_a_slow_message_never_delays_the_others(
    start_gateway: StartGateway, start_worker: StartWorker, session: aiohttp.ClientSession, slow_action: str
) -> None:
    """The origin design's headline: one 3 s message, 20 others each answered well under 250 ms."""
    gateway = start_gateway()
    start_worker()
    slow = await Client.connect(session, gateway.ws_url)
    fast = await Client.connect(session, gateway.ws_url)
    for client in (slow, fast):
        await client.receive_until(is_welcome)
    # warm up the path (first-use imports and connections), then start the slow one
    assert (await fast.request("echo", 0, id="warm"))["data"] == 0
    started = time.monotonic()
    await slow.send(slow_action, 3, id="slow")

    latencies = []
    for n in range(20):
        sent = time.monotonic()
        reply = await fast.request("echo", n, id=f"f{n}")
        latencies.append(time.monotonic() - sent)
        assert reply["data"] == n
    assert time.monotonic() - started < 2.5, "the 20 fast replies must not wait for the slow one"
    assert max(latencies) < 0.25, latencies

    slow_reply = await slow.receive_until(lambda frame: frame.get("id") == "slow", timeout=10)
    assert slow_reply == {"action": slow_action, "data": "slept", "id": "slow"}
    assert time.monotonic() - started >= 3.0
    await slow.close()
    await fast.close()


async def test_many_workers_share_the_stream(
    start_gateway: StartGateway, start_worker: StartWorker, session: aiohttp.ClientSession
) -> None:
    gateway = start_gateway()
    # One handler at a time each, 50 ms per message: one worker can't take a burst of 40
    # alone before the other reads (a worker may read ahead of its free slots only so far).
    workers = [start_worker("sample_app:worker", "--concurrency", "1") for _ in range(2)]
    client = await Client.connect(session, gateway.ws_url)
    await client.receive_until(is_welcome)
    for n in range(40):
        await client.send("tracked", 0.05, id=f"w{n}")
    replies = [await client.receive_until(lambda f: str(f.get("id", "")).startswith("w")) for _ in range(40)]
    assert sorted(r["id"] for r in replies) == sorted(f"w{n}" for n in range(40)), (
        "each answered exactly once"
    )
    pids = {r["data"]["pid"] for r in replies}
    assert pids <= {w.pid for w in workers}
    assert len(pids) == 2, "both workers took messages"
    await client.close()


async def test_gateway_sigterm_closes_sockets_with_1012_and_emits_disconnects(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    gateway = start_gateway()
    start_worker()
    clients = [await Client.connect(session, gateway.ws_url) for _ in range(3)]
    gateway.process.signal(signal.SIGTERM)
    for client in clients:
        assert (await client.close_code())[0] == 1012
    assert gateway.process.wait(timeout=15) == 0

    def disconnects() -> list[dict[str, object]] | None:
        seen = [json.loads(x) for x in redis_client.lrange(f"{key_prefix}:test:disconnects", 0, -1)]
        return seen if len(seen) == 3 else None

    gone = wait_until(disconnects, timeout=10, message="three on_disconnect calls")
    assert {g["connection_id"] for g in gone} == {c.connection_id for c in clients}
    assert {g["close_code"] for g in gone} == {1012}
    assert redis_client.smembers(Keys(key_prefix).node_connections(gateway.node_id)) == set()


async def test_worker_sigterm_finishes_in_flight_work(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    gateway = start_gateway()
    worker = start_worker()
    client = await Client.connect(session, gateway.ws_url)
    await client.receive_until(is_welcome)
    await client.send("slow_async", 1.5, id="inflight")

    def handler_started() -> bool:  # the worker took the message and has not acknowledged it yet
        return len(inbound_pending(redis_client, key_prefix)) == 1

    wait_until(handler_started, timeout=5, message="the worker started the slow handler")
    worker.signal(signal.SIGTERM)
    reply = await client.receive_until(lambda f: f.get("id") == "inflight", timeout=15)
    assert reply == {"action": "slow_async", "data": "slept", "id": "inflight"}
    assert worker.wait(timeout=15) == 0
    await client.close()


def test_gateway_help_lists_every_setting() -> None:
    from wsq_gateway.settings import Settings  # noqa: PLC0415

    out = subprocess.run(
        [sys.executable, "-m", "wsq_gateway", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in Settings.model_fields:
        assert f"WSQ_{name.upper()}" in out
