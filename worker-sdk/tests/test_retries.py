"""The retry and dead-letter decisions, without Redis: ``wsq_worker.retries`` is pure."""

from __future__ import annotations

import pytest

from wsq_worker.retries import (
    LEAVE_PENDING,
    GiveUp,
    RunAgain,
    after_failed_write,
    after_publish_error,
    after_refused_write,
    after_retry,
    attempt_number,
    before_running,
)


@pytest.mark.parametrize(
    ("event_attempt", "delivered", "attempt"),
    [(1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 1, 2), (4, 2, 5)],
)
def test_an_entrys_attempt_is_the_events_own_plus_its_redeliveries(
    event_attempt: int, delivered: int, attempt: int
) -> None:
    assert attempt_number(event_attempt, delivered) == attempt


def test_an_entry_within_its_attempts_runs() -> None:
    assert before_running(1, 3, delivered=1) is None
    assert before_running(3, 3, delivered=3) is None


def test_an_entry_redelivered_past_its_attempts_is_dead_lettered_as_its_workers_died() -> None:
    assert before_running(4, 3, delivered=4) == GiveUp(
        attempts=3, error="the worker running attempt 3 died or stopped before finishing it"
    )


def test_an_entry_that_came_past_its_attempts_is_dead_lettered_unrun() -> None:
    """A retry written by a worker with a higher max_attempts, say: delivered once."""
    assert before_running(5, 3, delivered=1) == GiveUp(attempts=4, error="attempt 5 is past max_attempts")


def test_retry_runs_the_next_attempt_after_its_delay_in_whole_milliseconds() -> None:
    assert after_retry(1, 3, 2.5, None) == RunAgain(attempt=2, delay_ms=2500)
    assert after_retry(2, 3, 0.0004, None) == RunAgain(attempt=3, delay_ms=0)
    assert after_retry(1, 3, 0.0016, None) == RunAgain(attempt=2, delay_ms=2)


def test_retry_at_the_last_attempt_is_dead_lettered() -> None:
    assert after_retry(3, 3, 1.0, None) == GiveUp(attempts=3, error="Retry raised at attempt 3 of 3")
    assert after_retry(1, 1, 1.0, None) == GiveUp(attempts=1, error="Retry raised at attempt 1 of 1")


def test_a_dead_letter_after_retry_names_its_cause() -> None:
    decision = after_retry(2, 2, 1.0, TimeoutError("the API timed out"))
    assert decision == GiveUp(
        attempts=2, error="Retry raised at attempt 2 of 2, after TimeoutError: the API timed out"
    )


def test_a_failed_write_runs_the_next_attempt_after_claim_idle_ms() -> None:
    assert after_failed_write(1, 3, 15_000, "OOM") == RunAgain(attempt=2, delay_ms=15_000, reason="OOM")


def test_a_failed_write_at_the_last_attempt_is_dead_lettered_with_its_error() -> None:
    assert after_failed_write(3, 3, 15_000, "OOM") == GiveUp(attempts=3, error="OOM")


def test_a_publish_error_is_a_failed_write() -> None:
    error = ConnectionError("Redis went away")
    text = "a write of attempt 1 of 2 failed: PublishError: Redis went away"
    assert after_publish_error(1, 2, 500, error) == RunAgain(attempt=2, delay_ms=500, reason=text)
    text = "a write of attempt 2 of 2 failed: PublishError: Redis went away"
    assert after_publish_error(2, 2, 500, error) == GiveUp(attempts=2, error=text)


def test_a_message_whose_write_redis_refused_runs_again_then_is_dead_lettered() -> None:
    text = "Redis refused a write of attempt 1 of 2: WRONGTYPE"
    assert after_refused_write(1, 2, 500, "WRONGTYPE", is_message=True) == RunAgain(2, 500, text)
    text = "Redis refused a write of attempt 2 of 2: WRONGTYPE"
    assert after_refused_write(2, 2, 500, "WRONGTYPE", is_message=True) == GiveUp(2, text)


def test_a_refused_write_of_another_event_leaves_it_pending() -> None:
    """A connect hook's answer, say: a connect or disconnect event carries no attempt."""
    assert after_refused_write(1, 3, 500, "OOM", is_message=False) is LEAVE_PENDING


def test_a_refused_write_of_an_entry_past_its_attempts_leaves_it_pending() -> None:
    """Its late dead letter was refused: not run again, claimed once idle (and dead-lettered then)."""
    assert after_refused_write(4, 3, 500, "OOM", is_message=True) is LEAVE_PENDING
