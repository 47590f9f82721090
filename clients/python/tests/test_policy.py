"""The client's reconnect policy, without sockets: full-jitter backoff, and which close codes and
HTTP statuses it reconnects after (checked against the protocol's own codes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wsq_client import RECONNECT_CLOSE_CODES, SESSION_RESUMED, Backoff
from wsq_client.policy import reconnects_after_close, reconnects_after_status
from wsq_protocol.codes import CloseCode

pytestmark = pytest.mark.single_redis


def test_full_jitter_draws_below_a_doubling_ceiling_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    assert [backoff.delay(n, lambda: 1.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [backoff.delay(n, lambda: 0.25) for n in (1, 3)] == [0.125, 0.5]
    assert backoff.delay(1, lambda: 0.0) == 0.0, "full jitter: any delay from 0"
    assert backoff.delay(10_000, lambda: 1.0) == 4.0, "no overflow for a long outage"


def test_it_reconnects_after_restarts_and_outages_but_not_after_decisions() -> None:
    again = {CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER, CloseCode.INTERNAL_ERROR,
             CloseCode.ABNORMAL_CLOSURE, CloseCode.SLOW_CONSUMER, CloseCode.MESSAGE_TOO_BIG,
             CloseCode.HOOK_FAILED}  # fmt: skip
    # 3012: the session was resumed on another socket: someone else holds it now.
    decided = {
        CloseCode.NORMAL,
        CloseCode.POLICY_VIOLATION,
        CloseCode.INVALID_TEXT,
        CloseCode.SESSION_RESUMED,
    }
    assert again | decided == set(CloseCode), "every code of the protocol is decided on"
    assert all(reconnects_after_close(code) for code in again)
    assert not any(reconnects_after_close(code) for code in decided)
    assert {*again, 1001, 1005, 1014, 1015} == RECONNECT_CLOSE_CODES
    assert not reconnects_after_close(4001), "the application's own codes are its decisions"
    assert SESSION_RESUMED == CloseCode.SESSION_RESUMED


@pytest.mark.parametrize(
    ("status", "again"), [(429, True), (503, True), (500, True), (401, False), (403, False), (404, False)]
)
def test_refused_handshakes_are_retried_only_when_the_refusal_is_temporary(status: int, again: bool) -> None:
    assert reconnects_after_status(status) is again


def test_the_python_and_javascript_clients_reconnect_after_the_same_codes() -> None:
    source = (Path(__file__).resolve().parents[2] / "js" / "src" / "index.js").read_text()
    (listed,) = re.findall(r"RECONNECT_CODES = Object\.freeze\(\[([0-9, ]+)\]\)", source)
    assert {int(code) for code in listed.split(",")} == RECONNECT_CLOSE_CODES
