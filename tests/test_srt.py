"""SRT out and in through Debian's srt-live-transmit (PyAV's FFmpeg has no srt protocol), against a
real SRT listener, read back with PyAV."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from facestream.facelib.media.srt import SrtBridge
from tests.conftest import ROOT, free_port, run_cli
from tests.test_streaming import Reader

pytestmark = pytest.mark.skipif(shutil.which("srt-live-transmit") is None,
                                reason="srt-live-transmit is not installed (tests/install-system-packages.sh installs it)")

SECRET = "sesame-0123456789"


class PatientReader(Reader):
    """A reader that waits out a gap in the stream (SRT notices a lost peer after 5 s)."""

    def run(self) -> None:
        try:
            with av.open(self.url, format=self.format, timeout=(20.0, 15.0)) as c:
                for f in c.decode(video=0):
                    self.frames.append((f.pts, time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - the stream ending is how a read finishes
            self.error = f"{type(exc).__name__}: {exc}"


class SrtListener:
    """``srt-live-transmit`` as an SRT server: a listener whose stream goes on (or comes from) a UDP port."""

    def __init__(self, *, receive: bool, passphrase: str | None = SECRET) -> None:
        self.port, self.udp = free_port(), free_port()
        self.receive = receive
        self.query = f"mode=listener&passphrase={passphrase}" if passphrase else "mode=listener"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        srt, udp = f"srt://:{self.port}?{self.query}", f"udp://127.0.0.1:{self.udp}"
        self.proc = subprocess.Popen(["srt-live-transmit", *((srt, udp) if self.receive else (udp, srt))],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def url(self, passphrase: str | None = SECRET) -> str:
        return f"srt://127.0.0.1:{self.port}" + (f"?passphrase={passphrase}" if passphrase else "")


@pytest.fixture
def listener():
    servers: list[SrtListener] = []

    def make(**kw) -> SrtListener:
        server = SrtListener(**kw)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


@pytest.fixture(scope="module")
def long_clip(clip):
    return clip("srt10.mp4", seconds=10.0, audio="aac", size=(320, 240))


def test_srt_output_arrives_whole_in_order_on_time_without_the_passphrase(listener, long_clip, tmp_path):
    server = listener(receive=True)
    reader = Reader(f"udp://127.0.0.1:{server.udp}?timeout=4000000", format="mpegts")
    reader.start()
    time.sleep(0.5)
    stats = tmp_path / "s.json"
    proc = run_cli("run", str(long_clip), "-o", server.url(), "--set", "input.realtime=true", "-q",
                   "--stats", str(stats))
    assert proc.returncode == 0, proc.stderr
    assert f"streamed to srt://127.0.0.1:{server.port}?passphrase=***" in proc.stderr
    reader.join(20)
    pts = [p for p, _ in reader.frames]
    assert len(pts) >= 240, reader.error  # of 250, through the encrypted link
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert reader.lateness() < 0.5, reader.lateness()  # no backlog builds up on the way
    report = stats.read_text()
    assert SECRET not in report and SECRET not in proc.stderr
    s = json.loads(report)["stages"]["streamer"]
    assert s["frames_written"] == 250 and s["srt"]["restarts"] == 0


def test_srt_output_resumes_after_the_listener_restarts(listener, long_clip, tmp_path):
    server = listener(receive=True)
    reader = PatientReader(f"udp://127.0.0.1:{server.udp}?timeout=15000000", format="mpegts")
    reader.start()
    time.sleep(0.5)
    stats = tmp_path / "s.json"
    push = subprocess.Popen(
        [sys.executable, "-m", "facestream", "run", str(long_clip), "-o", server.url(), "--set", "input.realtime=true",
         "-q", "--stats", str(stats)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    noticed = threading.Event()

    def watch() -> None:
        assert push.stderr is not None
        for line in push.stderr:
            err.append(line)
            if "went away" in line:
                noticed.set()

    threading.Thread(target=watch, daemon=True).start()
    deadline = time.monotonic() + 30
    while len(reader.frames) < 25 and time.monotonic() < deadline:  # a second of it has come
        time.sleep(0.05)
    server.kill()
    before = len(reader.frames)
    # SRT notices a peer that vanished (kill -9 says nothing) after about 5 s; the server stays
    # away a second longer, and frames meanwhile are dropped and counted.
    assert noticed.wait(15), "".join(err)
    time.sleep(1.0)
    server.start()  # same ports: srt-live-transmit calls again and the stream reopens
    push.wait(60)
    text = "".join(err)
    assert push.returncode == 0, text
    reader.join(20)
    pts = [p for p, _ in reader.frames]
    assert before >= 25 and len(pts) - before >= 25, (before, len(pts), reader.error, text)
    assert all(b > a for a, b in zip(pts, pts[1:]))  # one timeline, in order, across the gap
    s = json.loads(stats.read_text())["stages"]["streamer"]
    assert s["reconnects"] >= 1 and s["frames_dropped"] >= 10, s
    assert s["frames_written"] + s["frames_dropped"] == 250
    assert "is back" in text and SECRET not in text


def test_reads_an_srt_input(listener, long_clip, tmp_path):
    server = listener(receive=False)  # what arrives on its UDP port goes out to SRT callers
    stop = threading.Event()

    def send() -> None:  # the clip's packets, as MPEG-TS, at their own pace
        with av.open(str(long_clip)) as i, \
                av.open(f"udp://127.0.0.1:{server.udp}?pkt_size=1316", "w", format="mpegts") as o:
            vs = o.add_stream_from_template(i.streams.video[0])
            t0 = time.monotonic()
            for pkt in i.demux(i.streams.video[0]):
                if pkt.dts is None or stop.is_set():
                    continue
                time.sleep(max(0.0, t0 + float(pkt.dts * pkt.time_base) - time.monotonic()))
                pkt.stream = vs
                o.mux(pkt)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    out, stats = tmp_path / "in.mp4", tmp_path / "s.json"
    proc = run_cli("run", server.url(), "-o", str(out), "--set", "input.end=3", "-q", "--stats", str(stats))
    stop.set()
    assert proc.returncode == 0, proc.stderr
    with av.open(str(out)) as c:
        frames = [f.width for f in c.decode(video=0)]
    assert len(frames) >= 70 and set(frames) == {320}  # 3 s of the 25 fps clip, at its size
    assert SECRET not in stats.read_text() and SECRET not in proc.stderr
    sender.join(15)


def test_srt_errors_are_one_line_without_the_passphrase(long_clip, tmp_path):
    port = free_port()  # nobody listens
    proc = run_cli("run", str(long_clip), "-o", f"srt://127.0.0.1:{port}?passphrase={SECRET}", "-q")
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert f"cannot stream to srt://127.0.0.1:{port}?passphrase=***" in lines[0] and SECRET not in proc.stderr
    # Without srt-live-transmit on the PATH: what to install.
    env = {"PATH": str(Path(sys.executable).parent)}
    proc = run_cli("run", str(long_clip), "-o", f"srt://127.0.0.1:{port}", "-q", env=env)
    assert proc.returncode != 0 and "apt install srt-tools" in proc.stderr, proc.stderr
    proc = run_cli("run", f"srt://127.0.0.1:{port}?passphrase={SECRET}", "-o", str(tmp_path / "x.mp4"),
                   "--set", "input.open_timeout_s=2", "-q")
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and f"srt://127.0.0.1:{port}?passphrase=***" in lines[0], \
        proc.stderr
    assert SECRET not in proc.stderr


def test_the_bridge_restarts_its_child_and_kills_it_at_the_end(listener):
    server = listener(receive=True, passphrase=None)
    bridge = SrtBridge(server.url(None), direction="send", backoff_s=(0.2, 1.0))
    bridge.start()
    try:
        assert bridge.wait_connected(5)
        first = bridge._proc
        assert first is not None
        os.kill(first.pid, 9)  # the child dies: the supervisor starts another, which connects again
        deadline = time.monotonic() + 10
        while not (bridge.restarts == 1 and bridge.connected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bridge.restarts == 1 and bridge.connected and bridge._proc is not first
    finally:
        bridge.close()
    assert bridge._proc is not None and bridge._proc.poll() is not None  # not left behind
