"""From a model configuration to runnable detectors, landmarkers and recognisers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from facestream.pipeline.config import check, positive

from .packs import PACKS, SWAPPER_FILES, find_model
from .shared import shared

if TYPE_CHECKING:  # the model code (torch, onnx) loads when a model is made, not with the settings
    import numpy as np
    import torch

    from .insightface_pack import Detections, EngineOptions

PackName = Literal["builtin", "insightface"]
EngineName = Literal["auto", "torch", "onnxruntime", "tensorrt"]
LandmarkKind = Literal["2d106", "3d68", "68"]
DTypeName = Literal["float32", "float16", "bfloat16"]
BuiltinDetectorModel = Literal["hog", "mmod"]
AnonymizerStyle = Literal["blur", "pixelate", "solid"]
PACK_NAMES: tuple[str, ...] = get_args(PackName)
ENGINE_NAMES: tuple[str, ...] = get_args(EngineName)
DTYPE_NAMES: tuple[str, ...] = get_args(DTypeName)


DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32)


def default_tensorrt_cache() -> Path:
    """Where TensorRT's engines and timings are kept unless ``models.cache_dir`` says:
    ``$XDG_CACHE_HOME/facestream/tensorrt``, ``~/.cache/facestream/tensorrt`` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "facestream" / "tensorrt"


class DetectorBackend(Protocol):
    def detect(self, images: list[torch.Tensor]) -> list[Detections]: ...


class LandmarkBackend(Protocol):
    count: int

    def predict(self, frames: list[torch.Tensor], frame_of: list[int], boxes: np.ndarray) -> np.ndarray: ...


class RecognizerBackend(Protocol):
    def embed(self, frames: list[torch.Tensor], frame_of: list[int], faces: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelSettings:
    """Which model pack, where its files are, and how its models run (the ``models`` section).

    Attributes:
        pack: ``builtin`` (dlib's detector, landmarks and embedder: offline, CPU) or ``insightface``
            (ONNX files you have).
        name: The insightface pack folder: buffalo_l, buffalo_m, buffalo_s, antelopev2 (or yours).
        dir: A folder looked in first.
        detector, landmarker, recognizer, swapper: A file name or path for one model.
        engine: ``auto`` (torch on CUDA: batched, no host round trip; onnxruntime on the CPU),
            ``torch``, ``onnxruntime`` (on CUDA it needs onnxruntime-gpu), or ``tensorrt``
            (onnxruntime with TensorRT first; needs onnxruntime-gpu and tensorrt, and CUDA).
        dtype: Compute precision: the torch engine's (float16/bfloat16 checked against float32 on
            the first batch, float32 kept where they fall short), and TensorRT's (float16 unless
            float32 is asked). Unset: float32, float16 for ``tensorrt``.
        providers: onnxruntime execution providers (default: the best available).
        threads: onnxruntime intra-op threads.
        spin: onnxruntime: let idle threads spin (faster for one model alone, slower beside other
            stages).
        buckets: The batch sizes a batch is padded to (positive, ascending) by the torch engine on
            CUDA and by ``tensorrt`` (its optimisation profile); larger batches run in slices of
            the largest.
        cuda_graphs: ``auto`` (on for the torch engine on CUDA), ``true`` or ``false``: replay each
            bucket's forward as a CUDA graph.
        tf32: TensorFloat-32 for float32 convolutions and matrix products on CUDA (faster, about
            1e-3 relative error; process-wide). Off: float32 is float32.
        cache_dir: TensorRT's engine and timing caches (default: ``$XDG_CACHE_HOME/facestream/tensorrt``,
            else ``~/.cache/facestream/tensorrt``).

    Example:
        >>> ModelSettings(pack="insightface", name="buffalo_s").name
        'buffalo_s'
    """

    pack: PackName = "builtin"
    name: str = "buffalo_l"
    dir: str | None = None
    detector: str | None = None
    landmarker: str | None = None
    recognizer: str | None = None
    swapper: str | None = None
    engine: EngineName = "auto"
    dtype: DTypeName | None = None
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    spin: bool = False
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    cuda_graphs: Literal["auto"] | bool = "auto"
    tf32: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        check(self.pack in PACK_NAMES, "pack", self.pack, f"must be one of {', '.join(PACK_NAMES)}")
        check(self.engine in ENGINE_NAMES, "engine", self.engine, f"must be one of {', '.join(ENGINE_NAMES)}")
        check(self.dtype is None or self.dtype in DTYPE_NAMES, "dtype", self.dtype,
              f"must be one of {', '.join(DTYPE_NAMES)}")
        positive(self, "threads")
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))
        object.__setattr__(self, "buckets", tuple(self.buckets))
        check(bool(self.buckets) and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in self.buckets)
              and list(self.buckets) == sorted(set(self.buckets)), "buckets", list(self.buckets),
              "must be positive integers in ascending order")
        check(self.cuda_graphs in ("auto", True, False), "cuda_graphs", self.cuda_graphs, "must be auto, true or false")

    def options(self, device: torch.device) -> EngineOptions:
        """How this run's models run on ``device``."""
        from .insightface_pack import EngineOptions

        engine = self.engine if self.engine != "auto" else ("torch" if device.type == "cuda" else "onnxruntime")
        dtype = self.dtype or ("float16" if engine == "tensorrt" else "float32")
        cache = self.cache_dir if self.cache_dir is not None else str(default_tensorrt_cache())
        return EngineOptions(engine=engine, device=device, dtype=dtype,
                             providers=list(self.providers) if self.providers else None, threads=self.threads,
                             spin=self.spin, tf32=self.tf32, tensorrt_cache=cache if engine == "tensorrt" else None,
                             buckets=self.buckets, cuda_graphs=self.cuda_graphs is not False)

    def path(self, role: str) -> Path:
        """The file for ``role`` (detector, landmarker, landmarker_3d, recognizer, swapper)."""
        override = getattr(self, "landmarker" if role == "landmarker_3d" else role)
        if role == "swapper":
            names: list[str] = list(SWAPPER_FILES)
        else:
            pack = PACKS.get(self.name, PACKS["buffalo_l"])
            names = [pack[role]]
        return find_model(role.replace("_3d", ""), names, pack=self.name, models_dir=self.dir, override=override)


def make_detector(cfg: ModelSettings, device: torch.device, **kwargs: Any) -> DetectorBackend:
    """kwargs: input_size, score_threshold, nms_threshold, max_faces, min_size; builtin: model, upsample."""
    key = ("detector", cfg, str(device), tuple(sorted(kwargs.items())))
    return shared(key, lambda: _make_detector(cfg, device, **kwargs), device=str(device))


def _make_detector(cfg: ModelSettings, device: torch.device, **kwargs: Any) -> DetectorBackend:
    builtin_only = ("model", "upsample")
    if cfg.pack == "builtin":
        from .builtin_pack import DlibDetector

        keep = {k: v for k, v in kwargs.items() if k in ("score_threshold", "max_faces", "min_size", *builtin_only)}
        return DlibDetector(**keep)
    from .insightface_pack import ScrfdDetector

    keep = {k: v for k, v in kwargs.items() if k not in builtin_only}
    return ScrfdDetector(cfg.path("detector"), cfg.options(device), **keep)


def make_landmarker(cfg: ModelSettings, device: torch.device, kind: LandmarkKind) -> LandmarkBackend:
    return shared(("landmarker", cfg, str(device), kind), lambda: _make_landmarker(cfg, device, kind),
                  device=str(device))


def _make_landmarker(cfg: ModelSettings, device: torch.device, kind: LandmarkKind) -> LandmarkBackend:
    if cfg.pack == "builtin":
        from .builtin_pack import DlibLandmarks

        return DlibLandmarks()
    from .insightface_pack import LandmarkModel

    return LandmarkModel(cfg.path("landmarker_3d" if kind == "3d68" else "landmarker"), cfg.options(device))


def make_recognizer(cfg: ModelSettings, device: torch.device) -> RecognizerBackend:
    return shared(("recognizer", cfg, str(device)), lambda: _make_recognizer(cfg, device), device=str(device))


def _make_recognizer(cfg: ModelSettings, device: torch.device) -> RecognizerBackend:
    if cfg.pack == "builtin":
        from .builtin_pack import DlibRecognizer

        return DlibRecognizer()
    from .insightface_pack import ArcFaceModel

    return ArcFaceModel(cfg.path("recognizer"), cfg.options(device))
