"""The selector stage: which faces are acted on, and as whom, decided per track and held steady."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facestream.facelib.models.factory import ModelSettings
from facestream.facelib.tracking.identity import IdentityCache
from facestream.facelib.tracking.selection import MODES, ORDERS, FaceSelector, IdentityMatcher, Mode, Order
from facestream.pipeline.config import check, positive
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Transform


@dataclass
class SelectSettings:
    """Which faces are acted on (the ``select`` section of a preset).

    Attributes:
        mode: ``all``, ``one`` (the first in ``order``), ``reference`` (faces matching the reference
            images; ``exclude`` inverts) or ``map`` (each reference person gets their own source).
        order: Which face ``one`` picks.
        min_size: Faces smaller than this (pixels, shorter side) are left alone.
        references: ``reference``: images of the people to act on.
        rechoose_s: ``one``: how long to wait for the chosen person to return before choosing someone
            else.
        exclude: ``reference``: the reference people are the ones to leave alone.

    Example:
        >>> SelectSettings(mode="one", order="central").order
        'central'
    """

    mode: Mode = "all"
    order: Order = "large-small"
    min_size: float = 0.0
    references: list[str] = field(default_factory=list)
    rechoose_s: float = 2.0
    exclude: bool = False

    def __post_init__(self) -> None:
        check(self.mode in MODES, "mode", self.mode, f"must be one of {', '.join(MODES)}")
        check(self.order in ORDERS, "order", self.order, f"must be one of {', '.join(ORDERS)}")
        check(self.min_size >= 0, "min_size", self.min_size, "must be >= 0")
        check(self.rechoose_s >= 0, "rechoose_s", self.rechoose_s, "must be >= 0")


@dataclass
class IdentitySettings:
    """Per-track identity: when to embed, how decisions hold, re-identification (the ``identity``
    section of a preset; the embedder reads the first two).

    Attributes:
        refresh_frames: Re-embed a track at least this often.
        better_view: Re-embed when a view is this much better than the track's best.
        switch_votes: Consecutive updates that must agree before a decision changes.
        reid: Remember ended tracks' decisions, and give them back to a returning person.
        reid_s: How long a lost person's decision is remembered.
        threshold: Cosine similarity for "same person" (default: 0.94 builtin, 0.4 insightface).

    Example:
        >>> IdentitySettings(switch_votes=5).switch_votes
        5
    """

    refresh_frames: int = 15
    better_view: float = 1.25
    switch_votes: int = 3
    reid: bool = True
    reid_s: float = 30.0
    threshold: float | None = None

    def __post_init__(self) -> None:
        positive(self, "refresh_frames", "switch_votes")
        check(self.better_view >= 1, "better_view", self.better_view, "must be >= 1")
        check(self.reid_s >= 0, "reid_s", self.reid_s, "must be >= 0")
        check(self.threshold is None or -1 <= self.threshold <= 1, "threshold", self.threshold,
              "must be a cosine similarity within -1..1")


class Selector(Transform):
    """Sets ``face.identity`` on every face: the identity it gets (a source, or a label), or ``None``.

    It owns the run's :class:`IdentityCache`: the embeddings the embedder computed fold into each
    track's running mean (faces the embedder skipped get that mean as ``face.embedding``); decisions
    come from the mean with hysteresis, from geometry (``all``, ``one``) or from the reference people
    (``reference``, ``map``); ended tracks (``frame.tracks_ended``) move to a re-identification
    gallery, so a person who returns under a new track id gets their decision back.

    Frames of several feeds (``frame.stream``) each have their own cache and selection (``one``
    picks one face per feed; a person is re-identified within their feed), counted in the feed's
    own frames (``frame.stream_index``).

    Args:
        settings: The selection policy.
        identity_settings: Hysteresis, re-identification and the same-person threshold.
        models: The pack that embeds the reference images (``reference`` and ``map``).
        identity: What selected faces get (``None``: nothing is selected, e.g. for annotating).
        references: ``reference``/``map``: person name -> image paths (default: ``settings.references``).
        mapping: ``map``: reference person -> source identity.
        people: ``reference``/``map``: person name -> unit embedding, already computed (instead of
            ``references``).

    Example:
        >>> sel = Selector(SelectSettings(mode="one"), identity="source")
        >>> sel.selector.mode
        'one'
    """

    name = "selector"

    def __init__(self, settings: SelectSettings | None = None, identity_settings: IdentitySettings | None = None,
                 *, models: ModelSettings | None = None, identity: str | None = "source",
                 references: dict[str, list[str]] | None = None, mapping: dict[str, str] | None = None,
                 people: dict[str, np.ndarray] | None = None) -> None:
        from facestream.facelib.models.people import SAME_PERSON

        self.settings = s = settings or SelectSettings()
        self.identity_settings = ids = identity_settings or IdentitySettings()
        self.selector = FaceSelector(mode=s.mode, order=s.order, min_size=s.min_size, identity=identity)
        if references is None:
            references = {Path(p).stem: [p] for p in s.references}
        if self.selector.by_embedding and people is None:
            if not references:
                raise ValueError(f"select.mode {s.mode} needs reference images of the people")
            if models is None:
                raise ValueError(f"select.mode {s.mode} needs the model pack that embeds the references")
            for name, paths in references.items():
                for p in paths:
                    if not Path(p).is_file():
                        raise ValueError(f"reference image for '{name}' not found: {p}")
        self.models = models
        self.references = references if self.selector.by_embedding and people is None else {}
        self.people = people
        self.mapping = mapping
        self.identity = identity
        pack = models.pack if models is not None else "builtin"
        self.threshold = SAME_PERSON[pack] if ids.threshold is None else ids.threshold
        self.cache = IdentityCache(threshold=self.threshold, switch_votes=ids.switch_votes,
                                   gallery_size=64 if ids.reid else 0)
        self._feeds: dict[int, tuple[FaceSelector, IdentityCache]] = {0: (self.selector, self.cache)}
        self._blank: tuple[FaceSelector, IdentityCache] | None = None

    def open(self, ctx: RunContext) -> None:
        fps = float(ctx.source.frame_rate) if ctx.source and ctx.source.frame_rate else 30.0
        self.cache.reid_frames = round(self.identity_settings.reid_s * fps)
        self.selector.rechoose_frames = round(self.settings.rechoose_s * fps)
        people = self.people
        if self.references:
            from facestream.facelib.models.people import embed_people

            assert self.models is not None
            people = embed_people(self.models, ctx.device, self.references)
        if people and self.selector.by_embedding:
            self.cache.decide = IdentityMatcher(people, threshold=self.threshold, mapping=self.mapping,
                                                identity=self.identity, exclude=self.settings.exclude)
        self._blank = copy.deepcopy((self.selector, self.cache))  # for feeds after the first

    def _feed(self, stream: int) -> tuple[FaceSelector, IdentityCache]:
        feed = self._feeds.get(stream)
        if feed is None:
            assert self._blank is not None
            feed = self._feeds[stream] = copy.deepcopy(self._blank)
        return feed

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            selector, cache = self._feed(frame.stream)
            if frame.tracks_ended:
                cache.end(frame.tracks_ended, frame.stream_index)
            for face in frame.faces:
                if face.track_id is None:
                    continue
                if face.embedding is not None:
                    cache.observe(face.track_id, face.embedding, face.quality)
                else:
                    face.embedding = cache.embedding(face.track_id)
            selector.apply(frame.faces, (frame.width, frame.height), cache, frame.stream_index)
        return frames

    def report(self) -> dict[str, Any]:
        return {"selection": self.selector.mode, "reidentified": sum(c.reidentified for _, c in self._feeds.values())}
