"""Reopening a dropped live stream with exponential backoff, and the record of each gap."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from facestream.pipeline.errors import InputError

from .demux import reason

log = logging.getLogger(__name__)


class Reconnector:
    """Reopens a live input after it drops, waiting ``backoff`` (doubling up to the longest) between
    attempts, until it opens, the run stops, or ``timeout_s`` passes.

    Args:
        source: The input, for messages.
        open_input: Opens the input; raises :class:`InputError` while it is away.
        stop: Set when the run winds down (waits end early).
        timeout_s: Give up after the stream stays away this long.
        backoff_s: First and longest wait between attempts.

    Example:
        >>> r = Reconnector("rtsp://cam/1", open_input=lambda: "container", stop=threading.Event(),
        ...                 timeout_s=60, backoff_s=(0.5, 8.0))
        >>> r.reopen(OSError("gone"), at_s=12.0)
        'container'
        >>> r.gaps[0]["at_s"], r.gaps[0]["attempts"]
        (12.0, 1)
    """

    def __init__(self, source: str, *, open_input: Callable[[], Any], stop: threading.Event, timeout_s: float,
                 backoff_s: tuple[float, float]) -> None:
        self.source = source
        self.open_input = open_input
        self.stop = stop
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.gaps: list[dict[str, float]] = []

    @property
    def reconnects(self) -> int:
        return len(self.gaps)

    def reopen(self, exc: BaseException, *, at_s: float) -> Any | None:
        """The reopened input, or ``None`` if the run stopped meanwhile.

        Raises:
            InputError: the stream did not come back within ``timeout_s``.
        """
        dropped_at = time.monotonic()
        log.warning("input: %s dropped at %.1f s (%s); reconnecting", self.source, at_s, reason(exc))
        wait = self.backoff_s[0]
        attempts = 0
        while not self.stop.is_set():
            if time.monotonic() - dropped_at > self.timeout_s:
                raise InputError(
                    f"{self.source} dropped at {at_s:.1f} s and did not come back within "
                    f"{self.timeout_s:.0f} s ({attempts} attempts)"
                )
            attempts += 1
            try:
                container = self.open_input()
            except InputError:
                self.stop.wait(wait)
                wait = min(wait * 2, self.backoff_s[1])
                continue
            gap = time.monotonic() - dropped_at
            self.gaps.append({"at_s": round(at_s, 3), "gap_s": round(gap, 3), "attempts": attempts})
            log.warning("input: reconnected after %.1f s (attempt %d)", gap, attempts)
            return container
        return None
