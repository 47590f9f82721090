"""Admission bookkeeping for connection limits, with no I/O: what one gateway counts itself.

* :class:`Slots` counts what each client address holds on this gateway: its open sockets
  *and* its handshakes in progress (``WSQ_MAX_CONNECTIONS_PER_ADDR``). A slot is taken at the
  check itself (no ``await`` in between), so a burst of concurrent upgrades cannot pass the
  limit, and given back exactly once, when the request's handler ends, however it ends
  (upgraded then closed, refused, failed, client gone mid-handshake, cancelled). The count
  can neither leak nor go negative.
* :class:`Turns` lets one admission of a user at a time through on this gateway: its limit
  check (``SCARD`` of the user's connections in Redis) and its registration happen in one
  turn, so a burst of one user's upgrades on one gateway gets HTTP 429 past the limit, never
  an upgrade closed with 1008. Across gateways the registration script checks again,
  atomically, and closes the loser with 1008.
* The decisions themselves, each a pure function of what the transport found out: which
  HTTP status refuses an upgrade (:func:`gate`, :func:`user_refusal`, :data:`ADDR_FULL`), and
  which close code ends an upgraded socket (:func:`registration_close`,
  :func:`hook_verdict`, :func:`broker_close`). ``transport.py`` does the I/O around them.

The order of the checks (``transport.websocket``): :func:`gate` (503 draining or failed, 503
starting, 403 origin), then the token (401), then the address's slot (429), then, in the
user's turn, :func:`user_refusal` (429) and the registration (1008 when another gateway
filled the user, 1013 when Redis is unavailable), then the connect hook's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import NamedTuple

from wsq_gateway.errors import close_code_for
from wsq_protocol.codes import CloseCode
from wsq_protocol.commands import Command
from wsq_protocol.ids import user_id_problem

USER_FULL = "this user holds too many connections"
ADDR_FULL_TEXT = "too many connections from this address"
REDIS_UNAVAILABLE = "redis unavailable, try again later"
HOOK_BAD_USER_ID = "connect hook failed: it named an unusable user id"
HOOK_NO_ANSWER = "no worker answered in time, try again later"


class Refusal(NamedTuple):
    """An upgrade refused with an HTTP error."""

    status: int
    text: str


class Close(NamedTuple):
    """An upgraded socket closed with ``code`` and ``reason``; ``problem`` is for the log."""

    code: int
    reason: str
    problem: str | None = None


class Accept(NamedTuple):
    """The connect hook accepted; ``new_user`` is the user it named, when not the one known."""

    new_user: str | None


SHUTTING_DOWN = Refusal(503, "the gateway is shutting down")
STARTING = Refusal(503, "the gateway is starting: waiting for Redis")
ADDR_FULL = Refusal(429, ADDR_FULL_TEXT)
USER_FULL_REFUSAL = Refusal(429, USER_FULL)
USER_FULL_CLOSE = Close(CloseCode.POLICY_VIOLATION, USER_FULL)
HOOK_TIMEOUT_CLOSE = Close(CloseCode.TRY_AGAIN_LATER, HOOK_NO_ANSWER)


def gate(
    *, draining: bool, failed: bool, started: bool, origin: str | None, origins: frozenset[str] | None
) -> Refusal | None:
    """The first checks of an upgrade, before its token: is the gateway taking sockets, and
    from this ``origin`` (``origins`` None: any; no Origin header: not a browser, allowed)?"""
    if draining or failed:
        return SHUTTING_DOWN
    if not started:
        return STARTING
    if origins is not None and origin is not None and origin.rstrip("/") not in origins:
        return Refusal(403, f"origin {origin} is not allowed")
    return None


def limited_user(user_id: str | None, max_per_user: int) -> str | None:
    """The user whose connections are counted for this upgrade (None: none is, no turn)."""
    return user_id if max_per_user > 0 else None


def user_refusal(held: int | None, max_per_user: int) -> Refusal | None:
    """HTTP 429 when the user holds ``max_per_user`` connections already (0: no limit).

    ``held`` None: Redis could not count them; the upgrade goes on, and its registration
    fails with 1013 if Redis is really gone."""
    if held is None or max_per_user <= 0 or held < max_per_user:
        return None
    return USER_FULL_REFUSAL


def registration_close(registered: bool) -> Close | None:
    """After the registration script: 1008 when another gateway registered one of the user's
    connections since the check (the script wrote nothing)."""
    return None if registered else USER_FULL_CLOSE


def broker_close(exc: BaseException) -> Close:
    """Redis could not register the connection (or record the user the hook named)."""
    return Close(close_code_for(exc), REDIS_UNAVAILABLE)


def hook_verdict(answer: Command | None, user_id: str | None) -> Accept | Close | None:
    """The connect hook's answer for a connection known so far as ``user_id``.

    None: the socket closed while waiting (nothing to do); a :class:`Close` for a refusal (the
    worker's code and reason) or a user id no token could carry (3011, as the worker SDK
    refuses its own on_connect); else :class:`Accept`, naming the new user if it changed."""
    if answer is None:
        return None
    if answer.type == "refuse":
        return Close(answer.code, answer.reason)
    named = answer.user_id
    if named is None:
        return Accept(None)
    problem = user_id_problem(named)
    if problem is not None:
        return Close(CloseCode.HOOK_FAILED, HOOK_BAD_USER_ID, problem)
    return Accept(None if named == user_id else named)


class Slot:
    """One slot of :class:`Slots`; :meth:`release` gives it back (once; later calls do nothing)."""

    __slots__ = ("_owner", "key")

    def __init__(self, owner: Slots, key: str) -> None:
        self._owner: Slots | None = owner
        self.key = key

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._give_back(self.key)


class Slots:
    """At most ``limit`` slots per key (0: no limit, still counted)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def reserve(self, key: str) -> Slot | None:
        """A slot for ``key``, or None when it holds ``limit`` already."""
        held = self._held.get(key, 0)
        if 0 < self.limit <= held:
            return None
        self._held[key] = held + 1
        return Slot(self, key)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def total(self) -> int:
        """Slots held over all keys."""
        return sum(self._held.values())

    def _give_back(self, key: str) -> None:
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]  # no entry for an address that holds nothing


class Turns:
    """One turn at a time per key, in arrival order; a key's lock lives only while in use."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key: (its lock, turns waiting or held)

    @contextlib.asynccontextmanager
    async def turn(self, key: str | None) -> AsyncIterator[None]:
        """Hold ``key``'s turn for the block (no turn at all for None)."""
        if key is None:
            yield
            return
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users > 1:
                self._locks[key] = (lock, users - 1)
            else:
                del self._locks[key]

    def __len__(self) -> int:
        """Keys with a turn held or waited for."""
        return len(self._locks)
