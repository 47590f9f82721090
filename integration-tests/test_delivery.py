"""At-least-once processing and the connect hook, with real gateway and worker processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import cast

import aiohttp
import redis
from system_harness import (
    Client,
    ConnectClient,
    RedisTarget,
    StartGateway,
    StartWorker,
    inbound_length,
    inbound_pending,
)

from wsq_devkit import wait_until


# On the raw helper: "answered exactly once" is about the frames (a client drops a second answer).
async def test_a_worker_killed_mid_message_still_gets_the_message_answered(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    gateway = start_gateway()
    workers = [start_worker(WSQ_CLAIM_IDLE_MS="1000") for _ in range(2)]
    client = await Client.connect(session, gateway.ws_url)
    await client.receive_until(lambda f: f["action"] == "welcome")
    await client.send("slow_async", 2, id="survivor")

    def owner() -> str | None:
        pending = inbound_pending(redis_client, key_prefix)
        return cast(str, pending[0]["consumer"]) if pending else None

    consumer = wait_until(owner, timeout=10, message="a worker took the message")
    (victim,) = [w for w in workers if f"-{w.pid}-" in consumer]
    victim.signal(signal.SIGKILL)

    reply = await client.receive_until(lambda f: f.get("id") == "survivor", timeout=30)
    assert reply == {"action": "slow_async", "data": "slept", "id": "survivor"}
    # answered exactly once: the next frame with an id is the one we ask for now
    assert (await client.request("echo", "next", id="next"))["data"] == "next"
    assert inbound_length(redis_client, key_prefix) == 0
    await client.close()


async def test_the_connect_hook_names_and_refuses_connections(
    start_gateway: StartGateway, start_worker: StartWorker, connect_client: ConnectClient
) -> None:
    gateway = start_gateway(WSQ_CONNECT_HOOK="true")
    start_worker("sample_app:worker_with_hook")
    client = await connect_client(gateway.ws_url)
    assert client.connection_id is not None
    assert client.user_id == f"guest-{client.connection_id[-6:]}"
    assert (await client.request("whoami"))["user_id"] == client.user_id


async def test_the_connect_hook_reads_the_session_cookie_and_the_query(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    connect_client: ConnectClient,
    session: aiohttp.ClientSession,
) -> None:
    gateway = start_gateway(WSQ_CONNECT_HOOK="true")
    start_worker("sample_app:worker_with_hook")
    ada = await connect_client(gateway.ws_url, headers={"Cookie": "theme=dark; session=8f3c2a"})
    assert ada.user_id == "ada"
    guest = await connect_client(gateway.ws_url + "?guest=Bob%20Smith")
    assert guest.user_id == "guest-Bob Smith"
    # The refusal's close frame (code and reason), on a bare socket.
    ws = await session.ws_connect(gateway.ws_url, headers={"Cookie": "session=forged"})
    msg = await ws.receive(timeout=15)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4401, "unknown session")


async def test_the_connect_hook_refusal_reaches_the_client(
    start_gateway: StartGateway, start_worker: StartWorker, session: aiohttp.ClientSession
) -> None:
    gateway = start_gateway(WSQ_CONNECT_HOOK="true")
    start_worker("sample_app:worker_with_hook", SAMPLE_DENY="127.0.0.1")
    ws = await session.ws_connect(gateway.ws_url)
    msg = await ws.receive(timeout=15)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4403, "not welcome here")


async def test_messages_past_their_attempts_are_dead_lettered_then_replayed_to_their_client(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    redis_client: redis.Redis,
    redis_target: RedisTarget,
    key_prefix: str,
) -> None:
    """Messages whose handler retries past WSQ_MAX_ATTEMPTS: each client gets `handler_failed`,
    `wsq-worker dead list` shows them; once the bug is fixed, `dead replay --all` runs each
    again, and its answer reaches its client, on its own gateway, with the frame's id. On the
    raw helper: that second answer to an id is what a client would drop."""
    gateways = [start_gateway(), start_gateway()]
    start_worker(WSQ_MAX_ATTEMPTS="2")
    clients = [await Client.connect(session, gateway.ws_url) for gateway in gateways]
    for n, client in enumerate(clients):
        await client.receive_until(lambda f: f["action"] == "welcome")
        await client.send("until_fixed", n, id=f"job{n}")
    for n, client in enumerate(clients):
        failed = await client.receive_until(lambda f, n=n: f.get("id") == f"job{n}", timeout=30)
        assert (failed["action"], failed["data"]["code"]) == ("$error", "handler_failed")

    env = {**redis_target.env, "WSQ_KEY_PREFIX": key_prefix}

    def wsq_worker(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "wsq_worker", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)

    listed = wsq_worker("dead", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert (
        sorted(line.split('"action": ')[1][:14] for line in listed.stdout.splitlines())
        == ['"until_fixed",'] * 2
    )

    redis_client.set(f"{key_prefix}:test:fixed", "1")
    replayed = wsq_worker("dead", "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "replayed 2 dead letters into the inbound stream"
    for n, client in enumerate(clients):
        answer = await client.receive_until(lambda f, n=n: f.get("id") == f"job{n}", timeout=30)
        assert answer == {"action": "until_fixed", "data": {"fixed": n, "attempt": 1}, "id": f"job{n}"}
    assert wsq_worker("dead", "list").stdout == "no dead letters\n"
