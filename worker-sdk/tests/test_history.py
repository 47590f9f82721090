"""Per-group history from the SDK: ``to_group(g).send(..., history=True)`` pushes the frame
unchanged and appends it to the group's history; ``history()`` reads it back; history on other
targets and bad settings are refused; a push failing after the append says so (Publisher and
AsyncPublisher alike)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio
from worker_harness import FakeGateway

from wsq_protocol.history import HistoryPage
from wsq_protocol.keys import keys_for
from wsq_worker import AsyncPublisher, Publisher, PublishError

GROUP = "room:1"
CONNECTION = "gw-a_1.q2uE4nK0m5Zr8VtY1xWb7A"


async def resolve(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


@pytest.fixture(params=["sync", "async"])
async def publisher(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> AsyncIterator[Any]:
    if request.param == "sync":
        with Publisher(redis_url, key_prefix) as sync_publisher:
            yield sync_publisher
    else:
        async with AsyncPublisher(redis_url, key_prefix) as async_publisher:
            yield async_publisher


@pytest.fixture
async def member(gateway_on: Callable[[str], FakeGateway], publisher: Any) -> FakeGateway:
    gateway = gateway_on("gw-a_1")
    await gateway.register(CONNECTION)
    assert await resolve(publisher.join(CONNECTION, GROUP)) is True
    return gateway


async def test_send_with_history_pushes_the_frame_unchanged_and_keeps_it(
    publisher: Any, member: FakeGateway
) -> None:
    group = publisher.to_group(GROUP)
    for n in range(3):
        assert await resolve(group.send("chat", {"n": n}, history=True)) == 1
    assert await resolve(group.send("typing", None)) == 1  # without history: pushed only
    frames = [c.fields["frame"] for c in await member.commands() if c.fields["type"] == "send"]
    assert frames == [
        *(f'{{"action":"chat","data":{{"n":{n}}}}}' for n in range(3)),
        '{"action":"typing","data":null}',
    ]
    page = await resolve(publisher.history(GROUP))
    assert isinstance(page, HistoryPage)
    assert [(e.action, e.data) for e in page.messages] == [("chat", {"n": n}) for n in range(3)]
    assert (page.complete, page.gap) == (True, False)
    later = await resolve(publisher.history(GROUP, since=page.messages[0].offset, limit=1))
    assert [e.data for e in later.messages] == [{"n": 1}]
    assert later.complete is False


async def test_history_size_and_ttl_per_call(
    publisher: Any, member: FakeGateway, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    for n in range(5):
        await resolve(
            publisher.to_group(GROUP).send("chat", n, history=True, history_size=2, history_ttl_s=30)
        )
    page = await resolve(publisher.history(GROUP))
    assert [e.data for e in page.messages] == [3, 4]
    key = keys_for(key_prefix).group_history(GROUP)
    assert 0 < await redis_client.pttl(key) <= 30_000


async def test_the_environment_sets_the_defaults(
    redis_url: str, key_prefix: str, redis_client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSQ_HISTORY_SIZE", "2")
    monkeypatch.setenv("WSQ_HISTORY_TTL_S", "40")
    with Publisher(redis_url, key_prefix) as sync_publisher:
        for n in range(3):
            sync_publisher.to_group(GROUP).send("chat", n, history=True)  # no member: history only
        assert [e.data for e in sync_publisher.history(GROUP).messages] == [1, 2]
    assert 30_000 < await redis_client.pttl(keys_for(key_prefix).group_history(GROUP)) <= 40_000
    monkeypatch.setenv("WSQ_HISTORY_SIZE", "0")
    with pytest.raises(ValueError, match="WSQ_HISTORY_SIZE"):
        Publisher(redis_url, key_prefix)


async def test_history_on_other_targets_or_bad_settings_is_refused(
    publisher: Any, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    for target in (publisher.to(CONNECTION), publisher.to_user("ann"), publisher.broadcast()):
        with pytest.raises(ValueError, match="history=True is for pushes to a group"):
            await resolve(target.send("chat", 1, history=True))
    group = publisher.to_group(GROUP)
    with pytest.raises(ValueError, match="history size"):
        await resolve(group.send("chat", 1, history=True, history_size=0))
    with pytest.raises(ValueError, match="history TTL"):
        await resolve(group.send("chat", 1, history=True, history_ttl_s=-1))
    with pytest.raises(ValueError, match="go with history=True"):
        await resolve(group.send("chat", 1, history_size=5))
    with pytest.raises(ValueError, match="since"):
        await resolve(publisher.history(GROUP, since="yesterday"))
    with pytest.raises(ValueError, match="limit"):
        await resolve(publisher.history(GROUP, limit=0))
    with pytest.raises(ValueError, match="group name"):
        await resolve(publisher.history("bad group"))
    assert not await redis_client.exists(keys_for(key_prefix).group_history(GROUP))  # nothing written


async def test_a_push_failing_after_the_append_says_the_message_is_in_the_history(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncPublisher(redis_url, key_prefix) as async_publisher:
        target = async_publisher.to_group(GROUP)

        async def failing(write: Any) -> int:
            raise PublishError("Redis is unavailable, nothing was sent: gone", code="unavailable")

        monkeypatch.setattr(target, "_execute", failing)
        with pytest.raises(
            PublishError, match=r"appended to the group's history \(offset \d+-\d+\)"
        ) as caught:
            await target.send("chat", {"n": 1}, history=True)
        assert caught.value.code == "unavailable"
        assert [e.data for e in (await async_publisher.history(GROUP)).messages] == [{"n": 1}]
