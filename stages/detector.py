"""The detector stage: finds faces on batches of consecutive frames."""

from __future__ import annotations

from typing import Any, Literal

from pipeline.frame import Frame
from pipeline.stage import RunContext, Transform

from .face import Face
from .models.factory import DetectorBackend, ModelConfig, make_detector


class Detector(Transform):
    """Fills ``frame.faces`` with box, score, five keypoints (and, with the builtin pack, 68 landmarks).

    With ``every=N`` only every N-th frame is detected (``frame.meta["detected"]`` says which); the
    tracker fills the frames between from its motion model.

    Args:
        models: Which pack and how its models run.
        input_size: Detector input (width, height) for models without a fixed size.
        score_threshold: Lowest confidence kept.
        nms_threshold: Overlap above which the weaker of two boxes is dropped.
        max_faces: Keep at most this many faces per frame, largest and most central first (0: all).
        min_size: Drop faces whose box is smaller than this many pixels on its shorter side.
        every: Detect every N-th frame.
        builtin_model: The builtin pack's detector: ``hog`` (fast) or ``mmod`` (CNN, slow on a CPU).
        upsample: The builtin detector's upsampling steps (1 finds faces down to about 40 px).
        batch_size, max_wait_ms: Frames per batch and longest wait for a batch to fill.

    Example:
        >>> Detector(models=ModelConfig(pack="builtin"), every=3).every
        3
    """

    name = "detector"

    def __init__(
        self,
        *,
        models: ModelConfig,
        input_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        max_faces: int = 0,
        min_size: float = 0.0,
        every: int = 1,
        builtin_model: Literal["hog", "mmod"] = "hog",
        upsample: int = 0,
        batch_size: int = 1,
        max_wait_ms: float = 0.0,
    ) -> None:
        if not 0 <= score_threshold <= 1:
            raise ValueError(f"score_threshold must be within 0..1, got {score_threshold}")
        if not 0 < nms_threshold <= 1:
            raise ValueError(f"nms_threshold must be within (0, 1], got {nms_threshold}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if max_faces < 0 or min_size < 0 or upsample < 0:
            raise ValueError("max_faces, min_size and upsample must be >= 0")
        if min(input_size) < 32 or any(s % 32 for s in input_size):
            raise ValueError(f"input_size must be multiples of 32, got {input_size}")
        self.models = models
        self.every = every
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self._kwargs: dict[str, Any] = dict(
            input_size=tuple(input_size), score_threshold=score_threshold, nms_threshold=nms_threshold,
            max_faces=max_faces, min_size=min_size, model=builtin_model, upsample=upsample,
        )
        self._backend: DetectorBackend | None = None
        self.detected_frames = 0
        self.faces_found = 0

    def open(self, ctx: RunContext) -> None:
        self._backend = make_detector(self.models, ctx.device, **self._kwargs)

    def process(self, frames: list[Frame]) -> list[Frame]:
        assert self._backend is not None
        todo = [f for f in frames if f.index % self.every == 0]
        for f in frames:
            f.meta["detected"] = f.index % self.every == 0
        if todo:
            for frame, det in zip(todo, self._backend.detect([f.image for f in todo])):
                frame.faces = [
                    Face(
                        box=det.boxes[i],
                        score=float(det.scores[i]),
                        kps=det.kps[i] if det.kps is not None else None,
                        landmarks=det.landmarks[i] if det.landmarks is not None else None,
                    )
                    for i in range(len(det.boxes))
                ]
                self.faces_found += len(frame.faces)
            self.detected_frames += len(todo)
        return frames

    def report(self) -> dict[str, Any]:
        return {"pack": self.models.pack, "every": self.every, "detected_frames": self.detected_frames,
                "faces_found": self.faces_found}
