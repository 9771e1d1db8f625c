"""The preview sink: keeps the newest processed frame of each feed for live viewers (a browser preview)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from facestream.facelib.media.transfer import to_host
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Sink


@dataclass(frozen=True)
class PreviewFrame:
    """The newest frame as the preview keeps it.

    Attributes:
        seq: How many frames of its feed the preview had received when this one arrived (1 for
            the first); a viewer that last sent the frame of ``seq`` ``s`` and now sends this one
            skipped ``seq - s - 1`` frames.
        index: The frame's position in the source.
        time: Its presentation time in seconds.
        captured_at: When it was decoded or captured (``time.time()``).
        image: The picture, ``(H, W, 3)`` uint8 RGB, where the run left it (CPU or GPU).
        feed: The feed it came from (``Frame.stream``: 0 for a run with one input).
        ready: The frame's CUDA event (``Frame.ready``): a viewer's thread waits on it before reading
            the picture, which other streams wrote.
    """

    seq: int
    index: int
    time: float
    captured_at: float
    image: torch.Tensor
    feed: int = 0
    ready: Any = None


class Preview(Sink):
    """Keeps only the newest frame of each feed for viewers; never makes the pipeline wait.

    ``write`` stores a reference to the newest frame and returns: no copy, no encoding. Viewers
    (the web preview, any thread) ask for :meth:`latest` and turn it into JPEG (:meth:`jpeg`) or RGB
    (:meth:`rgb`) in their own thread, each frame at most once whoever asks. A slow viewer skips
    frames; it never builds a backlog. Viewers report what they sent (:meth:`sent`) for the
    capture-to-viewer latency and the frames they skipped.

    With several feeds (inputs muxed into one pipeline) it keeps the newest frame of each, by
    ``frame.stream``; viewers choose one (``latest(feed)``).

    Args:
        quality: JPEG quality (1-100).
        max_fps: Most frames a second sent to one viewer.
        feeds: How many feeds the run has (opening it in a muxed run sets it from the run's feeds).

    Example:
        >>> from fractions import Fraction
        >>> p = Preview(max_fps=10)
        >>> image = torch.zeros(24, 32, 3, dtype=torch.uint8)
        >>> p.write([Frame(index=i, pts=i, time_base=Fraction(1, 25), captured_at=time.time(), image=image)
        ...          for i in range(3)])
        >>> newest = p.latest()
        >>> newest.index, newest.seq
        (2, 3)
        >>> p.jpeg(newest)[:2] == b"\\xff\\xd8"
        True
        >>> p.sent(newest, skipped=0); p.figures()["sent"]
        1
        >>> two = Preview(feeds=2)
        >>> two.write([Frame(index=5, pts=5, time_base=Fraction(1, 25), captured_at=0.0, image=image, stream=1)])
        >>> two.latest(0) is None, two.latest(1).index
        (True, 5)
    """

    name = "preview"

    def __init__(self, *, quality: int = 80, max_fps: float = 30.0, feeds: int = 1) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be in 1-100, got {quality}")
        if max_fps <= 0:
            raise ValueError(f"max_fps must be > 0, got {max_fps}")
        if feeds < 1:
            raise ValueError(f"feeds must be at least 1, got {feeds}")
        self.quality = quality
        self.max_fps = max_fps
        self.feeds = feeds
        self._lock = threading.Lock()
        self._latest: dict[int, PreviewFrame] = {}
        self._seqs: dict[int, int] = {}
        self._seq = 0
        self._finished = threading.Event()
        # One conversion at a time, cached for each feed's newest frame: many viewers, one encode.
        self._encode_lock = threading.Lock()
        self._jpeg: dict[int, tuple[int, bytes]] = {}
        self._rgb: dict[int, tuple[int, np.ndarray]] = {}
        self._viewers = 0
        self._viewers_max = 0
        self._sent = 0
        self._skipped = 0
        self._encoded = 0
        self._latency: deque[float] = deque(maxlen=300)  # the most recent capture-to-viewer delays

    # ------------------------------------------------------------------ the pipeline's side

    def open(self, ctx: RunContext) -> None:
        if ctx.streams:
            self.feeds = len(ctx.streams)
        self._finished.clear()

    def write(self, frames: list[Frame]) -> None:
        if not frames:
            return
        newest: dict[int, Frame] = {}
        counts: dict[int, int] = {}
        for f in frames:
            newest[f.stream] = f
            counts[f.stream] = counts.get(f.stream, 0) + 1
        with self._lock:
            self._seq += len(frames)
            for feed, f in newest.items():
                seq = self._seqs[feed] = self._seqs.get(feed, 0) + counts[feed]
                self._latest[feed] = PreviewFrame(seq, f.stream_index, f.time, f.captured_at, f.image, feed, f.ready)

    def close(self) -> None:
        self.finish()

    def report(self) -> dict[str, Any]:
        return {"preview": self.figures()}

    # ------------------------------------------------------------------ the viewers' side

    def finish(self) -> None:
        """No more frames will come (the run ended): viewers end their streams."""
        self._finished.set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def seq(self) -> int:
        """How many frames it has received, all feeds together (0 before the first)."""
        return self._seq

    def latest(self, feed: int = 0) -> PreviewFrame | None:
        """The newest frame of ``feed``, or ``None`` before its first."""
        return self._latest.get(feed)

    def rgb(self, frame: PreviewFrame) -> np.ndarray:
        """The frame as an ``(H, W, 3)`` uint8 RGB host array (blocking: call it off the event loop)."""
        with self._encode_lock:
            cached = self._rgb.get(frame.feed)
            if cached is not None and cached[0] == frame.seq:
                return cached[1]
            if frame.ready is not None:
                frame.ready.synchronize()
            array = np.ascontiguousarray(to_host(frame.image))
            self._rgb[frame.feed] = (frame.seq, array)
            return array

    def jpeg(self, frame: PreviewFrame) -> bytes:
        """The frame as JPEG (blocking: call it off the event loop)."""
        array = self.rgb(frame)
        with self._encode_lock:
            cached = self._jpeg.get(frame.feed)
            if cached is not None and cached[0] == frame.seq:
                return cached[1]
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(array, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR picture
                raise RuntimeError("JPEG encoding failed")
            data = buf.tobytes()
            self._jpeg[frame.feed] = (frame.seq, data)
            self._encoded += 1
            return data

    def add_viewer(self) -> None:
        with self._lock:
            self._viewers += 1
            self._viewers_max = max(self._viewers_max, self._viewers)

    def remove_viewer(self) -> None:
        with self._lock:
            self._viewers -= 1

    def sent(self, frame: PreviewFrame, *, skipped: int) -> None:
        """A viewer sent ``frame``, having skipped ``skipped`` frames since the one it sent before."""
        delay = max(0.0, time.time() - frame.captured_at)
        with self._lock:
            self._sent += 1
            self._skipped += max(0, skipped)
            self._latency.append(delay)

    def figures(self) -> dict[str, Any]:
        """What the viewers got: frames received from the run (all feeds, and per feed), sent to
        viewers, skipped by slow viewers, and the capture-to-viewer delay over the most recent
        frames sent (ms)."""
        with self._lock:
            recent = np.array(self._latency) * 1e3 if self._latency else None
            latest = self._latest.get(0)
            out: dict[str, Any] = {
                "frames": self._seq,
                "newest_index": latest.index if latest else None,
                "feeds": [{"feed": k, "frames": self._seqs.get(k, 0),
                           "newest_index": self._latest[k].index if k in self._latest else None}
                          for k in range(max(self.feeds, *(k + 1 for k in self._latest), 1))],
                "viewers": self._viewers,
                "viewers_max": self._viewers_max,
                "sent": self._sent,
                "skipped": self._skipped,
                "jpeg_encoded": self._encoded,
            }
        if recent is None:
            out["latency_ms"] = None
        else:
            out["latency_ms"] = {
                "p50_ms": round(float(np.percentile(recent, 50)), 1),
                "p95_ms": round(float(np.percentile(recent, 95)), 1),
                "max_ms": round(float(recent.max()), 1),
            }
        return out
