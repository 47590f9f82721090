"""No background task of the worker ends unnoticed, and a Redis the worker can never use stops
``run_async()`` with a clear exception instead of retrying for ever."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio
from worker_harness import FakeGateway, StartWorker

from wsq_devkit import RedisServer
from wsq_devkit.redis_errors import PERMANENT_OR_TRANSIENT
from wsq_devkit.redis_server import RedisServer as RedisServerType
from wsq_worker import Context, RedisUnusableError, Worker, WorkerFailedError, delivery
from wsq_worker.delivery import delayed_member
from wsq_worker.preflight import permanent_problem


async def test_a_delayed_member_that_is_not_utf8_is_dropped_and_retries_go_on_moving(
    start_worker: StartWorker,
    gateway: FakeGateway,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not written by wsq (every member is JSON text), so dropped with an error; it used to end
    the task that moves due retries, silently: no retry ever ran again."""
    delayed = gateway.delayed
    connection_id = gateway.new_connection_id()

    async def job(ctx: Context, data: Any) -> Any:
        return data

    first = gateway.message_event(connection_id, "job", "first", id="1")
    await redis_client.zadd(delayed, {b"\xff\xfe not text": 0, delayed_member("1-1", first, 2).encode(): 0})
    await start_worker({"job": job})
    assert await gateway.wait_for_frames(1) == [reply("job", "first", "1")]
    assert any("dropped a malformed member" in record.getMessage() for record in caplog.records)

    second = gateway.message_event(connection_id, "job", "second", id="2")
    await redis_client.zadd(delayed, {delayed_member("1-2", second, 2): 0})
    assert await gateway.wait_for_frames(2) == [reply("job", "first", "1"), reply("job", "second", "2")]


def reply(action: str, data: Any, frame_id: str) -> dict[str, Any]:
    return {"action": action, "data": data, "id": frame_id}


def a_reply_the_mover_cannot_read(response: Any) -> tuple[int, list[str]]:
    """Stands in for ``delivery.parse_move``: a bug in the task that moves due retries."""
    raise RuntimeError("injected: the delayed mover hit a bug")


async def test_a_background_task_that_dies_is_logged_and_stops_the_worker_with_worker_failed_error(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(delivery, "parse_move", a_reply_the_mover_cannot_read)
    worker = Worker({}, redis_url=redis_url, key_prefix=key_prefix, block_ms=100)
    with (
        caplog.at_level(logging.ERROR, logger="wsq_worker"),
        pytest.raises(WorkerFailedError, match="wsq-delayed") as failed,
    ):
        await asyncio.wait_for(worker.run_async(), 20)
    assert isinstance(failed.value.__cause__, RuntimeError)
    [died] = [
        record for record in caplog.records if "background task wsq-delayed died" in record.getMessage()
    ]
    assert died.levelno == logging.ERROR
    assert died.exc_info is not None
    assert isinstance(died.exc_info[1], RuntimeError)


@pytest.mark.parametrize("kind", ["cluster", "replica", "wrong-password"])
async def test_run_async_raises_redis_unusable_error_for_a_redis_it_can_never_use(
    kind: str, redis_server: RedisServerType, key_prefix: str
) -> None:
    if kind == "cluster":
        server, says = RedisServer(cluster=True), "Redis Cluster"
    elif kind == "replica":
        server, says = RedisServer(replica_of=redis_server.port), "replica"
    else:
        server, says = RedisServer(password="right"), "authentication failed"
    with server:
        url = server.url if kind != "wrong-password" else f"redis://:wrong@127.0.0.1:{server.port}/0"
        worker = Worker({}, redis_url=url, key_prefix=key_prefix, block_ms=100)
        with pytest.raises(RedisUnusableError, match=says):
            await asyncio.wait_for(worker.run_async(), 20)


@pytest.mark.parametrize(("error", "permanent"), PERMANENT_OR_TRANSIENT)
def test_permanent_redis_errors_are_told_from_transient_ones(error: BaseException, permanent: bool) -> None:
    assert (permanent_problem(error) is not None) is permanent
