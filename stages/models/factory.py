"""From a model configuration to runnable detectors, landmarkers and recognisers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from .insightface_pack import Detections, EngineOptions
from .packs import PACKS, SWAPPER_FILES, find_model

PackName = Literal["builtin", "insightface"]
EngineName = Literal["auto", "torch", "onnxruntime"]
LandmarkKind = Literal["2d106", "3d68", "68"]


class DetectorBackend(Protocol):
    def detect(self, images: list[torch.Tensor]) -> list[Detections]: ...


class LandmarkBackend(Protocol):
    count: int

    def predict(self, frames: list[torch.Tensor], frame_of: list[int], boxes: np.ndarray) -> np.ndarray: ...


class RecognizerBackend(Protocol):
    def embed(self, frames: list[torch.Tensor], frame_of: list[int], faces: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelConfig:
    """Which pack, where its files are, and how its models run.

    Attributes:
        pack: ``builtin`` (dlib, offline, CPU) or ``insightface`` (ONNX files you have).
        name: The insightface pack folder (buffalo_l, buffalo_m, buffalo_s, antelopev2, or yours).
        dir: A folder looked in first.
        files: Per-role file name or path overrides (detector, landmarker, recognizer, swapper).
        engine: ``auto`` (torch on CUDA, onnxruntime on the CPU), ``torch`` or ``onnxruntime``.
        dtype: Compute precision for the torch engine.
        providers: onnxruntime execution providers (default: the best available).
        threads: onnxruntime intra-op threads.
        spin: onnxruntime: let idle worker threads spin.
    """

    pack: PackName = "builtin"
    name: str = "buffalo_l"
    dir: str | None = None
    files: dict[str, str | None] = field(default_factory=dict)
    engine: EngineName = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    spin: bool = False

    def __post_init__(self) -> None:
        if self.pack not in ("builtin", "insightface"):
            raise ValueError(f"pack must be 'builtin' or 'insightface', got {self.pack!r}")
        if self.engine not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"engine must be auto, torch or onnxruntime, got {self.engine!r}")

    def options(self, device: torch.device) -> EngineOptions:
        engine = self.engine if self.engine != "auto" else ("torch" if device.type == "cuda" else "onnxruntime")
        return EngineOptions(engine=engine, device=device, dtype=self.dtype,
                             providers=list(self.providers) if self.providers else None, threads=self.threads,
                             spin=self.spin)

    def path(self, role: str) -> Path:
        """The file for ``role`` (detector, landmarker, landmarker_3d, recognizer, swapper)."""
        override = self.files.get("landmarker" if role == "landmarker_3d" else role)
        if role == "swapper":
            names: list[str] = list(SWAPPER_FILES)
        else:
            pack = PACKS.get(self.name, PACKS["buffalo_l"])
            names = [pack[role]]
        return find_model(role.replace("_3d", ""), names, pack=self.name, models_dir=self.dir, override=override)


def make_detector(cfg: ModelConfig, device: torch.device, **kwargs: Any) -> DetectorBackend:
    """kwargs: input_size, score_threshold, nms_threshold, max_faces, min_size; builtin: model, upsample."""
    builtin_only = ("model", "upsample")
    if cfg.pack == "builtin":
        from .builtin_pack import DlibDetector

        keep = {k: v for k, v in kwargs.items() if k in ("score_threshold", "max_faces", "min_size", *builtin_only)}
        return DlibDetector(**keep)
    from .insightface_pack import ScrfdDetector

    keep = {k: v for k, v in kwargs.items() if k not in builtin_only}
    return ScrfdDetector(cfg.path("detector"), cfg.options(device), **keep)


def make_landmarker(cfg: ModelConfig, device: torch.device, kind: LandmarkKind) -> LandmarkBackend:
    if cfg.pack == "builtin":
        from .builtin_pack import DlibLandmarks

        return DlibLandmarks()
    from .insightface_pack import LandmarkModel

    return LandmarkModel(cfg.path("landmarker_3d" if kind == "3d68" else "landmarker"), cfg.options(device))


def make_recognizer(cfg: ModelConfig, device: torch.device) -> RecognizerBackend:
    if cfg.pack == "builtin":
        from .builtin_pack import DlibRecognizer

        return DlibRecognizer()
    from .insightface_pack import ArcFaceModel

    return ArcFaceModel(cfg.path("recognizer"), cfg.options(device))
