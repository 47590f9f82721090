"""At least once: claims, keep-alive, retries and dead letters (protocol/README.md), without the loops.

The Lua scripts (``protocol/lua/``: claim, keep_alive, drop_stale_consumers, commit,
move_due, replay) run in Redis, so each of their steps is atomic whatever the number of
workers: a claimed entry comes with its delivery count, a keep-alive never takes an entry back
from a worker that claimed it, a dead worker's consumer leaves the group only once it holds no
entry, an entry is acknowledged only with all of its writes (and a
batch sent twice writes them once), a due retry moves into the inbound stream exactly once, and
a dead letter is replayed exactly once. The worker (``wsq_worker.worker``) and its flusher
(``wsq_worker.flusher``) run them; the ``wsq-worker dead`` command (``wsq_worker.cli``) lists and
replays dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from wsq_protocol import codec
from wsq_protocol.scripts import script

__all__ = [
    "CLAIM_SCRIPT",
    "COMMIT_SCRIPT",
    "DEAD_LETTER_FIELDS",
    "FORGET_STALE_SCRIPT",
    "KEEP_ALIVE_SCRIPT",
    "MOVE_DUE_SCRIPT",
    "REPLAY_SCRIPT",
    "Claimed",
    "DelayedWrite",
    "dead_letter",
    "delayed_member",
    "parse_claim",
    "parse_forget",
    "parse_move",
]

CLAIM_SCRIPT = script("claim").body
"""``protocol/lua/claim.lua`` (its KEYS, ARGV and reply are in its header)."""

KEEP_ALIVE_SCRIPT = script("keep_alive").body
"""``protocol/lua/keep_alive.lua`` (its KEYS, ARGV and reply are in its header)."""

FORGET_STALE_SCRIPT = script("drop_stale_consumers").body
"""``protocol/lua/drop_stale_consumers.lua`` (its KEYS, ARGV and reply are in its header)."""

COMMIT_SCRIPT = script("commit").body
"""``protocol/lua/commit.lua`` (its KEYS, ARGV and reply are in its header)."""

MOVE_DUE_SCRIPT = script("move_due").body
"""``protocol/lua/move_due.lua`` (its KEYS, ARGV and reply are in its header)."""

REPLAY_SCRIPT = script("replay").body
"""``protocol/lua/replay.lua`` (its KEYS, ARGV and reply are in its header)."""

DEAD_LETTER_FIELDS = ("error", "attempts", "failed_at", "worker")
"""The fields a dead letter adds to its event's."""
REPLAY_DROPS = (*DEAD_LETTER_FIELDS, "attempt")
"""The fields ``REPLAY_SCRIPT`` leaves out of the replayed event."""
_MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class DelayedWrite:
    """``member`` in the delayed set ``key``, due in ``delay_ms`` (``WSQ.DELAYED`` in
    ``COMMIT_SCRIPT``)."""

    key: str
    member: str
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """An entry ``CLAIM_SCRIPT`` took over, and how many times it was delivered (this time included)."""

    entry_id: str
    fields: Mapping[bytes, bytes] | None
    """None when the entry was deleted from the stream while it was pending."""
    delivered: int


def parse_claim(response: Any) -> tuple[str, list[Claimed]]:
    """(next cursor, claimed entries) of a ``CLAIM_SCRIPT`` reply (``bytes``, undecoded)."""
    cursor, entries, counts = response
    claimed = []
    for entry, delivered in zip(entries, counts, strict=True):
        if not entry:  # deleted while pending (Redis 6.2; Redis 7 drops it from the group itself)
            continue
        entry_id, flat = entry
        fields = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None
        claimed.append(Claimed(_text(entry_id), fields, int(delivered)))
    return _text(cursor), claimed


def parse_forget(response: Any) -> list[tuple[str, int]]:
    """(consumer, idle ms) of each consumer a ``FORGET_STALE_SCRIPT`` reply says it removed."""
    return [
        (name.decode(errors="backslashreplace") if isinstance(name, bytes) else str(name), int(idle))
        for name, idle in zip(response[::2], response[1::2], strict=True)
    ]


def parse_move(response: Any) -> tuple[int, list[str]]:
    """(members moved, malformed members removed) of a ``MOVE_DUE_SCRIPT`` reply."""
    moved, malformed = response
    # Malformed members may be any bytes (not written by wsq): shown, never decoded strictly.
    return int(moved), [
        member.decode(errors="backslashreplace") if isinstance(member, bytes) else str(member)
        for member in malformed
    ]


def delayed_member(entry_id: str, fields: Mapping[str, str], attempt: int) -> str:
    """The delayed-set member re-running the event ``fields`` of inbound entry ``entry_id`` as
    attempt ``attempt``. The entry id (``retry_of``) keeps two retries of equal messages apart."""
    return codec.dumps({"retry_of": entry_id, "fields": {**fields, "attempt": str(attempt)}})


def dead_letter(fields: Mapping[str, str], *, error: str, attempts: int, worker: str) -> dict[str, str]:
    """The dead-letter entry of an event: its fields plus ``error``, ``attempts``, ``failed_at``
    (milliseconds since the epoch) and ``worker`` (the consumer that gave up)."""
    if len(error) > _MAX_ERROR_CHARS:
        error = error[: _MAX_ERROR_CHARS - 1] + "…"
    extra = {
        "error": error,
        "attempts": str(attempts),
        "failed_at": str(time.time_ns() // 1_000_000),
        "worker": worker,
    }
    return {**{name: value for name, value in fields.items() if name not in extra}, **extra}


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of at most ``size`` (a script's arguments stay few)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
