"""A resumable connection's numbered frames, kept for a replay; pure, so tested without sockets.

With session resume on (``WSQ_RESUME_WINDOW_S``), the session's home gateway numbers every
frame it sends after ``$connected`` (``seq``: 1, 2, 3...) and keeps the latest of them: those
the client may not have received when its socket was lost (in flight, or sent while it was
away). A client that resumes says the last ``seq`` it saw; :meth:`ReplayBuffer.after` gives
every later frame, or None when one of them is no longer kept (the buffer is bounded in
frames and bytes, and trimmed by age), so the client learns that its replay is incomplete
(``recovered: false``) instead of getting a hole.
"""

from __future__ import annotations

from collections import deque

from wsq_protocol.frames import with_seq

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """The numbered frames of one session, oldest first, within ``max_frames``,
    ``max_bytes`` and ``max_age_s``."""

    __slots__ = ("_frames", "bytes", "max_age_s", "max_bytes", "max_frames", "seq")

    def __init__(self, max_frames: int, max_bytes: int, max_age_s: float) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.seq = 0  # the last number given
        self.bytes = 0  # the kept frames' bytes
        # (seq, when, numbered frame); made at the first frame: an idle connection keeps no deque.
        self._frames: deque[tuple[int, float, bytes]] | None = None

    def __len__(self) -> int:
        return len(self._frames) if self._frames is not None else 0

    def stamp(self, frame: bytes, now: float) -> bytes:
        """Number ``frame`` (the next ``seq``) and keep it; the numbered frame, to send."""
        self.seq += 1
        numbered = with_seq(frame, self.seq)
        if self._frames is None:
            self._frames = deque()
        self._frames.append((self.seq, now, numbered))
        self.bytes += len(numbered)
        self._trim(now)
        return numbered

    def after(self, seq: int, now: float) -> list[bytes] | None:
        """Every frame numbered above ``seq``, in order; None when one of them is no longer
        kept, or ``seq`` was never given (a client that claims more than it got)."""
        self._trim(now)
        if seq < 0 or seq > self.seq:
            return None
        frames = self._frames or ()
        first = frames[0][0] if frames else self.seq + 1
        if first > seq + 1:  # seq + 1 .. first - 1 were trimmed
            return None
        return [frame for number, _when, frame in frames if number > seq]

    def _trim(self, now: float) -> None:
        frames = self._frames
        if frames is None:
            return
        oldest = now - self.max_age_s
        while frames and (
            len(frames) > self.max_frames or self.bytes > self.max_bytes or frames[0][1] < oldest
        ):
            self.bytes -= len(frames.popleft()[2])
        if not frames:  # a connection gone quiet for the window keeps no deque either
            self._frames = None
