"""Edge validation end to end, with real processes: a worker declares a schema for an action;
the gateway (started first) picks it up from Redis, lets a matching frame through to the
handler, answers one that does not match with `$error invalid_data` naming the path (and never
queues it), lets an action without a schema pass, enforces a newer worker's schema, leaves
unenforced (and reports) a schema it can't compile, and keeps its schemas while Redis lost the
hash, which the running worker writes back."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import aiohttp
import redis
import schema_app
from system_harness import Client, GatewayProcess, StartGateway, StartWorker

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


async def answers(client: Client, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every frame with an id read until the last of ``ids`` is answered (by a worker: frames
    are handled in order), by id."""
    seen: dict[str, list[dict[str, Any]]] = {}
    while ids[-1] not in seen:
        frame = await client.receive()
        if "id" in frame:
            seen.setdefault(frame["id"], []).append(frame)
    return seen


async def test_frames_are_validated_against_the_schema_a_worker_published(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    session: aiohttp.ClientSession,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    gateway = start_gateway(WSQ_SCHEMAS_REFRESH_S="0.2")
    assert schemas_report(gateway) == {"version": None, "validated": [], "failed": {}}
    first = start_worker("schema_app:worker_v1")
    wait_until(lambda: schemas_report(gateway)["validated"] == ["chat.send"], message="schema loaded")
    client = await Client.connect(session, gateway.ws_url)

    await client.send("chat.send", {"text": "hello"}, id="ok-1")
    await client.send("chat.send", {"text": 5}, id="bad-1")
    await client.send("chat.send", None, id="bad-2")  # no data: null, not an object
    await client.send("chat.send", {"text": "hi", "extra": 1}, id="bad-3")
    await client.send("free", {"anything": [1, "two"]}, id="free-1")  # no schema: passes
    await client.send("chat.send", {"text": "again"}, id="ok-2")
    seen = await answers(client, ["ok-1", "bad-1", "bad-2", "bad-3", "free-1", "ok-2"])

    assert seen["ok-1"] == [{"action": "chat.send", "data": {"text": "hello"}, "id": "ok-1"}]
    assert seen["free-1"] == [{"action": "free", "data": {"anything": [1, "two"]}, "id": "free-1"}]
    (bad,) = seen["bad-1"]  # one answer: the gateway's, no worker's
    assert bad["action"] == "$error"
    assert bad["data"]["code"] == "invalid_data"
    assert (
        bad["data"]["message"]
        == "data of action 'chat.send' does not match its schema: data.text must be string"
    )
    assert [frame["data"]["code"] for frame in seen["bad-2"] + seen["bad-3"]] == ["invalid_data"] * 2
    assert "extra" in seen["bad-3"][0]["data"]["message"]  # names the property not allowed
    # Handlers ran one at a time, in queue order, and none saw a refused frame.
    processed = redis_client.lrange(f"{key_prefix}:test:processed", 0, -1)
    assert processed == ["ok-1", "free-1", "ok-2"]
    assert invalid_data_count(gateway) == 3

    # A worker with a stricter schema starts (a deploy): the running gateway enforces it soon.
    version = schemas_report(gateway)["version"]
    start_worker("schema_app:worker_v2")
    attempts = iter(range(1000))

    async def refused_by_the_new_schema() -> bool:
        frame = await client.request("chat.send", {"text": "four"}, id=f"v2-{next(attempts)}")
        return bool(frame["action"] == "$error")

    await wait_until_async(refused_by_the_new_schema, timeout=15, message="the new schema enforced")
    report = schemas_report(gateway)
    assert report["version"] != version
    assert report["failed"] == {}
    frame = await client.request("chat.send", {"text": "fine"}, id="v2-long")
    assert frame["data"] == {
        "code": "invalid_data",
        "message": "data of action 'chat.send' does not match its schema: "
        "data.text must be shorter than or equal to 3 characters",
    }
    assert (await client.request("chat.send", {"text": "ok"}, id="v2-ok"))["data"] == {"text": "ok"}

    # A schema the gateway can't compile (written by hand: the SDK refuses it): not enforced, shown.
    key = Keys(key_prefix).schemas
    redis_client.hset(key, "free", '{"type":"strnig"}')
    redis_client.hincrby(key, "$version", 1)
    wait_until(lambda: "free" in schemas_report(gateway)["failed"], message="the bad schema reported")
    assert (await client.request("free", 1, id="free-2"))["data"] == 1
    assert schemas_report(gateway)["validated"] == ["chat.send"]

    # Redis loses the hash: the gateway keeps enforcing what it has, the running worker writes
    # its schemas back (the v1 worker is gone: its own would have been as welcome).
    first.stop()
    redis_client.delete(key)
    assert (await client.request("chat.send", {"text": "four"}, id="lost"))["action"] == "$error"
    restored: Any = wait_until(lambda: redis_client.hget(key, "chat.send"), message="the schema restored")
    assert json.loads(restored) == schema_app.chat_send(3)
    await client.close()
