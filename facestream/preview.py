"""The live browser preview of a run: the processed video (WebRTC, or MJPEG over plain HTTP) and the
run's figures as they change, from a :class:`~facestream.stages.preview.Preview` sink.

``facestream run IN -o OUT --preview [HOST:PORT]`` serves it for the length of the run; a service
mounts :func:`create_app` for its own live streams.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from fractions import Fraction
from importlib.resources import files
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from facestream.pipeline.errors import ConfigError
from facestream.stages.preview import Preview, PreviewFrame

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:8765"
BOUNDARY = "facestream"
FIGURES_INTERVAL_S = 0.5
_POLL_S = 0.01
_NOTSENT_LOWAT = 4096  # bytes a connection may hold in the kernel not yet sent


def webrtc_available() -> bool:
    """Whether aiortc is installed (``pip install 'facestream[preview]'``)."""
    try:
        import aiortc  # noqa: F401
    except ImportError:
        return False
    return True


def create_app(
    preview: Preview,
    figures: Callable[[], dict[str, Any]],
    *,
    title: str = "facestream preview",
    webrtc: bool | None = None,
) -> Starlette:
    """The preview as an ASGI application (Starlette), to serve alone or mount in a service.

    Args:
        preview: The run's :class:`~facestream.stages.preview.Preview` sink (give the same object to
            :func:`facestream.app.prepare_job` as ``preview=``).
        figures: The run's figures so far, e.g. ``job.pipeline.snapshot`` (called about twice a
            second while a page is open; it must not block).
        title: The page's title.
        webrtc: Offer WebRTC (needs aiortc); default: where aiortc is installed.

    Routes (relative to where the app is mounted; the page uses relative URLs, so it works under any
    prefix):

    - ``GET /``: the page: the video (WebRTC in a ``<video>``, else MJPEG in an ``<img>``; ``?mode=mjpeg``
      or ``?mode=webrtc`` forces one), the per-stage figures, drops and latency, updated live; with
      several feeds, a link to each and their own figures.
    - Every video route takes ``?feed=N``: the feed to show (default 0, the first input); a feed the
      run does not have is a ``404``, one that is not a number a ``400``.
    - ``GET /stream.mjpg``: ``multipart/x-mixed-replace`` JPEG parts, always the newest frame: a slow
      reader skips frames, each part being the newest when the previous one left (served by
      :class:`PreviewServer`, whose connections keep no queue of their own); each part carries ``X-Feed``,
      ``X-Frame-Index`` and ``X-Captured-At``. The stream ends when the run does.
    - ``GET /frame.jpg``: the newest frame (``503`` before the first).
    - ``GET /figures.json``: ``{"run": figures(), "preview": preview.figures(), "feeds": N, ...}``
      (a run of several feeds has its per-feed figures in ``run["streams"]``).
    - ``GET /events``: the same as Server-Sent Events every 0.5 s; a last ``end`` event when the run ends.
    - ``POST /offer``: WebRTC signalling: ``{"sdp", "type": "offer"}`` in, the answer out (host
      candidates only, no STUN/TURN; ``404`` where WebRTC is off).

    Mounting it in a FastAPI/Starlette service, one preview per job::

        from starlette.routing import Mount
        preview = Preview()
        job = prepare_job(settings, source=src, output=out, preview=preview)
        service.router.routes.append(Mount(f"/jobs/{job_id}/preview", app=create_app(preview, job.pipeline.snapshot)))
        await job.arun()

    Peer connections close by themselves when the run ends (``preview.finish()``, which the sink's
    ``close`` calls); ``app.state.close_peers()`` closes the ones still open at once.
    """
    if webrtc is None:
        webrtc = webrtc_available()
    peers: set[Any] = set()
    page = _page(title, webrtc)

    def payload() -> dict[str, Any]:
        try:
            run = figures()
        except Exception as exc:  # noqa: BLE001 - a figure that cannot be read now is not fatal
            run = {"status": "unavailable", "error": f"{type(exc).__name__}: {exc}"}
        return {"run": run, "preview": preview.figures(), "feeds": preview.feeds, "finished": preview.finished,
                "webrtc": webrtc, "time": time.time()}

    def chosen_feed(request: Request) -> int:
        text = request.query_params.get("feed", "0")
        if not re.fullmatch(r"\d{1,6}", text.strip()):
            raise _BadFeed(400, f"feed must be a number from 0 to {preview.feeds - 1}, got {text[:40]!r}")
        feed = int(text)
        if feed >= preview.feeds:
            raise _BadFeed(404, f"no feed {feed}: this run has {preview.feeds} feed"
                                f"{'s' if preview.feeds > 1 else ''} (0 to {preview.feeds - 1})")
        return feed

    async def index(request: Request) -> Response:
        chosen_feed(request)
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def figures_json(request: Request) -> Response:
        return _json(payload())

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            while not preview.finished:
                yield f"data: {_dumps(payload())}\n\n"
                await asyncio.sleep(FIGURES_INTERVAL_S)
            # The run's own status settles a moment after its sink closes.
            for _ in range(20):
                last = payload()
                if last["run"].get("status") not in ("running", "starting"):
                    break
                await asyncio.sleep(0.1)
            yield f"data: {_dumps(last)}\n\n"
            yield "event: end\ndata: {}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def frame_jpg(request: Request) -> Response:
        frame = preview.latest(chosen_feed(request))
        if frame is None:
            return PlainTextResponse("no frame yet", status_code=503, headers={"Retry-After": "1"})
        data = await asyncio.to_thread(preview.jpeg, frame)
        preview.sent(frame, skipped=0)
        return Response(data, media_type="image/jpeg", headers={**_frame_headers(frame), "Cache-Control": "no-store"})

    async def mjpeg(request: Request) -> Response:
        feed = chosen_feed(request)
        return StreamingResponse(_mjpeg_parts(preview, feed), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def offer(request: Request) -> Response:
        if not webrtc:
            return PlainTextResponse("WebRTC is not available here (pip install 'facestream[preview]'); "
                                     "use stream.mjpg", status_code=404)
        feed = chosen_feed(request)
        try:
            body = await request.json()
        except ValueError:
            return PlainTextResponse("expected a JSON body {\"sdp\": ..., \"type\": \"offer\"}", status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or body.get("type") != "offer":
            return PlainTextResponse("expected a JSON body {\"sdp\": ..., \"type\": \"offer\"}", status_code=400)
        if preview.finished:
            return PlainTextResponse("the run has ended", status_code=410)
        try:
            answer = await _answer(preview, body["sdp"], peers, feed)
        except _BadOffer as exc:
            return PlainTextResponse(f"bad offer: {exc}", status_code=400)
        return _json(answer)

    async def close_peers() -> None:
        await asyncio.gather(*(pc.close() for pc in list(peers)), return_exceptions=True)
        peers.clear()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await close_peers()

    async def bad_feed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _BadFeed)
        return PlainTextResponse(exc.detail, status_code=exc.status)

    app = Starlette(
        exception_handlers={_BadFeed: bad_feed},
        routes=[
            Route("/", index),
            Route("/figures.json", figures_json),
            Route("/events", events),
            Route("/frame.jpg", frame_jpg),
            Route("/stream.mjpg", mjpeg),
            Route("/offer", offer, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.close_peers = close_peers
    app.state.peers = peers
    return app


# ---------------------------------------------------------------------- frames for viewers


class _BadFeed(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def next_frame(preview: Preview, after_seq: int, feed: int = 0) -> PreviewFrame | None:
    """Wait for a frame of ``feed`` newer than ``after_seq``: the newest one; ``None`` once the run
    has ended."""
    while True:
        frame = preview.latest(feed)
        if frame is not None and frame.seq > after_seq:
            return frame
        if preview.finished:
            return None
        await asyncio.sleep(_POLL_S)


def _frame_headers(frame: PreviewFrame) -> dict[str, str]:
    return {"X-Feed": str(frame.feed), "X-Frame-Index": str(frame.index), "X-Frame-Seq": str(frame.seq),
            "X-Captured-At": f"{frame.captured_at:.6f}"}


async def _mjpeg_parts(preview: Preview, feed: int = 0) -> AsyncIterator[bytes]:
    """One viewer's MJPEG stream. Each frame is chosen only once the previous part has left (the
    empty chunk waits for the connection to drain), so a slow reader gets the newest frame, not a
    queue of old ones; at most ``max_fps`` parts a second."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / preview.max_fps
    last = 0
    preview.add_viewer()
    try:
        yield f"--{BOUNDARY}\r\n".encode()
        while True:
            yield b""  # returns once what was sent before has been handed to the connection
            frame = await next_frame(preview, last, feed)
            if frame is None:
                return
            started = loop.time()
            data = await asyncio.to_thread(preview.jpeg, frame)
            head = "".join(f"{k}: {v}\r\n" for k, v in _frame_headers(frame).items())
            yield (f"Content-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n{head}\r\n".encode() + data
                   + f"\r\n--{BOUNDARY}\r\n".encode())
            preview.sent(frame, skipped=frame.seq - last - 1 if last else 0)
            last = frame.seq
            wait = started + interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
    finally:
        preview.remove_viewer()


# ---------------------------------------------------------------------- WebRTC


class _BadOffer(Exception):
    pass


async def _answer(preview: Preview, sdp: str, peers: set[Any], feed: int = 0) -> dict[str, str]:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    # No ICE servers: host candidates only (aiortc would otherwise ask Google's STUN server).
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peers.add(pc)
    track = _newest_frame_track(preview, feed)

    async def close() -> None:
        peers.discard(pc)
        await pc.close()

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await close()

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        pc.addTrack(track)
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # noqa: BLE001 - whatever aiortc finds wrong with the offer
        await close()
        raise _BadOffer(str(exc) or type(exc).__name__) from None

    async def close_when_finished() -> None:
        while not preview.finished and pc in peers:
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # the last frames go out
        await close()

    task = asyncio.ensure_future(close_when_finished())
    track.task = task  # keep a reference
    return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}


def _newest_frame_track(preview: Preview, feed: int = 0) -> Any:
    import av
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError

    class NewestFrameTrack(MediaStreamTrack):
        """Video for one peer: the newest frame each time the encoder asks, at most ``max_fps``."""

        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.last = 0
            self.t0: float | None = None
            self.next_at = 0.0
            self.task: asyncio.Future[None] | None = None
            self.viewing = False

        async def recv(self) -> av.VideoFrame:
            if not self.viewing:
                self.viewing = True
                preview.add_viewer()
            loop = asyncio.get_running_loop()
            wait = self.next_at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            frame = await next_frame(preview, self.last, feed)
            if frame is None or self.readyState != "live":
                self.stop()
                raise MediaStreamError
            self.next_at = loop.time() + 1.0 / preview.max_fps
            array = await asyncio.to_thread(preview.rgb, frame)
            out = av.VideoFrame.from_ndarray(array, format="rgb24")
            now = time.monotonic()
            if self.t0 is None:
                self.t0 = now
            out.pts = int((now - self.t0) * 90000)
            out.time_base = Fraction(1, 90000)
            preview.sent(frame, skipped=frame.seq - self.last - 1 if self.last else 0)
            self.last = frame.seq
            return out

        def stop(self) -> None:
            if self.viewing:
                self.viewing = False
                preview.remove_viewer()
            super().stop()

    return NewestFrameTrack()


# ---------------------------------------------------------------------- serving it for a run


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1).

    Example:
        >>> parse_address("0.0.0.0:9000"), parse_address("9000"), parse_address("[::1]:80")
        (('0.0.0.0', 9000), ('127.0.0.1', 9000), ('::1', 80))
    """
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--preview takes HOST:PORT (a port from 1 to 65535), got {text!r}")
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for the preview, or a one-line error (before any model loads)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"--preview: {where} is already in use; choose another with --preview HOST:PORT") from None
        raise ConfigError(f"--preview: cannot listen on {where}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class PreviewServer:
    """Serves :func:`create_app` on ``sock`` with uvicorn, in a thread with its own event loop (the
    run's loop keeps supervising the pipeline undisturbed). ``start()`` returns once it accepts
    connections; ``stop()`` ends the viewers' streams and the server."""

    def __init__(self, app: Starlette, sock: socket.socket, preview: Preview) -> None:
        self.app = app
        self.sock = sock
        self.preview = preview
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def start(self, timeout_s: float = 10.0) -> None:
        import uvicorn

        config = uvicorn.Config(self.app, http=_prompt_h11(), ws="none", lifespan="on", log_level="warning",
                                access_log=False, timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._main, name="preview-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"--preview: the server did not start: {self._error or 'timed out'}")
            time.sleep(0.02)

    def _main(self) -> None:
        from facestream.pipeline.runner import run_coroutine

        async def serve() -> None:
            try:
                await self._server.serve(sockets=[self.sock])
            finally:
                close_peers = getattr(self.app.state, "close_peers", None)  # a service's app around it has none
                if close_peers is not None:
                    await close_peers()

        try:
            run_coroutine(serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start(), or logged
            self._error = exc
            log.warning("preview server: %s", exc)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.preview.finish()
        if self._server is not None:
            time.sleep(FIGURES_INTERVAL_S)  # the pages get the run's last figures
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.sock.close()


def _prompt_h11() -> type:
    """uvicorn's h11 protocol that keeps no queue of its own: no write buffer in the process, and
    the kernel takes more only once what it holds is on its way (``TCP_NOTSENT_LOWAT``). A write
    waits until the previous one has left, so the MJPEG stream picks its next frame as late as it
    can and a slow viewer is never handed a queue of old frames. (How fast data goes out is left to
    TCP: only the data not yet sent is kept small.)"""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class PromptH11(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=0)
            sock = transport.get_extra_info("socket")
            lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
            if sock is not None and lowat is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, lowat, _NOTSENT_LOWAT)
                except OSError:  # pragma: no cover - a kernel without it: the default queueing
                    pass

    return PromptH11


# ---------------------------------------------------------------------- helpers


def _dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), default=str, allow_nan=False)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _json(obj: Any) -> Response:
    return Response(_dumps(obj), media_type="application/json", headers={"Cache-Control": "no-store"})


def _page(title: str, webrtc: bool) -> str:
    import html

    text = files("facestream").joinpath("preview.html").read_text()
    return text.replace("{{title}}", html.escape(title)).replace("{{webrtc}}", "true" if webrtc else "false")

