"""Paste-back masks, computed on the host over the face's frame region only (geometry, no pixels).

- ``insightface``: the arithmetic of insightface's ``INSwapper.get(paste_back=True)`` (the crop's
  footprint, eroded by a tenth of its size, blurred by a twentieth), on the region instead of a
  whole-frame mask per face.
- ``box``: the crop's square, inset by ``padding`` and feathered by ``feather`` (fractions of the
  crop), warped into the region.
- ``hull``: the landmarks' convex hull, grown by ``padding`` and feathered, optionally without the
  mouth (the target's own mouth kept: speech stays in sync).
"""

from __future__ import annotations

import cv2
import numpy as np

from .align import region_inverse


def _odd(n: float) -> int:
    n = max(1, int(round(n)))
    return n if n % 2 else n + 1


def insightface_mask(matrix: np.ndarray, size: int, region: tuple[int, int, int, int]) -> np.ndarray:
    """insightface's paste-back mask over ``region``, ``(rh, rw)`` float32 in 0..1."""
    x0, y0, x1, y1 = region
    white = np.full((size, size), 255, dtype=np.float32)
    m = cv2.warpAffine(white, region_inverse(matrix, region), (x1 - x0, y1 - y0), borderValue=0.0)
    m[m > 20] = 255
    ys, xs = np.where(m == 255)
    if not len(ys):
        return np.zeros_like(m)
    mask_size = int(np.sqrt((ys.max() - ys.min()) * (xs.max() - xs.min())))
    k = max(mask_size // 10, 10)
    m = cv2.erode(m, np.ones((k, k), np.uint8), iterations=1)
    k = max(mask_size // 20, 5)
    m = cv2.GaussianBlur(m, (2 * k + 1, 2 * k + 1), 0)
    return m / 255.0


def box_mask(matrix: np.ndarray, size: int, region: tuple[int, int, int, int], *, padding: float = 0.1,
             feather: float = 0.08) -> np.ndarray:
    """The crop square inset by ``padding`` and feathered by ``feather`` (fractions of the crop)."""
    x0, y0, x1, y1 = region
    crop = np.zeros((size, size), np.float32)
    p = int(round(padding * size))
    crop[p : size - p, p : size - p] = 1.0
    if feather > 0:
        crop = cv2.GaussianBlur(crop, (_odd(2 * feather * size), _odd(2 * feather * size)), 0)
    return cv2.warpAffine(crop, region_inverse(matrix, region), (x1 - x0, y1 - y0), borderValue=0.0)


def coverage_mask(coverage: np.ndarray, matrix: np.ndarray, region: tuple[int, int, int, int], *,
                  feather: float = 0.08, mouth: np.ndarray | None = None) -> np.ndarray:
    """A generator's crop-space coverage, shrunk and feathered inwards, warped into ``region``;
    with ``mouth`` (frame-space polygon), that is cut out."""
    x0, y0, x1, y1 = region
    size = coverage.shape[0]
    k = _odd(2 * feather * size)
    m = cv2.erode(coverage.astype(np.float32), np.ones((k // 2 + 3, k // 2 + 3), np.uint8))
    m = cv2.GaussianBlur(m, (k, k), 0)
    out = cv2.warpAffine(m, region_inverse(matrix, region), (x1 - x0, y1 - y0), borderValue=0.0)
    if mouth is not None:
        cut = np.zeros_like(out)
        cv2.fillPoly(cut, [np.round(np.asarray(mouth) - (x0, y0)).astype(np.int32)], 1.0, lineType=cv2.LINE_AA)
        out = np.clip(out - cv2.dilate(cut, np.ones((3, 3), np.uint8)), 0.0, 1.0)
    return out


# Mouth outline indices per landmark layout.
MOUTH = {68: list(range(48, 60)), 106: list(range(52, 72))}


def hull_mask(points: np.ndarray, region: tuple[int, int, int, int], *, padding: float = 0.05,
              feather: float = 0.08, keep_mouth: bool = False) -> np.ndarray:
    """The convex hull of frame-space ``points`` in ``region``, grown by ``padding`` and feathered by
    ``feather`` (fractions of the hull's size); with ``keep_mouth``, the mouth is cut out."""
    x0, y0, x1, y1 = region
    rw, rh = x1 - x0, y1 - y0
    local = (np.asarray(points, np.float64) - (x0, y0)).astype(np.float32)
    mask = np.zeros((rh, rw), np.float32)
    hull = cv2.convexHull(local)
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1.0, lineType=cv2.LINE_AA)
    extent = max(float(np.ptp(local[:, 0])), float(np.ptp(local[:, 1])), 1.0)
    grow = int(round(padding * extent))
    if grow > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    if keep_mouth and len(points) in MOUTH:
        mouth = np.zeros_like(mask)
        cv2.fillPoly(mouth, [np.round(local[MOUTH[len(points)]]).astype(np.int32)], 1.0, lineType=cv2.LINE_AA)
        mouth = cv2.dilate(mouth, np.ones((3, 3), np.uint8))
        mask = np.clip(mask - mouth, 0.0, 1.0)
    if feather > 0:
        k = _odd(2 * feather * extent)
        # Feather inwards: the blurred edge stays inside the hull, so no background from the
        # source shows.
        mask = cv2.erode(mask, np.ones((k // 2 + 1, k // 2 + 1), np.uint8))
        mask = cv2.GaussianBlur(mask, (k, k), 0)
    return mask
