"""ByteTrack multi-object tracking on plain numpy arrays.

ByteTrack (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection Box",
ECCV 2022) associates every detection box, not only the confident ones:

1. high-score detections (``score >= track_thresh``) are matched to all confirmed tracks, tracked
   and lost, by IoU with the Kalman-predicted boxes (optionally fused with the detection score);
2. low-score detections (``low_thresh <= score < track_thresh``) are matched, by IoU alone, to the
   tracks that were tracked on the previous detector run and are still unmatched: a face turning
   away or half occluded loses confidence but keeps its track;
3. new, unconfirmed tracks are matched to the high-score detections left over;
4. the high-score detections left after that start new tracks.

Tracks live in a handful of arrays (one row per track), so the Kalman filter predicts and corrects
all of them in one call, and removed tracks are simply dropped: memory does not grow with the length
of the video.

**Ids.** Each :class:`ByteTracker` owns its id counter (starting at 1); instances never share or
reset each other's counters. An id is given when a track is confirmed, so ids are consecutive and
no number is spent on a detection that never became a track.

**Detector runs and predicted frames.** :meth:`ByteTracker.update` is a detector run;
:meth:`ByteTracker.predict` advances the motion model on a frame the detector skipped. A predicted
frame carries no evidence that a face is gone, so it neither marks a track lost nor removes an
unconfirmed track, and it does not spend the lost-track budget: that budget
(``max_time_lost = int(frame_rate / 30 * track_buffer)``) counts detector runs that missed the
track, exactly as in ByteTrack, where ``frame_rate`` is the rate at which ``update`` is called. To
keep the budget at ``track_buffer / 30`` seconds while detecting every ``k``-th frame of a
``fps`` video, pass ``frame_rate=fps / k``. The frame clocks (``age``, ``time_since_update``) count
every frame, predicted or not, and the Kalman filter steps once per frame either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import StrEnum

import numpy as np

from .kalman import KalmanBoxFilter, xyah_to_xyxy, xyxy_to_xyah

#: IoU distance (``1 - IoU``) accepted when matching low-score detections (ByteTrack: 0.5).
LOW_SCORE_MATCH_THRESH = 0.5
#: Cost accepted when matching unconfirmed tracks (ByteTrack: 0.7).
UNCONFIRMED_MATCH_THRESH = 0.7
#: Slack that makes a pair whose cost equals the threshold still preferable to no match.
_TIE_SLACK = 1e-9


class TrackState(StrEnum):
    """Where a confirmed track stands after the last detector run."""

    TRACKED = "tracked"
    """Matched to a detection on the last detector run."""
    LOST = "lost"
    """Missed by the last detector run; kept for ``max_time_lost`` runs in case it comes back."""


@dataclass(frozen=True, slots=True, eq=False)
class Track:
    """A snapshot of one confirmed track.

    Attributes:
        id: The track id (``>= 1``), unique within its tracker until :meth:`ByteTracker.reset`.
        box: ``(4,)`` ``[x1, y1, x2, y2]``: the Kalman estimate, corrected by the detection on a
            frame where the track was matched, predicted otherwise.
        score: Score of the last detection matched to the track.
        age: Frames since the track started, counting its first frame, predicted frames included.
        hits: Detections matched to the track, the first one included.
        time_since_update: Frames (detector runs and predicted frames) since the last match; 0 on a
            frame where the track was matched.
        state: Tracked or lost.
        velocity: ``(4,)`` Kalman velocity of ``(cx, cy, a, h)`` per frame.
    """

    id: int
    box: np.ndarray
    score: float
    age: int
    hits: int
    time_since_update: int
    state: TrackState
    velocity: np.ndarray

    @property
    def predicted(self) -> bool:
        """True where the box comes from the motion model alone."""
        return self.time_since_update > 0


@dataclass(frozen=True, slots=True, eq=False)
class TrackResult:
    """What one detector run (or predicted frame) gives.

    Attributes:
        ids: ``(N,)`` int64, for each input detection the id of the confirmed track it was assigned
            to, or -1 (a false positive, a low-score box matching nothing, or the first detection of
            a track not confirmed yet). Empty for a predicted frame.
        tracks: The tracked confirmed tracks, oldest first: after ``update`` those matched on this
            frame, after ``predict`` those matched on the last detector run, with predicted boxes.
    """

    ids: np.ndarray
    tracks: tuple[Track, ...]


@dataclass(slots=True)
class _TrackTable:
    """All live tracks, one row each.

    ``ids`` is -1 for an unconfirmed track; ``lost`` is only ever true for confirmed ones;
    ``misses`` counts detector runs since the last match.
    """

    mean: np.ndarray
    cov: np.ndarray
    ids: np.ndarray
    lost: np.ndarray
    score: np.ndarray
    age: np.ndarray
    hits: np.ndarray
    since_update: np.ndarray
    misses: np.ndarray

    @classmethod
    def start(cls, mean: np.ndarray, cov: np.ndarray, scores: np.ndarray) -> _TrackTable:
        """Rows for new unconfirmed tracks, seen once."""
        n = mean.shape[0]
        return cls(
            mean=mean,
            cov=cov,
            ids=np.full(n, -1, dtype=np.int64),
            lost=np.zeros(n, dtype=bool),
            score=scores.astype(np.float64),
            age=np.ones(n, dtype=np.int64),
            hits=np.ones(n, dtype=np.int64),
            since_update=np.zeros(n, dtype=np.int64),
            misses=np.zeros(n, dtype=np.int64),
        )

    def __len__(self) -> int:
        return self.ids.shape[0]

    def select(self, rows: np.ndarray) -> _TrackTable:
        """The rows picked by a boolean mask or an index array."""
        return _TrackTable(*(getattr(self, name)[rows] for name in _COLUMNS))

    def extend(self, other: _TrackTable) -> _TrackTable:
        """This table followed by ``other``."""
        return _TrackTable(
            *(np.concatenate([getattr(self, name), getattr(other, name)]) for name in _COLUMNS)
        )


_COLUMNS = tuple(column.name for column in fields(_TrackTable))


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two sets of ``[x1, y1, x2, y2]`` boxes.

    Boxes with a negative width or height count as empty.

    Args:
        boxes_a: ``(N, 4)`` boxes.
        boxes_b: ``(M, 4)`` boxes.

    Returns:
        ``(N, M)`` float64 IoU in ``[0, 1]``.
    """
    boxes_a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    if boxes_a.shape[0] == 0 or boxes_b.shape[0] == 0:
        return np.zeros((boxes_a.shape[0], boxes_b.shape[0]))
    width = np.minimum(boxes_a[:, 2:3], boxes_b[:, 2]) - np.maximum(boxes_a[:, 0:1], boxes_b[:, 0])
    height = np.minimum(boxes_a[:, 3:4], boxes_b[:, 3]) - np.maximum(boxes_a[:, 1:2], boxes_b[:, 1])
    inter = np.maximum(width, 0.0) * np.maximum(height, 0.0)
    union = _area(boxes_a)[:, None] + _area(boxes_b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def assign(cost: np.ndarray, thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost matching that leaves a row or column unmatched rather than pay over ``thresh``.

    Maximises the total ``thresh - cost`` over pairs with ``cost <= thresh``, which is what lap's
    ``lapjv(cost, extend_cost=True, cost_limit=thresh)`` solves, with scipy's rectangular
    ``linear_sum_assignment`` on a matrix where pairs over the threshold are worth nothing.

    Args:
        cost: ``(N, M)`` costs.
        thresh: Highest cost of an accepted pair.

    Returns:
        Matched row and column indices, ``int64`` arrays of equal length.
    """
    if cost.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty.copy()
    acceptable = cost <= thresh
    from scipy.optimize import linear_sum_assignment  # loaded by ByteTracker() (start-up of other modes)

    rows, cols = linear_sum_assignment(np.where(acceptable, cost - thresh - _TIE_SLACK, 0.0))
    keep = acceptable[rows, cols]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


class ByteTracker:
    """ByteTrack on ``(N, 4)`` ``[x1, y1, x2, y2]`` boxes and ``(N,)`` scores.

    See the module docstring for the association steps, ids, and how predicted frames age tracks.

    Args:
        track_thresh: Score from which a detection is "high" (first association, new tracks).
        low_thresh: Score from which a detection is "low" (second association); below it a
            detection is ignored.
        new_track_thresh: Score a leftover high detection needs to start a track.
        match_thresh: Highest cost of a first-association pair; the cost is ``1 - IoU``, or
            ``1 - IoU * score`` with ``fuse_score``.
        track_buffer: Detector runs (at 30 per second) a lost track is kept.
        frame_rate: Detector runs per second; scales ``track_buffer``.
        min_hits: Consecutive detector runs with a match before a new track is confirmed and gets an
            id (ByteTrack: 2). Tracks born on the first run after construction or ``reset`` are
            confirmed at once, as in ByteTrack.
        fuse_score: Multiply IoU by the detection score in the first and unconfirmed associations.

    Raises:
        ValueError: If a parameter is out of range (the message names it).

    Example:
        >>> tracker = ByteTracker()
        >>> result = tracker.update(np.array([[10, 10, 60, 70.0]]), np.array([0.9]))
        >>> result.ids.tolist(), [t.id for t in result.tracks]
        ([1], [1])
    """

    def __init__(
        self,
        *,
        track_thresh: float = 0.5,
        low_thresh: float = 0.1,
        new_track_thresh: float = 0.6,
        match_thresh: float = 0.8,
        track_buffer: int = 30,
        frame_rate: float = 30.0,
        min_hits: int = 2,
        fuse_score: bool = True,
    ) -> None:
        import scipy.optimize  # noqa: F401 - loaded here, when a tracker is made, not on its first update

        self.track_thresh = _check_real("track_thresh", track_thresh, 0.0, 1.0, low_open=True)
        self.low_thresh = _check_real("low_thresh", low_thresh, 0.0, self.track_thresh)
        self.new_track_thresh = _check_real("new_track_thresh", new_track_thresh, 0.0, 1.0)
        self.match_thresh = _check_real("match_thresh", match_thresh, 0.0, 1.0, low_open=True)
        self.track_buffer = _check_int("track_buffer", track_buffer, 0)
        self.frame_rate = _check_real("frame_rate", frame_rate, 0.0, math.inf, low_open=True)
        self.min_hits = _check_int("min_hits", min_hits, 1)
        if not isinstance(fuse_score, bool):
            raise ValueError(f"fuse_score must be a bool, got {fuse_score!r}")
        self.fuse_score = fuse_score
        self.max_time_lost = int(self.frame_rate / 30.0 * self.track_buffer)
        self._kalman = KalmanBoxFilter()
        self.reset()

    def reset(self) -> None:
        """Forget every track and restart ids at 1, in this instance only."""
        self._table = _TrackTable.start(np.empty((0, 8)), np.empty((0, 8, 8)), np.empty(0))
        self._next_id = 1
        self._runs = 0

    @property
    def ids(self) -> set[int]:
        """Ids of every confirmed track alive, tracked or lost (cheaper than :attr:`tracks`)."""
        return set(self._table.ids[self._table.ids >= 0].tolist())

    def lost(self, within: int) -> tuple[Track, ...]:
        """Lost confirmed tracks last matched at most ``within`` frames ago, with predicted boxes."""
        table = self._table
        return self._snapshot((table.ids >= 0) & table.lost & (table.since_update <= within))

    @property
    def tracks(self) -> tuple[Track, ...]:
        """Every confirmed track alive, tracked or lost, oldest first."""
        return self._snapshot(self._table.ids >= 0)

    def update(self, boxes: np.ndarray, scores: np.ndarray, *, snapshot: bool = True) -> TrackResult:
        """Run one detector frame through the tracker.

        Args:
            boxes: ``(N, 4)`` ``[x1, y1, x2, y2]`` detections. A box with no positive width and
                height is never matched (its id is -1).
            scores: ``(N,)`` detection scores.
            snapshot: Also return the matched tracks (``False``: ``tracks`` is empty, for callers
                that need the ids only).

        Returns:
            The id of every detection and the tracks matched on this frame.

        Raises:
            ValueError: If the shapes disagree or a value is not finite.
        """
        boxes, scores = _check_detections(boxes, scores)
        self._runs += 1
        self._advance()
        matched_rows, matched_dets, unclaimed = self._associate(boxes, scores)
        self._correct(matched_rows, boxes[matched_dets], scores[matched_dets])
        self._age_unmatched(matched_rows)
        self._confirm(self._table.hits >= self.min_hits)

        det_ids = np.full(len(scores), -1, dtype=np.int64)
        det_ids[matched_dets] = self._table.ids[matched_rows]
        self._drop_expired()
        self._start_tracks(boxes, scores, unclaimed, det_ids)
        if not snapshot:
            return TrackResult(det_ids, ())
        return TrackResult(det_ids, self._snapshot((self._table.ids >= 0) & ~self._table.lost))

    def predict(self, frames: int = 1) -> TrackResult:
        """Advance the motion model over frames the detector skipped.

        Predicted frames do not mark tracks lost, remove tracks, or spend the lost-track budget
        (see the module docstring).

        Args:
            frames: Number of frames to advance.

        Returns:
            No detection ids, and the tracks tracked on the last detector run with their
            predicted boxes.

        Raises:
            ValueError: If ``frames`` is not a positive int.
        """
        for _ in range(_check_int("frames", frames, 1)):
            self._advance()
        tracked = (self._table.ids >= 0) & ~self._table.lost
        return TrackResult(np.empty(0, dtype=np.int64), self._snapshot(tracked))

    def _advance(self) -> None:
        """Predict every track one frame ahead; lost tracks stop changing size, as in ByteTrack."""
        table = self._table
        if len(table) == 0:
            return
        table.mean[table.lost, 7] = 0.0
        table.mean, table.cov = self._kalman.predict(table.mean, table.cov)
        table.age += 1
        table.since_update += 1

    def _associate(
        self, boxes: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three ByteTrack associations.

        Returns:
            Matched track rows, their detection indices, and the high-score detections left over.
        """
        table = self._table
        usable = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        high = np.flatnonzero(usable & (scores >= self.track_thresh))
        low = np.flatnonzero(usable & (scores >= self.low_thresh) & (scores < self.track_thresh))
        predicted = xyah_to_xyxy(table.mean)
        confirmed = table.ids >= 0

        pool = np.flatnonzero(confirmed)
        rows, cols = assign(
            self._cost(predicted[pool], boxes[high], scores[high]), self.match_thresh
        )
        first_rows, first_dets = pool[rows], high[cols]
        left_high = _without(high, cols)

        waiting = confirmed & ~table.lost
        waiting[first_rows] = False
        pool = np.flatnonzero(waiting)
        rows, cols = assign(1.0 - box_iou(predicted[pool], boxes[low]), LOW_SCORE_MATCH_THRESH)
        second_rows, second_dets = pool[rows], low[cols]

        pool = np.flatnonzero(~confirmed)
        cost = self._cost(predicted[pool], boxes[left_high], scores[left_high])
        rows, cols = assign(cost, UNCONFIRMED_MATCH_THRESH)
        third_rows, third_dets = pool[rows], left_high[cols]

        return (
            np.concatenate([first_rows, second_rows, third_rows]),
            np.concatenate([first_dets, second_dets, third_dets]),
            _without(left_high, cols),
        )

    def _cost(
        self, track_boxes: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray
    ) -> np.ndarray:
        """``1 - IoU``, or ``1 - IoU * score`` when fusing scores (ByteTrack's ``fuse_score``)."""
        iou = box_iou(track_boxes, det_boxes)
        return 1.0 - (iou * det_scores[None, :] if self.fuse_score else iou)

    def _correct(self, rows: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> None:
        """Kalman-correct the matched tracks and mark them tracked."""
        if rows.size == 0:
            return
        table = self._table
        table.mean[rows], table.cov[rows] = self._kalman.update(
            table.mean[rows], table.cov[rows], xyxy_to_xyah(boxes)
        )
        table.lost[rows] = False
        table.score[rows] = scores
        table.hits[rows] += 1
        table.since_update[rows] = 0
        table.misses[rows] = 0

    def _age_unmatched(self, matched_rows: np.ndarray) -> None:
        """Count a missed detector run for every unmatched track; confirmed ones become lost."""
        table = self._table
        unmatched = np.ones(len(table), dtype=bool)
        unmatched[matched_rows] = False
        table.misses[unmatched] += 1
        table.lost[unmatched & (table.ids >= 0)] = True

    def _confirm(self, ready: np.ndarray) -> None:
        """Give the next ids to the unconfirmed tracks picked by the mask ``ready``."""
        rows = np.flatnonzero(ready & (self._table.ids < 0))
        self._table.ids[rows] = np.arange(self._next_id, self._next_id + rows.size)
        self._next_id += rows.size

    def _drop_expired(self) -> None:
        """Drop unconfirmed tracks that missed this run and tracks lost past ``max_time_lost``."""
        table = self._table
        confirmed = table.ids >= 0
        keep = (confirmed & (table.misses <= self.max_time_lost)) | (
            ~confirmed & (table.misses == 0)
        )
        if not keep.all():
            self._table = table.select(keep)

    def _start_tracks(
        self, boxes: np.ndarray, scores: np.ndarray, unclaimed: np.ndarray, det_ids: np.ndarray
    ) -> None:
        """Start tracks from the unclaimed high-score detections scoring ``new_track_thresh``.

        Tracks born on the first detector run, or with ``min_hits == 1``, are confirmed at once and
        their ids written into ``det_ids``.
        """
        dets = unclaimed[scores[unclaimed] >= self.new_track_thresh]
        if dets.size == 0:
            return
        born = len(self._table)
        mean, cov = self._kalman.initiate(xyxy_to_xyah(boxes[dets]))
        self._table = self._table.extend(_TrackTable.start(mean, cov, scores[dets]))
        if self._runs == 1 or self.min_hits == 1:
            ready = np.zeros(len(self._table), dtype=bool)
            ready[born:] = True
            self._confirm(ready)
            det_ids[dets] = self._table.ids[born:]

    def _snapshot(self, rows: np.ndarray) -> tuple[Track, ...]:
        """Public views of the rows picked by a boolean mask."""
        table = self._table.select(rows)
        columns = zip(
            table.ids.tolist(),
            xyah_to_xyxy(table.mean),
            table.score.tolist(),
            table.age.tolist(),
            table.hits.tolist(),
            table.since_update.tolist(),
            table.lost.tolist(),
            table.mean[:, 4:],
            strict=True,
        )
        return tuple(
            Track(
                track_id,
                box,
                score,
                age,
                hits,
                since,
                TrackState.LOST if lost else TrackState.TRACKED,
                velocity,
            )
            for track_id, box, score, age, hits, since, lost, velocity in columns
        )


def _without(indices: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``indices`` without the entries at ``positions``."""
    keep = np.ones(indices.shape[0], dtype=bool)
    keep[positions] = False
    return indices[keep]


def _area(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``(N, 4)`` boxes, 0 for inverted ones."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], 0.0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0.0)


def _check_detections(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert detections to float64 ``(N, 4)`` boxes and ``(N,)`` scores."""
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if boxes.size == 0 and scores.size == 0:
        return boxes.reshape(0, 4), scores.reshape(0)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
        raise ValueError(
            f"boxes must be (N, 4) and scores (N,), got {boxes.shape} and {scores.shape}"
        )
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError("boxes and scores must be finite")
    return boxes, scores


def _check_real(
    name: str, value: float, low: float, high: float, *, low_open: bool = False
) -> float:
    """``value`` as a float if finite and in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and value <= high
    )
    if not ok:
        bounds = f"{'>' if low_open else '>='} {low}" + (
            "" if high == math.inf else f" and <= {high}"
        )
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")
    return float(value)


def _check_int(name: str, value: int, low: int) -> int:
    """``value`` if it is an int ``>= low``."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)
