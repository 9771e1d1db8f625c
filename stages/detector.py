"""The detector stage: finds faces on batches of consecutive frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import numpy as np

from facestream.pipeline.config import check
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Transform

from facestream.facelib.face import Face
from facestream.facelib.ops.detection import keypoints_fit
from facestream.facelib.models.factory import BuiltinDetectorModel, DetectorBackend, ModelSettings, make_detector




@dataclass
class DetectorSettings:
    """Face detection (the ``detector`` section of a preset).

    Attributes:
        input_size: Detector input (width, height) for models without a fixed size.
        score_threshold: Lowest confidence kept.
        nms_threshold: Overlap above which the weaker of two boxes is dropped.
        max_faces: Keep at most this many faces per frame, largest and most central first (0: all).
        min_size: Drop faces whose box is smaller than this many pixels on its shorter side.
        every: Detect every N-th frame; the tracker predicts the frames between.
        builtin_model: The builtin pack's detector: ``hog`` (fast) or ``mmod`` (CNN, slow on a CPU).
        upsample: The builtin detector's upsampling steps (1 finds faces down to about 40 px, at four
            times the cost).

    Example:
        >>> DetectorSettings(every=3).every
        3
    """

    input_size: tuple[int, int] = (640, 640)
    score_threshold: float = 0.5
    nms_threshold: float = 0.4
    max_faces: int = 0
    min_size: float = 0.0
    every: int = 1
    builtin_model: BuiltinDetectorModel = "hog"
    upsample: int = 0

    def __post_init__(self) -> None:
        check(0 <= self.score_threshold <= 1, "score_threshold", self.score_threshold, "must be within 0..1")
        check(0 < self.nms_threshold <= 1, "nms_threshold", self.nms_threshold, "must be within (0, 1]")
        check(self.every >= 1, "every", self.every, "must be >= 1")
        check(min(self.input_size) >= 32 and not any(v % 32 for v in self.input_size), "input_size",
              self.input_size, "must be two multiples of 32")
        for name in ("max_faces", "min_size", "upsample"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        builtin = get_args(BuiltinDetectorModel)
        check(self.builtin_model in builtin, "builtin_model", self.builtin_model, f"must be one of {', '.join(builtin)}")


class Detector(Transform):
    """Fills ``frame.faces`` with box, score, five keypoints (and, with the builtin pack, 68 landmarks).

    With ``every=N`` only every N-th frame is detected (``frame.detected`` says which); the tracker
    fills the frames between from its motion model.

    Args:
        settings: Thresholds, sizes and how often to detect.
        models: Which pack and how its models run.
        batch_size, max_wait_ms: Frames per batch and longest wait for a batch to fill.

    Example:
        >>> Detector(DetectorSettings(every=3), models=ModelSettings(pack="builtin")).settings.every
        3
    """

    name = "detector"

    def __init__(self, settings: DetectorSettings | None = None, *, models: ModelSettings,
                 batch_size: int = 1, max_wait_ms: float = 0.0) -> None:
        self.settings = settings or DetectorSettings()
        self.models = models
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self._backend: DetectorBackend | None = None
        self.detected_frames = 0
        self.faces_found = 0

    def open(self, ctx: RunContext) -> None:
        s = self.settings
        self._backend = make_detector(
            self.models, ctx.device, input_size=tuple(s.input_size), score_threshold=s.score_threshold,
            nms_threshold=s.nms_threshold, max_faces=s.max_faces, min_size=s.min_size, model=s.builtin_model,
            upsample=s.upsample,
        )

    def process(self, frames: list[Frame]) -> list[Frame]:
        assert self._backend is not None
        every = self.settings.every
        for f in frames:
            f.detected = f.stream_index % every == 0  # every Nth frame of each feed
        todo = [f for f in frames if f.detected]
        if todo:
            for frame, det in zip(todo, self._backend.detect([f.image for f in todo])):
                # A box whose keypoints do not fit it is doubted, whatever the pack (see keypoints_fit);
                # the builtin pack also looks again at its weak boxes (its landmarks always fit).
                plausible = np.ones(len(det.boxes), bool) if det.plausible is None else np.asarray(det.plausible, bool)
                if det.kps is not None and len(det.boxes):
                    plausible &= keypoints_fit(det.boxes, det.kps)
                frame.faces = [
                    Face(
                        box=det.boxes[i],
                        score=float(det.scores[i]),
                        kps=det.kps[i] if det.kps is not None else None,
                        landmarks=det.landmarks[i] if det.landmarks is not None else None,
                        plausible=bool(plausible[i]),
                    )
                    for i in range(len(det.boxes))
                ]
                self.faces_found += len(frame.faces)
            self.detected_frames += len(todo)
        return frames

    def report(self) -> dict[str, Any]:
        return {"pack": self.models.pack, "every": self.settings.every, "detected_frames": self.detected_frames,
                "faces_found": self.faces_found}
