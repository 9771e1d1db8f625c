"""The GPU device check: every GPU figure and check in one command and one JSON report.

    python -m bench.device_check --out report.json [--tiny] [--budget-s 450] [--only STEP ...]
    python -m bench.device_check --prepare        # here, with a registry: the wheels to carry

Steps, each in a child process of its own with a time box (shrunk to what is left of
``--budget-s``), each recorded as ``ok``, ``failed``, ``timeout`` or ``skipped`` (with why) rather
than stopping the check:

- ``environment``: Python, torch and its CUDA, the GPU (name, capability, memory), NVML (driver),
  PyAV (its FFmpeg's hardware devices and codecs; whether NVENC opens), onnxruntime's providers;
- ``needs_cuda_tests``: ``pytest -m needs_cuda`` over the test files that hold such tests (on a
  machine without CUDA they skip, and the report says so);
- ``nvdec``: an H.264 and an HEVC clip decoded through the decoder stage with ``input.hwaccel:
  cuda`` and without: whether NVDEC served the frames or the decoder fell back to software (and
  why), and how far the frames are from software decoding;
- ``sync_audit``: host synchronisations per batch of the swap path's device steps (detection,
  landmarks, embedding, swap, paste-back) for one frame and for eight: under
  ``torch.cuda.set_sync_debug_mode("warn")`` on CUDA, with the host-sync counter of
  ``tests/facelib/syncs.py`` on the CPU; on CUDA also a whole swap run under the same mode, its
  warnings counted per stage and per batch, with the lines that made them;
- ``bench_gpu``: ``python -m bench.gpu`` (full sizes on CUDA, tiny on the CPU or with ``--tiny``).

On the device machine, ``bench/device_check.sh`` installs the carried wheels and runs this; README's
"GPU check" paragraph gives the exact call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / "bench" / ".wheels"
STEPS = ("environment", "needs_cuda_tests", "nvdec", "sync_audit", "bench_gpu")
# Each step's share of the budget; a step also gets whatever earlier steps left unused.
BUDGET_S = 360.0
SHARES = {"environment": 0.05, "needs_cuda_tests": 0.30, "nvdec": 0.10, "sync_audit": 0.15, "bench_gpu": 0.40}
# What the device machine lacks (KINDS.md lists what it has): carried as wheels. ``setuptools`` and
# ``wheel`` (which needs ``packaging``) build the project's editable install offline.
CARRIED = ("av", "insightface==2.1", "setuptools>=68", "wheel", "packaging")
CARRY_LIMIT_MB = 64.0


class Skipped(Exception):
    """A step that cannot run here; its message says why."""


# ---------------------------------------------------------------------------------- steps

def step_environment(tiny: bool) -> dict[str, Any]:
    import av
    import torch

    facts: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                        "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count()}
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(h)
        driver = pynvml.nvmlSystemGetDriverVersion()
        facts["nvml"] = {"driver": driver.decode() if isinstance(driver, bytes) else driver,
                         "name": name.decode() if isinstance(name, bytes) else name,
                         "util_gpu": pynvml.nvmlDeviceGetUtilizationRates(h).gpu}
        pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - no driver, no library, no device
        facts["nvml"] = {"error": f"{type(exc).__name__}: {exc}"}
    from av.codec.hwaccel import hwdevices_available

    from facestream.facelib.media.colour import device_frames_supported
    from facestream.stages.encoder import hardware_encoder_opens

    facts["pyav"] = {"version": av.__version__, "ffmpeg": {k: ".".join(map(str, v)) for k, v in av.library_versions.items()},
                     "hwdevices": list(hwdevices_available()),
                     "codecs": {c: c in av.codecs_available for c in ("h264_cuvid", "hevc_cuvid", "h264_nvenc", "libx264", "libx265")},
                     "nvenc_opens": hardware_encoder_opens("h264_nvenc"),
                     "encoder_gpu_frames": device_frames_supported()}
    import onnxruntime as ort

    facts["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    import facestream

    facts["facestream"] = {"version": facestream.__version__, "from": str(Path(facestream.__file__).parent)}
    try:
        import insightface

        facts["insightface"] = insightface.__version__
    except ImportError as exc:
        facts["insightface"] = f"missing: {exc}"
    return facts


def cuda_test_files() -> list[str]:
    """The test files that hold tests marked ``needs_cuda`` (or parametrised over the devices)."""
    found = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        text = path.read_text(errors="replace")
        if "needs_cuda" in text or "all_supported_devices" in text:
            found.append(str(path.relative_to(ROOT)))
    return found


def step_needs_cuda_tests(tiny: bool, timeout_s: float) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    import torch

    files = cuda_test_files()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "needs_cuda", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "-rs", "-v", "--continue-on-collection-errors", f"--junitxml={junit}", *files]
        # pytest writes to a file, so that what ran is known even if it outlasts its time box.
        log = Path(tmp) / "pytest.log"
        try:
            with log.open("w") as sink:
                proc = subprocess.run(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True,
                                      timeout=max(10.0, timeout_s - 5))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pytest outlasted its time box; its output:\n{log.read_text()[-3000:]}") from None
        output = log.read_text()
        tests: list[dict[str, Any]] = []
        if junit.exists():
            for case in ET.parse(junit).getroot().iter("testcase"):
                outcome, why = "passed", None
                for tag in ("failure", "error", "skipped"):
                    node = case.find(tag)
                    if node is not None:
                        outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                        why = (node.get("message") or node.text or "")[:400]
                tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                              "seconds": float(case.get("time") or 0), **({"why": why} if why else {})})
    counts = Counter(t["outcome"] for t in tests)
    result = {"command": " ".join(cmd[1:4] + ["..."]), "files": files, "exit_code": proc.returncode,
              "counts": dict(counts), "tests": tests, "output_tail": output[-3000:]}
    if not tests:
        raise RuntimeError(f"pytest ran no tests (exit {proc.returncode}): {output[-2000:]}")
    if not torch.cuda.is_available():
        reasons = sorted({t.get("why", "") for t in tests if t["outcome"] == "skipped"})
        result["skipped_because"] = f"no CUDA GPU here ({counts['skipped']} of {len(tests)} tests skipped: {reasons})"
    elif counts["failed"] or counts["error"]:
        result["status"] = "failed"
    return result


def _probe_clip(path: Path, codec: str, size: tuple[int, int], frames: int) -> Path:
    from tests.media import make_clip

    return make_clip(path, seconds=frames / 25, fps=25, size=size, audio=None, codec=codec)


def _decode_all(path: Path, device: str, hwaccel: str) -> dict[str, Any]:
    """Every frame of ``path`` through the decoder stage, on the host, with what served them."""
    import logging

    import torch

    from facestream.pipeline.stage import RunContext
    from facestream.stages import decoder as decoder_module
    from facestream.stages.decoder import Decoder, DecoderSettings

    formats: Counter = Counter()
    convert = decoder_module.frame_to_rgb

    def observed(av_frame: Any, *rest: Any) -> Any:  # what the decoder hands its conversion
        formats[av_frame.format.name] += 1
        return convert(av_frame, *rest)

    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Keep(logging.WARNING)
    log = logging.getLogger(decoder_module.__name__)
    log.addHandler(handler)
    decoder_module.frame_to_rgb = observed
    try:
        dec = Decoder(DecoderSettings(hwaccel=hwaccel, audio=False), source=str(path))
        dec.open(RunContext(device=torch.device(device)))
        t = time.perf_counter()
        images = [f.image.cpu() for f in dec.read()]
        seconds = time.perf_counter() - t
        fell_back = dec._hw_fallback  # noqa: SLF001 - the decoder's own record of a software fallback
        dec.close()
    finally:
        decoder_module.frame_to_rgb = convert
        log.removeHandler(handler)
    return {"images": images, "formats": dict(formats), "fell_back": fell_back, "warnings": messages,
            "fps": round(len(images) / seconds, 1) if seconds > 0 else None}


def step_nvdec(tiny: bool) -> dict[str, Any]:
    import av
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size, frames = ((320, 240), 20) if tiny else ((1280, 720), 60)
    out: dict[str, Any] = {"device": device, "size": list(size), "frames": frames}
    with tempfile.TemporaryDirectory() as tmp:
        for name, codec in (("h264", "libx264"), ("hevc", "libx265")):
            if codec not in av.codecs_available:
                out[name] = {"status": "skipped", "why": f"this FFmpeg has no {codec} encoder to make the clip"}
                continue
            try:
                clip = _probe_clip(Path(tmp) / f"probe-{name}.mp4", codec, size, frames)
                soft = _decode_all(clip, device, "none")
                hard = _decode_all(clip, device, "cuda")
            except Exception as exc:  # noqa: BLE001 - recorded, the other codec still runs
                out[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-2000:]}
                continue
            served = hard["formats"].get("cuda", 0)
            entry: dict[str, Any] = {
                "frames_software": len(soft["images"]), "frames_hwaccel": len(hard["images"]),
                "nvdec_frames": served, "served_by": "nvdec" if served == len(hard["images"]) and served
                else ("partly nvdec" if served else "software"),
                "fell_back": hard["fell_back"], "fallback_reason": hard["warnings"],
                "formats_hwaccel": hard["formats"], "formats_software": soft["formats"],
                "fps_software": soft["fps"], "fps_hwaccel": hard["fps"],
            }
            if len(soft["images"]) == len(hard["images"]) and soft["images"]:
                diff = torch.stack([(a.int() - b.int()).abs() for a, b in zip(soft["images"], hard["images"])])
                entry["max_abs_diff"] = int(diff.max())
                entry["mean_abs_diff"] = round(float(diff.float().mean()), 4)
                entry["matches_software"] = entry["mean_abs_diff"] <= 1.5
            else:
                entry["matches_software"] = False
            entry["status"] = "ok" if entry["matches_software"] else "failed"
            out[name] = entry
    if device == "cpu":
        out["note"] = "no CUDA GPU here: input.hwaccel cuda falls back to software decoding, as recorded"
    codecs = [v for k, v in out.items() if k in ("h264", "hevc") and isinstance(v, dict)]
    if any(c.get("status") == "failed" for c in codecs):
        out["status"] = "failed"
    return out


def _sync_steps_audit(device: str) -> dict[str, Any]:
    """Per-batch host waits of each device step, one frame against eight (the unit test's workload)."""
    import torch

    from tests import modelgen
    from tests.facelib.models.test_device_path import make_models, steps, workloads
    from tests.facelib.syncs import count_cuda_syncs, count_host_syncs

    with tempfile.TemporaryDirectory() as tmp:
        pack = Path(tmp)
        modelgen.make_scrfd(pack / "det_10g.onnx", scale="tiny", seed=1)
        modelgen.make_landmark_2d106(pack / "2d106det.onnx", seed=2)
        modelgen.make_arcface(pack / "w600k_r50.onnx", seed=4)
        modelgen.make_inswapper(pack / "inswapper_128.onnx", scale="tiny", seed=6)
        if device == "cpu":
            # What runs on CUDA, on the CPU: torch letterboxing and crops (as the unit test patches them).
            import functools

            from facestream.facelib.models import insightface_pack, swappers
            from facestream.facelib.ops.align import warp_faces_torch
            from facestream.facelib.ops.image import letterbox

            saved = (insightface_pack.letterbox, insightface_pack.warp_faces, swappers.warp_faces)
            insightface_pack.letterbox = functools.partial(letterbox, use_torch=True)
            insightface_pack.warp_faces = swappers.warp_faces = warp_faces_torch
        try:
            models = make_models(pack, device)
            counts = []
            for frames, frame_of, faces in workloads(models[0]):
                frames = [f.to(device) for f in frames]
                if device == "cuda":
                    torch.cuda.synchronize()
                seen: dict[str, Any] = {}
                for name, step in steps(models, frames, frame_of, faces).items():
                    if device == "cuda":
                        with count_cuda_syncs() as found:
                            step()
                        seen[name] = len(found)
                    else:
                        with count_host_syncs() as n:
                            step()
                        seen[name] = sum(n.values())
                counts.append({"frames": len(frames), "faces": len(faces), "per_step": seen})
        finally:
            if device == "cpu":
                insightface_pack.letterbox, insightface_pack.warp_faces, swappers.warp_faces = saved
    one, eight = counts
    return {"counter": "torch.cuda.set_sync_debug_mode('warn')" if device == "cuda"
            else "tests/facelib/syncs.py count_host_syncs (calls that would wait on CUDA)",
            "one_frame": one, "eight_frames": eight, "constant_per_batch": one["per_step"] == eight["per_step"]}


def _sync_pipeline_audit(tiny: bool) -> dict[str, Any]:
    """A whole swap run under the sync debug mode: warnings per stage thread and per batch."""
    import threading
    import warnings

    import torch

    from bench import gpu

    pack, swapper = gpu.models("tiny")
    clip = gpu.one_face_clip((640, 360), 60)
    settings = gpu.facestream_settings(pack, swapper, gpu.source_image(), device="cuda", preset="ultrafast", crf=18,
                                       engine="torch", extra=[])
    by_stage: Counter = Counter()
    sites: Counter = Counter()

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if "synchroniz" not in str(message):
            return
        by_stage[threading.current_thread().name] += 1
        sites[f"{os.path.relpath(filename, ROOT)}:{lineno}"] += 1

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            stats = gpu.run_facestream(clip, settings, Path(tmp) / "audit.mp4")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    stages = {}
    for name, s in stats["stages"].items():
        calls = round(s["frames"] / s["mean_batch"]) if s.get("mean_batch") else 0
        n = by_stage.get(f"stage-{name}", 0)
        stages[name] = {"warnings": n, "batches": calls, "per_batch": round(n / calls, 2) if calls else None}
    return {"frames": stats["frames_out"], "stages": stages, "total_warnings": sum(by_stage.values()),
            "other_threads": {k: v for k, v in by_stage.items() if not k.startswith("stage-")},
            "top_sites": dict(sites.most_common(15))}


def step_sync_audit(tiny: bool) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    out: dict[str, Any] = {"steps": _sync_steps_audit("cuda" if cuda else "cpu")}
    if cuda:
        out["pipeline"] = _sync_pipeline_audit(tiny)
    else:
        out["pipeline"] = {"status": "skipped",
                           "why": "torch.cuda.set_sync_debug_mode needs CUDA; the per-step counts above use the host-sync counter"}
    if not out["steps"]["constant_per_batch"]:
        out["status"] = "failed"
    return out


def step_bench_gpu(tiny: bool) -> dict[str, Any]:
    from bench import gpu

    return gpu.run(tiny=True if tiny else None)


RUNNERS = {"environment": step_environment, "needs_cuda_tests": step_needs_cuda_tests, "nvdec": step_nvdec,
           "sync_audit": step_sync_audit, "bench_gpu": step_bench_gpu}


def run_step(name: str, tiny: bool, out: Path, timeout_s: float) -> None:
    """In the child: run one step and write ``{"status", "result" | "error"}`` to ``out``."""
    import numpy as np

    np.seterr(all="ignore")
    t = time.perf_counter()
    try:
        fn = RUNNERS[name]
        result = fn(tiny, timeout_s) if name == "needs_cuda_tests" else fn(tiny)
        record = {"status": result.pop("status", "ok") if isinstance(result, dict) else "ok", "result": result}
        if isinstance(result, dict) and "skipped_because" in result:
            record["status"], record["why"] = "skipped", result["skipped_because"]
    except Skipped as exc:
        record = {"status": "skipped", "why": str(exc)}
    except Exception as exc:  # noqa: BLE001 - recorded in the report
        record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    record["seconds"] = round(time.perf_counter() - t, 2)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------- the check

def check(out: Path, *, tiny: bool, budget_s: float = BUDGET_S, only: list[str] | None = None,
          log: Any = print) -> dict[str, Any]:
    """Run the steps in child processes, each time-boxed, and write one report to ``out``."""
    names = [s for s in STEPS if not only or s in only]
    started = time.time()
    deadline = time.monotonic() + budget_s
    report: dict[str, Any] = {"tiny": tiny, "started_at": started, "budget_s": budget_s, "steps": {}}
    shares = sum(SHARES[s] for s in names)
    spent_share = 0.0
    for name in names:
        left = deadline - time.monotonic()
        # This step's share, plus what earlier steps left of theirs.
        planned = budget_s * (spent_share + SHARES[name]) / shares - (budget_s - left)
        timeout = max(5.0, min(left, planned)) if left > 5 else 0.0
        spent_share += SHARES[name]
        if timeout <= 0:
            report["steps"][name] = {"status": "skipped", "why": "no time left in the budget"}
            continue
        log(f"[device_check] {name} (time box {timeout:.0f} s)", flush=True)
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "step.json"
            cmd = [sys.executable, "-m", "bench.device_check", "--step", name, "--step-out", str(result),
                   "--step-timeout", str(timeout)] + (["--tiny"] if tiny else [])
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            try:
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
                tail = (proc.stdout[-3000:] + proc.stderr[-2000:]).strip()
                if result.exists():
                    record = json.loads(result.read_text())
                else:
                    record = {"status": "failed", "error": f"the step's process ended with {proc.returncode} "
                              "and wrote no result"}
            except subprocess.TimeoutExpired as exc:
                tail = ((exc.stdout or b"")[-3000:].decode(errors="replace") if isinstance(exc.stdout, bytes)
                        else (exc.stdout or "")[-3000:])
                record = {"status": "timeout", "error": f"stopped at its time box of {timeout:.0f} s"}
        record["seconds"] = round(time.perf_counter() - t, 2)
        record["output_tail"] = tail
        report["steps"][name] = record
        log(f"[device_check] {name}: {record['status']} in {record['seconds']:.1f} s"
            + (f" ({record.get('why') or record.get('error')})" if record["status"] != "ok" else ""), flush=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")  # what is done so far, if killed
    report["wall_s"] = round(time.time() - started, 2)
    report["summary"] = summary(report)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log("\n" + "\n".join(report["summary"]), flush=True)
    return report


def summary(report: dict[str, Any]) -> list[str]:
    """A few lines: each step's outcome and its key figures."""
    lines = [f"device check ({'tiny' if report['tiny'] else 'full'}), {report.get('wall_s', 0):.0f} s:"]
    for name, rec in report["steps"].items():
        r = rec.get("result") or {}
        detail = rec.get("why") or rec.get("error") or ""
        if rec["status"] in ("ok", "failed") and r:
            if name == "environment":
                gpu = r.get("gpu", {}).get("name", "no GPU")
                detail = f"{gpu}; torch {r.get('torch')} CUDA {r.get('torch_cuda')}; NVENC opens: {r.get('pyav', {}).get('nvenc_opens')}"
            elif name == "needs_cuda_tests":
                detail = f"{r.get('counts')}"
            elif name == "nvdec":
                detail = "; ".join(f"{c}: {r[c].get('served_by', r[c].get('status'))}, mean diff {r[c].get('mean_abs_diff')}"
                                   for c in ("h264", "hevc") if isinstance(r.get(c), dict))
            elif name == "sync_audit":
                steps = r.get("steps", {})
                detail = f"per batch {steps.get('one_frame', {}).get('per_step')}, constant: {steps.get('constant_per_batch')}"
                pipe = r.get("pipeline", {})
                if "stages" in pipe:
                    detail += "; pipeline per batch " + ", ".join(f"{k} {v['per_batch']}" for k, v in pipe["stages"].items())
            elif name == "bench_gpu":
                fs, loop = r.get("facestream", {}), r.get("loop", {})
                detail = (f"facestream {fs.get('fps')} fps, loop {loop.get('fps')} fps, {r.get('ratio')}x; "
                          f"GPU busy {fs.get('gpu_busy_share')}; bound {fs.get('bound')}; "
                          f"encode-only {r.get('encode_only', {}).get('fps')} fps")
        lines.append(f"  {name:17s} {rec['status']:8s} {detail}"[:400])
    return lines


# ---------------------------------------------------------------------------------- preparation

def tree_mb() -> float:
    """What travels besides the carried paths: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / p.decode()).stat().st_size for p in listed if p and (ROOT / p.decode()).is_file()) / 2**20


def wheel_requirements() -> list[str]:
    """The carried wheels: PyAV at the version installed here (the one the tests pass with)."""
    import av

    return [f"av=={av.__version__}" if r == "av" else r for r in CARRIED]


def prepare(dest: Path = WHEELS, *, python_version: str = "3.12") -> dict[str, Any]:
    """Download the wheels the device machine lacks (for its CPython and platform) into ``dest``,
    and check that they and the working tree fit what a call carries."""
    dest.mkdir(parents=True, exist_ok=True)
    reqs = wheel_requirements()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
           "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", "-d", str(dest), *reqs]
    subprocess.run(cmd, check=True)
    names = {r.split("=")[0].split(">")[0].replace("-", "_").lower() for r in reqs}
    # One version of each: pip refuses two of the same name in one install.
    wheels = sorted(dest.glob("*.whl"))
    for w in wheels:
        if w.name.split("-")[0].lower() not in names:
            w.unlink()
    by_name: dict[str, list[Path]] = {}
    for w in sorted(dest.glob("*.whl"), key=lambda p: p.stat().st_mtime):
        by_name.setdefault(w.name.split("-")[0].lower(), []).append(w)
    for versions in by_name.values():
        for old in versions[:-1]:
            old.unlink()
    wheels = sorted(dest.glob("*.whl"))
    wheels_mb = sum(w.stat().st_size for w in wheels) / 2**20
    tree = tree_mb()
    total = wheels_mb + tree
    info = {"wheels": [w.name for w in wheels], "wheels_mb": round(wheels_mb, 1), "tree_mb": round(tree, 1),
            "total_mb": round(total, 1), "limit_mb": CARRY_LIMIT_MB}
    print(f"wheels in {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}: "
          + ", ".join(info["wheels"]))
    print(f"carried: wheels {wheels_mb:.1f} MiB + working tree {tree:.1f} MiB = {total:.1f} MiB "
          f"(limit {CARRY_LIMIT_MB:.0f} MiB)")
    if total > CARRY_LIMIT_MB - 2:
        raise SystemExit(f"too much to carry: {total:.1f} MiB of {CARRY_LIMIT_MB:.0f}")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="the JSON report")
    ap.add_argument("--tiny", action="store_true", help="small clips and models everywhere (the CPU run)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="all steps together (default %(default)s)")
    ap.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    ap.add_argument("--prepare", action="store_true", help="download the wheels to carry into bench/.wheels")
    ap.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--step-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--step-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare:
        prepare()
        return 0
    if args.step:
        run_step(args.step, args.tiny, args.step_out, args.step_timeout)
        return 0
    if args.out is None:
        ap.error("--out is needed")
    import torch

    tiny = args.tiny or not torch.cuda.is_available()
    report = check(args.out, tiny=tiny, budget_s=args.budget_s, only=args.only)
    return 0 if all(s["status"] in ("ok", "skipped") for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
