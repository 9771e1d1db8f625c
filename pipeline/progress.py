"""Progress for people watching: a bar with fps and ETA for files, a status line for live feeds."""

from __future__ import annotations

import sys
import time
from typing import Literal, TextIO

from .runner import Progress

Mode = Literal["auto", "bar", "lines", "none"]


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressPrinter:
    """Renders :class:`Progress` snapshots.

    ``bar`` redraws one line in place (for terminals); ``lines`` prints a line every
    ``line_every_s`` (for logs); ``auto`` picks ``bar`` on a terminal and ``lines`` otherwise.
    """

    def __init__(self, mode: Mode = "auto", *, stream: TextIO | None = None, line_every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        self.mode = mode
        self.line_every_s = line_every_s
        self._last_line = 0.0
        self._drawn = False

    def __call__(self, p: Progress) -> None:
        final = p.final
        if self.mode == "none":
            return
        text = self.format(p)
        if self.mode == "bar":
            self.stream.write("\r" + text.ljust(100)[:120])
            self._drawn = True
            if final:
                self.stream.write("\n")
        else:
            now = time.monotonic()
            if not final and now - self._last_line < self.line_every_s:
                return
            self._last_line = now
            self.stream.write(text + "\n")
        self.stream.flush()

    @staticmethod
    def format(p: Progress) -> str:
        drops = f"  dropped {p.frames_dropped}" if p.frames_dropped else ""
        if p.streams:
            # Several feeds: frames out of each, in feed order.
            drops += "  feeds " + " ".join(f"{f['stream']}:{f['frames_out']}" for f in p.streams)
        if p.live or not p.total_frames:
            return (
                f"{'live ' if p.live else ''}{_clock(p.elapsed_s)}  frames {p.frames_out}  {p.fps:5.1f} fps"
                f"  latency p95 {p.latency_p95_ms:4.0f} ms{drops}"
            )
        total = max(p.total_frames, p.frames_out)
        share = p.frames_out / total if total else 0.0
        width = 24
        filled = int(share * width)
        bar = "#" * filled + "-" * (width - filled)
        eta = (total - p.frames_out) / p.fps if p.fps > 0 else float("inf")
        eta_text = _clock(eta) if eta != float("inf") else "--:--"
        return (
            f"{share * 100:3.0f}% [{bar}] {p.frames_out}/{total}  {p.fps:6.1f} fps"
            f"  elapsed {_clock(p.elapsed_s)}  ETA {eta_text}{drops}"
        )
