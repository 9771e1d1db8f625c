"""The tracker stage: persistent track ids, faces on every frame, steady landmarks, per-track identity."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.frame import Frame
from pipeline.stage import RunContext, Transform

from .face import Face
from .tracking.bytetrack import ByteTracker, Track, box_iou
from .tracking.identity import IdentityCache
from .tracking.selection import FaceSelector
from .tracking.smoothing import OneEuroBank


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


@dataclass
class _Memory:
    """The last observed geometry of a track, for its predicted frames."""

    box: np.ndarray
    kps: np.ndarray | None
    landmarks: np.ndarray | None


def _move(points: np.ndarray | None, src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Carry points from box ``src`` to box ``dst`` (scale about the centres, then shift)."""
    if points is None:
        return None
    sw, sh = max(src[2] - src[0], 1e-3), max(src[3] - src[1], 1e-3)
    scale = np.array([(dst[2] - dst[0]) / sw, (dst[3] - dst[1]) / sh], np.float32)
    c_src = np.array([(src[0] + src[2]) / 2, (src[1] + src[3]) / 2], np.float32)
    c_dst = np.array([(dst[0] + dst[2]) / 2, (dst[1] + dst[3]) / 2], np.float32)
    return ((points - c_src) * scale + c_dst).astype(np.float32)


class Tracker(Transform):
    """ByteTrack on the detector's boxes, one independent tracker per stream.

    For every frame it gives each face its track id, and makes sure later stages see every tracked
    face on every frame: on frames the detector skipped (``detector.every``) and for up to
    ``coast_frames`` frames after a missed detection, faces come from the motion model
    (``predicted=True``), their keypoints carried along from the last observation. Keypoints and
    landmarks are smoothed per track (One Euro filter) to remove jitter. It owns the identity cache,
    tells the embedder which faces to embed, and applies the geometric face selection.

    Args:
        track_thresh, low_thresh, new_track_thresh, match_thresh: ByteTrack's thresholds.
        buffer_s: How long a lost track is kept for the tracker to pick up again.
        min_hits: Detector runs before a new track is confirmed.
        coast_frames: Frames a just-lost track keeps being emitted from its prediction.
        coast_behind: Also emit a lost track whose predicted box lies on a face in view (hidden
            behind it). Off for swaps (it would be painted onto the face in front); on for
            anonymising (a face emerging from behind another stays hidden).
        smooth: Smooth keypoints and landmarks per track.
        min_cutoff, beta: The One Euro filter's jitter cutoff (Hz) and speed coefficient.
        selector: Geometric face selection (``all``, ``one``).
        cache: The identity cache (created here if not given).
        every: The detector's ``every`` (detector runs per frame set the tracker's clock).
        reid_s: How long an ended track's identity is remembered (sets the cache's frame count
            once the stream's frame rate is known; ``None`` keeps the cache's own).
        rechoose_s: ``one`` selection: how long to wait for the chosen person (likewise).
    """

    name = "tracker"

    def __init__(
        self,
        *,
        track_thresh: float = 0.5,
        low_thresh: float = 0.1,
        new_track_thresh: float = 0.6,
        match_thresh: float = 0.8,
        buffer_s: float = 1.0,
        min_hits: int = 2,
        coast_frames: int = 3,
        coast_behind: bool = False,
        smooth: bool = True,
        min_cutoff: float = 1.0,
        beta: float = 0.05,
        selector: FaceSelector | None = None,
        cache: IdentityCache | None = None,
        every: int = 1,
        reid_s: float | None = None,
        rechoose_s: float | None = None,
    ) -> None:
        if buffer_s <= 0 or coast_frames < 0 or every < 1:
            raise ValueError("buffer_s must be > 0, coast_frames >= 0 and every >= 1")
        self._params = dict(track_thresh=track_thresh, low_thresh=low_thresh, new_track_thresh=new_track_thresh,
                            match_thresh=match_thresh, min_hits=min_hits)
        ByteTracker(**self._params)  # validate now, with clear errors
        if min_cutoff <= 0 or beta < 0:
            raise ValueError("min_cutoff must be > 0 and beta >= 0")
        self.buffer_s = buffer_s
        self.coast_frames = coast_frames
        self.coast_behind = coast_behind
        self.smooth = smooth
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.selector = selector or FaceSelector(mode="all", identity=None)
        if self.selector.by_embedding and cache is None:
            raise ValueError("selection by reference needs the embedder's identity cache")
        self.cache = cache if cache is not None else IdentityCache()
        self.every = every
        self.reid_s = reid_s
        self.rechoose_s = rechoose_s
        self._tracker: ByteTracker | None = None
        self._memory: dict[int, _Memory] = {}
        self._kps_bank = OneEuroBank(min_cutoff=min_cutoff, beta=beta)
        self._landmark_bank = OneEuroBank(min_cutoff=min_cutoff, beta=beta)
        self._lock = threading.Lock()
        self.tracks_started = 0
        self.predicted_faces = 0

    def open(self, ctx: RunContext) -> None:
        fps = float(ctx.source.frame_rate) if ctx.source and ctx.source.frame_rate else 30.0
        if self.reid_s is not None:
            self.cache.reid_frames = round(self.reid_s * fps)
        if self.rechoose_s is not None:
            self.selector.rechoose_frames = round(self.rechoose_s * fps)
        self._tracker = ByteTracker(**self._params, frame_rate=fps / self.every, track_buffer=max(1, round(30 * self.buffer_s)))

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            self._track(frame)
        return frames

    def _track(self, frame: Frame) -> None:
        tracker = self._tracker
        assert tracker is not None
        before = tracker.ids
        if frame.meta.get("detected", True):
            faces = frame.faces
            boxes = np.stack([f.box for f in faces]) if faces else np.zeros((0, 4), np.float32)
            scores = np.array([f.score for f in faces], np.float32)
            ids = tracker.update(boxes, scores, snapshot=False).ids.tolist()
            keep_untracked = self._params["new_track_thresh"]
            kept = []
            for face, tid in zip(faces, ids):
                face.track_id = tid if tid >= 0 else None
                if tid >= 0 or face.score >= keep_untracked:
                    kept.append(face)
            matched = {tid for tid in ids if tid >= 0}
            coasting = [t for t in tracker.lost(self.coast_frames) if t.id not in matched] if self.coast_frames else []
            if coasting and kept and not self.coast_behind:
                # A lost track whose predicted box lies on a face in view is hidden behind it: nothing
                # of it is visible, and emitting it would paint it onto the face in front.
                overlap = box_iou(np.stack([np.asarray(t.box, np.float32) for t in coasting]),
                                  np.stack([f.box for f in kept])).max(axis=1)
                coasting = [t for t, o in zip(coasting, overlap) if o < 0.3]
            frame.faces = kept + [self._predicted(t) for t in coasting]
        else:
            result = tracker.predict(1)
            frame.faces = [self._predicted(t) for t in result.tracks if t.id in self._memory]
        ended = before - tracker.ids
        if ended:
            self.cache.end(ended, frame.index)
            with self._lock:
                for tid in ended:
                    self._memory.pop(tid, None)
                self._kps_bank.drop(ended)
                self._landmark_bank.drop(ended)
        observed = [f for f in frame.faces if f.track_id is not None and not f.predicted]
        if observed:
            self._observe(observed, frame.time)
        for face in frame.faces:
            if face.track_id is None or face.predicted:
                face.needs_embedding = False
            else:
                face.needs_embedding = self.cache.needs_embedding(face.track_id, frame.index, face.quality)
        self.selector.apply(frame.faces, (frame.width, frame.height), self.cache, frame.index)

    def _observe(self, faces: list[Face], t: float) -> None:
        """Smooth the keypoints and landmarks of the faces the detector saw, score their quality, and
        remember their geometry for the frames to come."""
        keys = [f.track_id for f in faces]
        with_kps = [i for i, f in enumerate(faces) if f.kps is not None]
        if self.smooth:
            if with_kps:
                smoothed = self._kps_bank([keys[i] for i in with_kps], np.stack([faces[i].kps for i in with_kps]), t)
                for i, k in zip(with_kps, smoothed.astype(np.float32)):
                    faces[i].kps = k
            dense = [i for i, f in enumerate(faces) if f.landmarks is not None]
            if dense:
                with self._lock:
                    smoothed = self._landmark_bank([keys[i] for i in dense],
                                                   np.stack([faces[i].landmarks for i in dense]), t)
                for i, lm in zip(dense, smoothed.astype(np.float32)):
                    faces[i].landmarks = lm
        boxes = np.stack([f.box for f in faces])
        scores = np.array([f.score for f in faces], np.float32)
        if len(with_kps) == len(faces):
            q = qualities(boxes, scores, np.stack([f.kps for f in faces]))
        else:
            q = np.array([face_quality(f) for f in faces])
        for face, quality in zip(faces, q.tolist()):
            face.quality = quality
            if face.track_id not in self._memory:
                self.tracks_started += 1
            self._memory[face.track_id] = _Memory(face.box, face.kps, face.landmarks)  # type: ignore[index]

    def smooth_landmarks(self, track_id: int, points: np.ndarray, t: float) -> np.ndarray:
        """Smooth one track's dense landmarks computed by a later stage (thread-safe)."""
        if not self.smooth:
            return points
        with self._lock:
            return self._landmark_bank([track_id], points[None], t)[0].astype(np.float32)

    def _predicted(self, track: Track) -> Face:
        self.predicted_faces += 1
        mem = self._memory.get(track.id)
        box = np.asarray(track.box, np.float32)
        kps = _move(mem.kps, mem.box, box) if mem else None
        landmarks = _move(mem.landmarks, mem.box, box) if mem else None
        return Face(box=box, score=float(track.score), kps=kps, landmarks=landmarks, track_id=track.id, predicted=True)

    def report(self) -> dict[str, Any]:
        return {"tracks": self.tracks_started, "predicted_faces": self.predicted_faces,
                "reidentified": self.cache.reidentified, "selection": self.selector.mode}
