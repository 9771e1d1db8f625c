"""Live input from a real RTSP server (GStreamer's), including a server that dies and comes back."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.media import make_clip, probe

pytestmark = pytest.mark.rtsp

LIVE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96 )"
)


def start_cli(url, out, stats, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "facestream", "run", url, "-o", str(out), "--preset", "live", "--stats", str(stats),
         "--set", "stats.progress=lines", "--set", "stats.interval_s=0.25", *extra],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )


def wait_for_frames(proc, n, timeout=60):
    """Read status lines until at least ``n`` frames were written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if line.startswith("live") and int(line.split("frames")[1].split()[0]) >= n:
            return
    raise AssertionError("frames did not start flowing")


def test_reads_a_file_served_over_rtsp(tmp_path, rtsp_server):
    clip = make_clip(tmp_path / "served.mp4", seconds=8, fps=25, audio=None)
    server = rtsp_server(f"( filesrc location={clip} ! qtdemux ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )")
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = start_cli(server.url, out, stats, "--set", "input.end=3")
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    data = json.loads(stats.read_text())
    assert data["stages"]["decoder"]["live"] is True and data["policy"] == "latest"
    p = probe(out)
    assert 60 <= p.frames <= 76  # 3 s at 25 fps, give or take the stream's start
    assert p.video_times[-1] < 3.0


def test_reconnects_after_the_server_dies_and_keeps_the_same_output(tmp_path, rtsp_server):
    server = rtsp_server(LIVE)
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = start_cli(server.url, out, stats, "--set", "input.end=14", "--set", "input.backoff_s=[0.2, 1.0]")
    wait_for_frames(proc, 20)
    server.kill()
    down = time.monotonic()
    time.sleep(2.0)
    server.start()  # the same port and mount
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "dropped at" in err and "reconnected after" in err
    data = json.loads(stats.read_text())
    decoder = data["stages"]["decoder"]
    assert decoder["reconnects"] >= 1
    gap = decoder["gaps"][0]
    assert 1.8 <= gap["gap_s"] <= time.monotonic() - down
    p = probe(out)
    assert p.frames == data["frames_out"]
    steps = np.diff(p.video_times)
    jump = int(np.argmax(steps))
    # The gap is in the output timeline, with frames on both sides of it.
    assert steps[jump] >= 1.5
    assert jump + 1 >= 20 and p.frames - (jump + 1) >= 15
    assert p.video_times[-1] < 14.0
