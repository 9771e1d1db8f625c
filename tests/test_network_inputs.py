"""Network input: a real RTSP server (GStreamer's) that dies and comes back, HLS over HTTP, MPEG-TS over UDP."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.media import make_clip, probe, remux

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


@pytest.mark.rtsp
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


@pytest.mark.rtsp
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


def test_reads_hls_over_http(tmp_path):
    """An HLS playlist served by a real HTTP server on 127.0.0.1."""
    import functools
    import http.server
    import threading

    from tests.conftest import free_port

    src = make_clip(tmp_path / "src.mp4", seconds=3, fps=25, markers=(1.0,))
    hls = tmp_path / "hls"
    hls.mkdir()
    remux(src, hls / "index.m3u8", format="hls",
          options={"hls_time": "1", "hls_list_size": "0", "hls_playlist_type": "vod"})
    assert len(list(hls.glob("*.ts"))) >= 2
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(hls))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
        proc = subprocess.run([sys.executable, "-m", "facestream", "run", f"http://127.0.0.1:{port}/index.m3u8",
                               "-o", str(out), "-q", "--stats", str(stats)], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    p = probe(out, markers=True)
    assert p.frames == 75 and p.audio_streams == ["aac"]
    assert p.beep_times == pytest.approx([1.0], abs=0.03)


def test_a_video_file_over_http_paced_live_is_read_whole(tmp_path):
    """An MP4 served over HTTP under the live preset is paced in real time, not treated as a live
    feed: before, it was read with the live feeds' options, failed at once, and reconnected forever."""
    import functools
    import http.server
    import threading

    from tests.conftest import free_port

    make_clip(tmp_path / "made.mp4", seconds=2, fps=25, audio="aac")
    # As a web server would serve it: the index first (this test server does no range requests).
    remux(tmp_path / "made.mp4", tmp_path / "clip.mp4", options={"movflags": "faststart"})
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
        proc = subprocess.run([sys.executable, "-m", "facestream", "run", f"http://127.0.0.1:{port}/clip.mp4",
                               "-o", str(out), "--preset", "live", "-q", "--stats", str(stats)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    assert "reconnect" not in proc.stderr and "paces it in real time" in proc.stderr
    data = json.loads(stats.read_text())
    assert data["frames_out"] == probe(out).frames == 50 and data["frames_dropped"] == 0
    assert data["wall_s"] >= 1.5, "paced in real time"


def test_reads_an_mpegts_stream_over_udp(tmp_path):
    """A live MPEG-TS stream sent over UDP in real time: read as live, latest-frame policy."""
    import threading
    import time as _time

    import av

    from tests.conftest import free_port

    src = make_clip(tmp_path / "src.mp4", seconds=6, fps=25)
    port = free_port()
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "facestream", "run", f"udp://127.0.0.1:{port}", "-o", str(out), "-q",
                             "--set", "input.end=3", "--stats", str(stats)], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():  # loop the clip until the receiver is done
            with av.open(str(src)) as inp, av.open(f"udp://127.0.0.1:{port}?pkt_size=1316", "w", format="mpegts") as sink:
                streams = {s.index: sink.add_stream_from_template(s) for s in inp.streams}
                t0 = _time.monotonic()
                for p in inp.demux():
                    if p.dts is None or stop.is_set():
                        continue
                    delay = t0 + float(p.dts * p.time_base) - _time.monotonic()
                    if delay > 0:
                        _time.sleep(delay)
                    p.stream = streams[p.stream.index]
                    sink.mux(p)

    threading.Thread(target=send, daemon=True).start()
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        stop.set()
    assert proc.returncode == 0, err
    data = json.loads(stats.read_text())
    assert data["stages"]["decoder"]["live"] is True and data["policy"] == "latest"
    assert 60 <= probe(out).frames <= 80  # 3 s at 25 fps
