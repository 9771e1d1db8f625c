"""The settings a preset can hold: one dataclass per section, validated when built.

Every key here can be set in a YAML preset or overridden with ``--set section.key=value``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from config import PRESET_DIR
from pipeline.config import FieldError, Layers, build, load_yaml, parse_override
from pipeline.errors import ConfigError


def _positive(section: object, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if value is not None and value <= 0:
            raise FieldError(name, f"{name} must be > 0")


@dataclass
class FlowSettings:
    """How frames move between stages."""

    policy: Literal["auto", "block", "latest"] = "auto"
    """``block``: lossless backpressure; ``latest``: drop the oldest frames to bound latency;
    ``auto``: ``latest`` for live inputs, ``block`` for files."""
    queue_size: int = 8
    batch_size: int = 8
    """Most consecutive frames a batching stage takes at once."""
    max_wait_ms: float = 20.0
    """Longest wait for a batch to fill."""

    def __post_init__(self) -> None:
        _positive(self, "queue_size", "batch_size")
        if self.max_wait_ms < 0:
            raise FieldError("max_wait_ms", "max_wait_ms must be >= 0")


@dataclass
class InputSettings:
    """How the input is read."""

    start: float | None = None
    end: float | None = None
    realtime: bool = False
    live: bool | None = None
    image_duration_s: float = 5.0
    image_fps: float = 25.0
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    reconnect: bool = True
    reconnect_timeout_s: float = 60.0
    backoff_s: tuple[float, float] = (0.5, 8.0)
    audio: bool = True
    hwaccel: Literal["none", "cuda"] = "none"
    webcam_size: str | None = None
    webcam_fps: float | None = None
    webcam_format: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.start is not None and self.start < 0:
            raise FieldError("start", "start must be >= 0")
        if self.end is not None and self.end <= (self.start or 0):
            raise FieldError("end", "end must be after start")
        _positive(self, "image_duration_s", "image_fps", "open_timeout_s", "read_timeout_s", "reconnect_timeout_s")
        if not 0 < self.backoff_s[0] <= self.backoff_s[1]:
            raise FieldError("backoff_s", "backoff_s must be [first, longest] with 0 < first <= longest")
        if self.webcam_size is not None and not re.fullmatch(r"\d+x\d+", self.webcam_size):
            raise FieldError("webcam_size", "webcam_size must look like 1280x720")


@dataclass
class OutputSettings:
    """How the output is written."""

    codec: Literal["auto", "libx264", "libx265", "libvpx-vp9", "h264_nvenc", "hevc_nvenc"] = "auto"
    crf: int = 18
    preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
    ] = "veryfast"
    tune: str | None = None
    pix_fmt: str = "yuv420p"
    audio: Literal["copy", "reencode", "none"] = "copy"
    faststart: bool = False
    fragmented: bool = False
    options: dict[str, str] = field(default_factory=dict)
    watermark: str | None = None
    """Text drawn in the bottom-right corner of every frame of swapped output (e.g. "AI-generated")."""
    provenance: bool = True
    """Tag swapped output's container metadata as synthetically altered (and by which model)."""

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 63:
            raise FieldError("crf", "crf must be within 0..63")


@dataclass
class StatsSettings:
    """Progress display and run statistics."""

    interval_s: float = 1.0
    """How often the progress bar or live status line is refreshed."""
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    """``auto``: a bar on a terminal, a line every few seconds otherwise."""

    def __post_init__(self) -> None:
        _positive(self, "interval_s")


@dataclass
class ModelSettings:
    """Which model pack, where its files are, and how the models run."""

    pack: Literal["builtin", "insightface"] = "builtin"
    """``builtin``: dlib's detector, landmarks and embedder (offline, CPU); ``insightface``: your ONNX files."""
    name: str = "buffalo_l"
    """The insightface pack folder: buffalo_l, buffalo_m, buffalo_s, antelopev2 (or a folder of your own)."""
    dir: str | None = None
    """A folder looked in first."""
    detector: str | None = None
    landmarker: str | None = None
    recognizer: str | None = None
    swapper: str | None = None
    engine: Literal["auto", "torch", "onnxruntime"] = "auto"
    """``auto``: torch on CUDA (batched, no host round trip), onnxruntime on the CPU."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    providers: list[str] | None = None
    threads: int | None = None
    spin: bool = False
    """onnxruntime: let idle threads spin (faster for one model alone, slower beside other stages)."""

    def __post_init__(self) -> None:
        _positive(self, "threads")


@dataclass
class DetectorSettings:
    """Face detection."""

    input_size: tuple[int, int] = (640, 640)
    score_threshold: float = 0.5
    nms_threshold: float = 0.4
    max_faces: int = 0
    """0: every face."""
    min_size: float = 0.0
    """Pixels on the box's shorter side."""
    every: int = 1
    """Detect every N-th frame; the tracker predicts the frames between."""
    builtin_model: Literal["hog", "mmod"] = "hog"
    upsample: int = 0
    """Builtin detector: 1 finds faces down to about 40 px, at four times the cost."""

    def __post_init__(self) -> None:
        if not 0 <= self.score_threshold <= 1:
            raise FieldError("score_threshold", "score_threshold must be within 0..1")
        if not 0 < self.nms_threshold <= 1:
            raise FieldError("nms_threshold", "nms_threshold must be within (0, 1]")
        _positive(self, "every")
        if min(self.input_size) < 32 or any(v % 32 for v in self.input_size):
            raise FieldError("input_size", "input_size must be two multiples of 32")
        if self.max_faces < 0 or self.min_size < 0 or self.upsample < 0:
            raise FieldError("max_faces", "max_faces, min_size and upsample must be >= 0")


@dataclass
class LandmarkerSettings:
    """Dense landmarks (run only where a stage needs them)."""

    model: Literal["auto", "none", "2d106", "3d68"] = "auto"
    """``auto``: what the mode needs (none for pass-through, 2d106 or the builtin 68 for analysis)."""
    refine_predicted: bool = False
    """Also run on faces the tracker predicted (``detector.every`` > 1, missed detections)."""


@dataclass
class EmbedderSettings:
    """Identity embeddings."""

    enabled: Literal["auto", "always", "never"] = "auto"
    """``auto``: where identities are needed (face selection by reference, swaps)."""


@dataclass
class TrackerSettings:
    """ByteTrack association, coasting through missed detections, landmark smoothing."""

    enabled: Literal["auto"] | bool = "auto"
    """``auto``: on wherever faces are analysed; ``false`` turns it off (selection ``all`` only)."""
    track_thresh: float = 0.5
    low_thresh: float = 0.1
    new_track_thresh: float = 0.6
    match_thresh: float = 0.8
    buffer_s: float = 1.0
    """How long a lost track waits to be picked up again."""
    min_hits: int = 2
    coast_frames: int = 3
    """Frames a face stays (from its predicted box) after a missed detection."""
    coast_behind: bool = False
    """Keep a lost face that is predicted behind a face in view (on for anonymising)."""
    smooth: bool = True
    min_cutoff: float = 1.0
    """One Euro filter: jitter cutoff at rest (Hz); lower is steadier."""
    beta: float = 0.05
    """One Euro filter: how fast the cutoff rises with speed; higher lags less."""

    def __post_init__(self) -> None:
        _positive(self, "buffer_s", "min_hits", "min_cutoff")
        if self.coast_frames < 0 or self.beta < 0:
            raise FieldError("coast_frames", "coast_frames and beta must be >= 0")


@dataclass
class IdentitySettings:
    """Per-track identity: when to embed, how decisions hold, re-identification."""

    refresh_frames: int = 15
    """Re-embed a track at least this often."""
    better_view: float = 1.25
    """Re-embed when a view is this much better than the track's best."""
    switch_votes: int = 3
    """Consecutive updates that must agree before a decision changes."""
    reid: bool = True
    reid_s: float = 30.0
    """How long a lost person's decision is remembered."""
    threshold: float | None = None
    """Cosine similarity for "same person" (default: 0.94 builtin, 0.4 insightface)."""

    def __post_init__(self) -> None:
        _positive(self, "refresh_frames", "switch_votes")
        if self.better_view < 1:
            raise FieldError("better_view", "better_view must be >= 1")
        if self.reid_s < 0:
            raise FieldError("reid_s", "reid_s must be >= 0")


@dataclass
class SelectSettings:
    """Which faces are acted on."""

    mode: Literal["all", "one", "reference", "map"] = "all"
    order: Literal["large-small", "small-large", "left-right", "right-left", "top-bottom", "bottom-top",
                   "best-worst", "central"] = "large-small"
    """Which face ``one`` picks."""
    min_size: float = 0.0
    """Faces smaller than this (pixels, shorter side) are left alone."""
    references: list[str] = field(default_factory=list)
    """``reference``: images of the people to act on."""
    rechoose_s: float = 2.0
    """``one``: how long to wait for the chosen person to return before choosing someone else."""
    exclude: bool = False
    """``reference``: the reference people are the ones to leave alone (act on everyone else)."""

    def __post_init__(self) -> None:
        if self.min_size < 0 or self.rechoose_s < 0:
            raise FieldError("min_size", "min_size and rechoose_s must be >= 0")


@dataclass
class MapEntry:
    """One ``map`` pair: who, in the video, becomes whom."""

    target: list[str] = field(default_factory=list)
    """Images (or folders) of the person in the video."""
    source: list[str] = field(default_factory=list)
    """Images (or folders) of the face they get."""


@dataclass
class SwapSettings:
    """Face swapping."""

    generator: Literal["auto", "inswapper", "builtin"] = "auto"
    """``auto``: inswapper with the insightface pack, the builtin swapper with the builtin pack."""
    source: list[str] = field(default_factory=list)
    """Images (or folders) of the source person; several images are averaged."""
    map: list[MapEntry] = field(default_factory=list)
    """``select.mode map``: each target person gets their own source."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """The swapper's precision (torch engine); reduced precision is checked against float32 first."""
    builtin_size: int = 192

    def __post_init__(self) -> None:
        _positive(self, "builtin_size")


@dataclass
class BlendSettings:
    """Pasting generated faces back."""

    mask: Literal["auto", "insightface", "box", "hull"] = "auto"
    padding: float = 0.1
    feather: float = 0.08
    keep_mouth: bool = False
    colour: Literal["auto", "none", "lab", "histogram"] = "auto"
    poisson: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.padding < 0.5 or not 0 <= self.feather < 0.5:
            raise FieldError("padding", "padding and feather must be within 0..0.5")


@dataclass
class AnonymizeSettings:
    """Hiding faces."""

    style: Literal["blur", "pixelate", "solid"] = "blur"
    strength: float = 1.0

    def __post_init__(self) -> None:
        _positive(self, "strength")


@dataclass
class AnnotateSettings:
    """What ``analyze`` draws."""

    landmarks: bool = True
    labels: bool = True


@dataclass
class Settings:
    """A whole preset."""

    description: str = ""
    mode: Literal["passthrough", "analyze", "swap", "anonymize"] = "passthrough"
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    threads: int | None = None
    """Torch CPU threads (default: torch's own choice)."""
    flow: FlowSettings = field(default_factory=FlowSettings)
    input: InputSettings = field(default_factory=InputSettings)
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

    def __post_init__(self) -> None:
        if self.select.mode == "reference" and not self.select.references:
            raise FieldError("select", "select.mode reference needs select.references (images of the people)")
        if self.select.mode == "map" and not self.swap.map:
            raise FieldError("select", "select.mode map needs swap.map (target and source images), or --map T=S")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise FieldError("device", "device must be auto, cpu, cuda or cuda:N")
        _positive(self, "threads")


def preset_path(name: str) -> Path:
    """The YAML file of a shipped preset."""
    return PRESET_DIR / f"{name}.yaml"


def list_presets() -> dict[str, str]:
    """Shipped preset names and their one-line descriptions."""
    out = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        data = load_yaml(path)
        out[path.stem] = str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""
    return out


def load_settings(
    *, preset: str | None = None, config_file: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Settings:
    """Defaults, then a preset or a config file (which may name a ``base`` preset), then overrides.

    Raises:
        ConfigError: naming the file or ``--set``, the key path and the bad value.
    """
    if preset and config_file:
        raise ConfigError("give --preset or --config, not both")
    layers = Layers()
    if config_file:
        _add_file(layers, Path(config_file), seen=set())
    else:
        name = preset or "offline"
        path = preset_path(name)
        if not path.is_file():
            raise ConfigError(f"no preset named '{name}' (available: {', '.join(list_presets())})")
        _add_file(layers, path, seen=set())
    for text in overrides:
        keys, value = parse_override(text)
        layers.set(keys, value, f"--set {text}")
    return build(Settings, layers)


def _add_file(layers: Layers, path: Path, *, seen: set[Path]) -> None:
    """Add a YAML file; a ``base: NAME`` key first adds that preset (single inheritance)."""
    if path in seen:
        raise ConfigError("presets inherit from each other in a loop", source=str(path))
    seen.add(path)
    data = load_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not preset_path(base).is_file():
            raise ConfigError(f"base must name a preset ({', '.join(list_presets())}), got {base!r}", source=str(path), key="base")
        _add_file(layers, preset_path(base), seen=seen)
    layers.add(data, str(path))
