"""The one record that flows through every stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch


@dataclass(eq=False, slots=True)
class Frame:
    """One decoded video frame and everything the stages learned about it.

    Attributes:
        index: Position of the frame in the run, counting from 0: unique and increasing in the order
            frames enter the pipeline. Frames dropped by a live flow policy leave gaps; order is
            always preserved.
        pts: Presentation time in ``time_base`` units, relative to the start of the output.
        time_base: Unit of ``pts`` in seconds.
        captured_at: Wall-clock time (``time.time()``) at which the frame was decoded or captured.
        image: The picture, ``(H, W, 3)`` uint8 RGB, on the run's device.
        faces: What the analysis stages found (filled by later stages; the runtime never reads it).
        detected: False when the detection stage skipped this frame on purpose (its objects are
            predicted by the stage after it); True otherwise.
        tracks_ended: Ids of the tracks the tracking stage ended at this frame, so that the stages
            after it can forget what they kept per track.
        gap_s: Seconds the source was away before this frame (a live stream that reconnected).
        timings: Seconds each stage spent on this frame (a batch's time is shared by its frames).
        stream: Which feed the frame came from, when one run reads several (see
            :class:`~facestream.pipeline.mux.Muxer`); 0 otherwise.
        stream_index: Position of the frame in its own feed (``index`` when the run has one feed).
            Stages that count frames of a sequence (every Nth frame, refresh schedules) count these.
        ready: On a GPU, a CUDA event recorded after the last work queued on this frame (by the stage
            that handed it on, on that stage's stream); the next stage's stream waits on it before
            touching the frame. ``None`` on the CPU. See :mod:`~facestream.pipeline.streams`.

    Every field is typed: what one stage hands the next travels here, and nothing flows back.

    Example:
        >>> f = Frame(index=0, pts=0, time_base=Fraction(1, 30), captured_at=0.0,
        ...           image=torch.zeros(2, 2, 3, dtype=torch.uint8))
        >>> f.time
        0.0
    """

    index: int
    pts: int
    time_base: Fraction
    captured_at: float
    image: torch.Tensor
    faces: list[Any] = field(default_factory=list)
    detected: bool = True
    tracks_ended: frozenset[int] = frozenset()
    gap_s: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    stream: int = 0
    stream_index: int = -1
    ready: Any = None

    def __post_init__(self) -> None:
        if self.stream_index < 0:
            self.stream_index = self.index
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != torch.uint8:
            raise ValueError(
                f"Frame.image must be an (H, W, 3) uint8 tensor, got {tuple(self.image.shape)} "
                f"{self.image.dtype}"
            )

    @property
    def time(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])
