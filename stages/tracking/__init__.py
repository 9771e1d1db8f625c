"""Tracking core: ByteTrack association, a batched box Kalman filter, smoothing and MOT metrics.

Everything here works on plain numpy arrays; the pipeline stage that wraps it converts to and from
:class:`stages.face.Face`.
"""

from .bytetrack import ByteTracker, Track, TrackResult, TrackState, assign, box_iou
from .kalman import KalmanBoxFilter, xyah_to_xyxy, xyxy_to_xyah
from .metrics import mot_metrics
from .smoothing import OneEuroBank, OneEuroFilter

__all__ = [
    "ByteTracker",
    "KalmanBoxFilter",
    "OneEuroBank",
    "OneEuroFilter",
    "Track",
    "TrackResult",
    "TrackState",
    "assign",
    "box_iou",
    "mot_metrics",
    "xyah_to_xyxy",
    "xyxy_to_xyah",
]
