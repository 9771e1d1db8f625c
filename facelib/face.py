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
        embedding: ``(D,)`` L2-normalised identity embedding (fresh from the embedder, or the track's
            running mean from the selector), or ``None``.
        track_id: Persistent id given by the tracker, or ``None`` before tracking.
        identity: The per-track decision: the name of the source identity this face gets, or
            ``None`` to leave it alone.
        quality: How good a view this is for identity (higher is better), set by the tracker.
        predicted: True where the box came from the tracker's motion model, not the detector.
        plausible: False where the detector doubts the box is a face at its size (a wrong-scale
            detection): such a face is not swapped, but anonymising still hides its box while it is seen.
        turned_away: True on a predicted face whose track was turning away when it was lost: its
            old geometry is not swapped (anonymising still hides it).
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
    plausible: bool = True
    turned_away: bool = False
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


def face_quality(face: Face) -> float:
    """How good a view this is for identity: confidence x size (up to 112 px) x frontality."""
    kps = None if face.kps is None else face.kps[None]
    return float(qualities(face.box[None], np.array([face.score], np.float32), kps)[0])


def qualities(boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray | None) -> np.ndarray:
    """:func:`face_quality` for ``(N, 4)`` boxes, ``(N,)`` scores and ``(N, 5, 2)`` keypoints."""
    size = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    q = scores * np.clip(size / 112.0, 0.0, 1.0)
    if kps is not None:
        left, right, nose = kps[:, 0], kps[:, 1], kps[:, 2]
        half = np.maximum(np.linalg.norm(right - left, axis=1) / 2, 1e-3)
        off = np.abs(nose[:, 0] - (left[:, 0] + right[:, 0]) / 2) / half
        q = q * (0.5 + 0.5 * np.clip(1.0 - off, 0.0, None))
    return q
