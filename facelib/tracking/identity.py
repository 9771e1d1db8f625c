"""Per-track identity: what each tracked face is, decided once and held steady.

Two owners, one after the other in the pipeline, each with its own state:

- The embedder keeps an :class:`EmbedSchedule`: embeddings are computed per track, not per frame:
  when the track starts, every ``refresh_frames`` frames, and when a clearly better view appears.
- The selector (after the embedder) keeps an :class:`IdentityCache`: each track's running mean of the
  embeddings it was given, and its decision. Between fresh embeddings a face carries its track's
  running mean.
- The decision (which source identity a face gets, or ``None``: leave it alone) comes from the
  track's mean embedding, never from one frame's, and changes only after ``switch_votes``
  consecutive updates agree on something else (hysteresis): no flicker on one noisy frame.
- When a track ends, its mean embedding and decision stay in a small gallery for ``reid_frames``
  frames. A new track whose first embeddings match one there takes over its decision
  (re-identification after an occlusion or an exit and return, when the tracker gave a new id).
"""

from __future__ import annotations

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
    """Per-track embeddings and decisions for one stream, owned by one stage.

    Args:
        decide: ``decide(mean_embedding, track_id) -> identity or None``: the face-selection
            policy's opinion for one track at one moment.
        threshold: Cosine similarity at or above which two embeddings are the same person.
        switch_votes: Consecutive updates that must agree before a decision changes.
        reid_frames: How long an ended track's identity is remembered for re-identification.
        gallery_size: Most ended tracks remembered.
    """

    def __init__(
        self,
        *,
        decide: Decide | None = None,
        threshold: float = 0.5,
        switch_votes: int = 3,
        reid_frames: int = 750,
        gallery_size: int = 64,
    ) -> None:
        if not -1 <= threshold <= 1:
            raise ValueError(f"threshold must be a cosine similarity within -1..1, got {threshold}")
        if switch_votes < 1 or reid_frames < 0 or gallery_size < 0:
            raise ValueError("switch_votes must be >= 1; reid_frames and gallery_size >= 0")
        self.decide = decide
        self.threshold = threshold
        self.switch_votes = switch_votes
        self.reid_frames = reid_frames
        self.gallery_size = gallery_size
        self.tracks: dict[int, TrackIdentity] = {}
        self.gallery: OrderedDict[int, _Gallery] = OrderedDict()
        self.reidentified = 0

    # -------------------------------------------------------------- decisions

    def assign(self, track_id: int, identity: str | None) -> None:
        """Decide a track directly (geometric selection), without hysteresis."""
        t = self.tracks.get(track_id)
        if t is None:
            t = self.tracks[track_id] = TrackIdentity(track_id)
        t.decision, t.decided = identity, True
        t.challenger, t.votes = None, 0

    def end(self, track_ids: Iterable[int], frame: int) -> None:
        """Tracks the tracker removed: their identity moves to the re-identification gallery."""
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

    # -------------------------------------------------------------- embeddings

    def observe(self, track_id: int, embedding: np.ndarray, quality: float) -> None:
        """A fresh embedding of this track's face."""
        t = self.tracks.get(track_id)
        if t is None:
            t = self.tracks[track_id] = TrackIdentity(track_id)
        first = t.mean is None
        t.add(np.asarray(embedding, np.float32), quality)
        if first:
            self._reidentify(t)
        self._update_decision(t)

    def embedding(self, track_id: int) -> np.ndarray | None:
        t = self.tracks.get(track_id)
        return None if t is None or t.mean is None else t.mean.copy()

    def decision(self, track_id: int) -> tuple[bool, str | None]:
        """(decided?, identity) for a track."""
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


class EmbedSchedule:
    """Which faces the embedder embeds: per track, not per frame.

    A track is embedded when it starts, when its last embedding is ``refresh_frames`` old, and when a
    view at least ``better_view`` times better than its best so far appears. Faces the tracker
    predicted (no detection behind them) are never embedded.

    Args:
        refresh_frames: Re-embed a track at least this often.
        better_view: Re-embed when a face's quality exceeds the track's best by this factor.

    Example:
        >>> s = EmbedSchedule(refresh_frames=15)
        >>> s.wants(7, frame=0, quality=0.5), s.wants(7, frame=1, quality=0.5), s.wants(7, frame=15, quality=0.5)
        (True, False, True)
    """

    def __init__(self, *, refresh_frames: int = 15, better_view: float = 1.25) -> None:
        if refresh_frames < 1:
            raise ValueError(f"refresh_frames must be >= 1, got {refresh_frames}")
        if better_view < 1:
            raise ValueError(f"better_view must be >= 1, got {better_view}")
        self.refresh_frames = refresh_frames
        self.better_view = better_view
        self._last: dict[int, int] = {}  # track -> frame of its last embedding
        self._best: dict[int, float] = {}  # track -> best quality embedded

    def wants(self, track_id: int, *, frame: int, quality: float) -> bool:
        """Whether to embed this track's face now; if so, it counts as embedded at ``frame``."""
        last = self._last.get(track_id)
        ask = (
            last is None
            or frame - last >= self.refresh_frames
            or quality > self._best.get(track_id, 0.0) * self.better_view
        )
        if ask:
            self._last[track_id] = frame
            self._best[track_id] = max(self._best.get(track_id, 0.0), quality)
        return ask

    def forget(self, track_ids: Iterable[int]) -> None:
        """Tracks the tracker ended."""
        for tid in track_ids:
            self._last.pop(tid, None)
            self._best.pop(tid, None)

    def __len__(self) -> int:
        return len(self._last)
