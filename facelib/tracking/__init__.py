"""Tracking core: ByteTrack association, a batched box Kalman filter, smoothing, per-track identity,
face selection and MOT metrics.

Everything here works on plain numpy arrays and :class:`facestream.facelib.face.Face` records; the
stages wrap it. Names load on first use (ByteTrack's assignment pulls in scipy).
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "ByteTracker": "bytetrack", "Track": "bytetrack", "TrackResult": "bytetrack", "TrackState": "bytetrack",
    "assign": "bytetrack", "box_iou": "bytetrack",
    "KalmanBoxFilter": "kalman", "xyah_to_xyxy": "kalman", "xyxy_to_xyah": "kalman",
    "mot_metrics": "metrics",
    "OneEuroBank": "smoothing", "OneEuroFilter": "smoothing",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
