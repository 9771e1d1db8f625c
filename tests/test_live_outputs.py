"""Live outputs to real receivers: RTSP publish into GStreamer's RTSP server in record mode, and
virtual cameras (v4l2loopback) where one exists."""

from __future__ import annotations

import glob
import subprocess
import sys
import threading
import time

import av
import pytest

from facestream.stages.virtualcam import V4L2_CAP_VIDEO_OUTPUT, query_capabilities
from tests.conftest import ROOT, SYSTEM_PYTHON, free_port, has_rtsp_server, run_cli
from tests.media import FLASH_LEVEL


class RecordingRtspServer:
    """gst-rtsp-server taking a publisher on /in (ANNOUNCE, RECORD): the H.264 it receives is
    depayloaded and written as it comes to an Annex B file; the audio stream is taken and discarded."""

    def __init__(self, out) -> None:
        self.port, self.out = free_port(), out
        launch = (f"( rtph264depay name=depay0 ! h264parse ! video/x-h264,stream-format=byte-stream,alignment=au "
                  f"! filesink location={out} buffer-mode=unbuffered sync=false "
                  "rtpmp4gdepay name=depay1 ! fakesink )")
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(ROOT / "tests" / "rtsp_server.py"), str(self.port), "/in",
                                      launch, "record"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the recording RTSP server did not start")

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/in"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_rtsp_publish_into_gstreamers_record_mode(clip, tmp_path):
    if not has_rtsp_server():
        pytest.skip("GStreamer's RTSP server is not installed (tests/install-system-packages.sh installs it)")
    src = clip("record3.mp4", seconds=3.0, audio="aac", markers=(1.0, 2.0))  # bright frames 25 and 50
    server = RecordingRtspServer(tmp_path / "got.h264")
    try:
        proc = run_cli("run", str(src), "-o", server.url, "--set", "input.realtime=true", "-q")
        assert proc.returncode == 0, proc.stderr
        assert f"streamed to {server.url}: 75 frames" in proc.stderr
    finally:
        server.stop()
    with av.open(str(tmp_path / "got.h264"), format="h264") as c:
        frames = [f.to_ndarray(format="gray") for f in c.decode(video=0)]
    # The frames arrived decodable, at the clip's size, in order and none missing: the bright ones
    # are where they were. (The server tears its pipeline down on TEARDOWN without flushing its
    # jitter buffer and parser, so it may keep the last few frames to itself.)
    assert 70 <= len(frames) <= 75 and {f.shape for f in frames} == {(240, 320)}
    bright = [i for i, f in enumerate(frames) if f.mean() > FLASH_LEVEL * 0.8]
    assert bright == [25, 50]


def _loopback_devices() -> list[str]:
    found = []
    for device in sorted(glob.glob("/dev/video*")):
        try:
            driver, caps = query_capabilities(device)
        except OSError:
            continue
        if caps & V4L2_CAP_VIDEO_OUTPUT:
            found.append(device)
    return found


def test_virtual_camera_errors_are_one_line(clip, tmp_path):
    src = clip("vcam.mp4", seconds=1.0, audio=None)
    missing = run_cli("run", str(src), "-o", "v4l2:/dev/video-not-here", "-q")
    not_video = run_cli("run", str(src), "-o", "v4l2:/dev/null", "-q")
    (tmp_path / "plain").write_text("x")
    plain = run_cli("run", str(src), "-o", f"v4l2:{tmp_path / 'plain'}", "-q")
    for proc, expected in ((missing, "virtual camera /dev/video-not-here not found"),
                           (not_video, "/dev/null is not a video device"),
                           (plain, "plain is not a video device")):
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert proc.returncode != 0 and len(lines) == 1 and expected in lines[0], proc.stderr
        assert "modprobe v4l2loopback" in lines[0]
    assert (tmp_path / "plain").read_text() == "x"  # a file given as a camera is left alone


def test_virtual_camera_shows_the_frames(clip):
    devices = _loopback_devices()
    if not devices:
        pytest.skip("no v4l2loopback output device on this machine (sudo modprobe v4l2loopback)")
    device = devices[0]
    src = clip("vcam4.mp4", seconds=4.0, audio=None)
    frames: list[int] = []

    def capture() -> None:  # the camera as a video-call app opens it
        with av.open(device, format="v4l2", timeout=(10.0, 3.0)) as c:
            for f in c.decode(video=0):
                frames.append(f.width)

    push = subprocess.Popen([sys.executable, "-m", "facestream", "run", str(src), "-o", f"v4l2:{device}", "-q"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)  # the writer has set the format
    reader = threading.Thread(target=capture, daemon=True)
    reader.start()
    _, err = push.communicate(timeout=60)
    reader.join(10)
    assert push.returncode == 0, err
    assert len(frames) >= 25 and set(frames) == {320}  # at the clip's size, at its pace
