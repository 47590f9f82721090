"""Per-group history: the last pushes of a group sent with ``history=True``, kept in Redis so a
client that joins later (or a worker on its behalf) can read them (protocol/README.md, "Group
history").

A group's history is a stream in the group's slot, ``{prefix:group:<group>}:history``. Each push
sent with history appends one entry (``history_append.lua``) with the fields ``action``,
``data`` (the push's data as JSON text) and ``ts`` (Redis's clock, ms since the epoch); the
script keeps at most N entries (``WSQ_HISTORY_SIZE``, exact ``MAXLEN``), trims those older than
T (``WSQ_HISTORY_TTL_S``) and makes the stream expire T after its last append. An entry's
offset is its stream id (``<ms>-<n>``).

A read (``history_read.lua``) returns a ``HistoryPage``: without ``since``, the newest
``limit`` entries; with ``since`` (the offset of the last entry the reader has), the entries
after it. Either way oldest first. ``complete`` says the page holds every entry asked for
(nothing older left out without ``since``, nothing newer with it); ``gap`` (with ``since``)
that entries after ``since`` may have been trimmed, since ``since`` is older than the oldest
entry kept. There is no paging backwards.

The history append and the push are separate writes in different slots: not atomic (see the
worker SDK's ``Target.send``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

from wsq_protocol import codec
from wsq_protocol.ids import check_action, check_group, is_group_name
from wsq_protocol.keys import Keys
from wsq_protocol.scripts import Script, script

__all__ = [
    "APPEND_SCRIPT",
    "DEFAULT_LIMIT",
    "DEFAULT_SIZE",
    "DEFAULT_TTL_S",
    "MAX_IN_FLIGHT",
    "MAX_LIMIT",
    "MAX_SIZE",
    "MAX_TTL_S",
    "READ_SCRIPT",
    "HistoryAppend",
    "HistoryEntry",
    "HistoryPage",
    "HistoryRead",
    "HistorySettings",
    "check_limit",
    "check_since",
    "check_size",
    "check_ttl_s",
    "decode_page",
    "history_settings_from_env",
    "parse_request",
]

APPEND_SCRIPT: Final[Script] = script("history_append")
READ_SCRIPT: Final[Script] = script("history_read")

DEFAULT_SIZE: Final = 100
"""``WSQ_HISTORY_SIZE`` when unset: the most entries a group's history keeps."""
MAX_SIZE: Final = 10_000
DEFAULT_TTL_S: Final = 300.0
"""``WSQ_HISTORY_TTL_S`` when unset: how long entries are kept (seconds)."""
MAX_TTL_S: Final = 30 * 24 * 3600.0
DEFAULT_LIMIT: Final = 100
"""The most entries one read returns unless it asks for fewer."""
MAX_LIMIT: Final = 1_000
"""The most entries one read may ask for."""
MAX_IN_FLIGHT: Final = 8
"""A connection's ``$history`` reads a gateway runs at once; one more gets ``$error overloaded``."""

_OFFSET_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_REQUEST_FIELDS = frozenset(("group", "since", "limit"))


class HistoryEntry(NamedTuple):
    """One entry: its ``offset`` (stream id), the push's ``action`` and ``data`` (decoded JSON),
    and ``ts``, when it was appended (Redis's clock, ms since the epoch)."""

    offset: str
    action: str
    data: Any
    ts: int

    def as_json(self) -> dict[str, Any]:
        """The entry as a ``$history`` reply (and the HTTP API) carries it."""
        return {"offset": self.offset, "action": self.action, "data": self.data, "ts": self.ts}


class HistoryPage(NamedTuple):
    """One read of a group's history: ``messages`` oldest first; ``complete``: nothing asked for
    was left out (read again with ``since`` = the last offset otherwise); ``gap``: entries after
    the ``since`` asked for were trimmed (it is older than the oldest entry kept)."""

    messages: list[HistoryEntry]
    complete: bool
    gap: bool

    def as_json(self) -> dict[str, Any]:
        """The page as a ``$history`` reply's data (and the HTTP API's answer)."""
        return {
            "messages": [entry.as_json() for entry in self.messages],
            "complete": self.complete,
            "gap": self.gap,
        }


class HistorySettings(NamedTuple):
    """How much of a group's history a push sent with ``history=True`` keeps."""

    size: int = DEFAULT_SIZE
    ttl_s: float = DEFAULT_TTL_S


def check_size(size: object) -> int:
    """``size`` if it is a history size (an int from 1 to 10000), else ValueError."""
    if type(size) is not int or not 1 <= size <= MAX_SIZE:
        raise ValueError(f"a history size is an integer from 1 to {MAX_SIZE}, not {size!r}")
    return size


def check_ttl_s(ttl_s: object) -> float:
    """``ttl_s`` if it is a history TTL (seconds, at least 0.001, at most 30 days), else ValueError."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not 0.001 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"a history TTL is a number of seconds from 0.001 to {MAX_TTL_S:g}, not {ttl_s!r}")
    return float(ttl_s)


def check_limit(limit: object) -> int:
    """``limit`` if it is a read's limit (an int from 1 to 1000), else ValueError."""
    if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit is an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    return limit


def check_since(since: object) -> str | None:
    """``since`` if it is None or an offset (``<ms>-<n>``), else ValueError."""
    if since is None:
        return None
    if type(since) is not str or _OFFSET_RE.fullmatch(since) is None:
        raise ValueError(f"since is null or an offset of the history (<ms>-<n>), not {since!r}")
    return since


def history_settings_from_env(environ: Mapping[str, str] | None = None) -> HistorySettings:
    """``WSQ_HISTORY_SIZE`` (default 100) and ``WSQ_HISTORY_TTL_S`` (default 300); ValueError
    naming the variable when one is not valid."""
    env = os.environ if environ is None else environ
    size, ttl_s = DEFAULT_SIZE, DEFAULT_TTL_S
    raw = env.get("WSQ_HISTORY_SIZE", "").strip()
    if raw:
        try:
            size = check_size(int(raw))
        except ValueError:
            raise ValueError(
                f"WSQ_HISTORY_SIZE must be an integer from 1 to {MAX_SIZE}, not {raw!r}"
            ) from None
    raw = env.get("WSQ_HISTORY_TTL_S", "").strip()
    if raw:
        try:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            ttl_s = check_ttl_s(value)
        except ValueError:
            raise ValueError(
                f"WSQ_HISTORY_TTL_S must be a number of seconds from 0.001 to {MAX_TTL_S:g}, not {raw!r}"
            ) from None
    return HistorySettings(size, ttl_s)


class HistoryAppend(NamedTuple):
    """The ``EVALSHA`` of ``history_append.lua`` appending one push to a group's history, in the
    group's slot (``stream``). Build it with ``of()``."""

    stream: str
    args: tuple[str, ...]

    @classmethod
    def of(
        cls, keys: Keys, group: str, action: str, data_json: str, settings: HistorySettings
    ) -> HistoryAppend:
        """The append of the push ``action`` with ``data_json`` (its data as JSON text)."""
        ttl_ms = max(1, round(check_ttl_s(settings.ttl_s) * 1000))
        return cls(
            keys.group_history(check_group(group)),
            (str(check_size(settings.size)), str(ttl_ms), check_action(action), data_json),
        )

    @property
    def command(self) -> tuple[Any, ...]:
        return APPEND_SCRIPT.call([self.stream], *self.args)

    @property
    def body(self) -> str:
        """The script's source, to load it again (``SCRIPT LOAD``) when Redis lost it."""
        return APPEND_SCRIPT.body


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _offset_key(offset: str) -> tuple[int, int]:
    ms, _, n = offset.partition("-")
    return int(ms), int(n)


class HistoryRead(NamedTuple):
    """One read of a group's history: ``history_read.lua``'s KEYS and ARGV, and ``page()``
    decoding its reply. Build it with ``of()`` (ValueError for a bad group, since or limit)."""

    stream: str
    since: str | None
    limit: int

    @classmethod
    def of(cls, keys: Keys, group: str, since: str | None = None, limit: int = DEFAULT_LIMIT) -> HistoryRead:
        return cls(keys.group_history(check_group(group)), check_since(since), check_limit(limit))

    @property
    def keys(self) -> list[str]:
        return [self.stream]

    @property
    def args(self) -> list[str]:
        return [self.since or "", str(self.limit)]

    def page(self, reply: Any) -> HistoryPage:
        """The page of the script's reply."""
        return decode_page(reply, self.since)


def decode_entry(entry: Sequence[Any]) -> HistoryEntry:
    """One stream entry (``[id, [field, value, ...]]``) as a ``HistoryEntry``; ValueError when it
    is not one ``history_append.lua`` writes."""
    offset, flat = entry
    fields = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
    try:
        return HistoryEntry(_text(offset), fields["action"], codec.loads(fields["data"]), int(fields["ts"]))
    except KeyError as exc:
        raise ValueError(f"history entry {_text(offset)} has no field {exc}") from None


def decode_page(reply: Any, since: str | None) -> HistoryPage:
    """``history_read.lua``'s reply ``{entries, more, oldest}`` as a page (``since``: the read's)."""
    entries, more, oldest = reply
    messages = [decode_entry(entry) for entry in entries]
    if since is None:
        messages.reverse()  # read newest first
        gap = False
    else:
        oldest_text = _text(oldest)
        gap = bool(oldest_text) and _offset_key(since) < _offset_key(oldest_text)
    return HistoryPage(messages, not int(more), gap)


def parse_request(data: Any) -> tuple[str, str | None, int]:
    """``(group, since, limit)`` of a ``$history`` frame's data (``schemas/history-request.schema.json``:
    ``{"group", "since"?, "limit"?}``), else ValueError saying what is wrong."""
    if type(data) is not dict:
        raise ValueError('data must be an object: {"group": <name>, "since": <offset or null>, "limit": <n>}')
    unknown = sorted(str(key) for key in data if key not in _REQUEST_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) in data: {', '.join(unknown)}")
    group = data.get("group")
    if not isinstance(group, str) or not is_group_name(group):
        raise ValueError("data.group must be a group name: 1-128 letters, digits or _ . : @ / -")
    limit = data.get("limit", DEFAULT_LIMIT)
    try:
        return group, check_since(data.get("since")), check_limit(limit)
    except ValueError as exc:
        raise ValueError(f"data.{exc}") from None
