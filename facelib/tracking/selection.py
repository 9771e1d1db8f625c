"""Which tracked faces get which identity: the face-selection policies.

- ``all``: every face (at least ``min_size``) gets the source identity.
- ``one``: one face, the first in ``order``; the choice sticks to its track while the track lives.
- ``reference``: faces whose track matches a reference image (cosine >= threshold) get the source.
- ``map``: each reference person gets their own source identity.

``all`` and ``one`` are decided from geometry on every frame by the selector stage; ``reference`` and
``map`` from each track's mean embedding, through the identity cache (with its hysteresis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

Mode = Literal["all", "one", "reference", "map"]
Order = Literal[
    "large-small",
    "small-large",
    "left-right",
    "right-left",
    "top-bottom",
    "bottom-top",
    "best-worst",
    "central",
]
MODES: tuple[str, ...] = get_args(Mode)
ORDERS: tuple[str, ...] = get_args(Order)


def sort_key(order: str, frame_wh: tuple[int, int]):  # noqa: ANN201 - a key function
    """A key for ``sorted(faces, key=...)`` putting the preferred face first."""
    w, h = frame_wh

    def key(face) -> float:  # noqa: ANN001 - a Face
        x1, y1, x2, y2 = (float(v) for v in face.box)
        return {
            "large-small": -(x2 - x1) * (y2 - y1),
            "small-large": (x2 - x1) * (y2 - y1),
            "left-right": x1 + x2,
            "right-left": -(x1 + x2),
            "top-bottom": y1 + y2,
            "bottom-top": -(y1 + y2),
            "best-worst": -face.score,
            "central": ((x1 + x2) / 2 - w / 2) ** 2 + ((y1 + y2) / 2 - h / 2) ** 2,
        }[order]

    return key


class FaceSelector:
    """Geometric selection (``all``, ``one``) and the size filter, applied through the identity
    cache so that re-identification can restore a decision.

    ``one`` chooses the first face in ``order`` and keeps that person: while a track holding the
    choice lives, nobody else is chosen; when it ends, the choice waits ``rechoose_frames`` for the
    person to come back (re-identified by embedding, even under a new track id) before choosing
    again.

    Args:
        mode: The policy.
        order: Which face ``one`` prefers.
        min_size: Faces smaller than this (pixels, shorter side) are left alone.
        identity: The identity given to selected faces.
        rechoose_frames: ``one``: frames without the chosen person before choosing someone else.
    """

    def __init__(self, *, mode: Mode = "all", order: Order = "large-small", min_size: float = 0.0,
                 identity: str | None = "source", rechoose_frames: int = 50) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if min_size < 0 or rechoose_frames < 0:
            raise ValueError("min_size and rechoose_frames must be >= 0")
        self.mode = mode
        self.order = order
        self.min_size = min_size
        self.identity = identity
        self.rechoose_frames = rechoose_frames
        self._last_held: int | None = None

    @property
    def by_embedding(self) -> bool:
        return self.mode in ("reference", "map")

    def big_enough(self, face) -> bool:  # noqa: ANN001
        return min(face.width, face.height) >= self.min_size

    def apply(self, faces: Sequence, frame_wh: tuple[int, int], cache, frame: int) -> None:  # noqa: ANN001
        """Decide new tracks and set ``identity`` on each face of one frame."""
        tracked = [f for f in faces if f.track_id is not None]
        if self.mode == "all":
            for f in tracked:
                if not cache.decision(f.track_id)[0]:
                    cache.assign(f.track_id, self.identity)
        elif self.mode == "one" and self.identity is not None:
            holding = [f for f in tracked if cache.decision(f.track_id) == (True, self.identity)]
            if holding:
                self._last_held = frame
            elif self._last_held is None or frame - self._last_held > self.rechoose_frames:
                candidates = [f for f in tracked if self.big_enough(f)]
                if candidates:
                    chosen = sorted(candidates, key=sort_key(self.order, frame_wh))[0]
                    cache.assign(chosen.track_id, self.identity)
                    self._last_held = frame
        for f in faces:
            if f.track_id is None:
                # A face whose track is not confirmed yet: ``all`` still acts on it (a face left
                # unblurred for one frame is a privacy leak); the other policies wait for its track.
                f.identity = self.identity if self.mode == "all" and self.big_enough(f) else None
                continue
            decided, ident = cache.decision(f.track_id)
            f.identity = ident if decided and self.big_enough(f) else None


class IdentityMatcher:
    """``reference`` and ``map``: a track's mean embedding against the reference people.

    Args:
        references: Reference person name -> unit embedding.
        threshold: Cosine similarity from which a track is that person.
        mapping: ``map``: reference name -> source identity; ``reference``: ``None`` (every
            matching face gets ``identity``).
        identity: The identity ``reference`` gives.
        exclude: Invert ``reference``: the reference people are left alone, everyone else gets
            ``identity``.
    """

    def __init__(
        self,
        references: dict[str, np.ndarray],
        *,
        threshold: float,
        mapping: dict[str, str] | None = None,
        identity: str | None = "source",
        exclude: bool = False,
    ) -> None:
        if not references:
            raise ValueError("face selection by reference needs at least one reference image")
        self.names = list(references)
        self.matrix = np.stack([references[n] for n in self.names]).astype(np.float32)
        self.threshold = threshold
        self.mapping = mapping
        self.identity = identity
        self.exclude = exclude

    def match(self, embedding: np.ndarray) -> tuple[str | None, float]:
        """The best-matching reference and its similarity (``None`` below the threshold)."""
        sims = self.matrix @ embedding
        best = int(np.argmax(sims))
        return (self.names[best] if sims[best] >= self.threshold else None), float(sims[best])

    def __call__(self, embedding: np.ndarray, track_id: int) -> str | None:
        name, _ = self.match(embedding)
        if self.exclude:
            return None if name is not None else self.identity
        if name is None:
            return None
        return self.mapping.get(name) if self.mapping is not None else (self.identity or name)
