"""SCRFD anchors, non-maximum suppression and face selection (insightface's arithmetic)."""

from __future__ import annotations

import functools

import numpy as np
import torch


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


# ---------------------------------------------------------------------------------------------- batched, on the device


def overlap_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """``(B, K, 4)`` boxes -> ``(B, K, K)`` intersection over union, insightface's arithmetic (areas
    counted with +1 pixel, float32, the same order of operations as :func:`nms`)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    w = (torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :]) + 1).clamp_(min=0)
    h = (torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :]) + 1).clamp_(min=0)
    inter = w * h
    return inter / (areas[:, :, None] + areas[:, None, :] - inter)


def suppressors(boxes: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(B, K, K)`` bool: ``[b, j, i]`` when box ``j`` ranks before box ``i`` (boxes sorted best
    first) and overlaps it by more than ``threshold``; invalid boxes suppress nothing."""
    k = boxes.shape[1]
    earlier = torch.ones((k, k), dtype=torch.bool, device=boxes.device).triu_(1)
    return (overlap_matrix(boxes) > threshold) & earlier & valid[:, :, None]


def greedy_nms_rounds(suppress: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor,
                      rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy non-maximum suppression of a whole batch, without waiting on the host.

    Greedy NMS keeps box ``i`` when no kept box before it suppresses it. Each round applies that rule
    to every box at once from the previous round's verdicts; a box's verdict is final once the verdicts
    of the boxes before it are, so the rounds settle on greedy NMS's own answer (exactly) after as many
    rounds as the longest chain of suppressions, a handful for faces.

    Args:
        suppress: ``(B, K, K)`` from :func:`suppressors`.
        valid: ``(B, K)`` boxes taking part.
        keep: ``(B, K)`` verdicts to start from (``valid`` at first, or an earlier call's result).
        rounds: Rounds to run before checking.

    Returns:
        The verdicts and a ``(B,)`` bool tensor: settled (one more round changed nothing). Where it is
        false, call again with these verdicts.
    """
    for _ in range(rounds):
        keep = valid & ~(suppress & keep[:, :, None]).any(1)
    following = valid & ~(suppress & keep[:, :, None]).any(1)
    return following, (following == keep).all(1)


def largest_central_rank(boxes: torch.Tensor, keep: torch.Tensor, image_hw: torch.Tensor) -> torch.Tensor:
    """:func:`select_largest_central` for a batch: ``(B, K)`` rank of each kept box (0 = best; boxes
    not kept rank last), from ``(B, K, 4)`` boxes and ``(B, 2)`` integer image sizes."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    centre = (image_hw // 2).to(boxes.dtype)
    off = ((boxes[..., 0] + boxes[..., 2]) / 2 - centre[:, 1, None]) ** 2 + \
          ((boxes[..., 1] + boxes[..., 3]) / 2 - centre[:, 0, None]) ** 2
    value = torch.where(keep, area - off * 2.0, float("-inf"))
    order = value.sort(dim=1, descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))


def keypoints_fit(boxes: np.ndarray, kps: np.ndarray, *, min_spread: float = 0.15, grow: float = 0.25) -> np.ndarray:
    """Whether each box's five keypoints are plausible for it: all inside the box grown by ``grow``
    of its size, and spread over at least ``min_spread`` of its diagonal (their widest distance).

    A box at the wrong scale (a head with its hair taken for a face, a box two or three times the
    face) carries keypoints bunched in a part of it. Real faces measure 0.27-0.53 with dlib's tight
    boxes (the demo's and the people scene's detections, the packaged photos); SCRFD's boxes also
    hold the forehead, and the ArcFace template's points give about 0.29 there, so a box twice the
    face's size gives about 0.145 and three times about 0.1. (dlib's own keypoints are fitted inside
    its box, so for the builtin pack the check only catches points pushed outside it.)

    Example:
        >>> kps = np.array([[[38, 45], [62, 45], [50, 58], [40, 72], [60, 72]]], np.float32)
        >>> keypoints_fit(np.array([[20, 20, 80, 90]], np.float32), kps).tolist()
        [True]
        >>> keypoints_fit(np.array([[-40, -30, 140, 180]], np.float32), kps).tolist()
        [False]
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    kps = np.asarray(kps, np.float32).reshape(len(boxes), -1, 2)
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    mx, my = (grow * w)[:, None], (grow * h)[:, None]
    inside = ((kps[..., 0] >= boxes[:, :1] - mx) & (kps[..., 0] <= boxes[:, 2:3] + mx)
              & (kps[..., 1] >= boxes[:, 1:2] - my) & (kps[..., 1] <= boxes[:, 3:4] + my)).all(axis=1)
    widest = np.sqrt(((kps[:, :, None] - kps[:, None]) ** 2).sum(-1)).reshape(len(boxes), -1).max(axis=1)
    return inside & (widest >= min_spread * np.hypot(w, h))
