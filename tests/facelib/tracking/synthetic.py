"""Seeded synthetic multi-face sequences with ground truth, and helpers to run trackers over them.

A sequence is scripted face by face (:class:`FaceScript`: a box moving at a roughly constant
velocity, possibly hidden for a while, possibly entering or leaving the picture) and seen through a
simulated detector (:class:`DetectorModel`: box jitter, periodic misses, low-score false positives,
low scores for faces half covered by a nearer face).

Ground truth lists the faces a perfect tracker should report on each frame: at least half inside
the picture, not hidden, and not covered 60 % or more by a nearer face. Its ids identify *visits*:
a face keeps its ground-truth id while it is occluded, but one that leaves the picture and comes
back gets a new one, since telling that it is the same person is re-identification, not tracking.
:attr:`SyntheticSequence.persons` maps visits back to persons.

Used by the tracking tests and ``bench.tracker_core``; stdlib, numpy and ``stages.tracking`` only
(Roboflow's ``trackers`` is imported when :func:`run_roboflow` is called).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from facestream.facelib.tracking import ByteTracker
from facestream.facelib.tracking.metrics import MotFrame

#: Face boxes are this much taller than wide.
ASPECT = 1.25
#: A face at least this covered by a nearer one is invisible (not detected, not in ground truth).
HIDDEN_COVER = 0.6
#: A face at least this covered (and less than ``HIDDEN_COVER``) is detected with a low score.
LOW_SCORE_COVER = 0.25


@dataclass(frozen=True)
class FaceScript:
    """One face's path through a sequence.

    Attributes:
        person: Who it is; several scripts may share a person (leaving and coming back).
        start: Box centre on ``first_frame``, in pixels (may lie outside the picture).
        velocity: Mean velocity in pixels per frame.
        width: Box width in pixels (height is ``ASPECT`` times that).
        first_frame: First frame the face exists.
        last_frame: Frame after the last one it exists, or ``None`` for the end of the sequence.
        hidden: ``[start, stop)`` frame ranges during which something hides it completely.
        depth: Distance to the camera; a nearer face (smaller depth) covers a farther one.
    """

    person: int
    start: tuple[float, float]
    velocity: tuple[float, float]
    width: float = 100.0
    first_frame: int = 0
    last_frame: int | None = None
    hidden: tuple[tuple[int, int], ...] = ()
    depth: float = 0.0


@dataclass(frozen=True)
class DetectorModel:
    """How the simulated detector sees the true boxes.

    Attributes:
        jitter: Standard deviation of the noise on each box coordinate, as a fraction of the width.
        miss_every: Each face is missed on one frame in this many (each face at its own phase);
            0 never misses.
        false_positives: Mean number of false positives per frame (Poisson).
        score_range: Scores of clearly visible faces.
        covered_score_range: Scores of faces partly covered by a nearer face.
        false_positive_score_range: Scores of false positives.
    """

    jitter: float = 0.03
    miss_every: int = 0
    false_positives: float = 0.0
    score_range: tuple[float, float] = (0.6, 0.95)
    covered_score_range: tuple[float, float] = (0.15, 0.45)
    false_positive_score_range: tuple[float, float] = (0.05, 0.45)


@dataclass(frozen=True)
class SyntheticFrame:
    """What the detector gives on one frame, and the truth.

    Attributes:
        boxes: ``(N, 4)`` float32 detected ``[x1, y1, x2, y2]``, in random order.
        scores: ``(N,)`` float32 detection scores.
        det_gt_ids: ``(N,)`` int64 ground-truth id of each detection, -1 for a false positive.
        gt_ids: ``(G,)`` int64 ids of the faces a tracker should report.
        gt_boxes: ``(G, 4)`` float32 their true boxes, clipped to the picture.
    """

    boxes: np.ndarray
    scores: np.ndarray
    det_gt_ids: np.ndarray
    gt_ids: np.ndarray
    gt_boxes: np.ndarray


@dataclass(frozen=True)
class SyntheticSequence:
    """A generated sequence.

    Attributes:
        name: Scenario name.
        frames: One entry per frame.
        frame_rate: Frames per second.
        size: Picture ``(width, height)`` in pixels.
        persons: Ground-truth id to person.
    """

    name: str
    frames: tuple[SyntheticFrame, ...]
    frame_rate: float
    size: tuple[int, int]
    persons: Mapping[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[SyntheticFrame]:
        return iter(self.frames)


def generate(
    name: str,
    scripts: tuple[FaceScript, ...],
    detector: DetectorModel,
    *,
    n_frames: int,
    seed: int = 0,
    size: tuple[int, int] = (1280, 720),
    frame_rate: float = 30.0,
    speed_noise: float = 0.15,
) -> SyntheticSequence:
    """Generate a sequence from face scripts.

    Args:
        name: Scenario name.
        scripts: The faces.
        detector: The simulated detector.
        n_frames: Number of frames.
        seed: Seed of every random draw.
        size: Picture ``(width, height)``.
        frame_rate: Frames per second (recorded, not used for motion, which is per frame).
        speed_noise: Standard deviation (pixels per frame) of the velocity's random drift.

    Returns:
        The sequence.
    """
    rng = np.random.default_rng(seed)
    paths = [_path(script, n_frames, speed_noise, rng) for script in scripts]
    phases = rng.integers(0, max(detector.miss_every, 1), size=len(scripts))
    visits = _VisitIds()
    frames = []
    for frame in range(n_frames):
        alive = [i for i, path in enumerate(paths) if not np.isnan(path[frame, 0])]
        true_boxes = np.array([paths[i][frame] for i in alive]).reshape(-1, 4)
        clipped = _clip(true_boxes, size)
        inside = _area(clipped) >= 0.5 * _area(true_boxes)
        covered = _covered(true_boxes, np.array([scripts[i].depth for i in alive]))
        hidden = np.array([_is_hidden(scripts[i], frame) for i in alive], dtype=bool)
        visible = inside & ~hidden & (covered < HIDDEN_COVER)
        visit_of = visits.update([alive[k] for k in np.flatnonzero(inside)])
        seen = [alive[k] for k in np.flatnonzero(visible)]
        frames.append(
            _frame(
                gt_ids=np.array([visit_of[i] for i in seen], dtype=np.int64),
                gt_boxes=clipped[visible],
                covered=covered[visible],
                missed=np.array([_is_missed(frame, phases[i], detector) for i in seen], bool),
                detector=detector,
                size=size,
                rng=rng,
            )
        )
    persons = {gt: scripts[script].person for gt, script in visits.owner.items()}
    return SyntheticSequence(name, tuple(frames), frame_rate, size, persons)


class _VisitIds:
    """Ground-truth ids: a new one each time a face (re)enters the picture."""

    def __init__(self) -> None:
        self.current: dict[int, int] = {}
        self.owner: dict[int, int] = {}
        self._next = 1

    def update(self, inside: list[int]) -> dict[int, int]:
        """Ground-truth ids of the scripts inside the picture now; the others' visits end."""
        self.current = {script: gt for script, gt in self.current.items() if script in inside}
        for script in inside:
            if script not in self.current:
                self.current[script] = self._next
                self.owner[self._next] = script
                self._next += 1
        return self.current


def _path(
    script: FaceScript, n_frames: int, speed_noise: float, rng: np.random.Generator
) -> np.ndarray:
    """``(n_frames, 4)`` true boxes, NaN where the face does not exist."""
    first = script.first_frame
    last = n_frames if script.last_frame is None else min(script.last_frame, n_frames)
    out = np.full((n_frames, 4), np.nan)
    steps = last - first
    if steps <= 0:
        return out
    drift = np.zeros((steps, 2))
    noise = rng.normal(0.0, speed_noise, size=(steps, 2))
    for t in range(1, steps):
        drift[t] = 0.9 * drift[t - 1] + noise[t]
    velocity = np.asarray(script.velocity) + drift
    velocity[0] = 0.0
    centres = np.asarray(script.start) + np.cumsum(velocity, axis=0)
    half = np.array([script.width / 2, script.width * ASPECT / 2])
    out[first:last] = np.concatenate([centres - half, centres + half], axis=1)
    return out


def _frame(
    *,
    gt_ids: np.ndarray,
    gt_boxes: np.ndarray,
    covered: np.ndarray,
    missed: np.ndarray,
    detector: DetectorModel,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> SyntheticFrame:
    """One frame's detections: the visible faces not missed, with noise, plus false positives."""
    seen = ~missed
    widths = gt_boxes[seen, 2] - gt_boxes[seen, 0]
    boxes = (
        gt_boxes[seen]
        + rng.normal(0.0, 1.0, size=(int(seen.sum()), 4)) * detector.jitter * widths[:, None]
    )
    scores = np.where(
        covered[seen] >= LOW_SCORE_COVER,
        rng.uniform(*detector.covered_score_range, size=int(seen.sum())),
        rng.uniform(*detector.score_range, size=int(seen.sum())),
    )
    fp_boxes, fp_scores = _false_positives(detector, size, rng)
    all_boxes = np.concatenate([boxes, fp_boxes])
    all_scores = np.concatenate([scores, fp_scores])
    det_gt_ids = np.concatenate([gt_ids[seen], np.full(len(fp_scores), -1, dtype=np.int64)])
    order = rng.permutation(len(all_scores))
    return SyntheticFrame(
        boxes=all_boxes[order].astype(np.float32),
        scores=all_scores[order].astype(np.float32),
        det_gt_ids=det_gt_ids[order],
        gt_ids=gt_ids,
        gt_boxes=gt_boxes.astype(np.float32),
    )


def _false_positives(
    detector: DetectorModel, size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random boxes 30 to 120 pixels wide anywhere in the picture, with low scores."""
    n = int(rng.poisson(detector.false_positives)) if detector.false_positives > 0 else 0
    widths = rng.uniform(30.0, 120.0, size=n)
    x1 = rng.uniform(0.0, size[0] - widths)
    y1 = rng.uniform(0.0, size[1] - widths * ASPECT)
    boxes = np.stack([x1, y1, x1 + widths, y1 + widths * ASPECT], axis=1).reshape(-1, 4)
    return boxes, rng.uniform(*detector.false_positive_score_range, size=n)


def _clip(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boxes clipped to the picture."""
    limits = np.array([size[0], size[1], size[0], size[1]], dtype=np.float64)
    return np.clip(boxes, 0.0, limits)


def _area(boxes: np.ndarray) -> np.ndarray:
    """Box areas (0 for empty boxes)."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _covered(boxes: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """Fraction of each box covered by the most-covering nearer box."""
    top_left = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0.0, None).prod(axis=2)
    nearer = depths[None, :] < depths[:, None]
    fraction = np.where(nearer, overlap, 0.0) / np.maximum(_area(boxes), 1e-9)[:, None]
    return fraction.max(axis=1, initial=0.0)


def _is_hidden(script: FaceScript, frame: int) -> bool:
    """True if a scripted occluder hides the face on ``frame``."""
    return any(start <= frame < stop for start, stop in script.hidden)


def _is_missed(frame: int, phase: int, detector: DetectorModel) -> bool:
    """True on the face's one frame in ``miss_every``."""
    return detector.miss_every > 0 and (frame + phase) % detector.miss_every == 0


# --- Scenarios ------------------------------------------------------------------------------------

_CROSSING_PAIR = (
    FaceScript(person=0, start=(300, 360), velocity=(4.0, 0.0), depth=0.0),
    FaceScript(person=1, start=(900, 380), velocity=(-4.0, 0.0), depth=1.0),
)


def _simple_faces() -> tuple[FaceScript, ...]:
    return (
        FaceScript(person=0, start=(200, 200), velocity=(2.0, 0.5), width=100),
        FaceScript(person=1, start=(600, 500), velocity=(-1.5, 0.0), width=90),
        FaceScript(person=2, start=(1000, 250), velocity=(0.0, 1.0), width=110),
    )


def simple(seed: int = 0) -> SyntheticSequence:
    """Three faces drifting apart from each other; jitter only."""
    return generate("simple", _simple_faces(), DetectorModel(), n_frames=150, seed=seed)


def crossing(seed: int = 0) -> SyntheticSequence:
    """Two faces crossing; the farther one gets low scores, then vanishes behind the nearer one."""
    faces = (*_CROSSING_PAIR, FaceScript(person=2, start=(640, 120), velocity=(0.5, 0.0), width=90))
    return generate("crossing", faces, DetectorModel(), n_frames=150, seed=seed)


def occlusion(seed: int = 0) -> SyntheticSequence:
    """A face hidden for 10 frames (60 to 69) while moving."""
    faces = (
        FaceScript(person=0, start=(300, 300), velocity=(3.0, 0.0), hidden=((60, 70),)),
        FaceScript(person=1, start=(900, 500), velocity=(-2.0, -0.5), width=90),
    )
    return generate("occlusion", faces, DetectorModel(), n_frames=150, seed=seed)


def enter_leave(seed: int = 0) -> SyntheticSequence:
    """Faces entering and leaving, one of them coming back.

    Person 0 leaves on the left (frame 50) and comes back 70 frames later, longer than ByteTrack's
    default 30-frame buffer.
    """
    faces = (
        FaceScript(person=0, start=(250, 250), velocity=(-5.0, 0.0), last_frame=60),
        FaceScript(person=0, start=(-50, 260), velocity=(5.0, 0.0), first_frame=110),
        FaceScript(person=1, start=(1330, 500), velocity=(-4.0, 0.0), width=90, first_frame=20),
        FaceScript(person=2, start=(700, -60), velocity=(0.0, 3.0), first_frame=40),
        FaceScript(person=3, start=(1150, 150), velocity=(3.0, 0.0), width=110),
    )
    return generate("enter_leave", faces, DetectorModel(), n_frames=200, seed=seed)


def misses(seed: int = 0) -> SyntheticSequence:
    """The simple scene, with a detector missing each face one frame in five."""
    return generate("misses", _simple_faces(), DetectorModel(miss_every=5), n_frames=150, seed=seed)


def false_positives(seed: int = 0) -> SyntheticSequence:
    """The simple scene, with two low-score false positives per frame on average."""
    detector = DetectorModel(false_positives=2.0)
    return generate("false_positives", _simple_faces(), detector, n_frames=150, seed=seed)


def everything(seed: int = 0) -> SyntheticSequence:
    """All of it together.

    Crossing, a 10-frame occlusion, entering, leaving and coming back, misses one frame in five,
    false positives.
    """
    faces = (
        *_CROSSING_PAIR,
        FaceScript(person=2, start=(200, 130), velocity=(2.0, 0.2), hidden=((90, 100),)),
        FaceScript(person=3, start=(1340, 620), velocity=(-5.0, 0.0), width=90, first_frame=30),
        FaceScript(person=4, start=(150, 560), velocity=(-4.0, 0.0), width=90, last_frame=60),
        FaceScript(person=4, start=(-50, 560), velocity=(4.0, 0.0), width=90, first_frame=100),
    )
    detector = DetectorModel(miss_every=5, false_positives=1.0)
    return generate("everything", faces, detector, n_frames=200, seed=seed)


def crowd(n_faces: int = 20, n_frames: int = 100, seed: int = 0) -> SyntheticSequence:
    """``n_faces`` faces on a grid, drifting slowly without meeting (for timing)."""
    rng = np.random.default_rng(seed)
    columns = int(np.ceil(np.sqrt(n_faces * 16 / 9)))
    rows = int(np.ceil(n_faces / columns))
    cell = (1280 / columns, 720 / rows)
    faces = tuple(
        FaceScript(
            person=k,
            start=((k % columns + 0.5) * cell[0], (k // columns + 0.5) * cell[1]),
            velocity=tuple(rng.uniform(-0.25, 0.25, size=2)),
            width=0.45 * min(cell[0], cell[1] / ASPECT),
        )
        for k in range(n_faces)
    )
    return generate(
        f"crowd{n_faces}", faces, DetectorModel(), n_frames=n_frames, seed=seed, speed_noise=0.05
    )


#: The test scenarios by name.
SCENARIOS = {
    "simple": simple,
    "crossing": crossing,
    "occlusion": occlusion,
    "enter_leave": enter_leave,
    "misses": misses,
    "false_positives": false_positives,
    "everything": everything,
}


# --- Running trackers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackerRun:
    """A tracker's output over a sequence.

    Attributes:
        det_ids: Per frame, the id given to each detection (-1 none); empty on predicted frames.
        hyp_ids: Per frame, the ids the tracker reports.
        hyp_boxes: Per frame, their ``(K, 4)`` boxes.
    """

    det_ids: tuple[np.ndarray, ...]
    hyp_ids: tuple[np.ndarray, ...]
    hyp_boxes: tuple[np.ndarray, ...]

    def mot_frames(self, sequence: SyntheticSequence) -> list[MotFrame]:
        """The ``(gt_ids, gt_boxes, hyp_ids, hyp_boxes)`` frames for ``mot_metrics``."""
        return [
            (frame.gt_ids, frame.gt_boxes, ids, boxes)
            for frame, ids, boxes in zip(sequence.frames, self.hyp_ids, self.hyp_boxes, strict=True)
        ]


def run_bytetracker(
    sequence: SyntheticSequence,
    tracker: ByteTracker | None = None,
    *,
    detect_every: int = 1,
    report: Literal["detections", "tracks"] = "detections",
) -> TrackerRun:
    """Run :class:`ByteTracker` over a sequence.

    Args:
        sequence: The sequence.
        tracker: The tracker; by default one with ``frame_rate`` set to the detector rate.
        detect_every: Run the detector (``update``) on one frame in this many, starting with the
            first, and ``predict`` on the others.
        report: What counts as the tracker's output on detector frames: the detections that got an
            id, with their boxes, or the tracks, with their Kalman boxes. Predicted frames always
            report the tracks.

    Returns:
        The run.
    """
    if tracker is None:
        tracker = ByteTracker(frame_rate=sequence.frame_rate / detect_every)
    det_ids, hyp_ids, hyp_boxes = [], [], []
    for index, frame in enumerate(sequence.frames):
        detected = index % detect_every == 0
        result = tracker.update(frame.boxes, frame.scores) if detected else tracker.predict()
        det_ids.append(result.ids)
        if detected and report == "detections":
            assigned = result.ids >= 0
            hyp_ids.append(result.ids[assigned])
            hyp_boxes.append(frame.boxes[assigned])
        else:
            hyp_ids.append(np.array([t.id for t in result.tracks], dtype=np.int64))
            hyp_boxes.append(np.array([t.box for t in result.tracks]).reshape(-1, 4))
    return TrackerRun(tuple(det_ids), tuple(hyp_ids), tuple(hyp_boxes))


def roboflow_tracker(frame_rate: float = 30.0) -> Any:
    """Roboflow's ``trackers.ByteTrackTracker`` with our defaults where they mean the same thing.

    Its high/low split at 0.5 (our ``track_thresh``), new tracks from 0.6 (``new_track_thresh``),
    30-frame buffer, confirmation after 2 frames; its IoU threshold (0.1, not score-fused) keeps
    its default.
    """
    from trackers import ByteTrackTracker

    return ByteTrackTracker(
        lost_track_buffer=30,
        frame_rate=frame_rate,
        track_activation_threshold=0.6,
        minimum_consecutive_frames=2,
        high_conf_det_threshold=0.5,
    )


def roboflow_update(tracker: Any, frame: SyntheticFrame) -> np.ndarray:
    """One ``update`` of Roboflow's tracker; returns the id of each detection (-1 none)."""
    import supervision as sv

    n = len(frame.scores)
    detections = sv.Detections(
        xyxy=frame.boxes.astype(np.float64).reshape(-1, 4),
        confidence=frame.scores.astype(np.float64),
        class_id=np.zeros(n, dtype=int),
        data={"index": np.arange(n)},
    )
    result = tracker.update(detections)
    ids = np.full(n, -1, dtype=np.int64)
    if len(result):
        ids[result.data["index"]] = result.tracker_id
    return ids


def run_roboflow(sequence: SyntheticSequence, tracker: Any = None) -> TrackerRun:
    """Run Roboflow's ``trackers.ByteTrackTracker`` over a sequence (detector on every frame).

    Args:
        sequence: The sequence.
        tracker: The tracker; :func:`roboflow_tracker` by default.

    Returns:
        The run; the output is the detections that got an id, with their boxes.
    """
    if tracker is None:
        tracker = roboflow_tracker(sequence.frame_rate)
    det_ids = tuple(roboflow_update(tracker, frame) for frame in sequence.frames)
    return TrackerRun(
        det_ids,
        tuple(ids[ids >= 0] for ids in det_ids),
        tuple(frame.boxes[ids >= 0] for frame, ids in zip(sequence.frames, det_ids, strict=True)),
    )


def partition(
    sequence: SyntheticSequence, run: TrackerRun, *, frames: slice = slice(None)
) -> set[frozenset[tuple[int, int]]]:
    """The sets of ``(frame, ground-truth id)`` detections grouped under each tracker id.

    Detections without an id are left out. Two runs partition a sequence identically when they
    group the same detections together, whatever the id values.
    """
    groups: dict[int, set[tuple[int, int]]] = {}
    indices = range(len(sequence))[frames]
    for index in indices:
        for gt, tid in zip(sequence.frames[index].det_gt_ids, run.det_ids[index], strict=True):
            if tid >= 0:
                groups.setdefault(int(tid), set()).add((index, int(gt)))
    return {frozenset(group) for group in groups.values()}


def majority_ids(sequence: SyntheticSequence, run: TrackerRun) -> dict[int, int]:
    """For each ground-truth id, the tracker id given most often to its detections."""
    votes: dict[int, dict[int, int]] = {}
    for frame, ids in zip(sequence.frames, run.det_ids, strict=True):
        for gt, tid in zip(frame.det_gt_ids, ids, strict=False):
            if gt >= 0 and tid >= 0:
                counts = votes.setdefault(int(gt), {})
                counts[int(tid)] = counts.get(int(tid), 0) + 1
    return {gt: max(counts, key=counts.__getitem__) for gt, counts in votes.items()}


def detector_recall(sequence: SyntheticSequence) -> float:
    """Fraction of ground-truth boxes the detector reported.

    The best recall, and with no false positive reported the best MOTA, of a tracker that reports
    only detected faces; its best IDF1 is ``2 r / (1 + r)``.
    """
    detected = sum(int((frame.det_gt_ids >= 0).sum()) for frame in sequence.frames)
    return detected / sum(len(frame.gt_ids) for frame in sequence.frames)
