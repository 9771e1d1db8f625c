"""``facestream serve``: the HTTP API (FastAPI on Starlette, run by uvicorn).

- ``POST /v1/jobs`` runs a file job (queued beyond ``--concurrency``); ``GET /v1/jobs``,
  ``GET /v1/jobs/{id}`` (state, progress, the run report), ``DELETE /v1/jobs/{id}`` (stops it; the
  output is finalised as a playable file).
- ``POST /v1/streams`` starts a live stream; ``GET``, ``DELETE`` likewise; the WebSocket
  ``/v1/streams/{id}/figures`` (and ``/v1/jobs/{id}/figures``) sends the live figures.
- ``GET /metrics`` (Prometheus), ``GET /healthz``, ``GET /openapi.json`` (and ``/docs``).
"""

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount

from facestream import __version__
from facestream.pipeline.errors import ConfigError, PipelineError

from .jobs import FINISHED, Manager, Run, Store
from .metrics import ServiceMetrics, render
from .security import (Folders, GuardMiddleware, Refused, Secrets, check_input_url, check_token, error_body,
                       install_log_filter, is_loopback, url_scheme)

log = logging.getLogger("facestream.serve")

MiB = 2**20

# Settings that name files on the server: a request may not point them elsewhere (source images
# come as ``sources``; model files by bare name only).
PATH_KEYS = ("models.dir", "select.references", "swap.source", "swap.map", "input.options")
NAME_KEYS = ("models.name", "models.detector", "models.landmarker", "models.recognizer", "models.swapper")


@dataclass
class ServeOptions:
    """How the service runs (the options of ``facestream serve``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    input_dirs: list[str] = field(default_factory=lambda: ["."])
    output_dir: str = "."
    state_dir: str = ".facestream-serve"
    concurrency: int = 1
    max_streams: int = 4
    max_body_mb: float = 32.0
    max_image_mb: float = 8.0
    stop_timeout_s: float = 30.0

    def check(self) -> None:
        """Refuse settings the service must not start with.

        Raises:
            ConfigError: a non-loopback bind without a token, a missing folder, a bad number.
        """
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"binding {self.host} makes the service reachable from other machines: give it a token "
                              "(--token or FACESTREAM_TOKEN) that clients send as 'Authorization: Bearer <token>'")
        if self.concurrency < 1 or self.max_streams < 0:
            raise ConfigError("--concurrency must be at least 1 and --max-streams at least 0")
        if self.max_body_mb <= 0 or self.max_image_mb <= 0:
            raise ConfigError("--max-body-mb and --max-image-mb must be positive")


# ------------------------------------------------------------------------------------ the models


class SourceImage(BaseModel):
    """A source face: a file in an input folder (``path``), or the image itself (``data``,
    base64; ``name`` gives its extension)."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(None, max_length=4096)
    data: str | None = None
    name: str = Field("source.png", max_length=255)


class JobRequest(BaseModel):
    """A file job."""

    model_config = ConfigDict(extra="forbid")
    input: str = Field(..., max_length=4096, description="a file in an input folder, or an http(s)/rtsp/... URL")
    output: str = Field(..., max_length=4096, description="a file in the output folder (.mp4, .mkv, .mov, .webm)")
    preset: str = Field("offline", max_length=64)
    overrides: dict[str, Any] = Field(default_factory=dict, description="--set style: {'section.key': value}")
    sources: list[SourceImage] = Field(default_factory=list, max_length=16,
                                       description="source faces for a swap (sets mode=swap)")
    overwrite: bool = False


class StreamRequest(BaseModel):
    """A live stream: one input (``input``; every output gets it), or several (``inputs``: feeds on
    one pipeline, each written to the output at its position in ``outputs``)."""

    model_config = ConfigDict(extra="forbid")
    input: str | None = Field(None, max_length=4096, description="rtsp://, rtmp://, srt://, udp://, http(s):// URL, "
                                                                 "webcam:N, or a file in an input folder (paced live)")
    inputs: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        None, min_length=1, max_length=8, description="several inputs instead of 'input' (each as 'input' takes): "
                                                      "one pipeline batches their frames; one output each, in order")
    outputs: list[str] = Field(..., min_length=1, max_length=8,
                               description="rtmp://, rtsp://, udp://, tcp:// URLs and/or files in the output folder "
                                           "(with 'inputs': one per input, in the same order)")
    preset: str = Field("live", max_length=64)
    overrides: dict[str, Any] = Field(default_factory=dict)
    sources: list[SourceImage] = Field(default_factory=list, max_length=16)
    overwrite: bool = False


class RunView(BaseModel):
    """A job or stream as the API shows it (credentials in URLs hidden)."""

    id: str
    kind: Literal["job", "stream"]
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    input: str = Field(..., description="the input (the first, for a stream of several)")
    inputs: list[str] = Field(default_factory=list, description="every input, in order (credentials hidden)")
    outputs: list[str]
    preset: str
    overrides: dict[str, Any]
    progress: dict[str, Any]
    error: str | None
    report: dict[str, Any] | None = Field(None, description="the run report (the figures so far while it runs)")
    links: dict[str, str] = Field(default_factory=dict, description="self; figures (a WebSocket); preview (a "
                                                                    "running stream's browser page)")


class RunList(BaseModel):
    items: list[RunView]


class Error(BaseModel):
    error: str = Field(..., description="the rule or kind of error")
    detail: str


# ----------------------------------------------------------------------------------- the service


class Service:
    """What the routes share: the options, folders, record of runs and secrets."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.folders = Folders.make(options.input_dirs, options.output_dir)
        self.state_dir = Path(options.state_dir).expanduser().resolve()
        self.secrets = Secrets()
        self.metrics = ServiceMetrics()
        self.manager: Manager | None = None

    @property
    def runs(self) -> Manager:
        assert self.manager is not None, "the service has not started"
        return self.manager

    # -------------------------------------------------------------------------- requests

    def view(self, run: Run, *, report: bool = True) -> dict[str, Any]:
        data = run.record()
        data.pop("seq")
        data["report"] = self.secrets.scrub(run.figures()) if report else None
        base = f"/v1/{run.kind}s/{run.id}"
        data["links"] = {"self": base, "figures": f"{base}/figures"}
        if run.preview_app is not None:
            data["links"]["preview"] = f"{base}/preview/"
        return data

    def resolve_input(self, text: str, *, live: bool) -> tuple[str, str]:
        """The source to open and how to show it; refuses what the rules forbid."""
        text = text.strip()
        if url_scheme(text) == "file":
            raise Refused(400, "url_scheme", "file:// URLs are not accepted: give a path inside the input folder")
        if url_scheme(text):
            check_input_url(text)
            return text, self.secrets.add(text)
        if re.fullmatch(r"webcam:\d+", text):
            if not live:
                raise Refused(400, "webcam_job", "a webcam is a live input: start a stream (POST /v1/streams)")
            return text, text
        path = self.folders.input_path(text)
        return str(path), text

    def resolve_output(self, text: str, overwrite: bool) -> tuple[str, str]:
        from facestream.stages.streamer import STREAM_FORMATS, is_stream_url

        text = text.strip()
        scheme = url_scheme(text)
        if scheme:
            if not is_stream_url(text):
                raise Refused(400, "url_scheme", f"output URL scheme '{scheme}://' is not supported "
                                                 f"(use {', '.join(s + '://' for s in sorted(STREAM_FORMATS))})")
            return text, self.secrets.add(text)
        path = self.folders.output_path(text)
        if path.exists() and not overwrite:
            raise Refused(409, "output_exists", f"output {text!r} exists; send \"overwrite\": true to replace it")
        if str(path) in self.runs.busy_outputs():
            raise Refused(409, "output_busy", f"output {text!r} is being written by another job or stream")
        return str(path), self.folders.relative_output(path)

    def save_sources(self, run_id: str, sources: list[Any]) -> tuple[list[str], Path | None]:
        """Source images as files: those in input folders as they are, uploads saved (and checked)."""
        import cv2
        import numpy as np

        from facestream.facelib.media.inputs import IMAGE_EXTENSIONS

        paths: list[str] = []
        folder: Path | None = None
        limit = int(self.options.max_image_mb * MiB)
        for k, src in enumerate(sources):
            if (src.path is None) == (src.data is None):
                raise Refused(422, "source_invalid", f"sources[{k}]: give either 'path' or 'data'")
            if src.path is not None:
                paths.append(str(self.folders.input_path(src.path, what="input")))
                continue
            if len(src.data) * 3 // 4 > limit:
                raise Refused(413, "image_too_large", f"sources[{k}]: the image is larger than "
                                                      f"{self.options.max_image_mb:g} MiB (--max-image-mb)")
            try:
                raw = base64.b64decode(src.data, validate=True)
            except (binascii.Error, ValueError):
                raise Refused(422, "source_invalid", f"sources[{k}].data is not base64") from None
            if len(raw) > limit:
                raise Refused(413, "image_too_large", f"sources[{k}]: the image is larger than "
                                                      f"{self.options.max_image_mb:g} MiB (--max-image-mb)")
            ext = Path(src.name).suffix.lower()
            if ext not in IMAGE_EXTENSIONS:
                raise Refused(422, "source_invalid", f"sources[{k}].name must end in {', '.join(IMAGE_EXTENSIONS)}")
            if cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) is None:
                raise Refused(422, "source_invalid", f"sources[{k}] is not an image OpenCV can read")
            folder = self.state_dir / "uploads" / run_id
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"source-{k}{ext}"
            target.write_bytes(raw)
            paths.append(str(target))
        return paths, folder

    def settings(self, preset: str, overrides: dict[str, Any], sources: list[str]) -> Any:
        """The run's settings from a preset and ``--set``-style overrides.

        Raises:
            Refused: an override names a file on the server, or the settings are wrong (422).
        """
        from facestream.presets import is_preset, list_presets
        from facestream.settings import load_settings

        if not is_preset(preset):
            raise Refused(422, "config_error", f"no preset named {preset!r} (available: {', '.join(list_presets())})")
        texts = []
        for key, value in overrides.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
                raise Refused(422, "config_error", f"override key {key!r} is not a key path like 'section.key'")
            texts.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
        try:
            base = load_settings(preset=preset)
            settings = load_settings(preset=preset, overrides=texts)
            _check_path_settings(base, settings)
            if sources:
                texts += ["mode=swap", f"swap.source={json.dumps(sources)}"]
                settings = load_settings(preset=preset, overrides=texts)
        except PipelineError as exc:
            raise Refused(422, "config_error", str(exc)) from None
        if settings.mode == "swap" and settings.select.mode != "map" and not settings.swap.source:
            raise Refused(422, "source_required", "swapping needs a source face: send 'sources' "
                                                  "(an image's path in an input folder, or its data)")
        return settings

    async def submit(self, kind: str, req: Any) -> Run:
        """Check a request and record its run. The checks read files and load settings (the first
        load imports the stages): they run in a thread, off the event loop."""
        run = await asyncio.to_thread(self.check_request, kind, req)
        try:
            busy = self.runs.busy_outputs()  # again, now on the loop: a request may have raced this one
            if any(t in busy for t in run.targets):
                raise Refused(409, "output_busy", "an output is being written by another job or stream")
            return self.runs.add(run)
        except BaseException:
            if run.uploads is not None:
                shutil.rmtree(run.uploads, ignore_errors=True)
            raise

    def check_request(self, kind: str, req: Any) -> Run:
        live = kind == "stream"
        given = getattr(req, "inputs", None)
        if (req.input is None) == (given is None):
            raise Refused(422, "input_or_inputs", "give either 'input' (one) or 'inputs' (several), not both")
        texts = [req.input] if given is None else list(given)
        if len(texts) > 1 and len(texts) != len(req.outputs):
            raise Refused(422, "outputs_per_input", f"{len(texts)} inputs need {len(texts)} outputs (one per input, "
                                                    f"in the same order), got {len(req.outputs)}")
        resolved = []
        for k, text in enumerate(texts):
            try:
                resolved.append(self.resolve_input(text, live=live))
            except Refused as exc:
                if len(texts) > 1:
                    raise Refused(exc.status, exc.rule, f"inputs[{k}]: {exc.detail}") from None
                raise
        targets = [req.output] if kind == "job" else list(req.outputs)
        outputs = [self.resolve_output(t, req.overwrite) for t in targets]
        if len({t for t, _ in outputs}) != len(outputs):
            raise Refused(422, "output_twice", "the same output is given twice")
        if kind == "job" and url_scheme(targets[0]):
            raise Refused(400, "job_output", "a job writes a file in the output folder; stream with POST /v1/streams")
        run_id = self.runs.new_id()
        sources, uploads = self.save_sources(run_id, req.sources)
        try:
            settings = self.settings(req.preset, req.overrides, sources)
        except BaseException:
            if uploads is not None:
                shutil.rmtree(uploads, ignore_errors=True)
            raise
        return Run(id=run_id, kind=kind, seq=0, input=resolved[0][1], inputs=[shown for _, shown in resolved],  # type: ignore[arg-type]
                   outputs=[shown for _, shown in outputs], preset=req.preset,
                   overrides=self.secrets.scrub(dict(req.overrides)), source=resolved[0][0],
                   sources=[source for source, _ in resolved], targets=[t for t, _ in outputs], settings=settings,
                   overwrite=req.overwrite, uploads=uploads)


def _check_path_settings(base: Any, settings: Any) -> None:
    for key in PATH_KEYS + NAME_KEYS:
        section, name = key.split(".")
        before, after = getattr(getattr(base, section), name), getattr(getattr(settings, section), name)
        if before == after:
            continue
        if key in NAME_KEYS and isinstance(after, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", after) \
                and ".." not in after:
            continue
        raise Refused(403, "setting_names_a_path",
                      f"{key} cannot be set through the API: it names files on the server "
                      + ("(send source faces as 'sources')" if key == "swap.source" else
                         "(model files by bare name only)" if key in NAME_KEYS else ""))


# ------------------------------------------------------------------------------------ the app


def create_app(options: ServeOptions) -> GuardMiddleware:
    """The ASGI application.

    Raises:
        ConfigError: the options are not allowed (see :meth:`ServeOptions.check`).
    """
    options.check()
    service = Service(options)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        store = Store(service.state_dir)
        service.manager = Manager(store, secrets=service.secrets, metrics=service.metrics,
                                  concurrency=options.concurrency, max_streams=options.max_streams,
                                  stop_timeout_s=options.stop_timeout_s)
        service.metrics.manager = service.manager
        undo = install_log_filter(service.secrets)
        marked = await service.manager.start()
        if marked:
            log.warning("%d job(s) or stream(s) were unfinished when the service last stopped: marked interrupted",
                        marked)
        try:
            yield
        finally:
            await service.manager.close()
            undo()

    bearer = HTTPBearer(auto_error=False, description="the service's token (--token or FACESTREAM_TOKEN)")

    async def authorised(request: Request,
                         _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None) -> None:
        check_token(options.token, request.headers.get("authorization"))

    app = FastAPI(title="facestream", version=__version__, lifespan=lifespan,
                  description="Detect, track and swap, anonymise or annotate faces in video files and live feeds.")
    app.state.service = service
    errors = {k: {"model": Error} for k in (400, 401, 403, 404, 409, 413, 422)}
    auth = [Depends(authorised)]

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse(error_body(exc.rule, exc.detail), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        return JSONResponse(error_body("invalid_request", "; ".join(problems)), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers with this, then passes the exception on: GuardMiddleware logs it.
        return JSONResponse(error_body("internal_error", "the service failed unexpectedly; the error is in its log"),
                            status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse(error_body(f"http_{exc.status_code}", detail), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """Liveness: answers without a token."""
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", tags=["service"], dependencies=auth, response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        """The service's figures in the Prometheus text format."""
        body, content_type = render(service.metrics)
        return Response(body, media_type=content_type)

    # ------------------------------------------------------------------------------ jobs

    @app.post("/v1/jobs", tags=["jobs"], status_code=202, dependencies=auth, response_model=RunView,
              responses=errors)
    async def create_job(req: JobRequest, response: Response) -> dict[str, Any]:
        """Run a file job: queued while ``--concurrency`` jobs run."""
        run = await service.submit("job", req)
        response.headers["Location"] = f"/v1/jobs/{run.id}"
        return service.view(run)

    @app.get("/v1/jobs", tags=["jobs"], dependencies=auth, response_model=RunList)
    async def list_jobs(state: str | None = None) -> dict[str, Any]:
        """Every job (without reports), oldest first; ``?state=`` filters."""
        return {"items": [service.view(r, report=False) for r in service.runs.listing("job")
                          if state is None or r.state == state]}

    @app.get("/v1/jobs/{run_id}", tags=["jobs"], dependencies=auth, response_model=RunView, responses=errors)
    async def get_job(run_id: str) -> dict[str, Any]:
        """A job: its state, progress and report (the figures so far while it runs)."""
        return service.view(service.runs.get("job", run_id))

    @app.delete("/v1/jobs/{run_id}", tags=["jobs"], status_code=202, dependencies=auth, response_model=RunView,
                responses=errors)
    async def stop_job(run_id: str) -> dict[str, Any]:
        """Stop a job: a queued one is cancelled; a running one stops, its output finalised (playable)."""
        return service.view(service.runs.stop(service.runs.get("job", run_id)))

    # --------------------------------------------------------------------------- streams

    @app.post("/v1/streams", tags=["streams"], status_code=202, dependencies=auth, response_model=RunView,
              responses={**errors, 429: {"model": Error}})
    async def create_stream(req: StreamRequest, response: Response) -> dict[str, Any]:
        """Start a live stream (at most ``--max-streams`` at once)."""
        run = await service.submit("stream", req)
        response.headers["Location"] = f"/v1/streams/{run.id}"
        return service.view(run)

    @app.get("/v1/streams", tags=["streams"], dependencies=auth, response_model=RunList)
    async def list_streams(state: str | None = None) -> dict[str, Any]:
        """Every stream with its live figures."""
        return {"items": [service.view(r) for r in service.runs.listing("stream")
                          if state is None or r.state == state]}

    @app.get("/v1/streams/{run_id}", tags=["streams"], dependencies=auth, response_model=RunView, responses=errors)
    async def get_stream(run_id: str) -> dict[str, Any]:
        return service.view(service.runs.get("stream", run_id))

    @app.delete("/v1/streams/{run_id}", tags=["streams"], status_code=202, dependencies=auth,
                response_model=RunView, responses=errors)
    async def stop_stream(run_id: str) -> dict[str, Any]:
        """Stop a stream: queued frames drain, recordings are finalised."""
        return service.view(service.runs.stop(service.runs.get("stream", run_id)))

    async def figures(websocket: WebSocket, kind: str, run_id: str, interval: float) -> None:
        try:
            check_token(options.token, websocket.headers.get("authorization"))
            run = service.runs.get(kind, run_id)
        except Refused as exc:
            await websocket.close(code=1008, reason=exc.detail[:120])
            return
        await websocket.accept()
        interval = min(max(interval, 0.1), 60.0)
        try:
            while True:
                await websocket.send_json(service.view(run))
                if run.state in FINISHED:
                    break
                await asyncio.sleep(interval)
            await websocket.close()
        except (WebSocketDisconnect, RuntimeError):
            pass

    @app.websocket("/v1/streams/{run_id}/figures")
    async def stream_figures(websocket: WebSocket, run_id: str, interval: float = 1.0) -> None:
        """Live figures of a stream, every ``interval`` seconds, until it ends (the last message
        holds the report)."""
        await figures(websocket, "stream", run_id, interval)

    @app.websocket("/v1/jobs/{run_id}/figures")
    async def job_figures(websocket: WebSocket, run_id: str, interval: float = 1.0) -> None:
        await figures(websocket, "job", run_id, interval)

    async def preview(scope: Any, receive: Any, send: Any) -> None:
        """A running stream's browser preview (facestream.preview's app): the page, MJPEG, WebRTC,
        figures."""
        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
            check_token(options.token, headers.get("authorization"))
            run = service.runs.get("stream", scope.get("path_params", {}).get("run_id", ""))
            if run.preview_app is None:
                raise Refused(404, "no_preview", f"stream {run.id} has no preview now ({run.state})")
        except Refused as exc:
            if scope["type"] == "http":
                await JSONResponse(error_body(exc.rule, exc.detail), status_code=exc.status)(scope, receive, send)
            return
        await run.preview_app(scope, receive, send)

    app.router.routes.append(Mount("/v1/streams/{run_id}/preview", app=preview))

    return GuardMiddleware(app, max_body=int(options.max_body_mb * MiB), secrets=service.secrets)


def serve(options: ServeOptions) -> int:
    """Run the service until SIGINT or SIGTERM (running jobs are stopped, finalised and recorded
    as ``interrupted``)."""
    import uvicorn

    app = create_app(options)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on", server_header=False)
    server = uvicorn.Server(config)
    shown = f"[{options.host}]" if ":" in options.host else options.host
    print(f"facestream: serving on http://{shown}:{options.port} (API description at /docs)", file=sys.stderr,
          flush=True)
    server.run()
    return 0 if server.started else 1
