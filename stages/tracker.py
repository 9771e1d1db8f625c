"""The tracker stage: persistent track ids, faces on every frame, steady keypoints, view quality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from facestream.pipeline.config import check, positive
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Transform

from facestream.facelib.face import Face, face_quality, qualities
from facestream.facelib.tracking.bytetrack import ByteTracker, Track, box_iou
from facestream.facelib.tracking.smoothing import OneEuroBank


@dataclass
class _Memory:
    """The last observed geometry of a track, for its predicted frames."""

    box: np.ndarray
    kps: np.ndarray | None
    landmarks: np.ndarray | None
    jumps: int = 0  # consecutive observations much larger than ``box``
    turning: bool = False  # the face was turning away when last seen (see Tracker.TURNING)


class _Feed:
    """One feed's ByteTrack, and the run-wide ids of its confirmed tracks."""

    def __init__(self, tracker: ByteTracker) -> None:
        self.tracker = tracker
        self.ids: dict[int, int] = {}  # the tracker's own id -> the run-wide id

    def __getitem__(self, local: int) -> int:
        return self.ids[local]


def _side(box: np.ndarray) -> float:
    return float(np.sqrt(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)))


def _move(points: np.ndarray | None, src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Carry points from box ``src`` to box ``dst`` (scale about the centres, then shift)."""
    if points is None:
        return None
    sw, sh = max(src[2] - src[0], 1e-3), max(src[3] - src[1], 1e-3)
    scale = np.array([(dst[2] - dst[0]) / sw, (dst[3] - dst[1]) / sh], np.float32)
    c_src = np.array([(src[0] + src[2]) / 2, (src[1] + src[3]) / 2], np.float32)
    c_dst = np.array([(dst[0] + dst[2]) / 2, (dst[1] + dst[3]) / 2], np.float32)
    return ((points - c_src) * scale + c_dst).astype(np.float32)


@dataclass
class TrackerSettings:
    """ByteTrack association, coasting through missed detections, keypoint smoothing (the
    ``tracker`` section of a preset).

    Attributes:
        enabled: ``auto``: on wherever faces are analysed; ``false`` turns it off (selection ``all``
            only).
        track_thresh, low_thresh, new_track_thresh, match_thresh: ByteTrack's thresholds.
        buffer_s: How long a lost track waits to be picked up again.
        min_hits: Detector runs before a new track is confirmed.
        coast_frames: Frames a face stays (from its predicted box) after a missed detection.
        coast_behind: Keep a lost face that is predicted behind a face in view. Off for swaps (it
            would be painted onto the face in front); on for anonymising (a face emerging from behind
            another stays hidden).
        smooth: Smooth keypoints and landmarks per track.
        min_cutoff: One Euro filter: jitter cutoff at rest (Hz); lower is steadier.
        beta: One Euro filter: how fast the cutoff rises with speed; higher lags less.

    Example:
        >>> TrackerSettings(coast_frames=5).coast_frames
        5
    """

    enabled: Literal["auto"] | bool = "auto"
    track_thresh: float = 0.5
    low_thresh: float = 0.1
    new_track_thresh: float = 0.6
    match_thresh: float = 0.8
    buffer_s: float = 1.0
    min_hits: int = 2
    coast_frames: int = 3
    coast_behind: bool = False
    smooth: bool = True
    min_cutoff: float = 1.0
    beta: float = 0.05

    def __post_init__(self) -> None:
        check(0 < self.track_thresh <= 1, "track_thresh", self.track_thresh, "must be within (0, 1]")
        check(0 <= self.low_thresh <= self.track_thresh, "low_thresh", self.low_thresh,
              f"must be within 0..track_thresh ({self.track_thresh})")
        check(0 <= self.new_track_thresh <= 1, "new_track_thresh", self.new_track_thresh, "must be within 0..1")
        check(0 < self.match_thresh <= 1, "match_thresh", self.match_thresh, "must be within (0, 1]")
        positive(self, "buffer_s", "min_hits", "min_cutoff")
        check(self.coast_frames >= 0, "coast_frames", self.coast_frames, "must be >= 0")
        check(self.beta >= 0, "beta", self.beta, "must be >= 0")

    @property
    def on(self) -> bool:
        return self.enabled is True or self.enabled == "auto"


class Tracker(Transform):
    """ByteTrack on the detector's boxes: persistent track ids, and every tracked face on every frame.

    For every frame it gives each face its track id, and makes sure later stages see every tracked
    face on every frame: on frames the detector skipped (``frame.detected`` is False) and for up to
    ``coast_frames`` frames after a missed detection, faces come from the motion model
    (``predicted=True``), their keypoints carried along from the last observation. Keypoints (and
    the detector's landmarks) are smoothed per track (One Euro filter) to remove jitter, and each
    observed face's ``quality`` is scored for the embedder. A face's ``plausible`` becomes its
    track's majority verdict, so a doubtful view neither blinks a swap off nor lets a wrong-scale box
    through; an observed face whose box jumps to half as large again is doubted for that look, and
    a predicted face never grows beyond its last observed size. A face lost while turning away
    (its eyes drawing together) is not swapped from its old geometry; anonymising still hides it. Tracks it ends are listed in
    ``frame.tracks_ended`` for the stages after it.

    Frames of several feeds (``frame.stream``) are tracked apart: one ByteTrack per feed, and
    track ids unique across feeds (given in the order tracks are confirmed), so the stages after it
    keep what they know per track without knowing about feeds.

    Args:
        settings: Thresholds, coasting and smoothing.
        every: The detector's ``every`` (detector runs per frame set the tracker's clock).
        smooth_landmarks: Smooth dense landmarks here (off when a landmarker stage follows and
            smooths them itself).

    Example:
        >>> tracker = Tracker(TrackerSettings(coast_frames=5), every=2)
        >>> tracker.settings.coast_frames, tracker.every
        (5, 2)
    """

    name = "tracker"
    JUMP = 1.5  # an observed box this many times its track's side is a jump ...
    JUMP_FRAMES = 5  # ... unless it holds for this many looks in a row (a cut, a fast zoom)
    TURNING = 0.75  # eyes this much closer (for the box's width) than the track's most frontal view

    def __init__(self, settings: TrackerSettings | None = None, *, every: int = 1,
                 smooth_landmarks: bool = True) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.settings = s = settings or TrackerSettings()
        self.every = every
        self.smooth_landmarks = smooth_landmarks
        self._feeds: dict[int, _Feed] = {}
        self._rates: list[float] = []
        self._next_id = 1
        self._memory: dict[int, _Memory] = {}
        self._plausible: dict[int, list[int]] = {}  # track -> [plausible detections, detections]
        self._frontal: dict[int, float] = {}  # track -> its most frontal view's eye distance / box width
        self._kps_bank = OneEuroBank(min_cutoff=s.min_cutoff, beta=s.beta)
        self._landmark_bank = OneEuroBank(min_cutoff=s.min_cutoff, beta=s.beta)
        self.tracks_started = 0
        self.predicted_faces = 0
        self.size_jumps = 0

    def open(self, ctx: RunContext) -> None:
        feeds = [c.source for c in ctx.streams] or [ctx.source]
        self._rates = [float(i.frame_rate) if i and i.frame_rate else 30.0 for i in feeds]

    def _feed(self, stream: int) -> _Feed:
        feed = self._feeds.get(stream)
        if feed is None:
            s = self.settings
            fps = self._rates[stream] if stream < len(self._rates) else 30.0
            feed = self._feeds[stream] = _Feed(ByteTracker(
                track_thresh=s.track_thresh, low_thresh=s.low_thresh, new_track_thresh=s.new_track_thresh,
                match_thresh=s.match_thresh, min_hits=s.min_hits, frame_rate=fps / self.every,
                track_buffer=max(1, round(30 * s.buffer_s))))
        return feed

    def _name_new(self, feed: _Feed) -> None:
        """Give run-wide ids to the feed's newly confirmed tracks (in the order of their own ids)."""
        for local in sorted(feed.tracker.ids - feed.ids.keys()):
            feed.ids[local] = self._next_id
            self._next_id += 1

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            self._track(frame)
        return frames

    def _track(self, frame: Frame) -> None:
        s = self.settings
        feed = self._feed(frame.stream)
        tracker = feed.tracker
        before = tracker.ids
        if frame.detected:
            faces = frame.faces
            boxes = np.stack([f.box for f in faces]) if faces else np.zeros((0, 4), np.float32)
            scores = np.array([f.score for f in faces], np.float32)
            local = tracker.update(boxes, scores, snapshot=False).ids.tolist()
            self._name_new(feed)
            ids = [feed[t] if t >= 0 else -1 for t in local]
            kept = []
            for face, tid in zip(faces, ids):
                face.track_id = tid if tid >= 0 else None
                if tid >= 0 or face.score >= s.new_track_thresh:
                    kept.append(face)
            matched = {tid for tid in ids if tid >= 0}
            coasting = [t for t in tracker.lost(s.coast_frames) if feed[t.id] not in matched] if s.coast_frames else []
            if coasting and kept and not s.coast_behind:
                # A lost track whose predicted box lies on a face in view is hidden behind it: nothing
                # of it is visible, and emitting it would paint it onto the face in front.
                overlap = box_iou(np.stack([np.asarray(t.box, np.float32) for t in coasting]),
                                  np.stack([f.box for f in kept])).max(axis=1)
                coasting = [t for t, o in zip(coasting, overlap) if o < 0.3]
            frame.faces = kept + [self._predicted(t, feed[t.id], missed=True) for t in coasting]
        else:
            result = tracker.predict(1)
            frame.faces = [self._predicted(t, feed[t.id], missed=False) for t in result.tracks
                           if feed[t.id] in self._memory]
        ended = {feed.ids.pop(t) for t in before - tracker.ids}
        if ended:
            frame.tracks_ended = frozenset(ended)
            for tid in ended:
                self._memory.pop(tid, None)
                self._plausible.pop(tid, None)
                self._frontal.pop(tid, None)
            self._kps_bank.drop(ended)
            self._landmark_bank.drop(ended)
        observed = [f for f in frame.faces if f.track_id is not None and not f.predicted]
        if observed:
            self._observe(observed, frame.time)

    def _observe(self, faces: list[Face], t: float) -> None:
        """Smooth the keypoints and landmarks of the faces the detector saw, score their quality, and
        remember their geometry for the frames to come."""
        keys = [f.track_id for f in faces]
        with_kps = [i for i, f in enumerate(faces) if f.kps is not None]
        if self.settings.smooth:
            if with_kps:
                smoothed = self._kps_bank([keys[i] for i in with_kps], np.stack([faces[i].kps for i in with_kps]), t)
                for i, k in zip(with_kps, smoothed.astype(np.float32)):
                    faces[i].kps = k
            dense = [i for i, f in enumerate(faces) if f.landmarks is not None] if self.smooth_landmarks else []
            if dense:
                smoothed = self._landmark_bank([keys[i] for i in dense], np.stack([faces[i].landmarks for i in dense]), t)
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
            # One doubtful detection does not decide: the track's majority does, on every frame.
            votes = self._plausible.setdefault(face.track_id, [0, 0])  # type: ignore[arg-type]
            votes[0] += face.plausible
            votes[1] += 1
            face.plausible = 2 * votes[0] >= votes[1]
            mem = self._memory.get(face.track_id)  # type: ignore[arg-type]
            if mem is None:
                self.tracks_started += 1
            elif _side(face.box) > self.JUMP * _side(mem.box) and mem.jumps + 1 < self.JUMP_FRAMES:
                # A face does not grow by half between two looks: a box that does is doubted (not
                # swapped) and not taken as the track's size, unless it holds for JUMP_FRAMES looks.
                face.plausible = False
                mem.jumps += 1
                self.size_jumps += 1
                continue
            self._memory[face.track_id] = _Memory(face.box, face.kps, face.landmarks,  # type: ignore[index]
                                                  turning=self._turning(face))

    def _turning(self, face: Face) -> bool:
        """Whether the face looks turned away from its most frontal view so far: its eyes closer
        together, for the size of its box, than TURNING times the most seen on its track."""
        if face.kps is None:
            return False
        frontal = float(np.linalg.norm(face.kps[0] - face.kps[1])) / max(float(face.box[2] - face.box[0]), 1e-6)
        peak = self._frontal.get(face.track_id, 0.0)  # type: ignore[arg-type]
        self._frontal[face.track_id] = max(peak, frontal)  # type: ignore[index]
        return frontal < self.TURNING * peak

    def _predicted(self, track: Track, tid: int, *, missed: bool) -> Face:
        """The face of ``track`` (run-wide id ``tid``) from the motion model."""
        self.predicted_faces += 1
        mem = self._memory.get(tid)
        box = np.asarray(track.box, np.float32)
        if mem is not None:
            # A face the detector does not see cannot grow: the motion model keeps its position,
            # never more than its last observed size.
            w, h = box[2] - box[0], box[3] - box[1]
            mw, mh = mem.box[2] - mem.box[0], mem.box[3] - mem.box[1]
            if w > mw or h > mh:
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                w, h = min(w, mw), min(h, mh)
                box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)
        kps = _move(mem.kps, mem.box, box) if mem else None
        landmarks = _move(mem.landmarks, mem.box, box) if mem else None
        votes = self._plausible.get(tid, [1, 1])
        # A face the detector looked for and did not find, while it was turning away, has most
        # likely turned further: its old geometry would paint a frontal face over a profile.
        turned = missed and mem is not None and mem.turning
        return Face(box=box, score=float(track.score), kps=kps, landmarks=landmarks, track_id=tid, predicted=True,
                    plausible=2 * votes[0] >= votes[1], turned_away=turned)

    def report(self) -> dict[str, Any]:
        return {"tracks": self.tracks_started, "predicted_faces": self.predicted_faces, "size_jumps": self.size_jumps}
