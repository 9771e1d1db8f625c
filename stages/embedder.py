"""The embedder stage: identity embeddings for the faces that need one, all of a batch in one pass."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.frame import Frame
from pipeline.stage import RunContext, Transform

from .face import Face
from .models.factory import ModelConfig, RecognizerBackend, make_detector, make_recognizer
from .tracking.identity import IdentityCache
from .tracking.selection import IdentityMatcher

# Cosine similarity from which two embeddings are taken for one person, per pack. dlib's 128-d
# vectors are tight (its own rule, euclidean distance 0.6, is about 0.92 after normalising);
# ArcFace's 512-d ones are spread out (same person typically above 0.4, others near 0).
SAME_PERSON = {"builtin": 0.94, "insightface": 0.4}


def read_rgb(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def embed_people(models: ModelConfig, device: torch.device, people: dict[str, list[str]],
                 recognizer: RecognizerBackend | None = None) -> dict[str, np.ndarray]:
    """One unit embedding per person: the mean over the main face (large and confident) of each of
    their images.

    Raises:
        InputError: an image cannot be read or shows no face.
    """
    detector = make_detector(models, device, score_threshold=0.3)
    recognizer = recognizer or make_recognizer(models, device)
    out = {}
    for name, paths in people.items():
        vectors = []
        for path in paths:
            image = torch.from_numpy(read_rgb(path)).to(device)
            det = detector.detect([image])[0]
            if not len(det.boxes):
                raise InputError(f"no face found in {path}")
            # The main face: large and confident (a badge or a poster can be as large as a face).
            area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
            i = int(np.argmax(area * det.scores**2))
            face = Face(box=det.boxes[i], score=float(det.scores[i]), kps=det.kps[i] if det.kps is not None else None,
                        landmarks=det.landmarks[i] if det.landmarks is not None else None)
            vectors.append(recognizer.embed([image], [0], [face])[0])
        mean = np.mean(vectors, axis=0)
        out[name] = (mean / np.linalg.norm(mean)).astype(np.float32)
    return out


class Embedder(Transform):
    """Fills ``face.embedding`` (L2-normalised) and, with a tracker, ``face.identity``.

    Without a tracker, every face is embedded. With one, only the faces the tracker marks
    (``needs_embedding``: a new track, a stale one, a better view) go through the recogniser; their
    embeddings feed the track's identity cache, and every tracked face gets its track's mean
    embedding and, for selection by reference, its track's decision.

    Args:
        models: Which pack and how its models run.
        cache: The tracker's identity cache, if there is a tracker.
        references: ``reference``/``map`` selection: person name -> image paths.
        mapping: ``map`` selection: reference person -> source identity.
        identity: The identity ``reference`` selection gives.
        threshold: Cosine similarity for "same person" (default: per pack).
        eligible: The face selection's size filter: faces it rejects get no identity.
        exclude: The references are the people to leave alone; everyone else gets ``identity``.
        batch_size, max_wait_ms: Frames per batch and longest wait for a batch to fill.
    """

    name = "embedder"

    def __init__(
        self,
        *,
        models: ModelConfig,
        cache: IdentityCache | None = None,
        references: dict[str, list[str]] | None = None,
        mapping: dict[str, str] | None = None,
        identity: str | None = "source",
        threshold: float | None = None,
        eligible: Callable[[Face], bool] | None = None,
        exclude: bool = False,
        batch_size: int = 1,
        max_wait_ms: float = 0.0,
    ) -> None:
        for name, paths in (references or {}).items():
            for p in paths:
                if not Path(p).is_file():
                    raise ValueError(f"reference image for '{name}' not found: {p}")
        self.models = models
        self.cache = cache
        self.references = references or {}
        self.mapping = mapping
        self.identity = identity
        self.threshold = SAME_PERSON[models.pack] if threshold is None else threshold
        self.eligible = eligible
        self.exclude = exclude
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self._backend: RecognizerBackend | None = None
        self.faces_embedded = 0
        self.faces_seen = 0

    def open(self, ctx: RunContext) -> None:
        self._backend = make_recognizer(self.models, ctx.device)
        if self.cache is not None:
            self.cache.threshold = self.threshold
            if self.references:
                people = embed_people(self.models, ctx.device, self.references, self._backend)
                self.cache.decide = IdentityMatcher(people, threshold=self.threshold, mapping=self.mapping,
                                                    identity=self.identity, exclude=self.exclude)

    def process(self, frames: list[Frame]) -> list[Frame]:
        assert self._backend is not None
        todo = [
            (fi, face)
            for fi, f in enumerate(frames)
            for face in f.faces
            if face.kps is not None and (face.needs_embedding or (face.needs_embedding is None and face.embedding is None))
        ]
        self.faces_seen += sum(len(f.faces) for f in frames)
        vectors = (
            self._backend.embed([f.image for f in frames], [fi for fi, _ in todo], [face for _, face in todo])
            if todo else []
        )
        self.faces_embedded += len(todo)
        fresh = {id(face): v for (_, face), v in zip(todo, vectors)}
        for frame in frames:
            for face in frame.faces:
                v = fresh.get(id(face))
                if v is not None:
                    face.embedding = v
                if self.cache is None or face.track_id is None:
                    continue
                if v is not None:
                    self.cache.observe(face.track_id, v, face.quality, frame.index)
                if face.embedding is None:
                    face.embedding = self.cache.embedding(face.track_id)
                decided, ident = self.cache.decision(face.track_id)
                if decided:
                    face.identity = ident if self.eligible is None or self.eligible(face) else None
        return frames

    def report(self) -> dict[str, Any]:
        return {"faces": self.faces_seen, "embedded": self.faces_embedded,
                "embedded_share": round(self.faces_embedded / self.faces_seen, 3) if self.faces_seen else None}
