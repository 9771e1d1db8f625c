"""Very large pictures are detected on a shrunk copy; the faces come back in full-size pixels."""

from __future__ import annotations

import time
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from facestream.facelib.models.factory import ModelSettings
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext
from facestream.scenes import load_photo
from facestream.stages.detector import Detector, DetectorSettings, shrink


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _faces(image: np.ndarray, *, max_side: int, min_size: float = 0.0) -> tuple[list, Detector]:
    stage = Detector(DetectorSettings(min_size=min_size), models=ModelSettings(pack="builtin"), max_side=max_side)
    stage.open(RunContext(device=torch.device("cpu")))
    frame = Frame(index=0, pts=0, time_base=Fraction(1, 25), captured_at=time.time(),
                  image=torch.from_numpy(np.ascontiguousarray(image)))
    return stage.process([frame])[0].faces, stage


@pytest.fixture(scope="module")
def group() -> np.ndarray:
    return load_photo("group")


def test_a_large_picture_is_detected_on_a_shrunk_copy_in_full_size_pixels(group: np.ndarray) -> None:
    small, _ = _faces(group, max_side=0)
    big = cv2.resize(group, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    found, stage = _faces(big, max_side=max(group.shape[:2]))
    assert stage.downscaled_frames == 1
    assert len(small) >= 5 and len(found) == len(small)
    for face in found:  # each face where the picture at its own size has it, twice as far out
        best = max(_iou(face.box, 2 * other.box) for other in small)
        assert best > 0.8
        assert face.kps is not None and face.landmarks is not None
        assert face.box[0] <= face.kps[:, 0].min() and face.kps[:, 0].max() <= face.box[2]


def test_min_size_is_measured_in_full_size_pixels(group: np.ndarray) -> None:
    big = cv2.resize(group, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    limit = max(group.shape[:2])
    every, _ = _faces(big, max_side=limit)
    sides = sorted(min(f.width, f.height) for f in every)
    cut = (sides[0] + sides[-1]) / 2  # between faces (full-size pixels): some kept, some dropped
    kept, _ = _faces(big, max_side=limit, min_size=cut)
    expected = [f.box.tolist() for f in every if min(f.width, f.height) >= cut]
    assert 0 < len(expected) < len(every)
    assert sorted(f.box.tolist() for f in kept) == sorted(expected)


def test_pictures_within_the_limit_are_detected_as_they_are(group: np.ndarray) -> None:
    direct, _ = _faces(group, max_side=0)
    limited, stage = _faces(group, max_side=max(group.shape[:2]))
    assert stage.downscaled_frames == 0
    assert [f.box.tolist() for f in limited] == [f.box.tolist() for f in direct]


def test_shrink_averages_areas() -> None:
    image = torch.zeros(4, 4, 3, dtype=torch.uint8)
    image[:2, :2] = 200
    out = shrink(image, 0.5)
    assert out.shape == (2, 2, 3) and int(out[0, 0, 0]) == 200 and int(out[1, 1, 0]) == 0
