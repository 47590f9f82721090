"""The Python client (clients/python, ``wsq_client``) against real gateway and worker processes:
requests and their replies, `$error` as ServerError, pushes to listeners, tokens per connection,
and reconnection — after a gateway restart (1012) and after the network cut the TCP connection
(no close frame) — with a request in flight at the cut settled once, as ConnectionLost; with
session resume on the gateway, the same cut resumed: same connection, every push once and in
order, the request's reply replayed."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import pytest
from system_harness import JWT_SECRET, RedisTarget, StartGateway, StartWorker, token

from wsq_client import Backoff, Client, ClientClosed, ConnectionLost, RequestTimeout, ServerError, StateChange
from wsq_devkit import TcpProxy, wait_until_async
from wsq_protocol.cluster import SyncClient
from wsq_worker import AsyncPublisher

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


async def test_a_cut_connection_resumes_its_session_and_misses_nothing(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    redis_target: RedisTarget,
    redis_client: SyncClient,
    key_prefix: str,
) -> None:
    """Resume on (WSQ_RESUME_WINDOW_S=30): the client's TCP connection is cut without a close
    frame while a publisher pushes to its connection, its user and a group it joined, and a
    request is in flight; the client resumes with its token and the last seq it handled, and
    gets every push once and in order, and the request's reply, on the same connection id
    (protocol/README.md, "Session resume")."""
    gateway = start_gateway(WSQ_JWT_SECRET=JWT_SECRET, WSQ_RESUME_WINDOW_S="30")
    start_worker()
    received: list[Any] = []
    async with AsyncPublisher(
        redis_url=redis_target.url, redis_cluster=redis_target.cluster, key_prefix=key_prefix
    ) as publisher:
        with TcpProxy(gateway.port) as proxy:
            client = Client(
                f"ws://127.0.0.1:{proxy.port}/ws", token=token("ada"), backoff=FAST, request_timeout=20
            )
            client.on("n", received.append)
            await client.connect()
            changes = recorder(client)
            assert client.resumable, "the gateway sent no resume_token (is resume implemented?)"
            connection_id = client.connection_id
            assert connection_id is not None
            assert await client.request("join_room", "lobby") is True

            async def push(numbers: range) -> None:
                for number in numbers:
                    target = (
                        publisher.to(connection_id),
                        publisher.to_user("ada"),
                        publisher.to_group("lobby"),
                    )
                    assert await target[number % 3].send("n", number) == 1

            await push(range(3))
            await until(lambda: received == [0, 1, 2], "the pushes before the cut")
            seq_before = client.last_seq

            in_flight = asyncio.ensure_future(client.request("tracked", 1))  # runs 1 s on the worker
            await until(lambda: redis_client.llen(f"{key_prefix}:test:processed") == 1, "the worker runs it")
            await asyncio.to_thread(proxy.cut, 2.0)  # both sides reset, no close frame; refused for 2 s
            await until(lambda: client.state != "open", "the client noticed the cut")
            await push(range(3, 33))
            assert client.state != "open", "the pushes were sent while the client was away"

            assert (await in_flight)["attempt"] == 1, "the reply of the request in flight came in the replay"
            await until(lambda: len(received) >= 33, "every push sent while away")
            await push(range(33, 36))  # live again
            await until(lambda: len(received) >= 36, "the live pushes")
            assert received == list(range(36)), "every push once, in order"
            assert client.connection_id == connection_id
            opened = [change for change in changes if change.state == "open"]
            assert [(change.resumed, change.recovered) for change in opened] == [(True, True)]
            assert opened[0].connection_id == connection_id
            assert client.last_seq >= seq_before + 34, "33 pushes and a reply numbered since"
            who = await client.request("whoami")
            assert (who["connection_id"], who["user_id"]) == (connection_id, "ada")
            assert redis_client.lrange(f"{key_prefix}:test:disconnects", 0, -1) == [], (
                "the session never ended"
            )
            await client.close()
