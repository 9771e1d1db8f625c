"""Putting decoded frames on the output timeline.

Files keep their own timestamps, measured from the trim start. Live streams are anchored to the wall
clock: a stream whose timestamps are missing or drift from the wall clock by more than ``max_skew_s``
is re-anchored, and after a reconnect the timeline resumes at the wall-clock time it came back, so
the gap stays visible in the output.
"""

from __future__ import annotations

import time


class FileClock:
    """Stream seconds -> output seconds for a file: ``t - origin``.

    Example:
        >>> FileClock(origin=10.0).place(12.5)
        2.5
    """

    def __init__(self, origin: float) -> None:
        self.origin = origin

    def place(self, t: float) -> float:
        return t - self.origin


class LiveClock:
    """Stream seconds -> output seconds for one connection of a live stream.

    Args:
        offset_s: Output time at which this connection starts (0 for the first, later after a
            reconnect).
        max_skew_s: Most the stream's clock may drift from the wall clock before re-anchoring.

    Example:
        >>> clock = LiveClock(offset_s=0.0)
        >>> clock.place(100.0, after=0.0)  # the first frame anchors the stream at output time 0
        0.0
    """

    def __init__(self, offset_s: float = 0.0, *, max_skew_s: float = 1.0) -> None:
        self.offset_s = offset_s
        self.max_skew_s = max_skew_s
        self.origin: float | None = None  # stream time that maps to output time ``offset_s``
        self._wall0: float | None = None

    def place(self, t: float | None, *, after: float | None) -> float:
        """Output time of a frame with stream time ``t`` (``None``: unknown); never before ``after``."""
        now = time.monotonic()
        if self._wall0 is None:
            self._wall0 = now
        wall = now - self._wall0
        if t is None:
            t = (self.origin or 0.0) + wall
        if self.origin is None or abs((t - self.origin) - wall) > self.max_skew_s:
            self.origin = t - wall
        rel = t - self.origin + self.offset_s
        return rel if after is None else max(rel, after)

    def shift(self) -> float | None:
        """``stream time - output time`` (for re-timing audio), once the first frame anchored it."""
        return None if self.origin is None else self.origin - self.offset_s
