"""What becomes of an event that did not simply succeed: pure decisions, no Redis, no asyncio.

A message runs again (``RunAgain``) until its attempts are used up, then goes to the dead
letters (``GiveUp``); an event whose write Redis refused and that can't carry an attempt stays
pending (``LEAVE_PENDING``), claimed once idle like a dead worker's. The worker's dispatch
turns each decision into writes.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple, TypeAlias

__all__ = [
    "LEAVE_PENDING",
    "Decision",
    "GiveUp",
    "LeavePending",
    "RunAgain",
    "after_failed_write",
    "after_publish_error",
    "after_refused_write",
    "after_retry",
    "attempt_number",
    "before_running",
]


class RunAgain(NamedTuple):
    """Put the message in the delayed set as ``attempt`` (its next one), due in ``delay_ms``;
    ``reason``: what failed, when something did (for the log)."""

    attempt: int
    delay_ms: int
    reason: str = ""


class GiveUp(NamedTuple):
    """Move the event to the dead letters, after ``attempts`` attempts, with ``error``."""

    attempts: int
    error: str


class LeavePending(enum.Enum):
    """Write nothing: the entry stays pending, and is claimed once idle."""

    LEAVE_PENDING = "leave pending"


LEAVE_PENDING: Final = LeavePending.LEAVE_PENDING

Decision: TypeAlias = RunAgain | GiveUp


def attempt_number(event_attempt: int, delivered: int) -> int:
    """The attempt an entry is: the event's own (``attempt`` field, 1 unless it is a retry) plus
    its redeliveries (``delivered`` counts how often the consumer group handed it out)."""
    return event_attempt + delivered - 1


def before_running(attempt: int, max_attempts: int, delivered: int) -> GiveUp | None:
    """None to run the entry; its dead letter when it is past ``max_attempts``: the workers of its
    earlier attempts died or stopped before finishing them (or it came so)."""
    if attempt <= max_attempts:
        return None
    if delivered > 1:
        error = f"the worker running attempt {attempt - 1} died or stopped before finishing it"
    else:
        error = f"attempt {attempt} is past max_attempts"
    return GiveUp(attempts=attempt - 1, error=error)


def after_retry(attempt: int, max_attempts: int, delay_s: float, cause: BaseException | None) -> Decision:
    """A handler raised ``Retry(delay_s)`` (``from cause``, or while handling it): the next
    attempt ``delay_s`` later, or the dead letter after the last attempt."""
    if attempt < max_attempts:
        return RunAgain(attempt=attempt + 1, delay_ms=round(delay_s * 1000))
    error = f"Retry raised at attempt {attempt} of {max_attempts}"
    if cause is not None:
        error += f", after {type(cause).__name__}: {cause}"
    return GiveUp(attempts=attempt, error=error)


def after_publish_error(
    attempt: int, max_attempts: int, claim_idle_ms: int, error: BaseException
) -> Decision:
    """A message handler let a ``PublishError`` through (a write of its event was not taken):
    as a refused write, see ``after_failed_write``."""
    text = f"a write of attempt {attempt} of {max_attempts} failed: PublishError: {error}"
    return after_failed_write(attempt, max_attempts, claim_idle_ms, text)


def after_refused_write(
    attempt: int, max_attempts: int, claim_idle_ms: int, error: str, *, is_message: bool
) -> Decision | LeavePending:
    """Redis refused a write of the entry (``error``): a message runs again as after a crash
    (see ``after_failed_write``); an event that can't carry an attempt, or an entry past its
    attempts (its retry or late dead letter was refused too), stays pending."""
    if not is_message or attempt > max_attempts:
        return LEAVE_PENDING
    text = f"Redis refused a write of attempt {attempt} of {max_attempts}: {error}"
    return after_failed_write(attempt, max_attempts, claim_idle_ms, text)


def after_failed_write(attempt: int, max_attempts: int, claim_idle_ms: int, error: str) -> Decision:
    """A message a write of which failed (``error``): its next attempt ``claim_idle_ms`` later
    (as if its worker had died), or its dead letter after the last attempt."""
    if attempt < max_attempts:
        return RunAgain(attempt=attempt + 1, delay_ms=claim_idle_ms, reason=error)
    return GiveUp(attempts=attempt, error=error)
