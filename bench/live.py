"""Glass-to-glass latency of the ``live`` preset on an RTSP feed: ``python -m bench.live``.

(a) One feed. A sender plays the demo scene in real time (25 fps, 640x360), stamping each frame's
number in a strip of black and white blocks at its top-left corner, and sends it as MPEG-TS over
UDP to GStreamer's RTSP server (the tests' fixture, ``tests/rtsp_server.py``), which serves it as
``rtsp://127.0.0.1:PORT/feed``. Each configuration reads that feed, processes it and streams the
result as MPEG-TS over UDP to a receiver that decodes it and reads the number back: the latency of a
frame is the time it was received minus the time it was sent, on the same clock. Configurations:

- ``facestream``: ``facestream run rtsp://... -o udp://... --preset live --set mode=anonymize``
  (and ``mode=swap`` with the builtin models and a source photo), as a user runs it;
- ``per-frame loop``: the same stages, built the same way, driven one frame at a time in one thread
  (read a frame, detect, track, process, encode, then the next), as the older tools do.

The first seconds of each run (model loading, the first keyframe) are left out of the figures.
A loop slower than the feed falls further behind the longer it runs: its figures grow with
``--seconds``; the live preset's stay put and it drops (and counts) the frames it cannot take.

(b) Several feeds at once: ``--feeds 1,2,4,8``. N copies of the demo scene (640x360, 25 fps, 2 s,
about 5 faces a frame), anonymised with the builtin models, as fast as they go (lossless flow):
``facestream run F1 ... FN -o O1 ... -o ON --preset anonymize`` (one pipeline: every model batches
frames of all N feeds) against N ``facestream run Fk -o Ok --preset anonymize`` processes started
together (each with its own models and threads). Figures: frames of all feeds per second, over the
processing (the pipeline's own time; for the processes, all their frames over the longest of their
pipelines, which ran side by side) and over the whole commands (start-up and model loading included), and peak
memory (the one process's; the processes' summed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .common import ROOT, cached, machine, table

FPS = 25
SIZE = (640, 360)
BITS, BLOCK = 12, 16  # the frame number: 12 blocks of 16x16 pixels at the top-left corner
SYSTEM_PYTHON = "/usr/bin/python3"

# The per-frame loop, in a child process; argv: url, output, seconds, mode, source photo.
LOOP = """
import sys, time, torch
from facestream.app import build_stages
from facestream.pipeline.stage import RunContext
from facestream.settings import load_settings
url, out, seconds, mode, source = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
overrides = [f"mode={mode}"] + ([f"swap.source=[{source}]"] if mode == "swap" else [])
settings = load_settings(preset="live", overrides=overrides)
stages = build_stages(settings, source=url, output=out, live=True, device=torch.device("cpu"))
ctx = RunContext(device=torch.device("cpu"))
for stage in stages:
    stage.open(ctx)
decoder, *middle, sink = stages
t0 = time.monotonic()
for frame in decoder.read():
    frames = [frame]
    for stage in middle:
        frames = stage.process(frames)
    sink.write(frames)
    if time.monotonic() - t0 > seconds:
        break
ctx.stop.set()
for stage in stages:
    stage.close()
"""


def stamp(rgb: np.ndarray, number: int) -> np.ndarray:
    out = rgb.copy()
    for b in range(BITS):
        out[:BLOCK, b * BLOCK:(b + 1) * BLOCK] = 255 if number >> b & 1 else 0
    return out


def read_stamp(gray: np.ndarray) -> int:
    centre = gray[BLOCK // 4:3 * BLOCK // 4]
    return sum(1 << b for b in range(BITS) if centre[:, b * BLOCK + BLOCK // 4:(b + 1) * BLOCK - BLOCK // 4].mean() > 128)


class Sender(threading.Thread):
    """The camera: the demo scene in a loop, in real time, as MPEG-TS over UDP; notes when each
    numbered frame left."""

    def __init__(self, frames: list[np.ndarray], port: int) -> None:
        super().__init__(daemon=True)
        self.frames, self.port = frames, port
        self.sent: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        with av.open(f"udp://127.0.0.1:{self.port}?pkt_size=1316", "w", format="mpegts") as out:
            vs = out.add_stream("libx264", rate=FPS)
            vs.width, vs.height, vs.pix_fmt = *SIZE, "yuv420p"
            vs.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(FPS), "crf": "20"}
            t0 = time.monotonic()
            i = 0
            while not self.stop.is_set():
                delay = t0 + i / FPS - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                number = i % (1 << BITS)
                frame = av.VideoFrame.from_ndarray(stamp(self.frames[i % len(self.frames)], number), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, FPS)
                self.sent[number] = time.time()
                for packet in vs.encode(frame):
                    out.mux(packet)
                i += 1


class Receiver(threading.Thread):
    """The viewer: decodes the processed stream and notes when each numbered frame arrived."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.got: list[tuple[int, float]] = []

    def run(self) -> None:
        try:
            with av.open(f"udp://127.0.0.1:{self.port}?timeout=5000000&fifo_size=100000&overrun_nonfatal=1",
                         format="mpegts", options={"fflags": "nobuffer", "flags": "low_delay"},
                         timeout=(120.0, 5.0)) as c:
                for f in c.decode(video=0):
                    self.got.append((read_stamp(f.to_ndarray(format="gray")), time.time()))
        except (av.error.FFmpegError, OSError):
            pass  # the stream ended


def feed_frames() -> list[np.ndarray]:
    from facestream.scenes import demo_scene

    clip = cached("live-demo-640x360.mp4", lambda p: demo_scene(p, size=SIZE, fps=FPS, seconds=8.0))
    with av.open(str(clip)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def latencies(sender: Sender, receiver: Receiver, skip_s: float) -> tuple[np.ndarray, int]:
    """Latencies (s) of the frames received after the first ``skip_s`` seconds of output, and how
    many frames were received in all."""
    if not receiver.got:
        return np.array([]), 0
    start = receiver.got[0][1] + skip_s
    values = [t - sender.sent[n] for n, t in receiver.got if t >= start and n in sender.sent]
    return np.array([v for v in values if 0 <= v < 60]), len(receiver.got)


def one_run(kind: str, mode: str, url: str, seconds: float, skip_s: float, source: Path,
            sender: Sender) -> dict[str, float]:
    from tests.conftest import free_port  # the same helper as the tests

    port = free_port()
    receiver = Receiver(port)
    receiver.start()
    out = f"udp://127.0.0.1:{port}?pkt_size=1316"
    with tempfile.TemporaryDirectory() as d:
        stats = Path(d) / "s.json"
        if kind == "facestream":
            extra = ["--source", str(source)] if mode == "swap" else []
            cmd = [sys.executable, "-m", "facestream", "run", url, "-o", out, "--preset", "live", "--set",
                   f"mode={mode}", "--set", f"input.end={seconds}", *extra, "-q", "--stats", str(stats)]
        else:
            cmd = [sys.executable, "-c", LOOP, url, out, str(seconds), mode, str(source)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{kind} {mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        report = json.loads(stats.read_text()) if stats.exists() else None
    receiver.join(15)
    lat, received = latencies(sender, receiver, skip_s)
    result = {"received": received, "measured": len(lat),
              "p50_ms": float(np.percentile(lat, 50) * 1e3) if len(lat) else float("nan"),
              "p95_ms": float(np.percentile(lat, 95) * 1e3) if len(lat) else float("nan")}
    if report is not None:
        result["dropped"] = report["frames_dropped"]
    return result


def _run_all(commands: list[list[str]]) -> float:
    """Start the commands together; the wall-clock time until the last one ends."""
    t = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"facestream failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - t


def multi_feed(counts: list[int]) -> None:
    """Part (b): frames per second with N feeds on one pipeline against N separate processes."""
    from facestream.scenes import demo_scene

    clip = cached("live-multi-640x360.mp4", lambda p: demo_scene(p, size=SIZE, fps=FPS, seconds=2.0))
    run = [sys.executable, "-m", "facestream", "run"]
    opts = ["--preset", "anonymize", "-q", "-y"]
    print(f"# {machine()}; N copies of the demo scene ({SIZE[0]}x{SIZE[1]}, {FPS} fps, 2 s), anonymize, "
          "builtin models, as fast as they go", flush=True)
    rows = [("feeds", "configuration", "fps (processing)", "fps (whole command)", "peak memory MB")]
    for n in counts:
        with tempfile.TemporaryDirectory() as d:
            outs = [f"{d}/one{k}.mp4" for k in range(n)]
            stats = f"{d}/one.json"
            wall = _run_all([[*run, *[str(clip)] * n, *[x for o in outs for x in ("-o", o)], *opts, "--stats", stats]])
            one = json.loads(Path(stats).read_text())
            frames = one["frames_out"]
            rows.append((str(n), "one pipeline", f"{frames / one['wall_s']:.1f}", f"{frames / wall:.1f}",
                         f"{one['peak_rss_mb']:.0f}"))
            print(f"{n} feeds, one pipeline: {frames} frames, {one['wall_s']:.1f} s, {wall:.1f} s in all", flush=True)
            if n == 1:
                continue
            wall = _run_all([[*run, str(clip), "-o", f"{d}/sep{k}.mp4", *opts, "--stats", f"{d}/sep{k}.json"]
                             for k in range(n)])
            reports = [json.loads(Path(f"{d}/sep{k}.json").read_text()) for k in range(n)]
            frames = sum(r["frames_out"] for r in reports)
            longest = max(r["wall_s"] for r in reports)
            rows.append((str(n), "separate processes", f"{frames / longest:.1f}", f"{frames / wall:.1f}",
                         f"{sum(r['peak_rss_mb'] for r in reports):.0f}"))
            print(f"{n} feeds, {n} processes: {frames} frames, longest pipeline {longest:.1f} s, {wall:.1f} s in all",
                  flush=True)
    print(table(rows))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each configuration runs")
    parser.add_argument("--skip", type=float, default=4.0, help="seconds of output left out at the start")
    parser.add_argument("--modes", default="anonymize,swap")
    parser.add_argument("--feeds", help="part (b) instead: feed counts to measure, e.g. 1,2,4,8")
    args = parser.parse_args()
    if args.feeds:
        multi_feed([int(n) for n in args.feeds.split(",")])
        return
    from facestream.scenes import photo_path
    from tests.conftest import free_port

    frames = feed_frames()
    source = photo_path("astronaut")
    udp_in, rtsp_port = free_port(), free_port()
    launch = (f'( udpsrc port={udp_in} caps="video/mpegts,systemstream=(boolean)true" ! tsdemux ignore-pcr=true latency=0 ! '
              "h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )")
    server = subprocess.Popen([SYSTEM_PYTHON, str(ROOT / "tests" / "rtsp_server.py"), str(rtsp_port), "/feed", launch],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready", "the RTSP server did not start"
    url = f"rtsp://127.0.0.1:{rtsp_port}/feed"
    sender = Sender(frames, udp_in)
    sender.start()
    print(f"# {machine()}; feed {SIZE[0]}x{SIZE[1]} at {FPS} fps over RTSP (GStreamer), "
          f"{args.seconds:.0f} s a run, the first {args.skip:.0f} s of output left out", flush=True)
    rows = [("mode", "configuration", "p50 ms", "p95 ms", "frames shown", "dropped")]
    try:
        for mode in args.modes.split(","):
            for kind in ("per-frame loop", "facestream"):
                r = one_run("facestream" if kind == "facestream" else "loop", mode, url, args.seconds, args.skip,
                            source, sender)
                rows.append((mode, kind, f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", str(r["received"]),
                             str(r.get("dropped", "-"))))
                print(f"{mode} {kind}: {json.dumps(r)}", flush=True)
    finally:
        sender.stop.set()
        server.kill()
        server.wait()
    print(table(rows))


if __name__ == "__main__":
    main()
