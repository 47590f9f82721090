"""What one connection is doing, with no I/O: its state machine, its outbox and its rate.

A :class:`Session` is held until released, then released until closing, and closing for
good::

    held ──release()──▶ released ──start_closing()──▶ closing
      └────────────────start_closing()─────────────────▶ ┘

* **held**: the connection is findable before its connect event is sent (so a push from
  ``on_connect`` is never lost), yet nothing reaches the client before ``$connected``:
  frames wait in the outbox. ``release()`` puts ``$connected`` first and starts the drain.
* **released**: a frame goes straight to the socket while nothing waits in the outbox (the
  I/O shell checks the transport has room), otherwise into the outbox, which one drain
  writes out. The outbox is bounded in bytes: past ``max_pending_bytes`` (one byte more
  than the limit; exactly at it still fits) it is dropped and the connection is closing,
  with 3008.
* **closing**: frames are dropped, ``release()`` does nothing; a second ``start_closing()``
  changes nothing, and the first
  close code stays.

The I/O shell (:class:`wsq_gateway.connection.Connection`, a subclass) acts on the
:class:`Outcome` of each call: it writes, starts a drain task, closes the socket.
Rate: :meth:`Session.allow` is a token bucket, ``rate`` per second up to ``burst``.
"""

from __future__ import annotations

import enum
from collections import deque

from wsq_protocol.codes import CloseCode


class Outcome(enum.IntEnum):
    """What the I/O shell must do after :meth:`Session.queue`."""

    QUEUED = 0  # waits in the outbox (held, or a drain is under way): nothing to do
    DRAIN = 1  # the first frame queued since the outbox emptied: start a drain
    SLOW_CONSUMER = 2  # the outbox went over its limit and was dropped: close the socket with 3008
    DROPPED = 3  # the connection is closing: the frame was dropped


# Module-level names: one global lookup each on the hot path, not an attribute of the enum too.
QUEUED = Outcome.QUEUED
DRAIN = Outcome.DRAIN
SLOW_CONSUMER = Outcome.SLOW_CONSUMER
DROPPED = Outcome.DROPPED


class Session:
    """One connection's delivery state and token bucket; pure, so tested without sockets.

    ``outbox`` is None exactly when the connection is released and nothing waits: the
    state in which frames are written straight to the socket.
    """

    __slots__ = ("close_code", "closing", "held", "outbox", "pending_bytes", "tokens", "tokens_at")

    def __init__(self) -> None:
        self.held = True
        self.closing = False
        self.close_code: int | None = None  # set when the gateway itself closes the socket
        self.outbox: deque[bytes] | None = deque()
        self.pending_bytes = 0  # bytes in the outbox
        self.tokens = 0.0  # rate limit: a token bucket, filled on use (see allow())
        self.tokens_at = 0.0

    def allow(self, now: float, rate: float, burst: int) -> bool:
        """Take one token from the bucket (``rate`` per second, at most ``burst``).

        The bucket starts full on first use; ``rate`` 0 (or less) is no limit."""
        if rate <= 0:
            return True
        if self.tokens_at == 0.0:
            self.tokens = float(burst)
        else:
            self.tokens = min(float(burst), self.tokens + (now - self.tokens_at) * rate)
        self.tokens_at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def queue(self, frame: bytes, max_pending_bytes: int) -> Outcome:
        """Put ``frame`` in the outbox (the shell could not write it now, or something waits)."""
        if self.closing:
            return DROPPED
        outbox = self.outbox
        started = outbox is None
        if outbox is None:
            outbox = self.outbox = deque()
        outbox.append(frame)
        self.pending_bytes += len(frame)
        if self.pending_bytes > max_pending_bytes:
            outbox.clear()
            self.pending_bytes = 0
            self.closing = True
            self.close_code = int(CloseCode.SLOW_CONSUMER)
            return SLOW_CONSUMER
        return DRAIN if started and not self.held else QUEUED

    def release(self, first_frame: bytes, replayed: list[bytes] | None = None) -> bool:
        """held → released, ``first_frame`` and the ``replayed`` frames (of a resumed session)
        ahead of what was queued while held; True when a drain must start (False: the
        connection is closing, nothing will be written).

        A second release is a bug: RuntimeError."""
        if self.closing:
            return False
        if not self.held:
            raise RuntimeError("this connection was released already")
        self.held = False
        outbox = self.outbox
        if outbox is None:  # not while held; kept for safety
            outbox = self.outbox = deque()
        if replayed:
            outbox.extendleft(reversed(replayed))
            self.pending_bytes += sum(len(frame) for frame in replayed)
        outbox.appendleft(first_frame)
        self.pending_bytes += len(first_frame)
        return True

    def take(self) -> bytes | None:
        """The next frame for the drain to write, or None when the outbox is empty."""
        outbox = self.outbox
        if not outbox:
            return None
        frame = outbox.popleft()
        self.pending_bytes -= len(frame)
        return frame

    def drained(self) -> None:
        """The drain is over (written out, failed or cancelled): what is left is dropped and
        frames go straight to the socket again."""
        self.outbox = None
        self.pending_bytes = 0

    def start_closing(self, code: int) -> bool:
        """→ closing, recording ``code``; False (nothing changes) when closing already."""
        if self.closing:
            return False
        self.closing = True
        self.close_code = int(code)
        return True
