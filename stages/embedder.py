"""The embedder stage: identity embeddings for the faces that need one, all of a batch in one pass."""

from __future__ import annotations

from typing import Any

from pipeline.frame import Frame
from pipeline.stage import RunContext, Transform

from .models.factory import ModelConfig, RecognizerBackend, make_recognizer


class Embedder(Transform):
    """Fills ``face.embedding`` (L2-normalised) for faces that have none.

    The tracker gives faces whose track already has a fresh embedding the cached one, so the
    recogniser runs per track (when it starts, then now and then, or on a better view), not on
    every face of every frame.

    Args:
        models: Which pack and how its models run.
        batch_size, max_wait_ms: Frames per batch and longest wait for a batch to fill.
    """

    name = "embedder"

    def __init__(self, *, models: ModelConfig, batch_size: int = 1, max_wait_ms: float = 0.0) -> None:
        self.models = models
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self._backend: RecognizerBackend | None = None
        self.faces_embedded = 0
        self.faces_seen = 0

    def open(self, ctx: RunContext) -> None:
        self._backend = make_recognizer(self.models, ctx.device)

    def process(self, frames: list[Frame]) -> list[Frame]:
        assert self._backend is not None
        todo = [(fi, face) for fi, f in enumerate(frames) for face in f.faces
                if face.embedding is None and face.kps is not None]
        self.faces_seen += sum(len(f.faces) for f in frames)
        if todo:
            vectors = self._backend.embed([f.image for f in frames], [fi for fi, _ in todo], [face for _, face in todo])
            for (_, face), v in zip(todo, vectors):
                face.embedding = v
            self.faces_embedded += len(todo)
        return frames

    def report(self) -> dict[str, Any]:
        return {"faces": self.faces_seen, "embedded": self.faces_embedded}
