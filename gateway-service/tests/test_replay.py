"""The replay buffer of a resumable connection: numbering, bounds, and what a resume gets."""

from __future__ import annotations

import orjson
import pytest

from wsq_gateway.replay import ReplayBuffer
from wsq_gateway.sessions import parse_resume_request
from wsq_protocol.frames import push_frame, server_frame_problem
from wsq_protocol.ids import new_connection_id, new_resume_token


def frame(n: int) -> bytes:
    return push_frame("n", n).encode()


def numbers(frames: list[bytes] | None) -> list[tuple[int, int]]:
    assert frames is not None
    return [(item["data"], item["seq"]) for item in map(orjson.loads, frames)]


def test_frames_are_numbered_from_one_and_stay_valid_server_frames() -> None:
    buffer = ReplayBuffer(max_frames=10, max_bytes=10_000, max_age_s=60)
    stamped = [buffer.stamp(frame(n), now=0.0) for n in range(3)]
    assert [orjson.loads(item)["seq"] for item in stamped] == [1, 2, 3]
    assert all(server_frame_problem(item, stamped=True) is None for item in stamped)
    assert buffer.seq == 3
    assert buffer.bytes == sum(map(len, stamped))


def test_after_gives_every_later_frame_in_order() -> None:
    buffer = ReplayBuffer(max_frames=10, max_bytes=10_000, max_age_s=60)
    for n in range(5):
        buffer.stamp(frame(n), now=0.0)
    assert numbers(buffer.after(2, now=1.0)) == [(2, 3), (3, 4), (4, 5)]
    assert buffer.after(5, now=1.0) == []  # seen everything
    assert numbers(buffer.after(0, now=1.0)) == [(n, n + 1) for n in range(5)]


def test_a_client_claiming_more_than_it_got_is_not_recovered() -> None:
    buffer = ReplayBuffer(max_frames=10, max_bytes=10_000, max_age_s=60)
    buffer.stamp(frame(0), now=0.0)
    assert buffer.after(2, now=0.0) is None
    assert buffer.after(-1, now=0.0) is None


def test_the_frame_cap_drops_the_oldest_and_a_resume_needing_them_is_not_recovered() -> None:
    buffer = ReplayBuffer(max_frames=3, max_bytes=10_000, max_age_s=60)
    for n in range(5):
        buffer.stamp(frame(n), now=0.0)
    assert len(buffer) == 3
    assert buffer.after(1, now=0.0) is None  # seq 2 is gone
    assert numbers(buffer.after(2, now=0.0)) == [(2, 3), (3, 4), (4, 5)]


def test_the_byte_cap_drops_the_oldest() -> None:
    one = len(ReplayBuffer(1, 10_000, 60).stamp(frame(0), now=0.0))
    buffer = ReplayBuffer(max_frames=100, max_bytes=2 * one, max_age_s=60)
    for n in range(4):
        buffer.stamp(frame(n), now=0.0)
    assert len(buffer) == 2
    assert buffer.bytes <= 2 * one
    assert buffer.after(2, now=0.0) is not None
    assert buffer.after(1, now=0.0) is None


def test_frames_older_than_the_window_are_trimmed() -> None:
    buffer = ReplayBuffer(max_frames=100, max_bytes=10_000, max_age_s=10)
    buffer.stamp(frame(0), now=0.0)
    buffer.stamp(frame(1), now=5.0)
    assert numbers(buffer.after(0, now=9.0)) == [(0, 1), (1, 2)]
    assert buffer.after(0, now=11.0) is None  # seq 1 aged out
    assert numbers(buffer.after(1, now=11.0)) == [(1, 2)]
    assert buffer.after(2, now=100.0) == []  # nothing missed: complete, even with all aged out
    assert len(buffer) == 0
    assert buffer.bytes == 0


def test_a_resume_request_is_read_from_the_query() -> None:
    cid = new_connection_id("gw-1")
    token = new_resume_token(cid)
    request = parse_resume_request({"resume": token, "after": "42"})
    assert request is not None
    assert (request.token, request.connection_id, request.after) == (token, cid, 42)
    assert token == f"{cid}.{request.secret}"
    assert parse_resume_request({"resume": token}) == request._replace(after=0)
    assert parse_resume_request({"token": "x"}) is None


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"resume": "nope"}, "not a resume token"),
        ({"resume": "RESUME", "after": "-1"}, "integer from 0 up"),
        ({"resume": "RESUME", "after": "1.5"}, "integer from 0 up"),
        ({"resume": "RESUME", "after": "٣"}, "integer from 0 up"),  # a digit, but not ASCII
        ({"resume": "RESUME", "after": "9" * 19}, "integer from 0 up"),
    ],
)
def test_a_malformed_resume_request_is_refused(query: dict[str, str], problem: str) -> None:
    if query["resume"] == "RESUME":
        query = query | {"resume": new_resume_token(new_connection_id("gw-1"))}
    with pytest.raises(ValueError, match=problem):
        parse_resume_request(query)
