"""The inbound stream's consumers as the gateway sees them (a real Redis, no worker process:
the tests play the workers' part with the same commands), and `$error no_workers`."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from gateway_harness import GatewayFactory, receive_json, stream_entries

from wsq_devkit import wait_until_async
from wsq_gateway.broker.consumers import Consumers, ConsumerState
from wsq_gateway.broker.untaken import Untaken
from wsq_gateway.connection import Connection
from wsq_protocol.keys import CONSUMER_GROUP, Keys


async def test_live_workers_are_the_consumers_that_read_within_the_timeout(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    stream = Keys(key_prefix).inbound_stream_of("gw")
    consumers = Consumers(redis, stream, timeout_s=0.5)
    assert refuses(consumers), "not measured yet: not known to be live"
    assert await consumers.measure() == ConsumerState(), "no stream, no group"
    assert refuses(consumers)

    for n in range(3):
        await redis.xadd(stream, {"n": n}, id=f"{n + 1}-0")
    await redis.xgroup_create(stream, CONSUMER_GROUP, id="0")
    await redis.xgroup_createconsumer(stream, CONSUMER_GROUP, "worker-1")
    await redis.xreadgroup(CONSUMER_GROUP, "worker-1", {stream: ">"}, count=1)
    assert await consumers.measure() == ConsumerState(
        backlog=3, lag=2, pending=1, live_workers=1, consumers=1, last_delivered="1-0"
    )
    assert not refuses(consumers)

    await redis.xdel(stream, "3-0")  # Redis can't tell the lag any more: the gateway counts it
    assert (await consumers.measure()).lag == 1

    async def given_up() -> bool:  # worker-1 no longer reads
        return (await consumers.measure()).live_workers == 0

    await wait_until_async(given_up, timeout=5, message="worker-1 idle for longer than the timeout")
    assert consumers.state.consumers == 1
    assert refuses(consumers)


async def test_live_workers_that_read_nothing_while_entries_wait_are_stalled(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """Stalled: live workers, unread entries, and no read (last-delivered-id unmoved) for
    stall_after_s. A read, or nothing left unread, clears it."""
    stream = Keys(key_prefix).inbound_stream_of("gw")
    now = [100.0]
    consumers = Consumers(redis, stream, timeout_s=60, stall_after_s=5, clock=lambda: now[0])

    async def stalled_after(seconds: float) -> bool:
        now[0] += seconds
        await consumers.measure()
        return is_stalled(consumers)

    for n in range(3):
        await redis.xadd(stream, {"n": n}, id=f"{n + 1}-0")
    assert not await stalled_after(0)
    assert not await stalled_after(10), "no worker at all: no_workers, not stalled"
    await redis.xgroup_create(stream, CONSUMER_GROUP, id="0")
    await redis.xgroup_createconsumer(stream, CONSUMER_GROUP, "worker-1")
    assert not await stalled_after(0), "a new group: its last-delivered-id is new"
    assert not await stalled_after(4.9)
    assert await stalled_after(0.1), "3 unread, none read for 5 s"
    assert consumers.state.lag == 3
    age = unread_age(consumers)
    assert age is not None
    assert age > 1e6, "entry 1-0: added 1 ms into 1970"

    await redis.xreadgroup(CONSUMER_GROUP, "worker-1", {stream: ">"}, count=1)
    assert not await stalled_after(0), "a read is progress"
    assert not await stalled_after(4.9)
    assert await stalled_after(0.1)
    await redis.xadd(stream, {"n": 3}, id="4-0")  # more waiting is not progress
    assert await stalled_after(1)

    await redis.xreadgroup(CONSUMER_GROUP, "worker-1", {stream: ">"}, count=10)
    assert not await stalled_after(0)
    assert not await stalled_after(60), "nothing unread: idle, not stalled"
    assert (consumers.state.lag, unread_age(consumers)) == (0, None)
    assert not is_stalled(Consumers(redis, stream, timeout_s=60)), "0: never stalled"

    # Without the liveness check (WSQ_WORKER_TIMEOUT_S=0) every consumer counts as a worker.
    unchecked = Consumers(redis, stream, timeout_s=0, stall_after_s=5, clock=lambda: now[0])
    await redis.xadd(stream, {"n": 4}, id="5-0")
    await unchecked.measure()
    now[0] += 5
    await unchecked.measure()
    assert is_stalled(unchecked)


def is_stalled(consumers: Consumers) -> bool:  # calls: mypy would narrow the attributes
    return consumers.stalled


def unread_age(consumers: Consumers) -> float | None:
    return consumers.oldest_unread_age_s


def refuses(consumers: Consumers) -> bool:
    """Whether the last measure refuses frames (a call: mypy would narrow the property)."""
    return consumers.none_live


async def test_a_frame_is_refused_only_when_a_fresh_look_finds_no_worker(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """The last measure may predate a worker that started a moment ago: before refusing a
    frame, the gateway looks again."""
    stream = Keys(key_prefix).inbound_stream_of("gw")
    consumers = Consumers(redis, stream, timeout_s=5)
    await consumers.measure()
    assert await consumers.confirm_none_live()
    await redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    await redis.xgroup_createconsumer(stream, CONSUMER_GROUP, "worker-1")
    assert refuses(consumers), "the last measure predates the worker"
    assert not await consumers.confirm_none_live()
    assert not refuses(Consumers(redis, stream, timeout_s=0)), "0: never refuse"


async def test_without_a_worker_frames_get_no_workers_and_are_not_queued(
    start_gateway: GatewayFactory, redis: aioredis.Redis
) -> None:
    gateway = await start_gateway(worker_timeout_s=5)
    ws, _ = await gateway.connect()
    await ws.send_str('{"action": "work", "id": "w1"}')
    await ws.send_str('{"action": "$ping", "id": "p1"}')  # the gateway itself answers pings
    error = await receive_json(ws)
    assert error == {
        "action": "$error",
        "data": {"code": "no_workers", "message": error["data"]["message"]},
        "id": "w1",
    }
    assert await receive_json(ws) == {"action": "$pong", "data": None, "id": "p1"}
    entries = await stream_entries(redis, gateway.keys.inbound_stream_of(gateway.node_id))
    assert [fields[b"type"] for _, fields in entries] == [b"connect"]
    async with gateway.session.get(gateway.url("/readyz")) as resp:
        assert resp.status == 200, "ready for connections: workers are reported, not required"
        report = (await resp.json())["workers"]
        assert report.pop("oldest_unread_age_s") >= 0, "the connect event waits unread"
        assert report == {
            "live": 0,
            "consumers": 0,
            "accepting_frames": False,
            "lag": 1,
            "pending": 0,
            "backlog": 1,
            "stalled": False,
        }
    await ws.close()


async def test_untaken_forgets_what_was_read_and_withdraws_only_what_is_due_and_unread(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """WSQ_TAKE_TIMEOUT_S: the frames read (up to last-delivered-id) are forgotten at every look,
    due or not; the due ones still unread are withdrawn and answered, the others wait."""
    stream = Keys(key_prefix).inbound_stream_of("gw")
    now = [100.0]
    answered: list[str] = []
    untaken = Untaken(
        redis, stream, 2.0, lambda _conn, frame_id: answered.append(frame_id), clock=lambda: now[0]
    )
    conn = cast(Connection, object())
    await redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    for n in range(4):  # f0 and f1 at 100 s, f2 and f3 at 101 s: due at 102 and 103
        if n == 2:
            now[0] += 1
        untaken.queued(conn, f"f{n}")([await redis.xadd(stream, {"n": n})])
    await redis.xreadgroup(CONSUMER_GROUP, "worker-1", {stream: ">"}, count=1)  # f0 is read
    (group,) = await redis.xinfo_groups(stream)
    last_delivered = group["last-delivered-id"].decode()

    assert await untaken.look(last_delivered) == 0, "nothing due"
    assert len(untaken) == 3, "f0 (read) forgotten"
    now[0] += 1.5  # 102.5: f1 is due
    assert await untaken.look(last_delivered) == 1
    assert answered == ["f1"]
    assert len(untaken) == 2
    assert await redis.xlen(stream) == 3, "f1 deleted, f0 (read) and f2, f3 (not due) stay"
    await redis.xreadgroup(CONSUMER_GROUP, "worker-1", {stream: ">"}, count=1)  # f2 is read
    now[0] += 1  # 103.5: f2 and f3 due, but f2 was read meanwhile (the look's own id is older)
    assert await untaken.look(last_delivered) == 1
    assert answered == ["f1", "f3"]
    assert len(untaken) == 0
    assert await redis.xreadgroup(CONSUMER_GROUP, "worker-1", {stream: ">"}) == []
