"""Session resume with real processes: a client cut off without a close frame comes back with
its resume token, on another gateway or the same, and gets every frame sent while it was away,
once and in order, with the same connection id, user and groups (protocol/README.md,
"Session resume"). The workers see one disconnect event per connection, when its window ends.
"""

from __future__ import annotations

import json
import signal
from typing import Any
from urllib.parse import quote

import pytest
from raw_client import HandshakeRefused, RawClient, text_frame
from system_harness import JWT_SECRET, StartGateway, StartWorker, token

from wsq_devkit import wait_until_async
from wsq_protocol.cluster import SyncClient
from wsq_worker import AsyncPublisher

RESUMABLE = {"WSQ_JWT_SECRET": JWT_SECRET, "WSQ_RESUME_WINDOW_S": "30"}
GAP_PUSHES = 30  # pushes sent while the client is away: to its connection, its user, its group


def query(user: str, resume: str | None = None, after: int = 0) -> str:
    text = f"token={token(user)}"
    if resume is not None:
        text += f"&resume={quote(resume)}&after={after}"
    return text


async def request(client: RawClient, action: str, data: Any, frame_id: str) -> dict[str, Any]:
    client.send(text_frame(action, data, frame_id))

    async def answered() -> dict[str, Any] | None:
        answers = client.answers(frame_id)
        return answers[0] if answers else None

    return await wait_until_async(answered, message=f"the answer to {frame_id}")


async def pushes_seen(client: RawClient, count: int) -> list[dict[str, Any]]:
    """The first ``count`` frames of action ``n`` the client received."""

    async def enough() -> list[dict[str, Any]] | None:
        seen = [frame for frame in client.frames if frame["action"] == "n"]
        return seen if len(seen) >= count else None

    return await wait_until_async(enough, timeout=20, message=f"{count} pushes")


def disconnects(redis_client: SyncClient, prefix: str, connection_id: str) -> list[int | None]:
    raw: Any = redis_client.lrange(f"{prefix}:test:disconnects", 0, -1)
    return [event["close_code"] for event in map(json.loads, raw) if event["connection_id"] == connection_id]


async def send_mixed(
    publisher: AsyncPublisher, connection_id: str, user: str, group: str, numbers: range
) -> None:
    """Push ``n`` frames numbered ``numbers`` in turn to the connection, its user and its group."""
    for number in numbers:
        target = (publisher.to(connection_id), publisher.to_user(user), publisher.to_group(group))[number % 3]
        assert await target.send("n", number) == 1


def assert_once_in_order(frames: list[dict[str, Any]], numbers: range, first_seq: int) -> None:
    assert [frame["data"] for frame in frames] == list(numbers)
    assert [frame["seq"] for frame in frames] == list(range(first_seq, first_seq + len(numbers)))


async def test_a_client_cut_off_resumes_on_another_gateway_and_misses_nothing(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    publisher: AsyncPublisher,
    redis_client: SyncClient,
    key_prefix: str,
) -> None:
    home, guest = start_gateway(**RESUMABLE), start_gateway(**RESUMABLE)
    start_worker()
    client = await RawClient.connect(home.port, query=query("ann"))
    cid = client.connection_id
    resume_token = client.hello["resume_token"]
    assert client.hello["resume_window_s"] == 30
    assert (await request(client, "join_room", "room-1", "j1"))["data"] is True
    await send_mixed(publisher, cid, "ann", "room-1", range(3))
    before = await pushes_seen(client, 3)
    last_seq = before[-1]["seq"]

    client.vanish("rst")  # no close frame: the network is gone
    await send_mixed(publisher, cid, "ann", "room-1", range(3, 3 + GAP_PUSHES))

    back = await RawClient.connect(guest.port, query=query("ann", resume_token, last_seq))
    assert back.connection_id == cid
    assert (back.user_id, back.hello["resumed"], back.hello["recovered"]) == ("ann", True, True)
    assert back.hello["resume_token"] == resume_token
    live = range(3 + GAP_PUSHES, 3 + GAP_PUSHES + 6)
    await send_mixed(publisher, cid, "ann", "room-1", live)  # relayed by the home, live
    received = await pushes_seen(back, GAP_PUSHES + len(live))
    assert_once_in_order(received, range(3, live.stop), last_seq + 1)

    # Requests on the new socket work, their replies come through the home, numbered too.
    reply = await request(back, "echo", {"x": 1}, "e1")
    assert reply["data"] == {"x": 1}
    assert reply["seq"] == received[-1]["seq"] + 1
    assert disconnects(redis_client, key_prefix, cid) == []  # the session never ended

    assert await back.close(1000) == 1000

    async def ended() -> list[int | None] | None:
        return disconnects(redis_client, key_prefix, cid) or None

    assert await wait_until_async(ended, message="the disconnect event") == [1000]
    back.abort()


@pytest.mark.single_redis
async def test_a_session_resumed_on_its_own_gateway_takes_over_its_old_socket(
    start_gateway: StartGateway, start_worker: StartWorker, publisher: AsyncPublisher
) -> None:
    gateway = start_gateway(**RESUMABLE)
    start_worker()
    old = await RawClient.connect(gateway.port, query=query("bob"))
    await send_mixed(publisher, old.connection_id, "bob", "none", range(0, 6, 3))  # to the connection
    seen = await pushes_seen(old, 2)

    # The old socket still looks open (a half-open TCP connection): the resume takes over.
    old.vanish("silence")
    await send_mixed(publisher, old.connection_id, "bob", "none", range(6, 12, 3))
    new = await RawClient.connect(gateway.port, query=query("bob", old.hello["resume_token"], seen[0]["seq"]))
    assert (new.connection_id, new.hello["resumed"], new.hello["recovered"]) == (
        old.connection_id,
        True,
        True,
    )
    received = await pushes_seen(new, 3)
    assert [frame["data"] for frame in received] == [3, 6, 9]
    first = seen[0]["seq"] + 1
    assert [frame["seq"] for frame in received] == [first, first + 1, first + 2]
    new.abort()
    old.abort()


async def test_a_session_not_resumed_in_time_ends_with_its_true_close_code(
    start_gateway: StartGateway, start_worker: StartWorker, redis_client: SyncClient, key_prefix: str
) -> None:
    gateway = start_gateway(WSQ_JWT_SECRET=JWT_SECRET, WSQ_RESUME_WINDOW_S="1")
    start_worker()
    client = await RawClient.connect(gateway.port, query=query("cat"))
    cid = client.connection_id
    client.vanish("rst")

    async def ended() -> list[int | None] | None:
        return disconnects(redis_client, key_prefix, cid) or None

    assert await wait_until_async(ended, message="the disconnect event") == [1006]
    late = await RawClient.connect(gateway.port, query=query("cat", client.hello["resume_token"], 0))
    assert late.connection_id != cid
    assert (late.hello["resumed"], late.hello["recovered"]) == (False, False)
    assert late.hello["resume_token"].startswith(late.connection_id + ".")
    assert disconnects(redis_client, key_prefix, cid) == [1006]  # still exactly one
    late.abort()


@pytest.mark.single_redis
async def test_a_resume_past_the_buffer_cap_keeps_the_session_but_is_not_recovered(
    start_gateway: StartGateway, start_worker: StartWorker, publisher: AsyncPublisher
) -> None:
    home = start_gateway(**RESUMABLE, WSQ_RESUME_BUFFER_FRAMES="3")
    guest = start_gateway(**RESUMABLE)
    start_worker()
    client = await RawClient.connect(home.port, query=query("dan"))
    cid = client.connection_id
    assert (await request(client, "join_room", "room-2", "j1"))["data"] is True
    last_seq = client.answers("j1")[0]["seq"]
    client.vanish("rst")
    await send_mixed(publisher, cid, "dan", "room-2", range(5))  # 5 frames, 3 kept

    back = await RawClient.connect(guest.port, query=query("dan", client.hello["resume_token"], last_seq))
    assert (back.connection_id, back.hello["resumed"], back.hello["recovered"]) == (cid, True, False)
    assert [frame for frame in back.frames if frame["action"] == "n"] == []  # no partial replay
    await send_mixed(publisher, cid, "dan", "room-2", range(5, 8))  # the groups are kept
    received = await pushes_seen(back, 3)
    assert_once_in_order(received, range(5, 8), last_seq + 6)
    back.abort()


@pytest.mark.single_redis
async def test_a_resume_with_another_users_token_or_a_wrong_secret_gets_a_new_connection(
    start_gateway: StartGateway, start_worker: StartWorker
) -> None:
    home, guest = start_gateway(**RESUMABLE), start_gateway(**RESUMABLE)
    start_worker()
    client = await RawClient.connect(home.port, query=query("eve"))
    resume_token = client.hello["resume_token"]
    client.vanish("rst")
    forged = resume_token[:-1] + ("A" if resume_token[-1] != "A" else "B")
    for gateway in (home, guest):
        for text in (query("mallory", resume_token, 0), query("eve", forged, 0)):
            other = await RawClient.connect(gateway.port, query=text)
            assert other.connection_id != client.connection_id
            assert (other.hello["resumed"], other.hello["recovered"]) == (False, False)
            other.abort()
    # The session is still there for its owner.
    back = await RawClient.connect(guest.port, query=query("eve", resume_token, 0))
    assert (back.connection_id, back.hello["resumed"]) == (client.connection_id, True)
    back.abort()


@pytest.mark.single_redis
@pytest.mark.parametrize(
    "bad", ["resume=not-a-token", "resume=gw1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA&after=-1"]
)
async def test_a_malformed_resume_request_is_refused_before_the_upgrade(
    start_gateway: StartGateway, bad: str
) -> None:
    gateway = start_gateway(**RESUMABLE)
    with pytest.raises(HandshakeRefused) as refused:
        await RawClient.connect(gateway.port, query=f"token={token('fay')}&{bad}")
    assert refused.value.status == 400


@pytest.mark.single_redis
async def test_a_resume_whose_home_gateway_died_gets_a_new_connection(
    start_gateway: StartGateway, start_worker: StartWorker
) -> None:
    home, guest = start_gateway(**RESUMABLE), start_gateway(**RESUMABLE)
    start_worker()
    client = await RawClient.connect(home.port, query=query("gus"))
    home.process.signal(signal.SIGKILL)
    home.process.wait(10)
    back = await RawClient.connect(guest.port, query=query("gus", client.hello["resume_token"], 0))
    assert back.connection_id != client.connection_id
    assert (back.hello["resumed"], back.hello["recovered"]) == (False, False)
    back.abort()
    client.abort()
