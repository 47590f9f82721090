"""The gateway process itself: TLS, heartbeat, structured logs, health endpoints."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
from pathlib import Path
from typing import cast

import aiohttp
import pytest
import redis
import trustme
from system_harness import Client, StartGateway, inbound_length, inbound_streams

from wsq_devkit import wait_until
from wsq_protocol.keys import Keys

# the gateway process itself (TLS, pings, logs, health, drain, malformed requests): not Redis's topology
pytestmark = pytest.mark.single_redis


async def test_wss_with_a_certificate(
    start_gateway: StartGateway, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    gateway = start_gateway(WSQ_SSL_CERTFILE=str(cert_file), WSQ_SSL_KEYFILE=str(key_file), scheme="https")
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    client = await Client.connect(session, gateway.ws_url.replace("ws://", "wss://"), ssl=client_context)
    await client.send("$ping", "over tls", id="t")
    assert await client.receive() == {"action": "$pong", "data": "over tls", "id": "t"}
    await client.close()
    # plain ws:// is not served on a TLS port
    try:
        await session.ws_connect(gateway.ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=2))
    except (aiohttp.ClientError, ConnectionError):
        pass
    else:
        raise AssertionError("a plain-text handshake succeeded on the TLS port")


async def test_a_client_that_ignores_pings_is_closed(
    start_gateway: StartGateway,
    session: aiohttp.ClientSession,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    gateway = start_gateway(WSQ_HEARTBEAT_S="0.5")
    ws = await session.ws_connect(gateway.ws_url, autoping=False)
    hello = json.loads((await ws.receive(timeout=5)).data)["data"]
    kinds: list[aiohttp.WSMsgType] = []
    while True:  # pings arrive and go unanswered, until the gateway gives up on us
        msg = await ws.receive(timeout=10)
        kinds.append(msg.type)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            break
    assert aiohttp.WSMsgType.PING in kinds

    def disconnected() -> bool:
        return not redis_client.exists(Keys(key_prefix).connection(hello["connection_id"]))

    wait_until(disconnected, timeout=10, message="the silent client was unregistered")
    # while a client that answers pings (aiohttp does by default) stays connected
    client = await Client.connect(session, gateway.ws_url)
    await client.send("$ping", None, id="alive")
    assert (await client.receive(timeout=5))["id"] == "alive"
    await client.close()


async def test_logs_are_json_lines_with_node_and_connection_ids(
    start_gateway: StartGateway, session: aiohttp.ClientSession
) -> None:
    gateway = start_gateway(WSQ_LOG_FORMAT="json", WSQ_LOG_LEVEL="debug")
    client = await Client.connect(session, gateway.ws_url)
    await client.close()

    def connection_lines() -> list[dict[str, object]] | None:
        lines = [json.loads(line) for line in gateway.process.output().splitlines() if line.startswith("{")]
        ours = [line for line in lines if line.get("connection_id") == client.connection_id]
        # The gateway logs "disconnected" after the client's close returned: wait for both.
        return ours if {line["event"] for line in ours} >= {"connected", "disconnected"} else None

    lines = wait_until(connection_lines, timeout=10, message="connected and disconnected log lines")
    for line in lines:
        assert line["node"] == gateway.node_id
        assert {"timestamp", "level", "logger"} <= set(line)
    for raw in gateway.process.output().splitlines():
        assert raw.startswith("{"), f"not a JSON log line: {raw!r}"


async def test_a_gateway_without_a_node_id_logs_the_one_it_picked(
    start_gateway: StartGateway, session: aiohttp.ClientSession, key_prefix: str
) -> None:
    """Without WSQ_NODE_ID a gateway draws one, then picks one in the least used shard: every
    log line names the id it runs with (the one /readyz and its connections' ids say)."""
    gateway = start_gateway(WSQ_NODE_ID="", WSQ_LOG_FORMAT="json", WSQ_LOG_LEVEL="debug")
    client = await Client.connect(session, gateway.ws_url)
    assert client.connection_id.startswith(f"{gateway.node_id}.")

    def connected_line() -> list[dict[str, object]] | None:
        lines = [json.loads(line) for line in gateway.process.output().splitlines() if line.startswith("{")]
        return lines if any(line.get("connection_id") == client.connection_id for line in lines) else None

    lines = wait_until(connected_line, timeout=10, message="the connection's log line")
    await client.close()
    assert {line["node"] for line in lines if "node" in line} == {gateway.node_id}
    assert lines[-1]["node"] == gateway.node_id


def test_health_endpoints(start_gateway: StartGateway) -> None:
    gateway = start_gateway()
    assert gateway.status("/healthz") == 200
    assert gateway.status("/readyz") == 200
    assert gateway.status("/nope") == 404


async def test_a_handler_still_waiting_does_not_starve_the_drain(
    start_gateway: StartGateway,
    session: aiohttp.ClientSession,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    """SIGTERM while a connection waits for its connect hook's answer (no worker runs, and the
    hook's timeout is longer than the drain): its socket is closed with 1012, its handler is
    cancelled, and its disconnect event is still written and the gateway still leaves the set
    of live gateways, all within WSQ_DRAIN_S."""
    gateway = start_gateway(WSQ_CONNECT_HOOK="true", WSQ_CONNECT_TIMEOUT_S="60", WSQ_DRAIN_S="5")
    ws = await session.ws_connect(gateway.ws_url)
    wait_until(lambda: inbound_length(redis_client, key_prefix) == 1, timeout=10, message="the connect event")

    gateway.process.signal(signal.SIGTERM)
    closed = await ws.receive(timeout=10)
    assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1012)
    assert gateway.process.wait(timeout=15) == 0

    # One gateway: its connection's events are all in its node's partition, in order.
    entries: list[tuple[str, dict[str, str]]] = []
    for stream in inbound_streams(key_prefix):
        entries += cast("list[tuple[str, dict[str, str]]]", redis_client.xrange(stream))  # decode_responses
    events = [fields for _id, fields in entries]
    assert [(e["type"], e.get("close_code")) for e in events] == [("connect", None), ("disconnect", "1012")]
    assert redis_client.zscore(f"{key_prefix}:nodes", gateway.node_id) is None
    assert "longer than WSQ_DRAIN_S" not in gateway.process.output()


async def bad_request(port: int, request: bytes) -> bytes:
    """Send ``request`` on a connection of its own: the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await reader.read()  # aiohttp answers and closes
    finally:
        writer.close()
    return answer.split(b"\r\n", 1)[0]


async def test_a_flood_of_malformed_requests_logs_one_line_per_address_and_no_traceback(
    start_gateway: StartGateway, session: aiohttp.ClientSession
) -> None:
    gateway = start_gateway()
    requests = (
        [b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"] * 40  # request line too long
        + [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"] * 30  # a header
        + [b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(64)) + b"\r\n\r\n"] * 15  # TLS
        + [b"G\x00T / HTTP/1.1\r\n\r\n"] * 15  # garbage
    )
    for start in range(0, len(requests), 20):
        answers = await asyncio.gather(*(bad_request(gateway.port, r) for r in requests[start : start + 20]))
        assert all(answer.split(b" ")[1:2] == [b"400"] for answer in answers), answers
    # It keeps serving; and its "connected" line comes after any line about those requests.
    assert gateway.status("/readyz") == 200
    client = await Client.connect(session, gateway.ws_url)
    await client.send("$ping", None, id="alive")
    assert (await client.receive())["id"] == "alive"
    await client.close()
    output = wait_until(
        lambda: gateway.process.output() if client.connection_id in gateway.process.output() else None,
        timeout=10,
        message="the gateway's line about the new connection",
    )
    assert "Traceback" not in output
    assert "Error handling request" not in output
    lines = [line for line in output.splitlines() if "malformed HTTP request" in line]
    assert len(lines) == 1, lines
    assert "dropped_since_last=0" in lines[0]
