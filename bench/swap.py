"""End-to-end swap throughput: facestream against a Deep-Live-Cam-style per-frame loop.

    python -m bench.swap [--scene demo|group] [--frames 40] [--swapper cpu|real] [--device cpu]

Both use the same ONNX files, generated with the real models' signatures: an SCRFD of about
10 GFLOPs at 640x640, the 2d106 landmarker, an IResNet-50 ArcFace, and an inswapper_128-family
swapper ("cpu": about 7.7 GFLOPs per face for the CPU; "real": about 174 GFLOPs, inswapper_128's
compute, for a GPU). The clip: 1280x720 at 25 fps; ``demo``: the demo scene, both sides swapping the
two largest faces of every frame (``max_num=2`` / ``detector.max_faces=2``); ``group``: the group
photo slowly panned, six faces a frame swapped (``max_num=6``), as in a group shot. The astronaut
portrait is the source.

Each side runs in a process of its own, so that its peak memory (resident set) is its own; the
whole-run time counts interpreter start-up and model loading on both sides.

- baseline, as Deep-Live-Cam and roop run: decode a frame (PyAV), ``FaceAnalysis.get`` (detection,
  landmarks, embedding of every face), ``INSwapper.get(paste_back=True)`` for each face (a
  full-frame mask per face), encode (PyAV, libx264, the same preset); one frame at a time;
- facestream: ``facestream run --source ...`` with the insightface pack: frames batched through
  the detector and the swapper, the tracker between them, the paste-back over each face's region,
  the encoder in its own thread; no target embeddings or landmarks, since selecting every face
  needs neither.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .analysis import FILES, INPUTS, model_pack
from .common import CACHE, cached, machine, run_facestream, table


def swapper_file(scale: str) -> Path:
    from tests import modelgen

    path = CACHE / f"swapper-{scale}" / "inswapper_128.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".tmp-inswapper_128.onnx")
        modelgen.make_inswapper(tmp, scale=scale, seed=6)
        tmp.rename(path)
    return path


def baseline(clip: Path, pack: Path, swapper: Path, source: Path, frames: int, preset: str,
             faces: int) -> dict[str, float]:
    """The per-frame loop, decode to encode: its fps, the faces it swapped, its whole-run time
    (imports and model loading included) and its peak memory. Runs in a child process."""
    t0 = time.perf_counter()
    from insightface.app import FaceAnalysis
    from insightface.model_zoo import get_model

    app = FaceAnalysis(name=str(pack), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    swap = get_model(str(swapper), providers=["CPUExecutionProvider"])
    src = app.get(cv2.imread(str(source)), max_num=1)[0]
    with tempfile.TemporaryDirectory() as tmp, av.open(str(clip)) as inp:
        out = av.open(str(Path(tmp) / "baseline.mp4"), "w")
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 1280, 720, "yuv420p"
        vs.options = {"preset": preset, "crf": "18"}
        t = time.perf_counter()
        n = swapped = 0
        for frame in inp.decode(video=0):
            img = frame.to_ndarray(format="bgr24")
            try:
                found = app.get(img, max_num=faces)
            except ValueError:  # insightface's max_num selection fails on a frame with no face
                found = []
            for face in found:
                try:
                    img = swap.get(img, face, src, paste_back=True)
                except ValueError:  # insightface's paste-back fails on a face whose crop lies off the frame
                    continue
                swapped += 1
            new = av.VideoFrame.from_ndarray(img, format="bgr24")
            new.pts, new.time_base = n, Fraction(1, 25)
            for p in vs.encode(new):
                out.mux(p)
            n += 1
            if n == frames:
                break
        for p in vs.encode(None):
            out.mux(p)
        out.close()
        end = time.perf_counter()
    return {"fps": n / (end - t), "faces": swapped, "whole_s": end - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _in_child(fn, *args):  # noqa: ANN001, ANN202 - a function and its arguments
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default="demo", choices=["demo", "group"])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--swapper", default="cpu", choices=["cpu", "real", "tiny"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="veryfast")
    args = ap.parse_args()

    from facestream.scenes import demo_scene, load_photo, render_scene
    from tests.modelgen import count_flops

    pack = model_pack("real")
    swapper = swapper_file(args.swapper)
    source = CACHE / "astronaut.png"
    if not source.exists():
        cv2.imwrite(str(source), cv2.cvtColor(load_photo("astronaut"), cv2.COLOR_RGB2BGR))
    seconds = (args.frames + 1) / 25
    faces = 2 if args.scene == "demo" else 6
    if args.scene == "demo":
        clip = cached(f"demo_1280x720_{seconds:g}s.mp4", lambda p: demo_scene(p, size=(1280, 720), seconds=seconds))
    else:
        clip = cached(f"group_1280x720_{seconds:g}s.mp4", lambda p: render_scene(
            p, background=load_photo("group"), size=(1280, 720), seconds=seconds, pan=0.1))
    print(f"machine: {machine()}")
    gflops = {f: count_flops(pack / f, INPUTS[f]) / 1e9 for f in FILES}
    gflops["inswapper_128.onnx"] = count_flops(swapper, {"target": (1, 3, 128, 128), "source": (1, 512)}) / 1e9
    print("models: " + ", ".join(f"{f} {g:.2f} GFLOPs" for f, g in gflops.items()))
    print(f"clip: {clip.name}, 1280x720, {args.frames} frames, up to {faces} faces swapped per frame, "
          f"libx264 {args.preset}\n")

    b = _in_child(baseline, clip, pack, swapper, source, args.frames, args.preset, faces)
    base, base_faces = b["fps"], b["faces"]
    with tempfile.TemporaryDirectory() as tmp:
        stats, wall = run_facestream(
            str(clip), "-o", str(Path(tmp) / "out.mp4"), "--source", str(source), "--device", args.device,
            "--set", "models.pack=insightface", "--set", f"models.dir={pack}", "--set", f"models.swapper={swapper}",
            "--set", f"detector.max_faces={faces}", "--set", f"output.preset={args.preset}",
            "--set", f"input.end={args.frames / 25:.3f}", stats=Path(tmp) / "s.json",
        )
    busy = ", ".join(f"{k} {v['busy']:.2f}" for k, v in stats["stages"].items())
    print(f"facestream stage busy shares: {busy}")
    faces = stats["stages"]["generator"]["faces"]
    print(f"faces swapped: baseline {base_faces}, facestream {faces} (it drops low-score detections that start no track)\n")
    fs_faces = faces / stats["wall_s"]
    base_fps_faces = base * base_faces / args.frames
    rows = [("", "fps", "vs baseline", "faces/s", "vs baseline"),
            ("Deep-Live-Cam-style loop (FaceAnalysis + INSwapper.get)", f"{base:.2f}", "1.00x", f"{base_fps_faces:.2f}", "1.00x"),
            ("facestream run (pipeline)", f"{stats['fps']:.2f}", f"{stats['fps'] / base:.2f}x", f"{fs_faces:.2f}",
             f"{fs_faces / base_fps_faces:.2f}x"),
            ("facestream run (command, start-up included)", f"{stats['frames_out'] / wall:.2f}",
             f"{stats['frames_out'] / wall / base:.2f}x", "", "")]
    print(table(rows))
    print(f"\nwhole run (start-up and model loading included): loop {b['whole_s']:.1f} s, facestream {wall:.1f} s "
          f"({b['whole_s'] / wall:.2f}x)")
    print(f"peak memory (resident): loop {b['peak_rss_mb']:.0f} MB, facestream {stats['peak_rss_mb']:.0f} MB")
    ratio = stats["fps"] / base
    target = 10.0 if args.device.startswith("cuda") else 1.3
    print(f"\nratio facestream / per-frame loop: {ratio:.2f}x (target >= {target}x): {'met' if ratio >= target else 'NOT met'}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
