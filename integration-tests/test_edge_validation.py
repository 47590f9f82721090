"""Edge validation end to end, with real processes: a worker declares a schema for an action;
the gateway (started first) picks it up from Redis, lets a matching frame through to the
handler, answers one that does not match with `$error invalid_data` naming the path (and never
queues it), lets an action without a schema pass, enforces a newer worker's schema, leaves
unenforced (and reports) a schema it can't compile, and keeps its schemas while Redis lost the
hash, which the running worker writes back."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest
import redis
import schema_app
from system_harness import ConnectClient, GatewayProcess, StartGateway, StartWorker, in_order

from wsq_client import ServerError
from wsq_devkit import wait_until, wait_until_async
from wsq_protocol.keys import Keys


def schemas_report(gateway: GatewayProcess) -> dict[str, Any]:
    report: dict[str, Any] = gateway.ready_report()["schemas"]
    return report


def invalid_data_count(gateway: GatewayProcess) -> float:
    with urllib.request.urlopen(gateway.http_url("/metrics"), timeout=2) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith('wsq_gateway_errors_total{code="invalid_data"}'):
            return float(line.split()[-1])
    raise AssertionError("no invalid_data counter")


async def test_frames_are_validated_against_the_schema_a_worker_published(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    connect_client: ConnectClient,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    gateway = start_gateway(WSQ_SCHEMAS_REFRESH_S="0.2")
    assert schemas_report(gateway) == {"version": None, "validated": [], "failed": {}}
    first = start_worker("schema_app:worker_v1")
    wait_until(lambda: schemas_report(gateway)["validated"] == ["chat.send"], message="schema loaded")
    client = await connect_client(gateway.ws_url)

    ok_1, bad_1, bad_2, bad_3, free_1, ok_2 = await asyncio.gather(
        *in_order(
            client.request("chat.send", {"text": "hello"}),
            client.request("chat.send", {"text": 5}),
            client.request("chat.send", None),  # no data: null, not an object
            client.request("chat.send", {"text": "hi", "extra": 1}),
            client.request("free", {"anything": [1, "two"]}),  # no schema: passes
            client.request("chat.send", {"text": "again"}),
        ),
        return_exceptions=True,
    )
    assert (ok_1, free_1, ok_2) == ({"text": "hello"}, {"anything": [1, "two"]}, {"text": "again"})
    assert isinstance(bad_1, ServerError)  # the gateway's answer: no worker ran it (below)
    assert bad_1.code == "invalid_data"
    assert bad_1.message == "data of action 'chat.send' does not match its schema: data.text must be string"
    assert [getattr(bad, "code", bad) for bad in (bad_2, bad_3)] == ["invalid_data"] * 2
    assert isinstance(bad_3, ServerError)
    assert "extra" in bad_3.message  # names the property not allowed
    # Handlers ran one at a time, in queue order, and none saw a refused frame.
    processed: Any = redis_client.lrange(f"{key_prefix}:test:processed", 0, -1)
    assert [json.loads(data) for data in processed] == [ok_1, free_1, ok_2]
    assert invalid_data_count(gateway) == 3  # one answer to each refused frame

    # A worker with a stricter schema starts (a deploy): the running gateway enforces it soon.
    version = schemas_report(gateway)["version"]
    start_worker("schema_app:worker_v2")

    async def refused_by_the_new_schema() -> bool:
        try:
            await client.request("chat.send", {"text": "four"})
        except ServerError as error:
            return error.code == "invalid_data"
        return False

    await wait_until_async(refused_by_the_new_schema, timeout=15, message="the new schema enforced")
    report = schemas_report(gateway)
    assert report["version"] != version
    assert report["failed"] == {}
    with pytest.raises(ServerError) as refused:
        await client.request("chat.send", {"text": "fine"})
    assert (refused.value.code, refused.value.message) == (
        "invalid_data",
        "data of action 'chat.send' does not match its schema: "
        "data.text must be shorter than or equal to 3 characters",
    )
    assert await client.request("chat.send", {"text": "ok"}) == {"text": "ok"}

    # A schema the gateway can't compile (written by hand: the SDK refuses it): not enforced, shown.
    key = Keys(key_prefix).schemas
    redis_client.hset(key, "free", '{"type":"strnig"}')
    redis_client.hincrby(key, "$version", 1)
    wait_until(lambda: "free" in schemas_report(gateway)["failed"], message="the bad schema reported")
    assert await client.request("free", 1) == 1
    assert schemas_report(gateway)["validated"] == ["chat.send"]

    # Redis loses the hash: the gateway keeps enforcing what it has, the running worker writes
    # its schemas back (the v1 worker is gone: its own would have been as welcome).
    first.stop()
    redis_client.delete(key)
    with pytest.raises(ServerError) as refused:
        await client.request("chat.send", {"text": "four"})
    assert refused.value.code == "invalid_data"
    restored: Any = wait_until(lambda: redis_client.hget(key, "chat.send"), message="the schema restored")
    assert json.loads(restored) == schema_app.chat_send(3)
