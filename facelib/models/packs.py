"""Model packs: which files a pack holds, where they are looked for, and what each must look like.

Nothing is ever downloaded. A file is looked for, in order: the path given for that model
(``models.detector`` and friends), ``models.dir`` (and ``models.dir/<pack>``), ``$FACESTREAM_MODELS``,
insightface's ``~/.insightface/models/<pack>``, and the model folders FaceFusion and Deep-Live-Cam
use (``~/facefusion/.assets/models``, ``~/Deep-Live-Cam/models``, ``./.assets/models``, ``./models``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from facestream.pipeline.errors import ModelError

if TYPE_CHECKING:
    import onnx

Role = Literal["detector", "landmarker", "recognizer", "swapper"]
Dim = int | str | None

PACKS: dict[str, dict[str, str]] = {
    "buffalo_l": {"detector": "det_10g.onnx", "landmarker": "2d106det.onnx", "landmarker_3d": "1k3d68.onnx",
                  "recognizer": "w600k_r50.onnx"},
    "buffalo_m": {"detector": "det_2.5g.onnx", "landmarker": "2d106det.onnx", "landmarker_3d": "1k3d68.onnx",
                  "recognizer": "w600k_r50.onnx"},
    "buffalo_s": {"detector": "det_500m.onnx", "landmarker": "2d106det.onnx", "landmarker_3d": "1k3d68.onnx",
                  "recognizer": "w600k_mbf.onnx"},
    "antelopev2": {"detector": "scrfd_10g_bnkps.onnx", "landmarker": "2d106det.onnx",
                   "landmarker_3d": "1k3d68.onnx", "recognizer": "glintr100.onnx"},
}
SWAPPER_FILES = ("inswapper_128.onnx", "inswapper_128_fp16.onnx")
DLIB_FILES = {
    "hog": None,  # built into dlib
    "mmod": "mmod_human_face_detector.dat",
    "landmarks_68": "shape_predictor_68_face_landmarks.dat",
    "landmarks_5": "shape_predictor_5_face_landmarks.dat",
    "recognizer": "dlib_face_recognition_resnet_model_v1.dat",
}


def search_dirs(pack: str, models_dir: str | None) -> list[Path]:
    """Folders looked in for a pack's files, in order."""
    dirs: list[Path] = []
    if models_dir:
        base = Path(models_dir).expanduser()
        dirs += [base, base / pack]
    env = os.environ.get("FACESTREAM_MODELS")
    if env:
        for part in env.split(os.pathsep):
            dirs += [Path(part).expanduser(), Path(part).expanduser() / pack]
    home = Path.home()
    dirs += [
        home / ".insightface" / "models" / pack,
        home / ".insightface" / "models",
        home / "facefusion" / ".assets" / "models",
        home / "Deep-Live-Cam" / "models",
        Path.cwd() / ".assets" / "models",
        Path.cwd() / "models",
    ]
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


def find_model(role: str, names: Sequence[str], *, pack: str, models_dir: str | None, override: str | None) -> Path:
    """The first existing file among ``names`` (or ``override``) in the search folders.

    Raises:
        ModelError: naming the file(s) and every place looked.
    """
    if override:
        p = Path(override).expanduser()
        if p.is_absolute() or p.parent != Path("."):
            if p.is_file():
                return p
            raise ModelError(f"{role} model not found: {p} (set by models.{role})")
        names = [override]
    dirs = search_dirs(pack, models_dir)
    for d in dirs:
        for name in names:
            candidate = d / name
            if candidate.is_file():
                return candidate
    wanted = " or ".join(names)
    raise ModelError(
        f"{role} model {wanted} (pack {pack}) not found; looked in: {', '.join(str(d) for d in dirs)}. "
        f"Put the file in one of these folders, or set models.dir or models.{role}"
    )


def dlib_model(name: str) -> Path:
    """A weight file of the ``face-recognition-models`` package (found without importing it)."""
    file = DLIB_FILES[name]
    assert file is not None
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the builtin pack needs the face-recognition-models package (pip install face-recognition-models)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / file
    if not path.is_file():
        raise ModelError(f"builtin model file missing from face-recognition-models: {path}")
    return path


# ---------------------------------------------------------------------------------------------- signatures


@dataclass(frozen=True)
class Signature:
    """A model's graph inputs and outputs: names and declared dims."""

    inputs: tuple[tuple[str, tuple[Dim, ...]], ...]
    outputs: tuple[tuple[str, tuple[Dim, ...]], ...]

    def describe(self) -> str:
        def one(items: tuple[tuple[str, tuple[Dim, ...]], ...]) -> str:
            return ", ".join(f"{n}[{','.join('?' if d is None or isinstance(d, str) else str(d) for d in s)}]" for n, s in items)

        outs = one(self.outputs) if len(self.outputs) <= 3 else f"{len(self.outputs)} outputs"
        return f"{one(self.inputs)} -> {outs}"


def read_signature(model: onnx.ModelProto) -> Signature:
    inits = {t.name for t in model.graph.initializer}

    def dims(value: onnx.ValueInfoProto) -> tuple[Dim, ...]:
        out: list[Dim] = []
        for d in value.type.tensor_type.shape.dim:
            out.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
        return tuple(out)

    return Signature(
        inputs=tuple((v.name, dims(v)) for v in model.graph.input if v.name not in inits),
        outputs=tuple((v.name, dims(v)) for v in model.graph.output),
    )


EXPECTED = {
    "detector": "an SCRFD detector: one image input [N,3,H,W] -> 6, 9, 10 or 15 outputs (scores, boxes, keypoints per stride)",
    "landmarker": "a landmark model: [N,3,192,192] -> [N,212] (2d106) or [N,3309] (1k3d68)",
    "recognizer": "an ArcFace recogniser: [N,3,112,112] -> [N,512] (or another embedding size)",
    "swapper": "an inswapper-family swapper: target[1,3,128,128], source[1,512] -> [1,3,128,128], emap as last initializer",
}


def _hw(shape: tuple[Dim, ...]) -> tuple[Dim, Dim]:
    return (shape[2], shape[3]) if len(shape) == 4 else (None, None)


def family_of(sig: Signature) -> str | None:
    """The role a signature fits, by insightface's own routing rules, or ``None``."""
    if len(sig.inputs) == 2 and len(sig.outputs) == 1 and _hw(sig.inputs[0][1]) == (128, 128):
        return "swapper"
    if len(sig.inputs) != 1:
        return None
    shape = sig.inputs[0][1]
    if len(shape) != 4 or shape[1] not in (3, None) or isinstance(shape[1], str):
        return None
    if len(sig.outputs) in (6, 9, 10, 15):
        return "detector"
    if len(sig.outputs) == 1 and _hw(shape) == (192, 192):
        return "landmarker"
    h, w = _hw(shape)
    if len(sig.outputs) == 1 and isinstance(h, int) and h == w and h >= 112 and h % 16 == 0:
        return "recognizer"
    return None


def check_signature(role: str, path: Path, model: onnx.ModelProto) -> Signature:
    """Raise a ModelError naming the found and the expected signature when ``model`` does not fit."""
    sig = read_signature(model)
    found = family_of(sig)
    if found != role:
        what = f"looks like a {found}" if found else "fits no known family"
        raise ModelError(
            f"models.{role}: {path.name} is not {EXPECTED[role].split(':')[0]}: it takes {sig.describe()} ({what}); "
            f"expected {EXPECTED[role]}"
        )
    return sig


def load_checked(role: str, path: Path) -> tuple[onnx.ModelProto, Signature]:
    """Parse an ONNX file for ``role``; errors for unreadable and wrong files name the file."""
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=True)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds
        raise ModelError(f"models.{role}: {path} is not a readable ONNX model ({type(exc).__name__})") from None
    return model, check_signature(role, path, model)
