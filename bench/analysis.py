"""Face-analysis throughput: facestream against a per-frame loop over insightface's FaceAnalysis.get.

    python -m bench.analysis [--frames 50] [--scale real] [--device cpu]

Both run the same ONNX files: generated with the real models' tensor signatures and compute (an
SCRFD of about 10 GFLOPs at 640x640, an IResNet-50 ArcFace of about 12.6 GFLOPs, the 2d106
landmarker), cached in bench/.cache. The clip: 1280x720 at 25 fps, the demo scene (the group
photo slowly panned, the astronaut crossing): four to six faces on every frame.

- baseline: decode each frame (PyAV), ``FaceAnalysis.get`` (detection, 2d106 landmarks, ArcFace
  embedding of every face), one frame at a time, onnxruntime on the CPU;
- facestream, the same work: the ``analyze`` preset without the tracker, so every detected face of
  every frame is embedded, as in the baseline, but batched across frames and faces and pipelined;
- facestream, default: the same, with the embedder running per track (when a track starts, then
  every 15 frames or on a clearly better view); every face still carries its track's embedding.

facestream's figure is its pipeline fps (its own statistics; it also encodes the output video,
which the baseline does not).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from .common import CACHE, cached, machine, run_facestream, table

FILES = {"det_10g.onnx": "make_scrfd", "2d106det.onnx": "make_landmark_2d106", "w600k_r50.onnx": "make_arcface"}
INPUTS = {"det_10g.onnx": {"input.1": (1, 3, 640, 640)}, "2d106det.onnx": {"data": (1, 3, 192, 192)},
          "w600k_r50.onnx": {"input.1": (1, 3, 112, 112)}}


def model_pack(scale: str) -> Path:
    from tests import modelgen

    pack = CACHE / f"models-{scale}" / "buffalo_l"
    pack.mkdir(parents=True, exist_ok=True)
    for file, maker in FILES.items():
        if not (pack / file).exists():
            tmp = pack / f".tmp-{file}"
            getattr(modelgen, maker)(tmp, scale=scale, seed=1)
            tmp.rename(pack / file)
    return pack


def baseline(clip: Path, pack: Path, frames: int) -> tuple[float, int]:
    """fps of the per-frame FaceAnalysis.get loop, and the faces it found."""
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(pack), allowed_modules=["detection", "landmark_2d_106", "recognition"],
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    faces = 0
    with av.open(str(clip)) as c:
        it = c.decode(video=0)
        app.get(next(it).to_ndarray(format="bgr24"))  # warm-up
        t = time.perf_counter()
        n = 0
        for frame in it:
            found = app.get(frame.to_ndarray(format="bgr24"))
            assert all(f.embedding is not None for f in found)
            faces += len(found)
            n += 1
            if n == frames:
                break
    return n / (time.perf_counter() - t), faces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--scale", default="real", choices=["real", "tiny"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from facestream.scenes import demo_scene
    from tests.modelgen import count_flops

    pack = model_pack(args.scale)
    seconds = (args.frames + 1) / 25
    clip = cached(f"demo_1280x720_{seconds:g}s.mp4", lambda p: demo_scene(p, size=(1280, 720), seconds=seconds))
    print(f"machine: {machine()}")
    flops = {f: count_flops(pack / f, INPUTS[f]) / 1e9 for f in FILES}
    print("models: " + ", ".join(f"{f} {g:.2f} GFLOPs" for f, g in flops.items()))
    print(f"clip: {clip.name}, 1280x720, {args.frames} frames timed\n")

    base_fps, base_faces = baseline(clip, pack, args.frames)
    common = ["--preset", "analyze", "--device", args.device, "--set", "models.pack=insightface",
              "--set", f"models.dir={pack}", "--set", "embedder.enabled=always", "--set", "output.preset=ultrafast",
              "--set", f"input.end={args.frames / 25:.3f}"]
    rows = [("", "fps", "vs baseline", "faces/frame", "embedded")]
    rows.append(("insightface FaceAnalysis.get, per frame", f"{base_fps:.2f}", "1.00x",
                 f"{base_faces / args.frames:.1f}", "100%"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("facestream, same work (no tracker)", ["--set", "tracker.enabled=false"]),
                             ("facestream, default (per-track embeddings)", [])):
            stats, _ = run_facestream(str(clip), "-o", str(Path(tmp) / "out.mp4"), *common, *extra,
                                      stats=Path(tmp) / "s.json")
            emb = stats["stages"]["embedder"]
            results[label] = stats["fps"]
            rows.append((label, f"{stats['fps']:.2f}", f"{stats['fps'] / base_fps:.2f}x",
                         f"{emb['faces'] / stats['frames_out']:.1f}", f"{100 * emb['embedded_share']:.0f}%"))
            busy = ", ".join(f"{k} {v['busy']:.2f}" for k, v in stats["stages"].items())
            print(f"{label}: stage busy shares: {busy}")
    print()
    print(table(rows))
    ratio = results["facestream, default (per-track embeddings)"] / base_fps
    target = 5.0 if args.device.startswith("cuda") else 1.3
    print(f"\nratio facestream (default) / per-frame FaceAnalysis.get: {ratio:.2f}x (target >= {target}x): "
          f"{'met' if ratio >= target else 'NOT met'}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
