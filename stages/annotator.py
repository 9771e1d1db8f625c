"""The annotator stage: boxes, keypoints, landmarks, track ids and identities drawn on the frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import Transform

from facestream.facelib.media.transfer import to_host


def _colour(track_id: int | None) -> tuple[int, int, int]:
    """A stable, distinct colour per track (golden-ratio hues)."""
    if track_id is None:
        return (200, 200, 200)
    hue = int((track_id * 0.618033988749895 % 1.0) * 179)
    rgb = cv2.cvtColor(np.uint8([[[hue, 200, 255]]]), cv2.COLOR_HSV2RGB)[0, 0]
    return tuple(int(v) for v in rgb)  # type: ignore[return-value]


@dataclass
class AnnotateSettings:
    """What the annotator draws (the ``annotate`` section of a preset).

    Attributes:
        landmarks: Draw dense landmarks.
        labels: Draw the track id and identity label.

    Example:
        >>> AnnotateSettings(labels=False).labels
        False
    """

    landmarks: bool = True
    labels: bool = True


class Annotator(Transform):
    """Draws each face: its box in its track's colour (dashed where predicted), its five keypoints,
    its landmarks, and a label with the track id and the identity decision.

    Drawing needs host memory; on CUDA runs the frame is copied down, drawn on, and put back.

    Args:
        settings: What to draw.

    Example:
        >>> Annotator(AnnotateSettings(landmarks=False)).settings.landmarks
        False
    """

    name = "annotator"

    def __init__(self, settings: AnnotateSettings | None = None) -> None:
        self.settings = settings or AnnotateSettings()
        self.faces_drawn = 0

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            if not frame.faces:
                continue
            on_host = frame.image.device.type == "cpu"
            img = to_host(frame.image) if on_host else to_host(frame.image).copy()
            scale = max(1, round(frame.height / 540))
            for face in frame.faces:
                self._draw(img, face, scale)
            if not on_host:
                frame.image = torch.from_numpy(img).to(frame.image.device)
            self.faces_drawn += len(frame.faces)
        return frames

    def _draw(self, img: np.ndarray, face: Any, scale: int) -> None:
        c = _colour(face.track_id)
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        if face.predicted:
            for x in range(x1, x2, 8 * scale):
                cv2.line(img, (x, y1), (min(x + 4 * scale, x2), y1), c, scale)
                cv2.line(img, (x, y2), (min(x + 4 * scale, x2), y2), c, scale)
            for y in range(y1, y2, 8 * scale):
                cv2.line(img, (x1, y), (x1, min(y + 4 * scale, y2)), c, scale)
                cv2.line(img, (x2, y), (x2, min(y + 4 * scale, y2)), c, scale)
        else:
            cv2.rectangle(img, (x1, y1), (x2, y2), c, 2 * scale, cv2.LINE_AA)
        if self.settings.landmarks and face.landmarks is not None:
            for x, y in face.landmarks:
                cv2.circle(img, (int(round(x)), int(round(y))), scale, (255, 255, 255), -1, cv2.LINE_AA)
        if face.kps is not None:
            for x, y in face.kps:
                cv2.circle(img, (int(round(x)), int(round(y))), 2 * scale, c, -1, cv2.LINE_AA)
        if self.settings.labels:
            label = "?" if face.track_id is None else f"#{face.track_id}"
            if face.identity:
                label += f" {face.identity}"
            size = 0.5 * scale
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, size, scale)
            top = max(0, y1 - th - base - 4)
            cv2.rectangle(img, (x1, top), (x1 + tw + 4, top + th + base + 4), c, -1)
            cv2.putText(img, label, (x1 + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, size, (0, 0, 0), scale, cv2.LINE_AA)

    def report(self) -> dict[str, Any]:
        return {"faces": self.faces_drawn}
