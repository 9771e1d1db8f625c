"""Live outputs: MPEG-TS over UDP and RTMP pushed to a real nginx, read back with PyAV."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from tests.conftest import ROOT, free_port, run_cli
from tests.media import audio_packets

NGINX = Path("/usr/sbin/nginx")
RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")


class Reader(threading.Thread):
    """Reads a stream with PyAV for ``seconds`` from its first frame, noting each decoded frame's pts
    and arrival time."""

    def __init__(self, url: str, *, format: str | None = None, seconds: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.url, self.format, self.seconds = url, format, seconds
        self.frames: list[tuple[int, float]] = []
        self.error: str | None = None
        self.opened = threading.Event()

    def run(self) -> None:
        deadline = None  # ``seconds`` from the first frame: the publisher may still be loading its models
        try:
            with av.open(self.url, format=self.format, timeout=(20.0, 3.0)) as c:
                self.opened.set()
                for f in c.decode(video=0):
                    now = time.monotonic()
                    self.frames.append((f.pts, now))
                    deadline = deadline or now + self.seconds
                    if now > deadline:
                        return
        except Exception as exc:  # noqa: BLE001 - the stream ending is how a read finishes
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.opened.set()

    def lateness(self, skip: int = 25) -> float:
        """How much later than the stream's own clock frames arrived, at worst, against the most
        punctual one; the first and last second are left out (the muxer and the reader's probe
        hold the first frames, the reader's parser the last ones until the stream times out)."""
        offsets = [t - p / 90000 for p, t in self.frames[skip:-skip]]
        return max(offsets) - min(offsets)


def _read_when_published(url: str, *, seconds: float, within: float = 30.0) -> Reader:
    """A reader of an RTMP stream once its publisher is on (nginx ends a play of a stream nobody
    publishes yet at once, with no frames; the publisher may still be loading its models)."""
    deadline = time.monotonic() + within
    while True:
        reader = Reader(url, seconds=seconds)
        reader.start()
        reader.join(seconds + 15)
        if reader.frames or time.monotonic() > deadline:
            return reader
        time.sleep(0.3)


@pytest.fixture(scope="module")
def long_clip(clip):
    return clip("stream10.mp4", seconds=10.0, audio="aac", size=(320, 240))


def test_udp_mpegts_arrives_whole_in_order_and_on_time(long_clip):
    port = free_port()
    reader = Reader(f"udp://127.0.0.1:{port}?timeout=4000000", format="mpegts")
    reader.start()
    time.sleep(1.0)  # the reader is listening
    proc = run_cli("run", str(long_clip), "-o", f"udp://127.0.0.1:{port}", "--set", "input.realtime=true", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "streamed to udp://" in proc.stderr
    reader.join(20)
    pts = [p for p, _ in reader.frames]
    assert len(pts) >= 240  # of 250 (a datagram may be lost, never reordered)
    assert all(b > a for a, b in zip(pts, pts[1:]))
    # Paced at the clip's rate, frames arrive as they are made: no backlog builds up.
    assert reader.lateness() < 0.5, reader.lateness()


def test_rtsp_publish_reaches_a_listening_server(long_clip):
    """FFmpeg's own RTSP server (its demuxer in listen mode) takes the publish (ANNOUNCE, RECORD)."""
    port = free_port()
    frames: list[int] = []
    errors: list[str] = []

    def serve() -> None:
        try:
            with av.open(f"rtsp://127.0.0.1:{port}/live", format="rtsp",
                         options={"rtsp_flags": "listen", "listen_timeout": "20"}) as c:
                for f in c.decode(video=0):
                    frames.append(f.width)
        except Exception as exc:  # noqa: BLE001 - the publisher hanging up ends the read
            errors.append(str(exc))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    time.sleep(1.0)
    proc = run_cli("run", str(long_clip), "-o", f"rtsp://127.0.0.1:{port}/live", "--set", "input.realtime=true",
                   "--set", "input.end=3", "-q")
    assert proc.returncode == 0, proc.stderr
    server.join(20)
    assert len(frames) >= 70 and set(frames) == {320}, errors  # of 75, decoded at the clip's size


class Nginx:
    """nginx with its RTMP module, on a free port, started and killed at will."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        (folder / "nginx.conf").write_text(f"""
load_module {RTMP_MODULE};
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 64; }}
rtmp {{ server {{ listen 127.0.0.1:{self.port}; application live {{ live on; record off; }} }} }}
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(NGINX), "-c", str(self.folder / "nginx.conf"), "-p", str(self.folder)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def kill(self) -> None:
        if self.proc is not None:  # the master and its workers (which hold the connections)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def url(self, name: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{name}"


@pytest.fixture
def nginx(tmp_path):
    if not (NGINX.exists() and RTMP_MODULE.exists()):
        pytest.skip("nginx with its RTMP module is not installed (tests/install-system-packages.sh installs it)")
    server = Nginx(tmp_path)
    server.start()
    yield server
    server.kill()


def test_rtmp_push_survives_the_server_going_away(nginx, clip, tmp_path):
    # 16 s: room for the pusher's start-up, a first read, the server's death and return, a second read.
    src = clip("stream16.mp4", seconds=16.0, audio="aac", size=(320, 240))
    stats = tmp_path / "s.json"
    push = subprocess.Popen(
        [sys.executable, "-m", "facestream", "run", str(src), "-o", nginx.url("cam"), "--preset", "anonymize",
         "--set", "input.realtime=true", "-q", "--stats", str(stats)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = _read_when_published(nginx.url("cam"), seconds=2.0)
    nginx.kill()
    time.sleep(1.5)
    nginx.start()
    second = _read_when_published(nginx.url("cam"), seconds=2.0)  # the pusher's backoff brings it back
    _, err = push.communicate(timeout=60)
    assert push.returncode == 0, err
    for reader in (first, second):
        pts = [p for p, _ in reader.frames]
        # Decodable frames in order (up to 25 a second; fewer when a busy machine makes the live
        # flow drop some: how many is a matter of speed, not of behaviour).
        assert len(pts) >= 10, reader.error
        assert all(b > a for a, b in zip(pts, pts[1:]))
    assert second.frames[0][0] > first.frames[-1][0]  # the stream went on after the restart
    report = json.loads(stats.read_text())
    s = report["stages"]["streamer"]
    assert s["reconnects"] >= 1 and s["frames_dropped"] > 0
    # Every frame that reached the streamer was either sent or counted as dropped in the gap (the
    # live flow may also drop frames before it when the stages fall behind; those are counted too).
    assert s["frames_written"] + s["frames_dropped"] == report["frames_out"]
    assert report["frames_out"] + report["frames_dropped"] == 400
    assert "went away" in err and "dropped while a stream was down" in err


def test_a_stream_output_that_cannot_connect_is_one_line_without_credentials(long_clip):
    port = free_port()  # nothing listens there
    proc = run_cli("run", str(long_clip), "-o", f"rtmp://alice:s3cret@127.0.0.1:{port}/live/x", "-q")
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "cannot stream to rtmp://***@127.0.0.1" in lines[0], proc.stderr
    assert "s3cret" not in proc.stderr
    bad = run_cli("run", str(long_clip), "-o", "gopher://x/y", "-q")
    assert bad.returncode != 0 and "must end in" in bad.stderr


def test_stream_encoder_is_tuned_for_latency(nginx, long_clip):
    push = subprocess.Popen([sys.executable, "-m", "facestream", "run", str(long_clip), "-o", nginx.url("probe"),
                             "--set", "input.realtime=true", "-q"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    packets = []
    with av.open(nginx.url("probe"), timeout=(10.0, 3.0)) as c:
        for p in c.demux(video=0):
            if p.size:
                packets.append((p.pts, p.dts, p.is_keyframe))
            if len(packets) >= 100:
                break
    push.kill()
    push.wait()
    assert len(packets) == 100
    # No B-frames (decode order is presentation order), and a keyframe every second (25 frames).
    assert all(pts == dts for pts, dts, _ in packets)
    keys = [i for i, (_, _, k) in enumerate(packets) if k]
    assert len(keys) >= 3 and max(b - a for a, b in zip(keys, keys[1:])) <= 25


def test_several_outputs_each_get_every_frame_and_the_audio(clip, tmp_path):
    # AAC (copied everywhere) and PCM (copied into Matroska, re-encoded to AAC for mp4).
    src = clip("tee_two_audio.mov", seconds=3.0, audio=("aac", "pcm_s16le"), markers=(1.0,))
    alone = {ext: tmp_path / f"alone{ext}" for ext in (".mp4", ".mkv")}
    for path in alone.values():
        assert run_cli("run", str(src), "-o", str(path), "-q").returncode == 0
    port = free_port()
    reader = Reader(f"udp://127.0.0.1:{port}?timeout=3000000", format="mpegts")
    reader.start()
    time.sleep(1.0)
    both = {ext: tmp_path / f"both{ext}" for ext in (".mp4", ".mkv")}
    proc = run_cli("run", str(src), "-o", str(both[".mp4"]), "-o", str(both[".mkv"]), "-o", f"udp://127.0.0.1:{port}",
                   "-q", "--stats", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {both['.mp4']}, {both['.mkv']}, udp://127.0.0.1:{port}: 75 frames" in proc.stderr
    reader.join(15)
    assert len(reader.frames) >= 70
    for ext in (".mp4", ".mkv"):
        with av.open(str(both[ext])) as c:
            assert c.streams.video[0].frames in (0, 75) and sum(1 for _ in c.decode(video=0)) == 75
        assert audio_packets(both[ext]) == audio_packets(alone[ext])  # bit for bit, both streams
    report = json.loads((tmp_path / "s.json").read_text())
    assert [o["frames_written"] for o in report["stages"]["outputs"]["outputs"]] == [75, 75, 75]
    assert report["output"] == [str(both[".mp4"]), str(both[".mkv"]), f"udp://127.0.0.1:{port}"]
    twice = run_cli("run", str(src), "-o", str(tmp_path / "x.mp4"), "-o", str(tmp_path / "x.mp4"), "-q")
    assert twice.returncode != 0 and "given twice" in twice.stderr
