"""The landmarker stage: dense landmarks for every face of a batch, in one pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from facestream.facelib.models.factory import LandmarkBackend, LandmarkKind, ModelSettings, make_landmarker
from facestream.facelib.tracking.smoothing import OneEuroBank
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Transform
from facestream.facelib.models.shared import halvings


@dataclass
class LandmarkerSettings:
    """Dense landmarks, run only where a stage needs them (the ``landmarker`` section of a preset).

    Attributes:
        model: ``auto``: what the mode needs (none for pass-through, 2d106 or the builtin 68 for
            analysis); ``none``, ``2d106``, ``3d68``.
        refine_predicted: Also run on faces the tracker predicted (``detector.every`` > 1, missed
            detections), on their predicted boxes.

    Example:
        >>> LandmarkerSettings(model="3d68").model
        '3d68'
    """

    model: Literal["auto", "none", "2d106", "3d68"] = "auto"
    refine_predicted: bool = False


class Landmarker(Transform):
    """Fills ``face.landmarks`` for faces that have none yet (the builtin detector already gives 68),
    and smooths every tracked face's landmarks per track (One Euro filter).

    Args:
        settings: Whether predicted faces are refined.
        models: Which pack and how its models run.
        kind: ``2d106`` or ``3d68`` (insightface pack); ``68``: the builtin pack's dlib points.
        smoothing: ``(min_cutoff, beta)`` of the per-track One Euro filter, or ``None`` for none.
        batch_size, max_wait_ms: Frames per batch and longest wait for a batch to fill.

    Example:
        >>> stage = Landmarker(LandmarkerSettings(refine_predicted=True), models=ModelSettings(), kind="68")
        >>> stage.kind
        '68'
    """

    name = "landmarker"

    def __init__(self, settings: LandmarkerSettings | None = None, *, models: ModelSettings,
                 kind: LandmarkKind = "2d106", smoothing: tuple[float, float] | None = None,
                 batch_size: int = 1, max_wait_ms: float = 0.0) -> None:
        if kind not in ("2d106", "3d68", "68"):
            raise ValueError(f"kind must be 2d106, 3d68 or 68, got {kind!r}")
        self.settings = settings or LandmarkerSettings()
        self.models = models
        self.kind = kind
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self._bank = OneEuroBank(min_cutoff=smoothing[0], beta=smoothing[1]) if smoothing else None
        self._backend: LandmarkBackend | None = None
        self.faces_done = 0

    def open(self, ctx: RunContext) -> None:
        self._backend = make_landmarker(self.models, ctx.device, self.kind)

    def process(self, frames: list[Frame]) -> list[Frame]:
        assert self._backend is not None
        refine = self.settings.refine_predicted
        todo = [(fi, face) for fi, f in enumerate(frames) for face in f.faces
                if face.landmarks is None or (refine and face.predicted)]
        if todo:
            boxes = np.stack([face.box for _, face in todo])
            points = self._backend.predict([f.image for f in frames], [fi for fi, _ in todo], boxes)
            from facestream.facelib.models.builtin_pack import kps_from_68

            for (_, face), p in zip(todo, points):
                face.landmarks = p
                if face.predicted and len(p) == 68:
                    face.kps = kps_from_68(p)
            self.faces_done += len(todo)
        if self._bank is not None:
            for frame in frames:
                self._smooth(frame)
        return frames

    def _smooth(self, frame: Frame) -> None:
        assert self._bank is not None
        if frame.tracks_ended:
            self._bank.drop(frame.tracks_ended)
        faces = [f for f in frame.faces if f.track_id is not None and f.landmarks is not None]
        if faces:
            smoothed = self._bank([f.track_id for f in faces], np.stack([f.landmarks for f in faces]), frame.time)
            for face, lm in zip(faces, smoothed.astype(np.float32)):
                face.landmarks = lm

    def report(self) -> dict[str, Any]:
        return {"kind": self.kind, "faces": self.faces_done, "memory_halvings": halvings(self._backend)}
