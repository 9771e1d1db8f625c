"""Stage base classes and what the runtime hands to every stage when it opens."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeVar

import torch

from .channel import SideChannel
from .frame import Frame


@dataclass
class SourceInfo:
    """What the source knows about the stream once it is open.

    Attributes:
        width, height: Picture size in pixels.
        frame_rate: Nominal frame rate, or ``None`` if unknown.
        time_base: Unit of the frames' ``pts``.
        live: True for live feeds (network streams, cameras, paced files).
        duration_s: Expected duration after trims, or ``None`` (live, or unknown).
        frame_count: Expected number of frames, or ``None``.
        rotation: Display rotation in degrees (counter-clockwise), carried to the output.
        colour: Colour metadata (range, primaries, transfer, matrix) to carry to the output.
        side_streams: Opaque descriptions of streams that bypass the processing stages (the source's
            audio streams), for the sink to recreate.
        metadata: Container metadata worth carrying.
    """

    width: int
    height: int
    frame_rate: Fraction | None
    time_base: Fraction
    live: bool = False
    duration_s: float | None = None
    frame_count: int | None = None
    rotation: int = 0
    colour: dict[str, int] = field(default_factory=dict)
    side_streams: list[Any] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class RunContext:
    """Shared by all stages of one run.

    Attributes:
        device: The run's one device; every stage puts its tensors there.
        source: Filled by the source's ``open()``; read by later stages' ``open()``.
        side: Items that bypass the processing stages, from the source straight to the sink.
        stop: Set when the run should wind down (e.g. on SIGINT): sources stop producing.
        log: Where stages report warnings.
        streams: One context per feed when the source reads several (filled by a
            :class:`~facestream.pipeline.mux.Muxer`): each feed's own source info and side channel,
            for the sink that writes that feed.
        pinned_bytes: Page-locked host memory the run's transfers may keep (its source's uploads
            take three quarters, its sink's downloads a quarter).
    """

    device: torch.device
    source: SourceInfo | None = None
    side: SideChannel[Any] = field(default_factory=SideChannel)
    stop: threading.Event = field(default_factory=threading.Event)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger(__package__ or "pipeline"))
    streams: list[RunContext] = field(default_factory=list)
    pinned_bytes: int = 256 << 20


class Stage:
    """A small class: configuration in ``__init__``, resources in ``open``/``close``, one verb.

    Attributes:
        name: Shown in statistics and errors.
        batch_size: Most frames handed to one call of the verb (consecutive frames, order kept).
        max_wait_ms: Longest wait for a batch to fill once its first frame has arrived.
    """

    name: str = "stage"
    batch_size: int = 1
    max_wait_ms: float = 0.0

    def open(self, ctx: RunContext) -> None:
        """Acquire resources. Called once, in order from the source to the sink."""

    def close(self) -> None:
        """Release resources. Always called once after ``open`` succeeded, also after errors."""

    def report(self) -> dict[str, Any]:
        """Extra figures for the run report (merged under the stage's name)."""
        return {}


class Source(Stage):
    """Produces frames. The verb is ``read``; it must return soon after ``ctx.stop`` is set."""

    info: SourceInfo

    def read(self) -> Iterator[Frame]:
        raise NotImplementedError


class Transform(Stage):
    """Works on a batch of consecutive frames. The verb is ``process``."""

    def process(self, frames: list[Frame]) -> list[Frame]:
        raise NotImplementedError


class Sink(Stage):
    """Consumes frames. The verb is ``write``; ``close`` finalises whatever was written."""

    def write(self, frames: list[Frame]) -> None:
        raise NotImplementedError


S = TypeVar("S", bound=Stage)


def open_each(pairs: Sequence[tuple[S, RunContext]]) -> list[S]:
    """Open each stage with its context, in order. If one fails, those already open are closed
    (their own errors dropped: the first one is the one to report) and it raises.

    Example:
        >>> len(open_each([(Stage(), RunContext(device=torch.device("cpu")))]))
        1
    """
    opened: list[S] = []
    try:
        for stage, ctx in pairs:
            stage.open(ctx)
            opened.append(stage)
    except BaseException:
        for stage in reversed(opened):
            try:
                stage.close()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        raise
    return opened


def close_each(stages: Sequence[Stage]) -> None:
    """Close every stage, in order, then raise the first error any of them raised.

    Example:
        >>> close_each([Stage(), Stage()])
    """
    error: BaseException | None = None
    for stage in stages:
        try:
            stage.close()
        except BaseException as exc:  # noqa: BLE001 - every stage is closed before raising
            error = error or exc
    if error is not None:
        raise error
