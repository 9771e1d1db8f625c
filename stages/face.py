"""The record that describes one face on one frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(eq=False)
class Face:
    """One face found on one frame.

    Geometry lives in host memory as small float32 arrays (the tracker and the export need it there);
    pixels never do.

    Attributes:
        box: ``(4,)`` ``[x1, y1, x2, y2]`` in frame pixels.
        score: Detector confidence in ``[0, 1]``.
        kps: ``(5, 2)`` keypoints in insightface order: left eye, right eye, nose tip, left and right
            mouth corners (left/right as seen in the image), or ``None``.
        landmarks: ``(N, 2)`` dense landmarks (68 or 106 points), or ``None``.
        embedding: ``(D,)`` L2-normalised identity embedding, or ``None``.
        track_id: Persistent id given by the tracker, or ``None`` before tracking.
        identity: The per-track decision: the name of the source identity this face gets, or
            ``None`` to leave it alone.
        quality: How good a view this is for identity (higher is better), set by the embedder.
        predicted: True where the box came from the tracker's motion model, not the detector.
        needs_embedding: The tracker's word on whether this face must be embedded now (``None``
            without a tracker: embed it).
        generated: The generator's output for this face (a crop and its matrix), for the blender.

    Example:
        >>> f = Face(box=np.array([10, 20, 110, 140], np.float32), score=0.9)
        >>> f.width, f.height
        (100.0, 120.0)
    """

    box: np.ndarray
    score: float
    kps: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    embedding: np.ndarray | None = None
    track_id: int | None = None
    identity: str | None = None
    quality: float = 0.0
    predicted: bool = False
    needs_embedding: bool | None = None
    generated: Any = None

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        if self.kps is not None:
            self.kps = np.asarray(self.kps, dtype=np.float32).reshape(5, 2)
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(-1, 2)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def center(self) -> tuple[float, float]:
        return float(self.box[0] + self.box[2]) / 2, float(self.box[1] + self.box[3]) / 2

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)
