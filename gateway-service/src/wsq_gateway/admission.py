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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


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
