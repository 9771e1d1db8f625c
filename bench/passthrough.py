"""Pass-through throughput: ``facestream run`` against a plain sequential PyAV loop, same settings.

    python -m bench.passthrough [--seconds 30] [--preset ultrafast] [--crf 23] [--repeat 2]

The clip: 1280x720 at 30 fps with AAC audio, a slow pan over a real photo (insightface's t1.jpg;
a test pattern if insightface is not installed), made once and cached in bench/.cache.

Three figures, all decoding the clip, turning every frame into an RGB array (what any face tool
needs) and encoding it again with libx264 at the same preset and crf, audio stream-copied:

1. baseline: the idiomatic sequential PyAV loop (``to_ndarray(format="rgb24")``, then
   ``VideoFrame.from_ndarray``) in this process;
2. the same sequential loop using facestream's colour conversions, to separate what the overlap
   of stages gains from what the cheaper conversions gain;
3. ``facestream run`` in a subprocess: its pipeline fps (from its statistics: first decoded frame
   to finalised file) and the command's wall time including interpreter and torch start-up.

Each is run ``--repeat`` times, interleaved; the best run of each counts (the least disturbed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from facestream.facelib.media.colour import i420_to_rgb_numpy, rgb_to_i420_numpy

from .common import cached, machine, run_facestream, table

SIZE = (1280, 720)
FPS = 30


def make_clip(path: Path, seconds: float) -> None:
    w, h = SIZE
    try:
        from facestream.scenes import load_photo, render_scene

        render_scene(path, background=load_photo("group"), size=SIZE, fps=FPS, seconds=seconds, pan=0.25, crf=20)
        return
    except Exception:  # noqa: BLE001 - no insightface: a moving test pattern instead
        pass
    src = av.open(f"testsrc2=size={w}x{h}:rate={FPS}:duration={seconds}", format="lavfi")
    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=FPS)
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    for frame in src.decode(video=0):
        for p in vs.encode(frame):
            out.mux(p)
    for p in vs.encode(None):
        out.mux(p)
    out.close()


def sequential(src: Path, dst: Path, preset: str, crf: int, fast_colour: bool) -> tuple[int, float]:
    """Decode, convert each frame to RGB and back, encode: one thread, one frame at a time."""
    t = time.perf_counter()
    inp = av.open(str(src))
    vin = inp.streams.video[0]
    out = av.open(str(dst), "w")
    vout = out.add_stream("libx264", rate=vin.average_rate)
    vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
    vout.time_base = vout.codec_context.time_base = vin.time_base
    vout.options = {"preset": preset, "crf": str(crf)}
    aouts = {s.index: out.add_stream_from_template(s) for s in inp.streams.audio}
    n = 0
    for packet in inp.demux(vin, *inp.streams.audio):
        if packet.stream.type == "audio":
            if packet.dts is not None:
                packet.stream = aouts[packet.stream.index]
                out.mux(packet)
            continue
        for frame in packet.decode():
            if fast_colour:
                rgb = i420_to_rgb_numpy(frame.to_ndarray())
                new = av.VideoFrame.from_ndarray(rgb_to_i420_numpy(rgb), format="yuv420p")
            else:
                rgb = frame.to_ndarray(format="rgb24")
                new = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            new.pts, new.time_base = frame.pts, frame.time_base
            for p in vout.encode(new):
                out.mux(p)
            n += 1
    for p in vout.encode(None):
        out.mux(p)
    out.close()
    inp.close()
    return n, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--preset", default="ultrafast")
    ap.add_argument("--crf", type=int, default=23)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    clip = cached(f"pan_{SIZE[0]}x{SIZE[1]}_{args.seconds:g}s.mp4", lambda p: make_clip(p, args.seconds))
    with av.open(str(clip)) as c:
        frames_expected = c.streams.video[0].frames
    print(f"machine: {machine()}")
    print(f"clip: {clip.name}: {SIZE[0]}x{SIZE[1]} @ {FPS} fps, {frames_expected} frames, AAC audio")
    print(f"codec: libx264 preset {args.preset} crf {args.crf}, audio stream copy\n")
    best = {"plain": 0.0, "conv": 0.0, "fs": 0.0}
    fs_wall = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for _ in range(args.repeat):
            n, s = sequential(clip, out / "plain.mp4", args.preset, args.crf, fast_colour=False)
            best["plain"] = max(best["plain"], n / s)
            n, s = sequential(clip, out / "conv.mp4", args.preset, args.crf, fast_colour=True)
            best["conv"] = max(best["conv"], n / s)
            stats, wall = run_facestream(
                str(clip), "-o", str(out / "fs.mp4"), "--set", f"output.preset={args.preset}",
                "--set", f"output.crf={args.crf}", "--device", "cpu", stats=out / "fs.json",
            )
            assert stats["frames_out"] == n, (stats["frames_out"], n)
            best["fs"] = max(best["fs"], stats["fps"])
            fs_wall = min(fs_wall, wall)
    rows = [
        ("", "fps", "vs baseline"),
        ("sequential PyAV loop (baseline)", f"{best['plain']:.1f}", "1.00x"),
        ("sequential loop, facestream's conversions", f"{best['conv']:.1f}", f"{best['conv'] / best['plain']:.2f}x"),
        ("facestream run (pipeline)", f"{best['fs']:.1f}", f"{best['fs'] / best['plain']:.2f}x"),
        ("facestream run (command, start-up included)", f"{n / fs_wall:.1f}", f"{n / fs_wall / best['plain']:.2f}x"),
    ]
    print(table(rows))
    ratio = best["fs"] / best["plain"]
    print(f"\nratio facestream / sequential PyAV loop: {ratio:.2f}x (target >= 1.5x): {'met' if ratio >= 1.5 else 'NOT met'}")
    print(f"of which the overlap of stages alone: {best['fs'] / best['conv']:.2f}x over the same conversions run sequentially")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
