"""A stage that hands frames on unchanged: the pipeline runs end to end with no face work."""

from __future__ import annotations

from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import Transform


class PassThrough(Transform):
    """Returns its frames untouched (useful to measure the runtime itself).

    Example:
        >>> PassThrough().process([])
        []
    """

    name = "passthrough"

    def __init__(self, *, batch_size: int = 1, max_wait_ms: float = 0.0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms

    def process(self, frames: list[Frame]) -> list[Frame]:
        return frames
