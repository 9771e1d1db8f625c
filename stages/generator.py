"""The generator stage: new faces for the selected faces of a batch, all in one pass."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.stage import RunContext, Transform

from .models.factory import ModelConfig

Kind = Literal["inswapper", "builtin", "blur", "pixelate", "solid"]
KINDS: tuple[str, ...] = get_args(Kind)


class Generator(Transform):
    """Fills ``face.generated`` for every face whose ``identity`` the generator knows.

    Swappers (``inswapper``, ``builtin``) change faces whose identity is one of the ``sources``;
    anonymisers (``blur``, ``pixelate``, ``solid``) every face with any identity (the face
    selection gives one to the faces to hide).

    Args:
        kind: The generator.
        models: Where the swapper and, for ``inswapper``, the recogniser that embeds the sources are.
        sources: Identity -> images of the source person (several images are averaged).
        strength: Anonymisers: 1 hides faces from detectors; more is stronger.
        builtin_size: Side of the builtin swapper's crops.
        batch_size, max_wait_ms: Frames per batch and longest wait for a batch to fill.
    """

    name = "generator"

    def __init__(
        self,
        *,
        kind: Kind,
        models: ModelConfig | None = None,
        sources: dict[str, list[str]] | None = None,
        strength: float = 1.0,
        builtin_size: int = 192,
        batch_size: int = 1,
        max_wait_ms: float = 0.0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        swapping = kind in ("inswapper", "builtin")
        if swapping and not sources:
            raise ConfigError("swapping needs a source face: --source IMAGE (or swap.source in the preset)")
        if kind == "inswapper" and (models is None or models.pack != "insightface"):
            raise ConfigError("the inswapper generator needs models.pack insightface (its ArcFace embeds the source)")
        self.kind = kind
        self.models = models
        self.sources = sources or {}
        self.strength = strength
        self.builtin_size = builtin_size
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self._model: Any = None
        self.faces_generated = 0
        self.model_file: str | None = None

    def open(self, ctx: RunContext) -> None:
        if self.kind == "inswapper":
            from .embedder import embed_people
            from .models.swappers import InSwapper

            assert self.models is not None
            path = self.models.path("swapper")
            self.model_file = path.name
            swapper = InSwapper(path, self.models.options(ctx.device))
            swapper.set_sources(embed_people(self.models, ctx.device, self.sources))
            self._model = swapper
        elif self.kind == "builtin":
            from .models.swappers import BuiltinSwapper

            swapper = BuiltinSwapper(device=ctx.device, size=self.builtin_size)
            swapper.set_sources(self.sources)
            self._model = swapper
            self.model_file = "builtin (dlib 68-point piecewise-affine)"
        else:
            from .models.swappers import Anonymizer

            self._model = Anonymizer(style=self.kind, strength=self.strength)  # type: ignore[arg-type]

    def process(self, frames: list[Frame]) -> list[Frame]:
        swapping = self.kind in ("inswapper", "builtin")
        todo = [
            (fi, face)
            for fi, f in enumerate(frames)
            for face in f.faces
            if face.identity is not None and (not swapping or face.identity in self.sources)
            and (face.kps is not None or self.kind not in ("inswapper",))
        ]
        if todo:
            made = self._model.generate([f.image for f in frames], [fi for fi, _ in todo], [face for _, face in todo])
            for (_, face), g in zip(todo, made):
                face.generated = g
            self.faces_generated += len(todo)
        return frames

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "faces": self.faces_generated, "model": self.model_file}
        if getattr(self._model, "fell_back", False):
            out["precision_fallback"] = True
        return out
