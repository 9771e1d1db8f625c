"""The settings a preset can hold: one section per part of the run.

Each section is the settings dataclass of the stage (or library part) it configures, defined and
validated beside it; this module only composes them. Every key can be set in a YAML preset or
overridden with ``--set section.key=value``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.abc import Traversable
from typing import Literal

from facestream.facelib.models.factory import ModelSettings
from facestream.pipeline.config import FieldError, Layers, build, check, load_yaml, parse_override, positive
from facestream.pipeline.errors import ConfigError
from facestream.pipeline.progress import Mode as ProgressMode
from facestream.pipeline.runner import FlowSettings
from facestream.presets import is_preset, list_presets, preset_path
from facestream.stages.annotator import AnnotateSettings
from facestream.stages.blender import BlendSettings
from facestream.stages.decoder import DecoderSettings
from facestream.stages.detector import DetectorSettings
from facestream.stages.embedder import EmbedderSettings
from facestream.stages.encoder import EncoderSettings
from facestream.stages.generator import AnonymizeSettings, MapEntry, SwapSettings
from facestream.stages.landmarker import LandmarkerSettings
from facestream.stages.selector import IdentitySettings, SelectSettings
from facestream.stages.tracker import TrackerSettings

__all__ = [
    "AnnotateSettings", "AnonymizeSettings", "BlendSettings", "DecoderSettings", "DetectorSettings",
    "EmbedderSettings", "EncoderSettings", "FlowSettings", "IdentitySettings", "LandmarkerSettings", "MapEntry", "MemorySettings",
    "ModelSettings", "OutputSettings", "SelectSettings", "Settings", "StatsSettings", "SwapSettings",
    "TrackerSettings", "list_presets", "load_settings", "preset_path",
]


@dataclass
class OutputSettings(EncoderSettings):
    """How the output is written: the encoder's settings, and what marks swapped output.

    Attributes:
        watermark: Text drawn in the bottom-right corner of every frame of swapped output (e.g.
            "AI-generated").
        provenance: Tag swapped output's container metadata as synthetically altered (and by which
            model).
    """

    watermark: str | None = None
    provenance: bool = True

    def encoder(self) -> EncoderSettings:
        """The encoder's part of these settings."""
        return EncoderSettings(**{f: getattr(self, f) for f in EncoderSettings.__dataclass_fields__})


@dataclass
class StatsSettings:
    """Progress display and run statistics.

    Attributes:
        interval_s: How often the progress bar or live status line is refreshed.
        progress: ``auto``: a bar on a terminal, a line every few seconds otherwise.
    """

    interval_s: float = 1.0
    progress: ProgressMode = "auto"

    def __post_init__(self) -> None:
        positive(self, "interval_s")


@dataclass
class MemorySettings:
    """How much memory a run may take (the ``memory`` section).

    Attributes:
        gpu_fraction: Share of the GPU's memory this run may use (``None``: all of it). Beyond it a
            model's batch is halved and retried, as on running out of the whole GPU (the halvings
            are counted in the statistics).
        pinned_mb: Page-locked host memory for moving pictures to and from the GPU.
        faces_per_forward: Most faces one swapper forward takes (default: 8 on a GPU, 4 on a CPU);
            a batch with more faces runs in slices.
        detect_max_side: Pictures whose longer side is larger than this are detected on a copy
            scaled down to it; the faces are then aligned, swapped and blended at full resolution
            (0: always detect at full size).

    Example:
        >>> MemorySettings(gpu_fraction=0.5).gpu_fraction
        0.5
    """

    gpu_fraction: float | None = None
    pinned_mb: int = 256
    faces_per_forward: int | None = None
    detect_max_side: int = 3840

    def __post_init__(self) -> None:
        check(self.gpu_fraction is None or 0 < self.gpu_fraction <= 1, "gpu_fraction", self.gpu_fraction,
              "must be within (0, 1]")
        check(self.pinned_mb >= 0, "pinned_mb", self.pinned_mb, "must be >= 0")
        check(self.detect_max_side == 0 or self.detect_max_side >= 64, "detect_max_side", self.detect_max_side,
              "must be 0 (off) or at least 64")
        positive(self, "faces_per_forward")


@dataclass
class Settings:
    """A whole preset.

    Attributes:
        description: One line shown by ``facestream presets``.
        mode: ``passthrough``, ``analyze``, ``swap`` or ``anonymize``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; for batches also
            ``cuda:all`` or a list (``cuda:0,1``): files and segments are spread over them.
        threads: Torch CPU threads (default on a CPU: half the cores, since the stages already run
            side by side; on a GPU: torch's own choice).
    """

    description: str = ""
    mode: Literal["passthrough", "analyze", "swap", "anonymize"] = "passthrough"
    device: str = "auto"
    threads: int | None = None
    flow: FlowSettings = field(default_factory=FlowSettings)
    input: DecoderSettings = field(default_factory=DecoderSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    stats: StatsSettings = field(default_factory=StatsSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    landmarker: LandmarkerSettings = field(default_factory=LandmarkerSettings)
    embedder: EmbedderSettings = field(default_factory=EmbedderSettings)
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    swap: SwapSettings = field(default_factory=SwapSettings)
    blend: BlendSettings = field(default_factory=BlendSettings)
    anonymize: AnonymizeSettings = field(default_factory=AnonymizeSettings)
    annotate: AnnotateSettings = field(default_factory=AnnotateSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)

    def __post_init__(self) -> None:
        if self.select.mode == "reference" and not self.select.references:
            raise FieldError("select.references", "must name images of the people for select.mode reference",
                             self.select.references)
        if self.select.mode == "map" and not self.swap.map:
            raise FieldError("swap.map", "must give target and source images for select.mode map (or --map T=S)",
                             self.swap.map)
        check(bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?|cuda:all|cuda:\d+(,(cuda:)?\d+)+", self.device)), "device",
              self.device, "must be auto, cpu, cuda, cuda:N, cuda:all or a list like cuda:0,1")
        positive(self, "threads")


def load_settings(
    *, preset: str | None = None, config_file: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Settings:
    """Defaults, then a preset or a config file (which may name a ``base`` preset), then overrides.

    Raises:
        ConfigError: naming the file or ``--set``, the key path and the bad value.

    Example:
        >>> load_settings(preset="anonymize", overrides=["anonymize.style=pixelate"]).anonymize.style
        'pixelate'
    """
    if preset and config_file:
        raise ConfigError("give --preset or --config, not both")
    layers = Layers()
    if config_file:
        _add_file(layers, config_file, seen=set())
    else:
        name = preset or "offline"
        path = preset_path(name)
        if not is_preset(name):
            raise ConfigError(f"no preset named '{name}' (available: {', '.join(list_presets())})")
        _add_file(layers, path, seen=set())
    for text in overrides:
        keys, value = parse_override(text)
        layers.set(keys, value, f"--set {text}")
    return build(Settings, layers)


def _add_file(layers: Layers, path: str | Traversable, *, seen: set[str]) -> None:
    """Add a YAML file; a ``base: NAME`` key first adds that preset (single inheritance)."""
    label = str(path)
    if label in seen:
        raise ConfigError("presets inherit from each other in a loop", source=label)
    seen.add(label)
    data = load_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not is_preset(base):
            raise ConfigError(f"base must name a preset ({', '.join(list_presets())}), got {base!r}", source=label,
                              key="base")
        _add_file(layers, preset_path(base), seen=seen)
    layers.add(data, label)
