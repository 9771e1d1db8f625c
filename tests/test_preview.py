"""The live browser preview (``facestream run --preview``): real HTTP on 127.0.0.1 against the CLI in a
subprocess, and a real headless Chromium (Debian's) driven over the DevTools protocol."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import torch

from facestream.pipeline.frame import Frame
from facestream.stages.preview import Preview
from tests.conftest import ROOT, free_port, run_cli
from tests.media import probe

pytest.importorskip("starlette", reason="the preview extra is not installed (pip install -e '.[test]')")

SIZE = (640, 360)
FPS = 25
LEFT = (230, 120, 30)  # orange
RIGHT = (30, 140, 200)  # blue
BACKGROUND = (17, 17, 17)  # the page's


def coloured_clip(path: Path, seconds: float, colours: tuple[tuple[int, int, int], ...] = (LEFT, RIGHT)) -> Path:
    """Left half orange, right half blue (or ``colours``), a grey bar moving across: easy to find
    again in a screenshot. A fixed fine texture on top makes each JPEG large (tens of kB) as a
    camera's would be."""
    w, h = SIZE
    left_colour, right_colour = colours
    texture = np.random.default_rng(0).integers(-12, 13, (h, w, 1))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(int(seconds * FPS)):
            rgb = np.empty((h, w, 3), np.uint8)
            rgb[:, : w // 2] = left_colour
            rgb[:, w // 2 :] = right_colour
            x = (i * 8) % w
            rgb[:, x : x + 6] = 128
            rgb = (rgb + texture).clip(0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="preview-") as d:
        yield Path(d)


class PreviewRun:
    """``facestream run CLIP -o OUT --preview 127.0.0.1:PORT`` (or several clips, one output each),
    paced in real time, in a subprocess."""

    def __init__(self, clip: Path | list[Path], out: Path | list[Path]) -> None:
        clips = clip if isinstance(clip, list) else [clip]
        outs = out if isinstance(out, list) else [out]
        self.port = free_port()
        self.out = outs[0]
        self.stats = outs[0].with_suffix(".json")
        self.base = f"http://127.0.0.1:{self.port}/"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "facestream", "run", *map(str, clips), *(a for o in outs for a in ("-o", str(o))),
             "-y", "-q", "--stats",
             str(self.stats), "--set", "input.realtime=true", "--preview", f"127.0.0.1:{self.port}"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.base + "figures.json", timeout=2) as reply:
                    if json.load(reply)["run"]["frames_out"] > 0:
                        return
            except (OSError, KeyError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"the preview never served frames: {self.proc.communicate()}")
            time.sleep(0.2)

    def figures(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base + "figures.json", timeout=5) as reply:
            return json.load(reply)

    def wait(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def preview_run(clip_dir: Path) -> Iterator[Any]:
    runs: list[PreviewRun] = []

    def start(seconds: float, name: str) -> PreviewRun:
        run = PreviewRun(coloured_clip(clip_dir / f"{name}.mp4", seconds), clip_dir / f"{name}-out.mp4")
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill()


def read_part(stream: Any) -> tuple[dict[str, str], bytes]:
    """One part of a multipart/x-mixed-replace stream (the boundary line before it already read)."""
    headers: dict[str, str] = {}
    while True:
        line = stream.readline()
        assert line, "the stream ended"
        line = line.decode().strip()
        if not line:
            if headers:
                break
            continue
        if line == "--facestream":
            continue
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    body = stream.read(int(headers["content-length"]))
    assert stream.read(2) == b"\r\n"
    assert stream.readline().strip() == b"--facestream"
    return headers, body


def assert_halves(image_rgb: np.ndarray, tolerance: int, where: str,
                  colours: tuple[tuple[int, int, int], ...] = (LEFT, RIGHT)) -> None:
    """The left and right halves show the clip's two colours (the moving bar aside: medians)."""
    h, w = image_rgb.shape[:2]
    left = np.median(image_rgb[h // 10 : -h // 10, w // 10 : 2 * w // 5].reshape(-1, 3), axis=0)
    right = np.median(image_rgb[h // 10 : -h // 10, 3 * w // 5 : -w // 10].reshape(-1, 3), axis=0)
    assert np.abs(left - colours[0]).max() <= tolerance, f"{where}: left half {left}, expected {colours[0]}"
    assert np.abs(right - colours[1]).max() <= tolerance, f"{where}: right half {right}, expected {colours[1]}"


def test_mjpeg_serves_the_newest_frames_as_jpeg_and_a_slow_reader_skips(preview_run):
    run = preview_run(8.0, "mjpeg")
    # A reader that keeps up: consecutive decodable JPEGs of the processed video, in order.
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
    conn.request("GET", "/stream.mjpg")
    reply = conn.getresponse()
    assert reply.status == 200
    assert reply.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=facestream"
    indices = []
    for _ in range(6):
        headers, body = read_part(reply)
        assert headers["content-type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (SIZE[1], SIZE[0], 3)
        assert_halves(image[..., ::-1], 12, "MJPEG part")
        indices.append(int(headers["x-frame-index"]))
    assert indices == sorted(set(indices))
    conn.close()

    # A slow reader (a small receive window, one part a second) gets the newest frame each time: it
    # skips frames rather than receive a queue of old ones.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", run.port))
    sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    stream = sock.makefile("rb")
    while stream.readline().strip():  # status line and headers
        pass
    body_stream = _Dechunk(stream)
    slow = []
    for _ in range(4):
        headers, body = read_part(body_stream)
        slow.append((int(headers["x-frame-index"]), time.time() - float(headers["x-captured-at"])))
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is not None
        time.sleep(1.0)
    sock.close()
    # One part is on its way while the reader sleeps (the newest when it last read); past that, each
    # part is the newest when the reader made room for it: frames skipped, the delay bounded by one
    # read interval rather than growing.
    gaps = [b[0] - a[0] for a, b in zip(slow, slow[1:])]
    assert min(gaps[1:]) >= 10, f"a slow reader got a backlog of frames: {slow}"
    assert max(age for _, age in slow) < 1.6, f"a slow reader got old frames: {slow}"

    figures = run.figures()
    assert figures["preview"]["skipped"] >= 30
    code, err = run.wait()
    assert code == 0, err
    # The slow reader never slowed the run: every frame reached the output, none dropped.
    assert probe(run.out).frames == 8 * FPS
    stats = json.loads(run.stats.read_text())
    assert stats["frames_dropped"] == 0 and stats["frames_out"] == 8 * FPS
    # The server went with the run.
    with pytest.raises(OSError):
        urllib.request.urlopen(run.base + "figures.json", timeout=2)


GREEN = (40, 190, 60)
MAGENTA = (200, 40, 170)


def test_two_feeds_each_previewed_with_their_figures(clip_dir):
    """``facestream run A B -o A' -o B' --preview``: ``?feed=N`` shows feed N, the figures list both."""
    first = coloured_clip(clip_dir / "feed0.mp4", 6.0)
    second = coloured_clip(clip_dir / "feed1.mp4", 6.0, colours=(GREEN, MAGENTA))
    outs = [clip_dir / "feed0-out.mp4", clip_dir / "feed1-out.mp4"]
    run = PreviewRun([first, second], outs)
    try:
        for feed, colours in ((1, (GREEN, MAGENTA)), (0, (LEFT, RIGHT))):
            conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
            conn.request("GET", f"/stream.mjpg?feed={feed}")
            reply = conn.getresponse()
            assert reply.status == 200
            indices = []
            for _ in range(3):
                headers, body = read_part(reply)
                assert headers["x-feed"] == str(feed)
                image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
                assert image is not None and image.shape == (SIZE[1], SIZE[0], 3)
                assert_halves(image[..., ::-1], 12, f"MJPEG of feed {feed}", colours)
                indices.append(int(headers["x-frame-index"]))
            # Each feed's own frame positions (not the muxed run's), in order.
            assert indices == sorted(set(indices)) and indices[-1] < 6 * FPS
            conn.close()
        with urllib.request.urlopen(run.base + "frame.jpg?feed=1", timeout=10) as reply:
            image = cv2.imdecode(np.frombuffer(reply.read(), np.uint8), cv2.IMREAD_COLOR)
        assert_halves(image[..., ::-1], 12, "frame.jpg of feed 1", (GREEN, MAGENTA))
        # The figures: the run's per-feed numbers and what the preview got of each feed.
        figures = run.figures()
        assert figures["feeds"] == 2
        assert [s["stream"] for s in figures["run"]["streams"]] == [0, 1]
        assert all(s["frames_out"] > 0 for s in figures["run"]["streams"])
        assert [f["feed"] for f in figures["preview"]["feeds"]] == [0, 1]
        assert all(f["frames"] > 0 for f in figures["preview"]["feeds"])
        with urllib.request.urlopen(run.base + "?feed=1", timeout=10) as reply:
            page = reply.read().decode()
        assert 'id="feeds"' in page and 'id="streams"' in page and '"stream.mjpg" + feedQuery' in page
        # A feed the run does not have, or not a number: a 4xx with a reason.
        for path, code, reason in (("stream.mjpg?feed=2", 404, "no feed 2: this run has 2 feeds"),
                                   ("frame.jpg?feed=x", 400, "feed must be a number from 0 to 1"),
                                   ("?feed=-1", 400, "feed must be a number")):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(run.base + path, timeout=10)
            assert refused.value.code == code and reason in refused.value.read().decode(), path
        code, err = run.wait()
        assert code == 0, err
        for clip, out in zip((first, second), outs):
            assert probe(out).frames == probe(clip).frames == 6 * FPS
    finally:
        run.kill()


class _Dechunk:
    """Reads the body of a chunked HTTP response through ``readline``/``read`` (for the raw socket)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = b""

    def _fill(self) -> None:
        size = int(self.stream.readline().strip() or b"0", 16)
        self.buffer += self.stream.read(size)
        self.stream.readline()

    def readline(self) -> bytes:
        while b"\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


class DevTools:
    """Debian's Chromium, headless, driven over the DevTools protocol with a small websocket client."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [shutil.which("chromium") or "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--mute-audio", "--window-size=1200,900", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--autoplay-policy=no-user-gesture-required", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.proc.poll() is None and time.monotonic() < deadline, "Chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            page = next(t for t in json.load(reply) if t["type"] == "page")
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None))
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str, *, quiet: bool = False) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            assert quiet, result["exceptionDetails"]
            return None
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20) -> Any:
        """The expression's value once it is truthy (errors count as not yet: the page is loading)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression, quiet=True)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {expression}: {self.evaluate('document.body.innerText')}"
            time.sleep(0.2)

    def screenshot(self, selector: str) -> np.ndarray:
        """The element's region of the page as RGB."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect(); "
                            "return {x: r.x, y: r.y, width: r.width, height: r.height}; })()")
        shot = self.call("Page.captureScreenshot", format="png", clip={**box, "scale": 1})
        png = np.frombuffer(base64.b64decode(shot["data"]), np.uint8)
        return cv2.imdecode(png, cv2.IMREAD_COLOR)[..., ::-1]

    def close(self) -> None:
        self._stack.close()
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (tests/install-system-packages.sh installs it)")
    browser = DevTools(tmp_path / "profile")
    yield browser
    browser.close()


def test_browser_shows_the_video_over_webrtc_and_mjpeg_with_live_figures(preview_run, chromium, tmp_path):
    run = preview_run(20.0, "browser")  # long enough for a slow machine; interrupted once checked
    chromium.call("Page.enable")
    chromium.call("Page.navigate", url=run.base)
    # WebRTC (aiortc to Chromium over 127.0.0.1, host candidates only).
    chromium.wait_for("document.getElementById('transport').textContent === 'WebRTC' && "
                      "document.getElementById('video').videoWidth > 0")
    assert chromium.evaluate("[video.videoWidth, video.videoHeight]") == list(SIZE)
    first = int(chromium.wait_for("document.getElementById('frames-out').textContent.replace('-', '')"))
    time.sleep(1.5)
    second = int(chromium.evaluate("document.getElementById('frames-out').textContent"))
    assert second > first, "the figures on the page do not change"
    stages = chromium.evaluate("[...document.querySelectorAll('#stages tbody tr td:first-child')].map(td => td.textContent)")
    assert stages == ["decoder", "passthrough", "outputs"]
    assert chromium.evaluate("document.getElementById('dropped').textContent") == "0"
    assert chromium.wait_for("/ms$/.test(document.getElementById('latency-sent').textContent) && "
                             "document.getElementById('latency-sent').textContent")
    image = chromium.screenshot("#video")
    cv2.imwrite(str(tmp_path / "webrtc.png"), image[..., ::-1])
    assert image.shape[:2] == (SIZE[1], SIZE[0])
    assert_halves(image, 25, f"WebRTC video in Chromium ({tmp_path / 'webrtc.png'})")
    assert chromium.evaluate("document.getElementById('viewers').textContent") == "1"

    # MJPEG, the fallback, in an <img>.
    chromium.call("Page.navigate", url=run.base + "?mode=mjpeg")
    chromium.wait_for("document.getElementById('transport').textContent === 'MJPEG' && "
                      "document.getElementById('mjpeg').naturalWidth > 0")
    assert chromium.evaluate("[mjpeg.naturalWidth, mjpeg.naturalHeight]") == list(SIZE)
    image = chromium.screenshot("#mjpeg")
    cv2.imwrite(str(tmp_path / "mjpeg.png"), image[..., ::-1])
    assert_halves(image, 25, f"MJPEG in Chromium ({tmp_path / 'mjpeg.png'})")
    before = int(chromium.wait_for("document.getElementById('frames-out').textContent.replace('-', '')"))
    time.sleep(1.5)
    assert int(chromium.evaluate("document.getElementById('frames-out').textContent")) > before
    page = chromium.call("Page.captureScreenshot", format="png")
    (tmp_path / "page.png").write_bytes(base64.b64decode(page["data"]))

    # The run ends (Ctrl-C): the page gets its last figures, then the server goes with the run.
    run.proc.send_signal(signal.SIGINT)
    code, err = run.wait()
    assert code == 130, err
    assert chromium.wait_for("document.getElementById('status').textContent", 5) == "interrupted (run ended)"


def test_port_in_use_is_one_line_before_any_model_loads(clip_dir):
    clip = coloured_clip(clip_dir / "short.mp4", 0.4)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("run", str(clip), "-o", str(clip_dir / "never.mp4"), "--preset", "anonymize",
                         "--preview", f"127.0.0.1:{port}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"facestream: error: config error: --preview: 127.0.0.1:{port} is already in use; "
        "choose another with --preview HOST:PORT"]
    assert not (clip_dir / "never.mp4").exists()
    bad = run_cli("run", str(clip), "-o", str(clip_dir / "never.mp4"), "--preview", "localhost:http")
    assert bad.returncode != 0 and "--preview takes HOST:PORT" in bad.stderr and len(bad.stderr.splitlines()) == 1


def _frames(n: int, start: int = 0) -> list[Frame]:
    image = torch.zeros(36, 64, 3, dtype=torch.uint8)
    return [Frame(index=i, pts=i, time_base=Fraction(1, 25), captured_at=time.time(), image=image + i)
            for i in range(start, start + n)]


def test_preview_sink_keeps_the_newest_frame_and_encodes_only_for_viewers():
    preview = Preview()
    for k in range(50):
        preview.write(_frames(2, 2 * k))
    # Writing never encodes: the run pays for nothing while nobody watches.
    assert preview.figures()["jpeg_encoded"] == 0
    newest = preview.latest()
    assert newest.index == 99 and newest.seq == 100
    data = preview.jpeg(newest)
    assert preview.jpeg(newest) is data and preview.figures()["jpeg_encoded"] == 1  # one encode per frame
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert abs(float(decoded.mean()) - 99) < 3


def test_bad_requests_get_a_4xx_with_a_reason():
    from facestream.preview import PreviewServer, bind, create_app

    preview = Preview()
    server = PreviewServer(create_app(preview, lambda: {"status": "running"}), bind("127.0.0.1", 0), preview)
    server.start()
    try:
        def request(method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
            req = urllib.request.Request(server.url + path, data=body, method=method,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as reply:
                    return reply.status, reply.read().decode(errors="replace")
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        assert request("GET", "frame.jpg") == (503, "no frame yet")
        assert request("POST", "offer", b"not json")[0] == 400
        assert request("POST", "offer", json.dumps({"sdp": "v=0", "type": "answer"}).encode())[0] == 400
        code, text = request("POST", "offer", json.dumps({"sdp": "garbage", "type": "offer"}).encode())
        assert code == 400 and text.startswith("bad offer:")
        assert request("GET", "offer")[0] == 405
        assert request("GET", "nowhere")[0] == 404
        preview.write(_frames(1))
        code, _ = request("GET", "frame.jpg")
        assert code == 200
        figures = json.loads(request("GET", "figures.json")[1])
        assert figures["run"] == {"status": "running"} and figures["preview"]["frames"] == 1
    finally:
        server.stop()


def test_app_mounts_under_a_prefix_as_a_service_would():
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from facestream.preview import PreviewServer, bind, create_app

    preview = Preview()
    preview.write(_frames(3))
    service = Starlette(routes=[Mount("/jobs/7/preview", app=create_app(preview, lambda: {"status": "running"},
                                                                        title="job 7"))])
    server = PreviewServer(service, bind("127.0.0.1", 0), preview)
    server.start()
    try:
        # The page's links are relative: they resolve under the mount (the bare prefix redirects to it).
        with urllib.request.urlopen(server.url + "jobs/7/preview", timeout=10) as reply:
            assert reply.url.endswith("/jobs/7/preview/")
            page = reply.read().decode()
        assert "<title>job 7</title>" in page and 'img.src = "stream.mjpg"' in page and 'EventSource("events")' in page
        with urllib.request.urlopen(server.url + "jobs/7/preview/frame.jpg", timeout=10) as reply:
            assert reply.headers["X-Frame-Index"] == "2"
            assert cv2.imdecode(np.frombuffer(reply.read(), np.uint8), cv2.IMREAD_COLOR).shape == (36, 64, 3)
        with urllib.request.urlopen(server.url + "jobs/7/preview/events", timeout=10) as reply:
            first = reply.readline().decode()
        assert first.startswith("data: ") and json.loads(first[6:])["preview"]["frames"] == 3
    finally:
        server.stop()
