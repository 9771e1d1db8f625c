"""Multi-object tracking metrics (CLEAR MOT and identity scores) for a whole sequence.

Uses the ``motmetrics`` package where it can be imported, and otherwise a small implementation of
the CLEAR MOT counts (misses, false positives, ID switches, MOTA, MOTP, precision, recall) that
follows motmetrics' matching rules. Ground truth and hypotheses are matched per frame by IoU;
``motp`` is motmetrics' mean ``1 - IoU`` of the matched pairs (lower is better).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from .bytetrack import box_iou

#: One frame: ground-truth ids ``(G,)`` and boxes ``(G, 4)``, hypothesis ids ``(H,)`` and boxes
#: ``(H, 4)``, boxes as ``[x1, y1, x2, y2]``.
MotFrame = tuple[Sequence[int] | np.ndarray, np.ndarray, Sequence[int] | np.ndarray, np.ndarray]

#: Keys computed by both back ends (motmetrics' names; ``num_detections`` counts every matched
#: pair, switches included).
COMMON_METRICS = (
    "num_frames",
    "num_objects",
    "num_predictions",
    "num_detections",
    "num_misses",
    "num_false_positives",
    "num_switches",
    "mota",
    "motp",
    "precision",
    "recall",
)
#: Extra keys computed with motmetrics only.
MOTMETRICS_ONLY = ("num_fragmentations", "idf1", "idp", "idr")

_UNMATCHABLE = 1e6


def mot_metrics(
    frames: Iterable[MotFrame],
    *,
    iou_thresh: float = 0.5,
    backend: Literal["auto", "motmetrics", "fallback"] = "auto",
) -> dict[str, float]:
    """Score a tracker's output against ground truth over a sequence.

    Args:
        frames: For each frame ``(gt_ids, gt_boxes, hyp_ids, hyp_boxes)``.
        iou_thresh: Least IoU for a ground-truth box and a hypothesis to match.
        backend: ``"motmetrics"``, ``"fallback"``, or ``"auto"`` (motmetrics where importable).

    Returns:
        The :data:`COMMON_METRICS`, plus :data:`MOTMETRICS_ONLY` with motmetrics, as floats
        (NaN where undefined, e.g. MOTA without ground truth).

    Raises:
        ValueError: If a frame's ids and boxes disagree in length, ``iou_thresh`` is not in
            ``(0, 1]``, or ``backend`` is unknown.
        ImportError: If ``backend="motmetrics"`` and it cannot be imported.

    Example:
        >>> box = np.array([[0, 0, 10, 10.0]])
        >>> m = mot_metrics([([1], box, [7], box), ([1], box, [8], box)], backend="fallback")
        >>> m["num_switches"], m["mota"]
        (1.0, 0.5)
    """
    if not 0 < iou_thresh <= 1:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh!r}")
    if backend not in ("auto", "motmetrics", "fallback"):
        raise ValueError(f"backend must be 'auto', 'motmetrics' or 'fallback', got {backend!r}")
    checked = [_check_frame(*frame) for frame in frames]
    use_motmetrics = backend == "motmetrics" or (
        backend == "auto" and importlib.util.find_spec("motmetrics") is not None
    )
    if use_motmetrics:
        return _with_motmetrics(checked, iou_thresh)
    return _clear_mot(checked, iou_thresh)


def _check_frame(
    gt_ids: Sequence[int] | np.ndarray,
    gt_boxes: np.ndarray,
    hyp_ids: Sequence[int] | np.ndarray,
    hyp_boxes: np.ndarray,
) -> tuple[list[int], np.ndarray, list[int], np.ndarray]:
    """Ids as int lists and boxes as ``(K, 4)`` float64, after checking their lengths agree."""
    gt = [int(i) for i in np.asarray(gt_ids).reshape(-1)]
    hyp = [int(i) for i in np.asarray(hyp_ids).reshape(-1)]
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    hyp_boxes = np.asarray(hyp_boxes, dtype=np.float64).reshape(-1, 4)
    if len(gt) != len(gt_boxes) or len(hyp) != len(hyp_boxes):
        raise ValueError(
            f"ids and boxes disagree: {len(gt)} gt ids for {len(gt_boxes)} boxes, "
            f"{len(hyp)} hypothesis ids for {len(hyp_boxes)} boxes"
        )
    return gt, gt_boxes, hyp, hyp_boxes


def _distances(gt_boxes: np.ndarray, hyp_boxes: np.ndarray, iou_thresh: float) -> np.ndarray:
    """``1 - IoU`` per pair, NaN where the IoU is under ``iou_thresh`` (motmetrics' convention).

    Computed here because ``motmetrics.distances.iou_matrix`` (1.4) calls ``np.asfarray``, which
    NumPy 2 removed.
    """
    iou = box_iou(gt_boxes, hyp_boxes)
    return np.where(iou >= iou_thresh, 1.0 - iou, np.nan)


def _with_motmetrics(
    frames: list[tuple[list[int], np.ndarray, list[int], np.ndarray]], iou_thresh: float
) -> dict[str, float]:
    """All metrics, computed by motmetrics."""
    import motmetrics

    accumulator = motmetrics.MOTAccumulator(auto_id=True)
    for gt_ids, gt_boxes, hyp_ids, hyp_boxes in frames:
        accumulator.update(gt_ids, hyp_ids, _distances(gt_boxes, hyp_boxes, iou_thresh))
    names = [*COMMON_METRICS, *MOTMETRICS_ONLY]
    summary = motmetrics.metrics.create().compute(accumulator, metrics=names, name="sequence")
    return {name: float(summary[name].iloc[0]) for name in names}


def _clear_mot(
    frames: list[tuple[list[int], np.ndarray, list[int], np.ndarray]], iou_thresh: float
) -> dict[str, float]:
    """The CLEAR MOT counts, with motmetrics' matching and switch rules."""
    last_match: dict[int, int] = {}
    objects = predictions = detections = switches = 0
    distance_sum = 0.0
    for gt_ids, gt_boxes, hyp_ids, hyp_boxes in frames:
        distances = _distances(gt_boxes, hyp_boxes, iou_thresh)
        for i, j in _match_frame(gt_ids, hyp_ids, distances, last_match):
            switches += gt_ids[i] in last_match and last_match[gt_ids[i]] != hyp_ids[j]
            last_match[gt_ids[i]] = hyp_ids[j]
            distance_sum += distances[i, j]
            detections += 1
        objects += len(gt_ids)
        predictions += len(hyp_ids)
    misses = objects - detections
    false_positives = predictions - detections
    nan = float("nan")
    return {
        "num_frames": float(len(frames)),
        "num_objects": float(objects),
        "num_predictions": float(predictions),
        "num_detections": float(detections),
        "num_misses": float(misses),
        "num_false_positives": float(false_positives),
        "num_switches": float(switches),
        "mota": 1.0 - (misses + false_positives + switches) / objects if objects else nan,
        "motp": float(distance_sum) / detections if detections else nan,
        "precision": detections / predictions if predictions else nan,
        "recall": detections / objects if objects else nan,
    }


def _match_frame(
    gt_ids: list[int], hyp_ids: list[int], distances: np.ndarray, last_match: dict[int, int]
) -> list[tuple[int, int]]:
    """Pairs ``(gt index, hypothesis index)`` of one frame, CLEAR MOT style.

    A ground-truth object keeps last frame's hypothesis while they still overlap enough; the others
    are matched with the most pairs at the least total distance.
    """
    hyp_index = {h: j for j, h in enumerate(hyp_ids)}
    kept = [
        (i, hyp_index[last_match[g]])
        for i, g in enumerate(gt_ids)
        if last_match.get(g) in hyp_index and np.isfinite(distances[i, hyp_index[last_match[g]]])
    ]
    free = np.isfinite(distances)
    for i, j in kept:
        free[i, :] = False
        free[:, j] = False
    rows, cols = linear_sum_assignment(np.where(free, distances, _UNMATCHABLE))
    return kept + [(int(i), int(j)) for i, j in zip(rows, cols, strict=True) if free[i, j]]
