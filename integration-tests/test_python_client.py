"""The Python client (clients/python, ``wsq_client``) against real gateway and worker processes:
requests and their replies, `$error` as ServerError, pushes to listeners, tokens per connection,
and reconnection — after a gateway restart (1012) and after the network cut the TCP connection
(no close frame) — with a request in flight at the cut settled once, as ConnectionLost."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import pytest
from system_harness import JWT_SECRET, StartGateway, StartWorker, token

from wsq_client import Backoff, Client, ClientClosed, ConnectionLost, RequestTimeout, ServerError, StateChange
from wsq_devkit import TcpProxy, wait_until_async
from wsq_protocol.cluster import SyncClient

pytestmark = pytest.mark.single_redis  # the client's own behaviour: Redis's topology is not its concern

FAST = Backoff(base=0.05, cap=0.2)


async def until(condition: Callable[[], bool], message: str) -> None:
    async def check() -> bool:
        return condition()

    await wait_until_async(check, message=message)


def recorder(client: Client) -> list[StateChange]:
    changes: list[StateChange] = []
    client.on_state(changes.append)
    return changes


async def test_requests_replies_errors_and_pushes(
    start_gateway: StartGateway, start_worker: StartWorker
) -> None:
    gateway = start_gateway()
    start_worker()
    async with Client(gateway.ws_url, request_timeout=5) as client:
        assert client.state == "open"
        assert client.connection_id is not None
        assert client.connection_id.startswith(f"{gateway.node_id}.")
        assert await client.request("echo", {"text": "hi"}) == {"text": "hi"}
        with pytest.raises(ServerError) as raised:
            await client.request("no_such_action")
        assert raised.value.code == "unknown_action"

        pushed: list[Any] = []
        stop = client.on("pushed", pushed.append)
        first_push = asyncio.ensure_future(client.next_push("pushed"))  # listens once the test awaits
        assert await client.request("push_twice") == "done"
        await until(lambda: pushed == [1, 2], "both pushes, in order")
        assert await first_push == 1
        stop()
        await client.request("push_twice")
        with pytest.raises(RequestTimeout):
            await client.request("slow_async", 2, timeout=0.3)
        assert pushed == [1, 2], "no listener after stop()"
    assert client.state == "closed"  # type: ignore[comparison-overlap]  # close() changed it
    with pytest.raises(ClientClosed):  # type: ignore[unreachable]
        await client.request("echo", 1)


async def test_get_token_is_asked_before_every_connection_and_a_refused_token_is_not_retried(
    start_gateway: StartGateway, start_worker: StartWorker
) -> None:
    gateway = start_gateway(WSQ_JWT_SECRET=JWT_SECRET)
    start_worker()
    asked: list[str] = []

    async def get_token() -> str:
        asked.append("ada")
        return token("ada")

    async with Client(gateway.ws_url, get_token=get_token) as client:
        assert client.user_id == "ada"
        assert asked == ["ada"]
    refused = Client(gateway.ws_url, token="not-a-jwt", backoff=FAST)
    with pytest.raises(ClientClosed, match="HTTP 401"):
        await refused.connect()
    assert refused.state == "closed"


async def test_reconnects_to_a_new_gateway_after_a_restart(
    start_gateway: StartGateway, start_worker: StartWorker
) -> None:
    first = start_gateway()
    start_worker()
    with TcpProxy(first.port) as proxy:
        client = await Client(f"ws://127.0.0.1:{proxy.port}/ws", backoff=FAST, request_timeout=10).connect()
        changes = recorder(client)
        old_id = client.connection_id
        second = start_gateway()
        proxy.target_port = second.port  # what a load balancer does once the old gateway drains
        first.process.signal(signal.SIGTERM)
        await until(lambda: client.state == "open" and client.connection_id != old_id, "reconnected")
        assert client.connection_id is not None
        assert client.connection_id.startswith(f"{second.node_id}.")
        assert await client.request("echo", "again") == "again"
        reconnecting = next(change for change in changes if change.state == "reconnecting")
        assert reconnecting.code == 1012, "the gateway's drain: service restart"
        assert [change.state for change in changes][-1] == "open"
        await client.close()


async def test_a_cut_connection_fails_the_request_in_flight_once_and_reconnects(
    start_gateway: StartGateway, start_worker: StartWorker, redis_client: SyncClient, key_prefix: str
) -> None:
    gateway = start_gateway()
    start_worker()
    with TcpProxy(gateway.port) as proxy:
        client = await Client(f"ws://127.0.0.1:{proxy.port}/ws", backoff=FAST, request_timeout=10).connect()
        changes = recorder(client)
        in_flight = asyncio.ensure_future(client.request("tracked", 1))  # runs 1 s on the worker
        await until(lambda: redis_client.llen(f"{key_prefix}:test:processed") == 1, "the worker runs it")
        await asyncio.to_thread(proxy.cut, 0.3)  # no close frame: the network is gone for 0.3 s
        with pytest.raises(ConnectionLost) as lost:
            await in_flight
        assert lost.value.code == 1006
        await until(lambda: client.state == "open", "reconnected after the cut")
        assert await client.request("echo", "back") == "back"
        states = [change.state for change in changes]
        assert states[0] == "reconnecting"
        assert states[-1] == "open"
        await client.close()
