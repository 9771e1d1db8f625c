"""``facestream doctor``: what this machine offers facestream."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import av
import torch

from facestream.facelib.media.colour import device_frames_supported
from facestream.stages.encoder import hardware_encoder_opens

from . import __version__

SOFTWARE_CODECS = ("libx264", "libx265", "libvpx-vp9", "aac", "libopus")
HARDWARE_ENCODERS = ("h264_nvenc", "hevc_nvenc", "av1_nvenc")
HARDWARE_DECODERS = ("h264_cuvid", "hevc_cuvid", "av1_cuvid", "vp9_cuvid")
DEMUXERS = ("rtsp", "rtp", "srt", "hls", "video4linux2,v4l2", "image2", "lavfi")


def _nvml() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001
        return {"available": False, "reason": type(exc).__name__}
    try:
        count = pynvml.nvmlDeviceGetCount()
        gpus = []
        for i in range(count):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append({"name": name.decode() if isinstance(name, bytes) else name, "memory_mb": mem.total // 2**20})
        return {"available": True, "driver": str(pynvml.nvmlSystemGetDriverVersion()), "gpus": gpus}
    finally:
        pynvml.nvmlShutdown()


def models_found(models_dir: str | None = None) -> dict[str, Any]:
    """Each pack's files: where each was found, or None."""
    from facestream.pipeline.errors import ModelError
    from facestream.facelib.models.packs import DLIB_FILES, PACKS, SWAPPER_FILES, dlib_model, find_model, search_dirs

    out: dict[str, Any] = {"builtin": {}, "insightface": {}, "swapper": None}
    for name, file in DLIB_FILES.items():
        if file is None:
            continue
        try:
            out["builtin"][file] = str(dlib_model(name))
        except ModelError:
            out["builtin"][file] = None
    for pack, files in PACKS.items():
        found = {}
        for role, file in files.items():
            try:
                found[file] = str(find_model(role, [file], pack=pack, models_dir=models_dir, override=None))
            except ModelError:
                found[file] = None
        out["insightface"][pack] = found
    try:
        out["swapper"] = str(find_model("swapper", list(SWAPPER_FILES), pack="buffalo_l", models_dir=models_dir, override=None))
    except ModelError:
        pass
    out["searched"] = [str(d) for d in search_dirs("<pack>", models_dir)]
    return out


def collect(models_dir: str | None = None) -> dict[str, Any]:
    """Everything ``doctor`` reports, as data."""
    formats = av.formats_available
    return {
        "facestream": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": {
            "available": torch.cuda.is_available(),
            "torch_built_with": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "nvml": _nvml(),
        "pyav": av.__version__,
        "ffmpeg": getattr(av, "ffmpeg_version_info", None),
        "codecs": {c: c in av.codecs_available for c in SOFTWARE_CODECS},
        "hardware_encoders": {c: hardware_encoder_opens(c) for c in HARDWARE_ENCODERS},
        "encoder_gpu_frames": device_frames_supported(),
        "hardware_decoders": {c: c in av.codecs_available for c in HARDWARE_DECODERS},
        "demuxers": {d: d in formats for d in DEMUXERS},
        "models": models_found(models_dir),
    }


def render(report: dict[str, Any]) -> str:
    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    lines = [
        f"facestream {report['facestream']}  (python {report['python']}, torch {report['torch']}, "
        f"PyAV {report['pyav']}, FFmpeg {report['ffmpeg']})",
        f"device        {report['device']}",
        f"CUDA          {yes(report['cuda']['available'])}"
        + (f"  {', '.join(report['cuda']['devices'])}" if report["cuda"]["devices"] else "")
        + ("" if report["cuda"]["torch_built_with"] else "  (torch is a CPU-only build)"),
    ]
    nvml = report["nvml"]
    if nvml["available"]:
        gpus = ", ".join(f"{g['name']} {g['memory_mb']} MiB" for g in nvml["gpus"])
        lines.append(f"NVML          yes  driver {nvml['driver']}  {gpus}")
    else:
        lines.append(f"NVML          no  ({nvml['reason']}: GPU statistics are skipped)")
    lines.append("codecs        " + "  ".join(f"{c}:{yes(v)}" for c, v in report["codecs"].items()))
    lines.append(
        "HW encoders   " + "  ".join(f"{c}:{'opens' if v else 'no'}" for c, v in report["hardware_encoders"].items())
        + ("  (PyAV hands them GPU frames)" if report["encoder_gpu_frames"]
           else "  (this PyAV gives them host frames: av>=18.1 hands them GPU frames)")
    )
    lines.append("HW decoders   " + "  ".join(f"{c}:{yes(v)}" for c, v in report["hardware_decoders"].items()))
    lines.append("inputs        " + "  ".join(f"{d.split(',')[-1]}:{yes(v)}" for d, v in report["demuxers"].items()))
    models = report["models"]
    builtin_ok = all(models["builtin"].values())
    lines.append(f"builtin pack  {'ready' if builtin_ok else 'incomplete'}  (dlib, face-recognition-models)")
    for pack, files in models["insightface"].items():
        have = [f for f, p in files.items() if p]
        status = "complete" if len(have) == len(files) else (f"{len(have)}/{len(files)} files" if have else "not found")
        where = {str(Path(p).parent) for p in files.values() if p}
        lines.append(f"{pack:<13} {status}" + (f"  in {', '.join(sorted(where))}" if where else ""))
    lines.append(f"swapper       {models['swapper'] or 'not found (inswapper_128.onnx)'}")
    lines.append("model folders " + ", ".join(models["searched"]))
    return "\n".join(lines)
