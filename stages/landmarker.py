"""The landmarker stage: dense landmarks for every face of a batch, in one pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.frame import Frame
from pipeline.stage import RunContext, Transform

from .models.builtin_pack import kps_from_68
from .models.factory import LandmarkBackend, LandmarkKind, ModelConfig, make_landmarker


class Landmarker(Transform):
    """Fills ``face.landmarks`` for faces that have none yet (the builtin detector already gives 68).

    Args:
        models: Which pack and how its models run.
        kind: ``2d106`` or ``3d68`` (insightface pack); the builtin pack gives dlib's 68 points.
        smoother: ``smoother(track_id, points, time)``: the tracker's per-track landmark smoothing.
        refine_predicted: Also run on faces the tracker predicted (frames the detector skipped, or
            missed), on their predicted boxes; with 68-point landmarks their keypoints follow.
        batch_size, max_wait_ms: Frames per batch and longest wait for a batch to fill.
    """

    name = "landmarker"

    def __init__(self, *, models: ModelConfig, kind: LandmarkKind = "2d106",
                 smoother: Callable[[int, np.ndarray, float], np.ndarray] | None = None,
                 refine_predicted: bool = False, batch_size: int = 1, max_wait_ms: float = 0.0) -> None:
        if kind not in ("2d106", "3d68", "68"):
            raise ValueError(f"kind must be 2d106 or 3d68, got {kind!r}")
        self.models = models
        self.kind = kind
        self.smoother = smoother
        self.refine_predicted = refine_predicted
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self._backend: LandmarkBackend | None = None
        self.faces_done = 0

    def open(self, ctx: RunContext) -> None:
        self._backend = make_landmarker(self.models, ctx.device, self.kind)

    def process(self, frames: list[Frame]) -> list[Frame]:
        assert self._backend is not None
        todo = [(fi, face) for fi, f in enumerate(frames) for face in f.faces
                if face.landmarks is None or (self.refine_predicted and face.predicted)]
        if todo:
            boxes = np.stack([face.box for _, face in todo])
            points = self._backend.predict([f.image for f in frames], [fi for fi, _ in todo], boxes)
            for (fi, face), p in zip(todo, points):
                if self.smoother is not None and face.track_id is not None:
                    p = self.smoother(face.track_id, p, frames[fi].time)
                face.landmarks = p
                if face.predicted and len(p) == 68:
                    face.kps = kps_from_68(p)
            self.faces_done += len(todo)
        return frames

    def report(self) -> dict[str, Any]:
        return {"kind": self.kind, "faces": self.faces_done}
