"""Swap throughput on one GPU, decode to encode: facestream against the per-frame loop.

    python -m bench.gpu [--tiny] [--frames N] [--loop-frames N] [--json OUT] [--set KEY=VALUE ...]

The clip: 1920x1080 at 30 fps, H.264, one face (the astronaut portrait, slowly panned). The models
are generated with the real models' signatures and compute (``tests/modelgen.py``): an SCRFD of
about 10 GFLOPs at 640x640 (det_10g), an IResNet-50 ArcFace (w600k_r50) and an inswapper_128-class
swapper of about 174 GFLOPs per face. ``--tiny`` (the default where there is no CUDA GPU): a 320x180
clip and the tiny models, so that the whole benchmark runs in about a minute on a CPU.

- the loop, as Deep-Live-Cam runs on a GPU: decode a frame (PyAV), detect (SCRFD), embed each face
  (ArcFace) and swap it (``INSwapper.get(paste_back=True)``: the crop, the model, the paste-back
  with a full-frame mask), encode (PyAV, the same codec, preset and quality); one frame at a time,
  insightface's own code, its models called once per face per frame. On CUDA its sessions run the
  same ONNX files on the GPU through facestream's torch engine, numpy in and numpy out, as
  onnxruntime's CUDA provider gives them to Deep-Live-Cam (the machine's onnxruntime has no CUDA);
- facestream: ``facestream.run`` with the ``swap`` preset and the same files: frames batched
  through the detector and the swapper on the device, the tracker between them, paste-back over
  the face's region, the encoder in its own thread.

Both sides swap at most one face a frame (``max_num=1`` / ``detector.max_faces=1``). Printed:
fps end to end for both and the ratio, the GPU's busy share (NVML, sampled by the pipeline), each
stage's capacity (frames per second of its own working time) and the encode-only ceiling: the
pipeline's encoder with the same settings fed frames already decoded (held on the device), which
is what the end-to-end figure can reach at most when the encoder on the CPU cores is the bound
(the H100 and H200 have no NVENC).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import cv2
import numpy as np
import torch

from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import Source, SourceInfo

from .analysis import model_pack
from .common import CACHE, cached, machine, table
from .swap import swapper_file

FPS = 30
TARGET_FPS = 500.0
TARGET_RATIO = 20.0
SIZES = {"full": {"size": (1920, 1080), "scale": "real", "frames": 1200, "loop_frames": 60},
         "tiny": {"size": (320, 180), "scale": "tiny", "frames": 60, "loop_frames": 20}}


# ---------------------------------------------------------------------------------- inputs

def source_image() -> Path:
    from facestream.scenes import load_photo

    path = CACHE / "astronaut.png"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(load_photo("astronaut"), cv2.COLOR_RGB2BGR))
    return path


def one_face_clip(size: tuple[int, int], frames: int) -> Path:
    """An H.264 clip at 30 fps: the astronaut portrait (one face) slowly panned, no audio."""
    from facestream.scenes import load_photo, render_scene

    w, h = size
    return cached(f"oneface_{w}x{h}_{FPS}fps_{frames}.mp4", lambda p: render_scene(
        p, background=load_photo("astronaut"), size=size, fps=FPS, seconds=frames / FPS, pan=0.1, audio=False))


def models(scale: str) -> tuple[Path, Path]:
    """The model pack folder (det_10g, 2d106det, w600k_r50) and the swapper file."""
    return model_pack(scale), swapper_file(scale)


# ---------------------------------------------------------------------------------- the loop

class TorchSession:
    """What insightface's model classes use of an onnxruntime session (``run``, ``get_inputs``,
    ``get_outputs``) over facestream's torch engine on a device: numpy in, numpy out, one call at a
    time, as onnxruntime's CUDA provider serves Deep-Live-Cam."""

    def __init__(self, path: Path, device: torch.device) -> None:
        from facestream.facelib.models.engines import create_engine

        self.engine = create_engine(path, engine="torch", device=device)
        self.device = device
        graph = self.engine.model.graph
        inits = {t.name for t in graph.initializer}

        def described(value: Any) -> SimpleNamespace:
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in value.type.tensor_type.shape.dim]
            return SimpleNamespace(name=value.name, shape=dims, type="tensor(float)")

        self._inputs = [described(v) for v in graph.input if v.name not in inits]
        self._outputs = [described(v) for v in graph.output]

    def get_inputs(self) -> list[SimpleNamespace]:
        return self._inputs

    def get_outputs(self) -> list[SimpleNamespace]:
        return self._outputs

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider" if self.device.type == "cuda" else "CPUExecutionProvider"]

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.engine(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()})
        by_name = dict(zip(self.engine.output_names, outputs))
        return [by_name[n].cpu().numpy() for n in (names or self.engine.output_names)]


def loop_models(pack: Path, swapper: Path, device: torch.device, engine: str) -> tuple[Any, Any, Any]:
    """insightface's SCRFD, ArcFace and INSwapper on the given files, their sessions onnxruntime
    (CPU) or the torch engine on ``device``."""
    import onnxruntime as ort
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.inswapper import INSwapper
    from insightface.model_zoo.scrfd import SCRFD

    def session(path: Path) -> Any:
        if engine == "torch":
            return TorchSession(path, device)
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    det_path, rec_path = pack / "det_10g.onnx", pack / "w600k_r50.onnx"
    # One session for every input size (no exact-shape copies made through onnxruntime).
    det = SCRFD(str(det_path), session=session(det_path), static_shape_sessions=False)
    det.prepare(0, input_size=(640, 640), det_thresh=0.5)
    rec = ArcFaceONNX(str(rec_path), session=session(rec_path))
    swap = INSwapper(str(swapper), session=session(swapper))
    return det, rec, swap


def loop_faces(det: Any, rec: Any, img: np.ndarray, max_num: int) -> list[Any]:
    """What ``FaceAnalysis.get`` does with detection and recognition: every face embedded."""
    from insightface.app.common import Face

    bboxes, kpss = det.detect(img, input_size=(640, 640), max_num=max_num)
    faces = []
    for i in range(bboxes.shape[0]):
        face = Face(bbox=bboxes[i, 0:4], kps=kpss[i] if kpss is not None else None, det_score=bboxes[i, 4])
        rec.get(img, face)
        faces.append(face)
    return faces


def run_loop(clip: Path, pack: Path, swapper: Path, source: Path, *, frames: int, device: torch.device,
             engine: str, codec: str, preset: str, crf: int) -> dict[str, Any]:
    """The per-frame loop, decode to encode; its fps excludes model loading and the first frame."""
    det, rec, swap = loop_models(pack, swapper, device, engine)
    src_img = cv2.imread(str(source))
    found = loop_faces(det, rec, src_img, 1)
    if not found:
        raise RuntimeError("the loop's detector found no face in the source image")
    src = found[0]
    n = swapped = 0
    with tempfile.TemporaryDirectory() as tmp, av.open(str(clip)) as inp:
        out = av.open(str(Path(tmp) / "loop.mp4"), "w")
        vs = inp.streams.video[0]
        enc = out.add_stream(codec, rate=FPS)
        enc.width, enc.height, enc.pix_fmt = vs.codec_context.width, vs.codec_context.height, "yuv420p"
        enc.options = {"preset": preset, "crf": str(crf)}
        t = None
        for frame in inp.decode(video=0):
            img = frame.to_ndarray(format="bgr24")
            for face in loop_faces(det, rec, img, 1):
                try:
                    img = swap.get(img, face, src, paste_back=True)
                except ValueError:  # insightface's paste-back fails on a crop that lies off the frame
                    continue
                swapped += 1
            new = av.VideoFrame.from_ndarray(img, format="bgr24")
            new.pts, new.time_base = n, Fraction(1, FPS)
            for p in enc.encode(new):
                out.mux(p)
            n += 1
            if t is None:  # the first frame pays for lazy set-up (cuDNN plans, allocator)
                t, counted = time.perf_counter(), 0
            else:
                counted += 1
            if n == frames:
                break
        for p in enc.encode(None):
            out.mux(p)
        out.close()
        end = time.perf_counter()
    if t is None or counted == 0:
        raise RuntimeError(f"the loop decoded {n} frames from {clip}: too few to time")
    return {"fps": round(counted / (end - t), 3), "frames": n, "faces_swapped": swapped, "engine": engine}


# ---------------------------------------------------------------------------------- facestream

def facestream_settings(pack: Path, swapper: Path, source: Path, *, device: str, preset: str, crf: int,
                        engine: str, extra: list[str]) -> Any:
    from facestream.settings import load_settings

    return load_settings(preset="swap", overrides=[
        f"device={device}", "models.pack=insightface", f"models.dir={pack}", f"models.swapper={swapper}",
        f"models.engine={engine}", f"swap.source=[{source}]", "detector.max_faces=1", f"output.preset={preset}",
        f"output.crf={crf}", "stats.progress=none",
        # NVML is sampled at this interval: a run of a few seconds needs more than one sample.
        "stats.interval_s=0.2", *extra])


def run_facestream(clip: Path, settings: Any, out: Path) -> dict[str, Any]:
    import facestream

    report = facestream.run(str(clip), str(out), settings, overwrite=True)
    if report.error is not None:
        raise RuntimeError(f"facestream failed: {report.error}")
    return report.stats


class HeldFrames(Source):
    """Frames already decoded (held on the run's device), replayed until ``count`` are out: what an
    encoder can take when nothing before it waits."""

    name = "held_frames"

    def __init__(self, images: list[torch.Tensor], count: int) -> None:
        self.images, self.count = images, count
        self.batch_size, self.max_wait_ms = 8, 0.0

    def open(self, ctx: Any) -> None:
        h, w = self.images[0].shape[:2]
        self.info = ctx.source = SourceInfo(width=w, height=h, frame_rate=Fraction(FPS), time_base=Fraction(1, FPS),
                                            frame_count=self.count, duration_s=self.count / FPS)

    def read(self) -> Iterator[Frame]:
        for i in range(self.count):
            yield Frame(index=i, pts=i, time_base=Fraction(1, FPS), captured_at=time.time(),
                        image=self.images[i % len(self.images)])


def encode_ceiling(clip: Path, settings: Any, frames: int, held: int) -> dict[str, Any]:
    """The pipeline's encoder alone, with the run's settings, fed ``frames`` frames from ``held``
    decoded ones kept on the run's device."""
    from facestream.pipeline.device import resolve_device
    from facestream.pipeline.runner import Pipeline
    from facestream.stages.encoder import Encoder, EncoderSettings

    device = resolve_device(settings.device)
    images = []
    with av.open(str(clip)) as inp:
        for frame in inp.decode(video=0):
            images.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).to(device))
            if len(images) == held:
                break
    source = HeldFrames(images, frames)
    out = settings.output
    enc_settings = EncoderSettings(codec=out.codec, crf=out.crf, preset=out.preset, tune=out.tune,
                                   pix_fmt=out.pix_fmt, audio="none")
    with tempfile.TemporaryDirectory() as tmp:
        encoder = Encoder(enc_settings, path=str(Path(tmp) / "encode-only.mp4"))
        report = Pipeline([source, encoder], device=device, queue_size=settings.flow.queue_size).run()
        if report.error:
            raise RuntimeError(f"encode-only run failed: {report.error}")
    stats = report.stats
    return {"fps": stats["fps"], "frames": stats["frames_out"], "codec": encoder.report().get("codec", out.codec),
            "capacity_fps": stats["stages"]["encoder"]["capacity_fps"]}


# ---------------------------------------------------------------------------------- the benchmark

def run(*, tiny: bool | None = None, frames: int | None = None, loop_frames: int | None = None,
        device: str | None = None, engine: str = "auto", preset: str = "ultrafast", crf: int = 18,
        extra: list[str] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run the benchmark and return its figures (see the module's description)."""
    say = (lambda *a: None) if quiet else print  # noqa: E731
    cuda = torch.cuda.is_available()
    device = device or ("cuda" if cuda else "cpu")
    tiny = (not device.startswith("cuda")) if tiny is None else tiny
    size = SIZES["tiny" if tiny else "full"]
    frames = frames or size["frames"]
    loop_frames = min(loop_frames or size["loop_frames"], frames)
    engine = engine if engine != "auto" else ("torch" if device.startswith("cuda") else "onnxruntime")
    w, h = size["size"]

    t0 = time.perf_counter()
    pack, swapper = models(size["scale"])
    source = source_image()
    clip = one_face_clip(size["size"], frames)
    prep_s = time.perf_counter() - t0
    say(f"machine: {machine()}")
    say(f"clip: {w}x{h} {FPS} fps H.264, {frames} frames, one face; models {size['scale']} "
        f"(det_10g, w600k_r50, inswapper_128); {device}, engine {engine}; libx264 {preset} crf {crf}; "
        f"inputs ready in {prep_s:.1f} s")

    settings = facestream_settings(pack, swapper, source, device=device, preset=preset, crf=crf, engine=engine,
                                   extra=list(extra or []))
    with tempfile.TemporaryDirectory() as tmp:
        stats = run_facestream(clip, settings, Path(tmp) / "facestream.mp4")
    stages = {name: {"capacity_fps": s.get("capacity_fps"), "busy": s.get("busy"), "mean_batch": s.get("mean_batch")}
              for name, s in stats["stages"].items()}
    capacities = {n: s["capacity_fps"] for n, s in stages.items() if s["capacity_fps"]}
    bound = min(capacities, key=capacities.get) if capacities else None
    gpu = stats.get("gpu")
    fs = {"fps": stats["fps"], "frames": stats["frames_out"], "wall_s": stats["wall_s"],
          "faces_swapped": stats["stages"].get("generator", {}).get("faces"),
          "gpu_busy_share": (gpu["util_mean"] / 100 if gpu and gpu.get("util_mean") is not None else None),
          "gpu": gpu, "stages": stages, "bound": bound,
          "codec": stats["stages"].get("encoder", {}).get("codec")}

    loop = run_loop(clip, pack, swapper, source, frames=loop_frames, device=torch.device(device), engine=engine,
                    codec="libx264", preset=preset, crf=crf)
    ceiling = encode_ceiling(clip, settings, frames, held=min(frames, 60))
    encoder_bound = bound == "encoder"
    ratio = fs["fps"] / loop["fps"] if loop["fps"] else None
    result = {
        "machine": machine(), "device": device, "tiny": tiny, "engine": engine,
        "clip": {"width": w, "height": h, "fps": FPS, "frames": frames, "codec": "h264", "faces_per_frame": 1},
        "models": size["scale"], "encoder": {"codec": fs["codec"] or "libx264", "preset": preset, "crf": crf},
        "facestream": fs, "loop": loop, "ratio": round(ratio, 2) if ratio else None,
        "encode_only": ceiling, "encoder_bound": encoder_bound,
        "targets": {"fps": TARGET_FPS, "ratio": TARGET_RATIO,
                    "fps_met": fs["fps"] >= TARGET_FPS, "ratio_met": bool(ratio and ratio >= TARGET_RATIO)},
    }

    say("")
    say(table([("", "fps end to end", "faces swapped", "vs loop"),
               ("per-frame loop (insightface, Deep-Live-Cam style)", f"{loop['fps']:.2f}",
                f"{loop['faces_swapped']} of {loop['frames']} frames", "1.00x"),
               ("facestream run (swap preset)", f"{fs['fps']:.2f}", f"{fs['faces_swapped']} of {fs['frames']} frames",
                f"{ratio:.2f}x" if ratio else "-")]))
    share = f"{100 * fs['gpu_busy_share']:.0f}%" if fs["gpu_busy_share"] is not None else "n/a (no GPU or NVML)"
    say(f"\nGPU busy share (NVML, during the facestream run): {share}")
    say("stage capacity (frames/s of its own working time), busy share, mean batch:")
    say(table([("stage", "capacity fps", "busy", "batch")] + [
        (n, f"{s['capacity_fps']:.1f}" if s["capacity_fps"] else "-", f"{s['busy']:.2f}", f"{s['mean_batch']:.1f}")
        for n, s in stages.items()]))
    say(f"slowest stage: {bound}")
    say(f"encode-only ceiling ({ceiling['codec']} {preset} crf {crf}, {ceiling['frames']} frames already decoded): "
        f"{ceiling['fps']:.1f} fps" + ("  <- encoding is the bound" if encoder_bound else ""))
    say(f"\ntargets: >= {TARGET_FPS:.0f} fps end to end: {'met' if result['targets']['fps_met'] else 'NOT met'}; "
        f">= {TARGET_RATIO:.0f}x the loop: {'met' if result['targets']['ratio_met'] else 'NOT met'}"
        + ("  (tiny run: the targets are for the full sizes on an H200)" if tiny else ""))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", default=None,
                    help="small clip and models (the default without a CUDA GPU)")
    ap.add_argument("--frames", type=int, help="frames of the clip, all run by facestream (full: 1200, tiny: 60)")
    ap.add_argument("--loop-frames", type=int, help="frames the per-frame loop runs (full: 60, tiny: 20)")
    ap.add_argument("--device", help="cuda or cpu (default: cuda where there is one)")
    ap.add_argument("--engine", default="auto", choices=["auto", "torch", "onnxruntime"],
                    help="model engine for both sides (auto: torch on CUDA, onnxruntime on the CPU)")
    ap.add_argument("--preset", default="ultrafast", help="libx264 preset for both sides")
    ap.add_argument("--crf", type=int, default=18)
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="a facestream setting for its run (flow.batch_size=16, input.hwaccel=cuda, ...)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    np.seterr(all="ignore")
    result = run(tiny=args.tiny, frames=args.frames, loop_frames=args.loop_frames, device=args.device,
                 engine=args.engine, preset=args.preset, crf=args.crf, extra=args.extra)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
