"""The detector stage: finds faces on batches of consecutive frames."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, get_args

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from facestream.pipeline.config import check
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Transform

from facestream.facelib.face import Face
from facestream.facelib.ops.detection import keypoints_fit
from facestream.facelib.models.factory import BuiltinDetectorModel, DetectorBackend, ModelSettings, make_detector
from facestream.facelib.models.shared import halvings


def shrink(image: torch.Tensor, scale: float) -> torch.Tensor:
    """An ``(H, W, 3)`` uint8 picture scaled down by ``scale`` (< 1), averaging areas, on its device.

    Example:
        >>> shrink(torch.full((40, 60, 3), 7, dtype=torch.uint8), 0.5).shape
        torch.Size([20, 30, 3])
    """
    h, w = image.shape[:2]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if image.device.type == "cpu":
        return torch.from_numpy(cv2.resize(image.numpy(), size[::-1], interpolation=cv2.INTER_AREA))
    # Half precision: the one full-size working copy is two bytes a value, not four.
    chw = image.permute(2, 0, 1)[None].to(torch.float16)
    return F.interpolate(chw, size=size, mode="area")[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)


def scaled(det: Any, factor: float) -> Any:
    """Detections with their geometry (boxes, keypoints, landmarks) multiplied by ``factor``."""
    geometry = {k: getattr(det, k) * np.float32(factor) for k in ("boxes", "kps", "landmarks")
                if getattr(det, k) is not None}
    return dataclasses.replace(det, **geometry)


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
                 batch_size: int = 1, max_wait_ms: float = 0.0, max_side: int = 0) -> None:
        self.settings = settings or DetectorSettings()
        self.models = models
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.max_side = max_side
        self._backend: DetectorBackend | None = None
        self._device = torch.device("cpu")
        self._scaled_backends: dict[float, DetectorBackend] = {}
        self.downscaled_frames = 0
        self.detected_frames = 0
        self.faces_found = 0

    def open(self, ctx: RunContext) -> None:
        self._device = ctx.device
        self._backend = self._make(1.0)

    def _make(self, scale: float) -> DetectorBackend:
        """The detector for pictures shrunk by ``scale``: ``min_size`` is measured on what it sees."""
        s = self.settings
        return make_detector(
            self.models, self._device, input_size=tuple(s.input_size), score_threshold=s.score_threshold,
            nms_threshold=s.nms_threshold, max_faces=s.max_faces, min_size=s.min_size * scale, model=s.builtin_model,
            upsample=s.upsample,
        )

    def _detect(self, images: list[torch.Tensor]) -> list[Any]:
        """Detections per picture, in full-size coordinates. A picture larger than ``max_side`` is
        detected on a shrunk copy: a detector sees a few hundred pixels anyway, and the full frame
        (an 8K still is 100 MB) is neither copied to the host nor converted whole."""
        assert self._backend is not None
        scales = [min(1.0, self.max_side / max(im.shape[:2])) if self.max_side else 1.0 for im in images]
        if all(v == 1.0 for v in scales):
            return self._backend.detect(images)
        found: list[Any] = [None] * len(images)
        for scale in sorted(set(scales)):
            which = [i for i, v in enumerate(scales) if v == scale]
            if scale == 1.0:
                backend, batch = self._backend, [images[i] for i in which]
            else:
                if scale not in self._scaled_backends:
                    self._scaled_backends[scale] = self._make(scale) if self.settings.min_size else self._backend
                backend, batch = self._scaled_backends[scale], [shrink(images[i], scale) for i in which]
                self.downscaled_frames += len(which)
            for i, small, det in zip(which, batch, backend.detect(batch)):
                factor = images[i].shape[1] / small.shape[1]
                found[i] = det if scale == 1.0 else scaled(det, factor)
        return found

    def process(self, frames: list[Frame]) -> list[Frame]:
        assert self._backend is not None
        every = self.settings.every
        for f in frames:
            f.detected = f.stream_index % every == 0  # every Nth frame of each feed
        todo = [f for f in frames if f.detected]
        if todo:
            for frame, det in zip(todo, self._detect([f.image for f in todo])):
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
                "faces_found": self.faces_found, "downscaled_frames": self.downscaled_frames,
                "memory_halvings": halvings(self._backend)}
