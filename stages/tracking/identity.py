"""Per-track identity: what each tracked face is, decided once and held steady.

The tracker stage owns one :class:`IdentityCache` per stream; entries live as long as their track.
The embedder stage, which runs after the tracker, feeds it the embeddings it computed and reads
back each face's embedding and decision:

- Embeddings are computed per track, not per frame: when the track starts, every
  ``refresh_frames`` frames, and when a clearly better view appears (:meth:`needs_embedding`).
  Between those, a face carries its track's running mean.
- The decision (which source identity a face gets, or ``None``: leave it alone) comes from the
  track's mean embedding, never from one frame's, and changes only after ``switch_votes``
  consecutive updates agree on something else (hysteresis): no flicker on one noisy frame.
- When a track ends, its mean embedding and decision stay in a small gallery for ``reid_frames``
  frames. A new track whose first embeddings match one there takes over its decision
  (re-identification after an occlusion or an exit and return, when the tracker gave a new id).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

Decide = Callable[[np.ndarray, int], "str | None"]


@dataclass
class TrackIdentity:
    """What the cache knows of one track."""

    track_id: int
    mean: np.ndarray | None = None
    weight: float = 0.0
    observations: int = 0
    best_quality: float = 0.0
    last_embedded: int = -(10**9)
    requested_at: int | None = None
    last_seen: int = 0
    decision: str | None = None
    decided: bool = False
    challenger: str | None = None
    votes: int = 0

    def add(self, embedding: np.ndarray, quality: float) -> None:
        """Fold an embedding into the quality-weighted running mean (kept unit length)."""
        w = max(quality, 1e-3)
        if self.mean is None:
            self.mean = embedding.astype(np.float32).copy()
        else:
            self.mean = (self.mean * self.weight + embedding * w).astype(np.float32)
        self.weight += w
        norm = float(np.linalg.norm(self.mean))
        if norm > 0:
            self.mean /= norm
        self.observations += 1


@dataclass
class _Gallery:
    mean: np.ndarray
    decision: str | None
    ended: int
    track_id: int


class IdentityCache:
    """Per-track embeddings and decisions for one stream (thread-safe: the tracker and the
    embedder stages use it from their own threads).

    Args:
        decide: ``decide(mean_embedding, track_id) -> identity or None``: the face-selection
            policy's opinion for one track at one moment.
        threshold: Cosine similarity at or above which two embeddings are the same person.
        refresh_frames: Re-embed a track at least this often.
        better_view: Re-embed when a face's quality exceeds the track's best by this factor.
        switch_votes: Consecutive updates that must agree before a decision changes.
        reid_frames: How long an ended track's identity is remembered for re-identification.
        gallery_size: Most ended tracks remembered.
    """

    def __init__(
        self,
        *,
        decide: Decide | None = None,
        threshold: float = 0.5,
        refresh_frames: int = 15,
        better_view: float = 1.25,
        switch_votes: int = 3,
        reid_frames: int = 750,
        gallery_size: int = 64,
    ) -> None:
        if not -1 <= threshold <= 1:
            raise ValueError(f"threshold must be a cosine similarity within -1..1, got {threshold}")
        if refresh_frames < 1 or switch_votes < 1 or reid_frames < 0 or gallery_size < 0:
            raise ValueError(
                "refresh_frames and switch_votes must be >= 1; reid_frames and gallery_size >= 0"
            )
        if better_view < 1:
            raise ValueError(f"better_view must be >= 1, got {better_view}")
        self.decide = decide
        self.threshold = threshold
        self.refresh_frames = refresh_frames
        self.better_view = better_view
        self.switch_votes = switch_votes
        self.reid_frames = reid_frames
        self.gallery_size = gallery_size
        self.tracks: dict[int, TrackIdentity] = {}
        self.gallery: OrderedDict[int, _Gallery] = OrderedDict()
        self.reidentified = 0
        self._lock = threading.Lock()

    # -------------------------------------------------------------- the tracker's side

    def needs_embedding(self, track_id: int, frame: int, quality: float) -> bool:
        """Whether this face should be embedded now; marks the request so later frames of the same
        track wait for its result instead of asking again."""
        with self._lock:
            t = self.tracks.get(track_id)
            if t is None:
                t = self.tracks[track_id] = TrackIdentity(track_id, last_seen=frame)
            t.last_seen = frame
            pending = t.requested_at is not None and frame - t.requested_at < self.refresh_frames
            if t.mean is None:
                ask = not pending
            else:
                stale = (
                    frame - max(t.last_embedded, t.requested_at or -(10**9)) >= self.refresh_frames
                )
                better = quality > t.best_quality * self.better_view and not pending
                ask = stale or better
            if ask:
                t.requested_at = frame
            return ask

    def assign(self, track_id: int, identity: str | None, frame: int) -> None:
        """Decide a track directly (geometric selection), without hysteresis."""
        with self._lock:
            t = self.tracks.get(track_id)
            if t is None:
                t = self.tracks[track_id] = TrackIdentity(track_id, last_seen=frame)
            t.decision, t.decided = identity, True
            t.challenger, t.votes = None, 0

    def end(self, track_ids: Iterable[int], frame: int) -> None:
        """Tracks the tracker removed: their identity moves to the re-identification gallery."""
        with self._lock:
            for tid in track_ids:
                t = self.tracks.pop(tid, None)
                if t is None or t.mean is None or self.gallery_size == 0:
                    continue
                self.gallery[tid] = _Gallery(t.mean, t.decision, frame, tid)
                while len(self.gallery) > self.gallery_size:
                    self.gallery.popitem(last=False)
            self._expire(frame)

    def _expire(self, frame: int) -> None:
        for tid in [k for k, g in self.gallery.items() if frame - g.ended > self.reid_frames]:
            del self.gallery[tid]

    # -------------------------------------------------------------- the embedder's side

    def observe(self, track_id: int, embedding: np.ndarray, quality: float, frame: int) -> None:
        """A fresh embedding of this track's face."""
        with self._lock:
            t = self.tracks.get(track_id)
            if t is None:  # ended meanwhile; still counts for its entry if it comes back
                t = self.tracks[track_id] = TrackIdentity(track_id, last_seen=frame)
            first = t.mean is None
            t.add(np.asarray(embedding, np.float32), quality)
            t.best_quality = max(t.best_quality, quality)
            t.last_embedded = frame
            t.requested_at = None
            if first:
                self._reidentify(t)
            self._update_decision(t)

    def embedding(self, track_id: int) -> np.ndarray | None:
        with self._lock:
            t = self.tracks.get(track_id)
            return None if t is None or t.mean is None else t.mean.copy()

    def decision(self, track_id: int) -> tuple[bool, str | None]:
        """(decided?, identity) for a track."""
        with self._lock:
            t = self.tracks.get(track_id)
            return (False, None) if t is None else (t.decided, t.decision)

    def _reidentify(self, t: TrackIdentity) -> None:
        best, best_sim = None, self.threshold
        for g in self.gallery.values():
            sim = float(np.dot(g.mean, t.mean))  # type: ignore[arg-type]
            if sim >= best_sim:
                best, best_sim = g, sim
        if best is not None:
            del self.gallery[best.track_id]
            t.decision, t.decided = best.decision, True
            # The old track's appearance seeds the new one's mean.
            t.add(best.mean, t.weight)
            self.reidentified += 1

    def _update_decision(self, t: TrackIdentity) -> None:
        assert t.mean is not None
        if self.decide is None:
            return  # decisions are assigned (geometric selection), not derived from embeddings
        opinion = self.decide(t.mean, t.track_id)
        if not t.decided:
            t.decision, t.decided = opinion, True
        elif opinion == t.decision:
            t.challenger, t.votes = None, 0
        elif opinion == t.challenger:
            t.votes += 1
            if t.votes >= self.switch_votes:
                t.decision, t.challenger, t.votes = opinion, None, 0
        else:
            t.challenger, t.votes = opinion, 1
            if self.switch_votes <= 1:
                t.decision, t.challenger, t.votes = opinion, None, 0
