"""The generator stage: new faces for the selected faces of a batch, all in one pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from facestream.facelib.models.factory import AnonymizerStyle, DTypeName, ModelSettings
from facestream.facelib.models.shared import shared
from facestream.pipeline.config import positive
from facestream.pipeline.errors import ConfigError
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Transform
from facestream.facelib.models.shared import halvings


Kind = Literal["inswapper", "builtin", AnonymizerStyle]
KINDS: tuple[str, ...] = get_args(Kind)


@dataclass
class MapEntry:
    """One ``map`` pair: who, in the video, becomes whom.

    Attributes:
        target: Images (or folders) of the person in the video.
        source: Images (or folders) of the face they get.
    """

    target: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)


@dataclass
class SwapSettings:
    """Face swapping (the ``swap`` section of a preset).

    Attributes:
        generator: ``inswapper`` or ``builtin``; ``auto``: inswapper with the insightface pack, the
            builtin swapper with the builtin pack.
        source: Images (or folders) of the source person; several images are averaged.
        map: ``select.mode map``: each target person gets their own source.
        dtype: The swapper's precision (torch engine); reduced precision is checked against float32
            first.
        builtin_size: Side of the builtin swapper's crops.
        people: ``inswapper``: identity -> the source's unit embedding, already computed (instead of
            embedding ``sources`` when the stage opens).

    Example:
        >>> SwapSettings(source=["me.jpg"], dtype="float16").dtype
        'float16'
    """

    generator: Literal["auto", "inswapper", "builtin"] = "auto"
    source: list[str] = field(default_factory=list)
    map: list[MapEntry] = field(default_factory=list)
    dtype: DTypeName = "float32"
    builtin_size: int = 192

    def __post_init__(self) -> None:
        positive(self, "builtin_size")


@dataclass
class AnonymizeSettings:
    """Hiding faces (the ``anonymize`` section of a preset).

    Attributes:
        style: ``blur``, ``pixelate`` or ``solid``.
        strength: 1 hides faces from detectors; more is stronger.

    Example:
        >>> AnonymizeSettings(style="pixelate").style
        'pixelate'
    """

    style: AnonymizerStyle = "blur"
    strength: float = 1.0

    def __post_init__(self) -> None:
        positive(self, "strength")


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
        faces_per_forward: The swapper model's most faces a forward (``None``: its default).

    Example:
        >>> Generator(kind="pixelate", strength=2.0).kind
        'pixelate'
    """

    name = "generator"

    def __init__(
        self,
        *,
        kind: Kind,
        models: ModelSettings | None = None,
        sources: dict[str, list[str]] | None = None,
        strength: float = 1.0,
        builtin_size: int = 192,
        people: dict[str, np.ndarray] | None = None,
        batch_size: int = 1,
        max_wait_ms: float = 0.0,
        faces_per_forward: int | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        swapping = kind in ("inswapper", "builtin")
        if swapping and not sources:
            raise ValueError("swapping needs source images")
        if kind == "inswapper" and (models is None or models.pack != "insightface"):
            raise ConfigError("the inswapper generator needs models.pack insightface (its ArcFace embeds the source)",
                              key="swap.generator")
        self.kind = kind
        self.models = models
        self.sources = sources or {}
        self.people = people
        self.strength = strength
        self.builtin_size = builtin_size
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.faces_per_forward = faces_per_forward
        self._model: Any = None
        self.faces_generated = 0
        self.implausible_skipped = 0
        self.turned_skipped = 0
        self.model_file: str | None = None

    def open(self, ctx: RunContext) -> None:
        if self.kind == "inswapper":
            from facestream.facelib.models.people import embed_people
            from facestream.facelib.models.swappers import InSwapper

            assert self.models is not None
            path = self.models.path("swapper")
            self.model_file = path.name
            options = self.models.options(ctx.device)
            swapper = shared(("inswapper", str(path), repr(options)), lambda: InSwapper(path, options),
                             device=str(ctx.device))
            swapper.set_sources(self.people if self.people is not None
                                else embed_people(self.models, ctx.device, self.sources))
            swapper.set_forward_faces(self.faces_per_forward)
            self._model = swapper
        elif self.kind == "builtin":
            from facestream.facelib.models.swappers import BuiltinSwapper

            size = self.builtin_size
            swapper = shared(("builtin-swapper", str(ctx.device), size),
                             lambda: BuiltinSwapper(device=ctx.device, size=size), device=str(ctx.device))
            swapper.set_sources(self.sources)
            self._model = swapper
            self.model_file = "builtin (dlib 68-point piecewise-affine)"
        else:
            from facestream.facelib.models.swappers import Anonymizer

            self._model = Anonymizer(style=self.kind, strength=self.strength)  # type: ignore[arg-type]

    def process(self, frames: list[Frame]) -> list[Frame]:
        swapping = self.kind in ("inswapper", "builtin")
        todo = []
        for fi, f in enumerate(frames):
            for face in f.faces:
                if face.identity is None or (swapping and face.identity not in self.sources):
                    continue
                if not face.plausible and (swapping or _explained(face, f.faces)):
                    # A doubtful box is not painted over. Anonymising still hides it (missing a
                    # face is worse than hiding something that is not one), unless it holds a
                    # face that is hidden anyway (a head and its hair taken for a face).
                    self.implausible_skipped += 1
                    continue
                if swapping and face.turned_away:
                    self.turned_skipped += 1  # lost while turning away: its old geometry would not fit
                    continue
                if face.kps is None and self.kind == "inswapper":
                    continue
                todo.append((fi, face))
        if todo:
            made = self._model.generate([f.image for f in frames], [fi for fi, _ in todo], [face for _, face in todo])
            for (_, face), g in zip(todo, made):
                face.generated = g
            self.faces_generated += len(todo)
        return frames

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "faces": self.faces_generated, "model": self.model_file,
                               "implausible_skipped": self.implausible_skipped, "turned_skipped": self.turned_skipped}
        out["memory_halvings"] = halvings(self._model)
        if getattr(self._model, "fell_back", False):
            out["precision_fallback"] = True
        return out


def _explained(face: Any, faces: list[Any]) -> bool:
    """Whether half or more of a plausible face of the same frame lies inside ``face``'s box."""
    x1, y1, x2, y2 = face.box
    for other in faces:
        if other is face or not other.plausible:
            continue
        a1, b1, a2, b2 = other.box
        inter = max(0.0, min(x2, a2) - max(x1, a1)) * max(0.0, min(y2, b2) - max(y1, b1))
        if inter >= 0.5 * max((a2 - a1) * (b2 - b1), 1e-6):
            return True
    return False
