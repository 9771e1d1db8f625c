"""SCRFD anchors, non-maximum suppression and face selection (insightface's arithmetic)."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def anchor_centers(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """``(height * width * anchors, 2)`` anchor centres in input pixels, row-major, anchors inner."""
    ys, xs = np.mgrid[:height, :width]
    centers = (np.stack((xs, ys), axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    if anchors > 1:
        centers = np.repeat(centers, anchors, axis=0)
    centers.setflags(write=False)
    return centers


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression, insightface's variant (areas counted with +1 pixel).

    Returns the kept indices, best score first (ties kept in input order).
    """
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def select_largest_central(boxes: np.ndarray, image_hw: tuple[int, int], max_num: int) -> np.ndarray:
    """Indices of the ``max_num`` faces with the largest area, penalised by distance from the centre
    (insightface's ``max_num`` rule), best first."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cy, cx = image_hw[0] // 2, image_hw[1] // 2
    off = ((boxes[:, 0] + boxes[:, 2]) / 2 - cx) ** 2 + ((boxes[:, 1] + boxes[:, 3]) / 2 - cy) ** 2
    return np.argsort(area - off * 2.0)[::-1][:max_num]
