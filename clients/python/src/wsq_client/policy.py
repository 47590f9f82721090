"""When the client reconnects, and how long it waits: pure functions, no I/O.

Close codes (protocol/README.md, "Close codes"), the same set as the JavaScript client's
(clients/js): the gateway restarting or draining (1012), asking to try again later (1013), an
internal error (1011), the network or the client vanishing (1006: no close frame; 1005: no
status), a going-away peer (1001), a TLS or gateway failure (1014, 1015), a frame over the
limit (1009: the next connection is fresh), a slow-consumer cut (3008: the client fell behind)
and a connect hook that failed (3011: a worker's exception, maybe passing) are worth a
reconnect. The rest are decisions: a normal close by the server (1000: a publisher's
``disconnect``), a policy refusal (1008: too many connections for the user), a text frame
that is not UTF-8 (1007), the application's own codes (3000-4999) and 3012 (session resume: the
connection's session was taken over by another socket with its resume token, so this client
is no longer the session's): reconnecting would only be refused again, or undo what the
application wanted.

At the handshake, an HTTP 429 (too many connections from one address or user) or 5xx (the
gateway not ready) is retried; any other status (401: no or a bad token, 403: origin) is not.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "RECONNECT_CLOSE_CODES",
    "SESSION_RESUMED",
    "Backoff",
    "reconnects_after_close",
    "reconnects_after_status",
]

RECONNECT_CLOSE_CODES = frozenset({1001, 1005, 1006, 1009, 1011, 1012, 1013, 1014, 1015, 3008, 3011})
"""Close codes after which the client reconnects."""

SESSION_RESUMED = 3012
"""The gateway closed this socket because another socket resumed its session (protocol/README.md,
"Session resume"). On a socket the client abandoned to resume, it is expected and ignored; on
the client's current socket, someone else holds the session now: the client closes."""


def reconnects_after_close(code: int) -> bool:
    return code in RECONNECT_CLOSE_CODES


def reconnects_after_status(status: int) -> bool:
    """Whether a refused handshake (its HTTP status) is worth another attempt."""
    return status == 429 or status >= 500


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: before attempt ``n`` (1, 2...), a delay drawn
    uniformly from 0 to ``min(cap, base * 2 ** (n - 1))`` seconds, so clients that lost the
    same gateway at once do not all come back at once."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, random_: Callable[[], float] = random.random) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(max(attempt - 1, 0), 62))
        return float(random_() * ceiling)
