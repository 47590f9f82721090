"""A connection's one disconnect event carries the code it really ended with, however the client
left: real gateway and worker processes, and clients that leave the way phones do (the sample
app's ``on_disconnect`` records what it saw in Redis)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import redis
from system_harness import GatewayProcess, StartGateway, StartWorker

from wsq_devkit import ManagedProcess, wait_until
from wsq_devkit.raw_websocket import TEXT, RawWebSocket, text_of_size


async def raw_client(gateway: GatewayProcess) -> tuple[RawWebSocket, str]:
    """A byte-level client past its $connected frame, and its connection id."""
    client = await RawWebSocket.connect("127.0.0.1", gateway.port, gateway.path)
    opcode, payload = await client.receive()
    hello = orjson.loads(payload)
    assert (opcode, hello["action"]) == (TEXT, "$connected"), hello
    return client, hello["data"]["connection_id"]


def recorded_disconnects(redis_client: redis.Redis, key_prefix: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in redis_client.lrange(f"{key_prefix}:test:disconnects", 0, -1)]


async def test_clients_that_vanish_or_send_too_much_get_one_disconnect_event_with_the_true_code(
    start_gateway: StartGateway, start_worker: StartWorker, redis_client: redis.Redis, key_prefix: str
) -> None:
    gateway = start_gateway(WSQ_MAX_MESSAGE_BYTES="1024")
    pinging = start_gateway(WSQ_HEARTBEAT_S="0.5")  # for a client that never answers a ping
    worker = start_worker()
    fin, fin_id = await raw_client(gateway)
    rst, rst_id = await raw_client(gateway)
    big, big_id = await raw_client(gateway)
    _silent, silent_id = await raw_client(pinging)

    await fin.vanish_with_fin()  # TCP FIN, no close frame
    rst.vanish_with_rst()  # TCP RST (SO_LINGER 0), no close frame
    await big.send(text_of_size(1025, "echo", "too-big"))  # one byte over WSQ_MAX_MESSAGE_BYTES
    assert await big.close_code() == 1009
    big.writer.close()
    expected = {fin_id: 1006, rst_id: 1006, big_id: 1009, silent_id: 1006}

    def all_recorded() -> list[dict[str, Any]] | None:
        seen = recorded_disconnects(redis_client, key_prefix)
        return seen if {record["connection_id"] for record in seen} >= expected.keys() else None

    wait_until(all_recorded, timeout=20, message="on_disconnect of every client that left")
    # A client that closes normally afterwards: once its event is handled, any second event of
    # the others (written before it) would have been handled too.
    normal, normal_id = await raw_client(gateway)
    await normal.send(b"\x03\xe8", 0x8)  # a close frame with 1000
    assert await normal.close_code() == 1000
    normal.writer.close()
    wait_until(
        lambda: normal_id in {r["connection_id"] for r in recorded_disconnects(redis_client, key_prefix)},
        timeout=10,
        message="on_disconnect of the client that closed normally",
    )

    seen = recorded_disconnects(redis_client, key_prefix)
    codes = sorted((record["connection_id"], record["close_code"]) for record in seen)
    assert codes == sorted([*expected.items(), (normal_id, 1000)])
    assert_no_dropped_events(worker)


def assert_no_dropped_events(worker: ManagedProcess) -> None:
    dropped = [line for line in worker.output().splitlines() if "dropped inbound entry" in line]
    assert not dropped, dropped
