"""The embedder stage: identity embeddings for the faces that need one, all of a batch in one pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from facestream.facelib.models.factory import ModelSettings, RecognizerBackend, make_recognizer
from facestream.facelib.tracking.identity import EmbedSchedule
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Transform
from facestream.facelib.models.shared import halvings


@dataclass
class EmbedderSettings:
    """Identity embeddings (the ``embedder`` section of a preset).

    Attributes:
        enabled: ``auto``: where identities are needed (face selection by reference, re-identifying
            the one chosen face); ``always``; ``never``.

    Example:
        >>> EmbedderSettings(enabled="always").enabled
        'always'
    """

    enabled: Literal["auto", "always", "never"] = "auto"


class Embedder(Transform):
    """Fills ``face.embedding`` (L2-normalised) for the faces it chooses to embed.

    Without a tracker, every face with keypoints is embedded. With one, the embedder keeps its own
    per-track :class:`EmbedSchedule`: a track is embedded when it starts, every ``refresh_frames``
    frames, and on a clearly better view; predicted faces never are. The faces it skips keep
    ``embedding = None``; the selector after it gives them their track's running mean.

    Args:
        settings: Whether embeddings are wanted (read by the app that assembles the stages).
        models: Which pack and how its models run.
        tracked: A tracker runs before this stage (embed per track rather than every face).
        refresh_frames: Re-embed a track at least this often.
        better_view: Re-embed when a view is this much better than the track's best.
        batch_size, max_wait_ms: Frames per batch and longest wait for a batch to fill.

    Example:
        >>> emb = Embedder(models=ModelSettings(pack="builtin"), refresh_frames=30)
        >>> emb.schedule.refresh_frames
        30
    """

    name = "embedder"

    def __init__(self, settings: EmbedderSettings | None = None, *, models: ModelSettings, tracked: bool = True,
                 refresh_frames: int = 15, better_view: float = 1.25, batch_size: int = 1,
                 max_wait_ms: float = 0.0) -> None:
        self.settings = settings or EmbedderSettings()
        self.models = models
        self.tracked = tracked
        self.schedule = EmbedSchedule(refresh_frames=refresh_frames, better_view=better_view)
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self._backend: RecognizerBackend | None = None
        self.faces_embedded = 0
        self.faces_seen = 0

    def open(self, ctx: RunContext) -> None:
        self._backend = make_recognizer(self.models, ctx.device)

    def process(self, frames: list[Frame]) -> list[Frame]:
        assert self._backend is not None
        todo = []
        for fi, frame in enumerate(frames):
            self.schedule.forget(frame.tracks_ended)
            for face in frame.faces:
                if face.kps is None:
                    continue
                if not self.tracked:
                    wanted = face.embedding is None
                elif face.track_id is None or face.predicted:
                    wanted = False
                else:
                    wanted = self.schedule.wants(face.track_id, frame=frame.stream_index, quality=face.quality)
                if wanted:
                    todo.append((fi, face))
            self.faces_seen += len(frame.faces)
        if todo:
            vectors = self._backend.embed([f.image for f in frames], [fi for fi, _ in todo], [face for _, face in todo])
            for (_, face), v in zip(todo, vectors):
                face.embedding = v
        self.faces_embedded += len(todo)
        return frames

    def report(self) -> dict[str, Any]:
        return {"faces": self.faces_seen, "embedded": self.faces_embedded,
                "embedded_share": round(self.faces_embedded / self.faces_seen, 3) if self.faces_seen else None,
                "memory_halvings": halvings(self._backend)}
