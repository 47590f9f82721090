"""Per-group history with real processes: a publisher sends to a group with ``history=True``, a
client that joins later reads the messages in order with ``$history`` from a gateway process;
the size and TTL caps hold; only members read (single Redis and Redis Cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from system_harness import Client, GatewayProcess, RedisTarget, StartGateway

from wsq_client import Client as WsqClient
from wsq_client import ServerError
from wsq_devkit import wait_until_async
from wsq_worker import Publisher

GROUP = "room:history"


@pytest.fixture
def publisher(redis_target: RedisTarget, key_prefix: str) -> Iterator[Publisher]:
    with Publisher(redis_target.url, key_prefix, redis_cluster=redis_target.cluster) as pub:
        yield pub


async def read(client: Client, data: dict[str, Any], frame_id: str) -> dict[str, Any]:
    return await client.request("$history", data, frame_id)


async def joined(client: Client, publisher: Publisher, group: str = GROUP) -> None:
    """Join ``client`` to ``group`` and wait until its gateway lets it read the history."""
    assert publisher.join(client.connection_id, group)
    tries = iter(range(10_000))

    async def member() -> bool:
        reply = await read(client, {"group": group, "limit": 1}, f"probe{next(tries)}")
        return bool(reply["action"] == "$history")

    await wait_until_async(member, timeout=10, message="the gateway knows the membership")


async def test_a_client_that_joins_later_reads_the_history_in_order(
    start_gateway: StartGateway, session: aiohttp.ClientSession, publisher: Publisher
) -> None:
    gateway: GatewayProcess = start_gateway()
    for n in range(5):  # nobody in the group yet: kept, pushed to no gateway
        assert publisher.to_group(GROUP).send("chat", {"n": n}, history=True) == 0
    client = await Client.connect(session, gateway.ws_url)
    refused = await read(client, {"group": GROUP}, "early")
    assert (refused["action"], refused["data"]["code"]) == ("$error", "not_member")

    await joined(client, publisher)
    page = (await read(client, {"group": GROUP}, "all"))["data"]
    assert [(m["action"], m["data"]) for m in page["messages"]] == [("chat", {"n": n}) for n in range(5)]
    assert (page["complete"], page["gap"]) == (True, False)
    offsets = [m["offset"] for m in page["messages"]]
    assert offsets == sorted(offsets, key=lambda o: tuple(map(int, o.split("-"))))

    # A push with history now reaches the member live, unchanged, and is kept after the others.
    assert publisher.to_group(GROUP).send("chat", {"n": 5}, history=True) == 1
    assert await client.receive() == {"action": "chat", "data": {"n": 5}}
    after = (await read(client, {"group": GROUP, "since": offsets[-1]}, "after"))["data"]
    assert [m["data"] for m in after["messages"]] == [{"n": 5}]
    newest = (await read(client, {"group": GROUP, "limit": 2}, "newest"))["data"]
    assert ([m["data"]["n"] for m in newest["messages"]], newest["complete"]) == ([4, 5], False)
    # The publisher reads the same.
    assert [m.data["n"] for m in publisher.history(GROUP).messages] == list(range(6))
    bad = await read(client, {"group": GROUP, "limit": 0}, "bad")
    assert bad["data"]["code"] == "invalid_data"
    await client.close()


async def test_the_history_keeps_at_most_size_entries_for_at_most_ttl(
    start_gateway: StartGateway, session: aiohttp.ClientSession, publisher: Publisher
) -> None:
    gateway = start_gateway()
    client = await Client.connect(session, gateway.ws_url)
    await joined(client, publisher)
    for n in range(6):
        publisher.to_group(GROUP).send("chat", n, history=True, history_size=3)
    for n in range(6):
        assert await client.receive() == {"action": "chat", "data": n}
    page = (await read(client, {"group": GROUP}, "sized"))["data"]
    assert [m["data"] for m in page["messages"]] == [3, 4, 5]

    publisher.to_group(GROUP).send("chat", "short", history=True, history_ttl_s=0.3)
    assert await client.receive() == {"action": "chat", "data": "short"}
    tries = iter(range(10_000))

    async def expired() -> bool:
        reply = await read(client, {"group": GROUP}, f"ttl{next(tries)}")
        return not reply["data"]["messages"]

    await wait_until_async(expired, timeout=10, message="the history expired")
    await client.close()


async def test_the_python_client_reads_the_history(start_gateway: StartGateway, publisher: Publisher) -> None:
    gateway = start_gateway()
    for n in range(3):
        publisher.to_group(GROUP).send("chat", n, history=True)
    async with WsqClient(gateway.ws_url, request_timeout=5) as client:
        with pytest.raises(ServerError) as raised:
            await client.history(GROUP)
        assert raised.value.code == "not_member"
        assert client.connection_id is not None
        assert publisher.join(client.connection_id, GROUP)

        async def member() -> bool:
            try:
                await client.history(GROUP, limit=1)
            except ServerError as exc:
                if exc.code != "not_member":
                    raise
                return False
            return True

        await wait_until_async(member, timeout=10, message="the gateway knows the membership")
        page = await client.history(GROUP)
        assert [m["data"] for m in page["messages"]] == [0, 1, 2]
        after = await client.history(GROUP, since=page["messages"][0]["offset"], limit=1)
        assert ([m["data"] for m in after["messages"]], after["complete"]) == ([1], False)
