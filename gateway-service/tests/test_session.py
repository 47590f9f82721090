"""A connection's state machine, outbox and token bucket, without sockets or an event loop."""

from __future__ import annotations

import pytest

from wsq_gateway.session import Outcome, Session
from wsq_protocol.codes import CloseCode

HELLO = b'{"action":"$connected"}'


def released() -> Session:
    """A released session whose outbox has been written out: frames go straight to the socket."""
    session = Session()
    assert session.release(HELLO)
    assert session.take() == HELLO
    assert session.take() is None
    session.drained()
    return session


def test_a_new_session_is_held_and_queues_without_draining() -> None:
    session = Session()
    assert (session.held, session.closing, session.close_code) == (True, False, None)
    assert session.queue(b"early", 100) is Outcome.QUEUED
    assert session.queue(b"later", 100) is Outcome.QUEUED, "no drain while held"
    assert session.pending_bytes == len(b"early") + len(b"later")


def test_release_puts_the_connected_frame_first_then_what_was_held() -> None:
    session = Session()
    session.queue(b"pushed-by-on_connect", 100)
    assert session.release(HELLO) is True, "a drain must start"
    assert not session.held
    assert session.pending_bytes == len(HELLO) + len(b"pushed-by-on_connect")
    assert [session.take(), session.take(), session.take()] == [HELLO, b"pushed-by-on_connect", None]
    assert session.pending_bytes == 0


def test_releasing_twice_is_an_error() -> None:
    session = released()
    with pytest.raises(RuntimeError, match="released already"):
        session.release(HELLO)
    assert session.outbox is None, "the failed release queued nothing"


def test_releasing_a_closing_session_writes_nothing() -> None:
    session = Session()
    session.queue(b"held", 100)
    assert session.start_closing(CloseCode.TRY_AGAIN_LATER)
    assert session.release(HELLO) is False
    assert session.held, "still held: nothing will be written"
    assert session.outbox is not None
    assert HELLO not in session.outbox


def test_a_released_session_writes_straight_until_the_socket_is_full() -> None:
    session = released()
    assert session.outbox is None, "nothing waits: frames go straight to the socket"
    assert session.queue(b"a", 100) is Outcome.DRAIN, "the first frame queued starts a drain"
    assert session.queue(b"bb", 100) is Outcome.QUEUED, "the drain under way takes it too"
    assert session.pending_bytes == 3
    assert session.take() == b"a"
    assert session.pending_bytes == 2
    session.drained()
    assert (session.outbox, session.pending_bytes) == (None, 0), "what was left is dropped"
    assert session.queue(b"c", 100) is Outcome.DRAIN, "a new drain after the last one ended"


def test_the_outbox_may_hold_exactly_its_limit() -> None:
    session = released()
    assert session.queue(b"x" * 60, 100) is Outcome.DRAIN
    assert session.queue(b"y" * 40, 100) is Outcome.QUEUED
    assert session.pending_bytes == 100
    assert not session.closing


def test_one_byte_over_the_limit_closes_a_slow_consumer() -> None:
    session = released()
    session.queue(b"x" * 60, 100)
    assert session.queue(b"y" * 41, 100) is Outcome.SLOW_CONSUMER
    assert session.closing
    assert session.close_code == 3008
    assert session.outbox is not None
    assert (len(session.outbox), session.pending_bytes) == (0, 0), "the outbox is dropped"
    assert session.take() is None
    assert session.queue(b"z", 100) is Outcome.DROPPED, "closing: nothing more is queued"
    assert session.pending_bytes == 0


def test_a_single_frame_over_the_limit_is_a_slow_consumer_too() -> None:
    assert released().queue(b"x" * 101, 100) is Outcome.SLOW_CONSUMER
    held = Session()
    assert held.queue(b"x" * 101, 100) is Outcome.SLOW_CONSUMER, "held: the same limit"
    assert held.release(HELLO) is False


def test_release_counts_the_connected_frame_against_the_limit() -> None:
    session = Session()
    session.queue(b"x" * 100, 100)
    session.release(HELLO)
    assert session.queue(b"y", 100) is Outcome.SLOW_CONSUMER


def test_closing_happens_once_and_keeps_the_first_code() -> None:
    session = released()
    assert session.start_closing(CloseCode.SERVICE_RESTART) is True
    assert session.start_closing(CloseCode.POLICY_VIOLATION) is False
    assert session.close_code == 1012
    assert type(session.close_code) is int, "a plain int, as the disconnect event carries it"
    assert session.queue(b"late", 100) is Outcome.DROPPED
    assert session.outbox is None, "a dropped frame allocates no outbox"


def test_a_slow_consumer_keeps_its_code_when_closed_again() -> None:
    session = released()
    session.queue(b"x" * 200, 100)
    assert session.start_closing(CloseCode.SERVICE_RESTART) is False
    assert session.close_code == 3008


def test_a_held_session_can_close() -> None:
    session = Session()
    assert session.start_closing(4003)
    assert (session.held, session.closing, session.close_code) == (True, True, 4003)
    assert session.queue(b"x", 100) is Outcome.DROPPED


def test_the_token_bucket_starts_full_then_refills_at_the_rate() -> None:
    session = Session()
    assert all(session.allow(100.0, rate=2.0, burst=3) for _ in range(3)), "a full burst at once"
    assert not session.allow(100.0, rate=2.0, burst=3), "the fourth has no token"
    assert not session.allow(100.4, rate=2.0, burst=3), "0.8 token after 0.4 s: not yet"
    assert session.allow(100.5, rate=2.0, burst=3), "a whole token after 0.5 s"
    assert not session.allow(100.5, rate=2.0, burst=3)


def test_the_token_bucket_never_holds_more_than_the_burst() -> None:
    session = Session()
    assert session.allow(1.0, rate=10.0, burst=2)
    # an hour idle refills 36000 tokens' worth, capped at the burst of 2
    assert [session.allow(3601.0, rate=10.0, burst=2) for _ in range(3)] == [True, True, False]


def test_a_refused_frame_takes_no_token() -> None:
    session = Session()
    assert session.allow(1.0, rate=1.0, burst=1)
    assert not session.allow(1.5, rate=1.0, burst=1)
    assert session.tokens == pytest.approx(0.5)
    assert session.allow(2.0, rate=1.0, burst=1), "the half token from the refusal was kept"


def test_rate_zero_is_no_limit() -> None:
    session = Session()
    assert all(session.allow(5.0, rate=0.0, burst=1) for _ in range(1000))
    assert session.tokens_at == 0.0, "the bucket is not touched"
