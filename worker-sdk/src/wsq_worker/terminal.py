"""What the ops commands draw on a terminal: a progress bar (``dead replay``, ``dead purge``)
and a screen redrawn in place (``top``). Plain ANSI and carriage returns, no dependency: the
SDK stays light (a progress library would be the SDK's second runtime dependency, for ~40 lines).
"""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["Progress", "Screen"]

BAR_WIDTH = 30
REDRAW_S = 0.1  # at most ten redraws a second: a replay of 100,000 letters writes ~100 lines
CLEAR = "\x1b[H\x1b[2J"  # cursor home, erase the screen


class Progress:
    """``label  done/total [#####.....]  50%`` on one line of ``stream``, redrawn in place (and at
    most every ``REDRAW_S``) while ``enabled``; a final newline at ``close()``."""

    def __init__(self, label: str, total: int, stream: TextIO, *, enabled: bool) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream
        self.enabled = enabled and total > 0
        self._drawn_at = 0.0
        self._drawn = -1  # the count last drawn

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self._drawn_at >= REDRAW_S or self.done >= self.total):
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._drawn_at, self._drawn = now, self.done
        self._stream.write("\r" + self.line())
        self._stream.flush()

    def line(self) -> str:
        share = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = round(share * BAR_WIDTH)
        width = len(str(self.total))
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        return f"{self.label} {self.done:>{width}}/{self.total} [{bar}] {share:4.0%}"

    def close(self) -> None:
        """Draw the final count (unless it is drawn already) and end the line."""
        if self.enabled:
            if self._drawn != self.done:
                self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()


class Screen:
    """Shows one text after another on ``stream``: on a terminal each replaces the last (the
    screen is cleared first); elsewhere (a pipe, a file) they follow each other, blank-line apart."""

    def __init__(self, stream: TextIO, *, in_place: bool) -> None:
        self._stream = stream
        self._in_place = in_place
        self._shown = 0

    def show(self, text: str) -> None:
        if self._in_place:
            self._stream.write(CLEAR + text + "\n")
        else:
            self._stream.write(("\n" if self._shown else "") + text + "\n")
        self._shown += 1
        self._stream.flush()
