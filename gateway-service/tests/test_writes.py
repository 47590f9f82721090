"""The batcher's writes when Redis loses the connection mid-write or forgets its scripts: every
client frame is appended once or answered ``unavailable``, never both."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from gateway_harness import GatewayFactory, receive_json, stream_entries

from wsq_devkit import TcpProxy, wait_until_async
from wsq_devkit.redis_server import RedisServer
from wsq_devkit.redis_typing import execute_command
from wsq_gateway.state import GATEWAY


async def message_ids(redis: aioredis.Redis, stream: str) -> list[str]:
    """The client frame ids of the message events in ``stream``, in order."""
    ids = []
    for _, fields in await stream_entries(redis, stream):
        if fields[b"type"] == b"message":
            ids.append(fields[b"frame"].decode().split('"id": "')[1].split('"')[0])
    return ids


async def commandstats(redis: aioredis.Redis) -> dict[str, Any]:
    stats: dict[str, Any] = await redis.info("commandstats")
    return stats


async def test_a_write_whose_reply_was_lost_is_sent_again_and_appended_once(
    start_gateway: GatewayFactory, redis_server: RedisServer, redis: aioredis.Redis
) -> None:
    with TcpProxy(redis_server.port) as proxy:
        gateway = await start_gateway(redis_url=proxy.url())
        ws, _ = await gateway.connect()
        stream = gateway.keys.inbound_stream_of(gateway.node_id)
        proxy.drop_replies()  # Redis runs the write; the gateway never hears back
        await ws.send_str('{"action": "work", "id": "once"}')

        async def appended() -> bool:
            return await message_ids(redis, stream) == ["once"]

        await wait_until_async(appended, timeout=5, message="the frame appended")
        proxy.cut(0.3)  # the connection fails with the write's reply unread: in doubt
        batcher = gateway.server.app[GATEWAY].batcher

        async def settled() -> bool:
            return not batcher.stalled and batcher.pending == 0

        await wait_until_async(settled, timeout=10, message="the write sent again and answered")
        assert await message_ids(redis, stream) == ["once"]  # sent twice, appended once
        await ws.send_str('{"action": "$ping", "id": "p"}')  # an error for "once" would come first
        assert await receive_json(ws) == {"action": "$pong", "data": None, "id": "p"}
        await ws.send_str('{"action": "work", "id": "next"}')

        async def next_appended() -> bool:
            return await message_ids(redis, stream) == ["once", "next"]

        await wait_until_async(next_appended, timeout=5, message="the next frame appended")
        await ws.close()


async def test_a_write_that_had_not_run_when_its_connection_failed_is_sent_again(
    start_gateway: GatewayFactory, redis_server: RedisServer, redis: aioredis.Redis
) -> None:
    with TcpProxy(redis_server.port) as proxy:
        gateway = await start_gateway(redis_url=proxy.url())
        ws, _ = await gateway.connect()
        await execute_command(redis, "CLIENT", "PAUSE", "1000", "WRITE")  # the write waits, not run
        await ws.send_str('{"action": "work", "id": "later"}')
        batcher = gateway.server.app[GATEWAY].batcher

        async def in_flight() -> bool:
            return batcher.pending == 1 and batcher.queued == 0

        await wait_until_async(in_flight, timeout=5, message="the write sent")
        proxy.cut(0.3)  # Redis drops the paused client's transaction: it never ran

        async def settled() -> bool:
            return not batcher.stalled and batcher.pending == 0

        await wait_until_async(settled, timeout=10, message="the write sent again and answered")
        assert await message_ids(redis, gateway.keys.inbound_stream_of(gateway.node_id)) == ["later"]
        await ws.send_str('{"action": "$ping", "id": "p"}')  # an error for "later" would come first
        assert await receive_json(ws) == {"action": "$pong", "data": None, "id": "p"}
        await ws.close()


async def test_frames_are_appended_after_redis_lost_its_scripts(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway()
    ws, _ = await gateway.connect()
    await redis.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
    await ws.send_str('{"action": "work", "id": "after-flush"}')

    async def appended() -> bool:
        return await message_ids(redis, gateway.keys.inbound_stream_of(gateway.node_id)) == ["after-flush"]

    await wait_until_async(appended, timeout=5, message="the frame appended")
    await ws.send_str('{"action": "$ping", "id": "p"}')
    assert await receive_json(ws) == {"action": "$pong", "data": None, "id": "p"}
    await ws.close()


@pytest.mark.parametrize("connections", [3])
async def test_connections_call_their_scripts_by_sha(
    start_gateway: GatewayFactory, redis: aioredis.Redis, connections: int
) -> None:
    gateway = await start_gateway()
    warm, _ = await gateway.connect()  # the writer's Redis connection is open (its setup runs once)
    await warm.close()
    await redis.config_resetstat()
    for n in range(connections):
        ws, _ = await gateway.connect()
        await ws.send_str(f'{{"action": "work", "id": "f{n}"}}')
        await ws.close()

    async def all_forgotten() -> bool:
        return [f"f{n}" for n in range(connections)] == await message_ids(
            redis, gateway.keys.inbound_stream_of(gateway.node_id)
        )

    await wait_until_async(all_forgotten, timeout=5, message="every frame appended")
    stats = await commandstats(redis)
    assert "cmdstat_eval" not in stats, "a script body was sent whole for a connection"
    assert stats["cmdstat_evalsha"]["calls"] >= 2 * connections  # register, forget
