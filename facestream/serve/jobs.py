"""Jobs and streams of the service: a queue with a concurrency limit, runs awaited in the service's
event loop, and their record in SQLite so that a restart loses no finished result.

A file job goes ``queued`` -> ``starting`` (models load, in a thread) -> ``running`` -> ``done``,
``failed`` or ``cancelled`` (stopped by a DELETE: the output finalised up to there). A stream skips
the queue and ends ``stopped`` (a DELETE), ``done`` (its input ended) or ``failed``. Whatever was
not finished when the service stopped or died is ``interrupted`` (a graceful stop finalises its
output first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from facestream.pipeline.errors import PipelineError

from .security import Refused, Secrets

if TYPE_CHECKING:
    from facestream.app import Job
    from facestream.pipeline.runner import Progress
    from facestream.settings import Settings

    from .metrics import ServiceMetrics

log = logging.getLogger("facestream.serve")

Kind = Literal["job", "stream"]
ACTIVE = ("queued", "starting", "running", "stopping")
FINISHED = ("done", "failed", "cancelled", "stopped", "interrupted")
STATES = ACTIVE + FINISHED

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_kind ON runs (kind, seq);
"""


@dataclass
class Run:
    """One job or stream. What is saved and shown holds no credentials (``input``, ``inputs`` and
    ``outputs`` are redacted); the real sources and targets stay in memory only.

    ``inputs`` lists every input (a stream may have several feeds); ``input`` is the first. A record
    saved before ``inputs`` existed loads with ``inputs == [input]``."""

    id: str
    kind: Kind
    seq: int
    input: str
    outputs: list[str]
    preset: str
    overrides: dict[str, Any]
    inputs: list[str] = field(default_factory=list)
    state: str = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    error: str | None = None
    # In memory only.
    source: str = ""
    sources: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    settings: Settings | None = None
    overwrite: bool = False
    uploads: Path | None = None
    job: Job | None = None
    task: asyncio.Task[None] | None = None
    preview_app: Any = None  # a stream's browser preview (facestream.preview) while it runs
    stop_requested: bool = False
    shutting_down: bool = False
    changed: asyncio.Event | None = None

    SAVED = ("id", "kind", "seq", "input", "inputs", "outputs", "preset", "overrides", "state", "created_at", "started_at",
             "finished_at", "progress", "report", "error")

    def record(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.SAVED}

    def __post_init__(self) -> None:
        if not self.inputs:
            self.inputs = [self.input]
        if not self.sources and self.source:
            self.sources = [self.source]

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Run:
        return cls(**{k: data[k] for k in cls.SAVED if k in data})

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def figures(self) -> dict[str, Any] | None:
        """The final report, or the figures so far while the pipeline runs."""
        if self.report is not None:
            return self.report
        if self.job is not None:
            return self.job.pipeline.snapshot()
        return None


class Store:
    """The runs' record: one SQLite database in the state folder, one committed transaction (fully
    synced) per change of state."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "serve.sqlite"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def load(self) -> list[Run]:
        rows = self.db.execute("SELECT record FROM runs ORDER BY seq").fetchall()
        return [Run.from_record(json.loads(r[0])) for r in rows]

    def save(self, run: Run) -> None:
        self.db.execute("INSERT OR REPLACE INTO runs (id, seq, kind, state, record) VALUES (?, ?, ?, ?, ?)",
                        (run.id, run.seq, run.kind, run.state, json.dumps(run.record(), default=str)))

    def close(self) -> None:
        self.db.close()


PrepareFn = Callable[..., "Job"]


class Manager:
    """Owns every run: the queue of file jobs (at most ``concurrency`` at once), the streams
    (at most ``max_streams``), their record, and stopping them.

    Runs execute as tasks of the service's event loop; their models load in a worker thread.
    """

    def __init__(self, store: Store, *, secrets: Secrets, metrics: ServiceMetrics, concurrency: int = 1,
                 max_streams: int = 4, stop_timeout_s: float = 30.0, previews: bool = True) -> None:
        self.store = store
        self.secrets = secrets
        self.metrics = metrics
        self.concurrency = concurrency
        self.max_streams = max_streams
        self.stop_timeout_s = stop_timeout_s
        self.previews = previews and _preview_available()
        self.runs: dict[str, Run] = {}
        self.queue: asyncio.Queue[str] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._seq = 0

    # -------------------------------------------------------------------------------- life

    async def start(self) -> int:
        """Load the record; what was unfinished when the service last stopped is ``interrupted``.
        Returns how many runs that marked."""
        marked = 0
        for run in self.store.load():
            if run.state in ACTIVE:
                run.error = f"the service stopped while this {run.kind} was {run.state}"
                run.state = "interrupted"
                run.finished_at = run.finished_at or time.time()
                self.store.save(run)
                marked += 1
            self.runs[run.id] = run
            self._seq = max(self._seq, run.seq)
        self.queue = asyncio.Queue()
        self._workers = [asyncio.create_task(self._worker(), name=f"serve-worker-{k}")
                         for k in range(self.concurrency)]
        return marked

    async def close(self) -> None:
        """Stop everything: queued runs are ``interrupted`` at once; running ones are asked to stop
        (their outputs finalised) and recorded as ``interrupted``."""
        for run in list(self.runs.values()):
            if run.state == "queued":
                self._finish(run, "interrupted", error="the service stopped before this job started")
            elif run.state in ACTIVE:
                run.shutting_down = True
                if run.job is not None:
                    run.job.pipeline.request_stop()
        tasks = [r.task for r in self.runs.values() if r.task is not None and not r.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.stop_timeout_s)
            for task in pending:
                task.cancel()  # the pipeline aborts, still finalising what it wrote
            if pending:
                await asyncio.wait(pending, timeout=10)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self.store.close()

    # ------------------------------------------------------------------------------ submit

    def new_id(self) -> str:
        return uuid.uuid4().hex[:12]

    def add(self, run: Run) -> Run:
        """Record a new run: a job joins the queue, a stream starts now."""
        if run.kind == "stream" and self.count("stream", ACTIVE) >= self.max_streams:
            raise Refused(429, "too_many_streams", f"{self.max_streams} streams are already running (--max-streams)")
        self._seq += 1
        run.seq = self._seq
        run.changed = asyncio.Event()
        run.state = "queued" if run.kind == "job" else "starting"
        self.runs[run.id] = run
        self.store.save(run)
        if run.kind == "job":
            assert self.queue is not None
            self.queue.put_nowait(run.id)
        else:
            run.task = asyncio.create_task(self._execute(run), name=f"serve-stream-{run.id}")
        return run

    def busy_outputs(self) -> set[str]:
        """The output files of runs not finished yet."""
        return {t for r in self.runs.values() if not r.finished for t in r.targets}

    def count(self, kind: str, states: Sequence[str]) -> int:
        return sum(1 for r in self.runs.values() if r.kind == kind and r.state in states)

    def listing(self, kind: str) -> list[Run]:
        return sorted((r for r in self.runs.values() if r.kind == kind), key=lambda r: r.seq)

    def get(self, kind: str, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None or run.kind != kind:
            raise Refused(404, "not_found", f"no {kind} with id {run_id!r}")
        return run

    def stop(self, run: Run) -> Run:
        """Stop a run: a queued job is cancelled at once; a running one drains and finalises."""
        if run.finished:
            raise Refused(409, "already_finished", f"{run.kind} {run.id} has already finished ({run.state})")
        run.stop_requested = True
        if run.state == "queued":
            self._finish(run, "cancelled", error=None)
        elif run.state != "stopping":
            self._set(run, "stopping")
            if run.job is not None:
                run.job.pipeline.request_stop()
        return run

    # ------------------------------------------------------------------------------- running

    async def _worker(self) -> None:
        assert self.queue is not None
        while True:
            run_id = await self.queue.get()
            run = self.runs.get(run_id)
            if run is None or run.state != "queued":
                continue
            self._set(run, "starting")
            run.task = asyncio.create_task(self._execute(run), name=f"serve-job-{run.id}")
            await run.task

    async def _execute(self, run: Run) -> None:
        from facestream.app import prepare_job

        run.started_at = time.time()
        preview = None
        if run.kind == "stream" and self.previews:
            from facestream.stages.preview import Preview

            preview = Preview(feeds=len(run.sources))
        try:
            try:
                job = await asyncio.to_thread(prepare_job, run.settings,
                                              source=run.sources[0] if len(run.sources) == 1 else run.sources,
                                              output=run.targets[0] if len(run.targets) == 1 else run.targets,
                                              progress=lambda p: self._progress(run, p), overwrite=run.overwrite,
                                              preview=preview)
            except PipelineError as exc:
                self._finish(run, "failed", error=str(exc))
                return
            if run.stop_requested or run.shutting_down:
                _release(job)
                self._finish(run, "interrupted" if run.shutting_down else _stopped(run), error=None)
                return
            run.job = job
            if preview is not None:
                from facestream.preview import create_app

                pipeline = job.pipeline
                run.preview_app = create_app(preview, lambda: self.secrets.scrub(pipeline.snapshot()),
                                             title=f"facestream stream {run.id}")
            self._set(run, "running")
            report = await job.arun()
            self.metrics.absorb(run.kind, job.pipeline)
            run.report = self.secrets.scrub(report.stats)
            if run.shutting_down:
                state, error = "interrupted", "the service stopped while this ran (the output was finalised)"
            elif run.stop_requested:
                state, error = _stopped(run), None
            elif report.status == "ok":
                state, error = "done", None
            else:
                state, error = ("failed" if report.error else "interrupted"), str(report.error or report.status)
            self._finish(run, state, error=error)
        except asyncio.CancelledError:
            self._finish(run, "interrupted", error="the service stopped while this ran")
            raise
        except Exception as exc:  # noqa: BLE001 - one run's bug must not take the service down
            log.exception("%s %s failed unexpectedly", run.kind, run.id)
            self._finish(run, "failed", error=f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            run.job = None
            if run.preview_app is not None:
                app, run.preview_app = run.preview_app, None
                await app.state.close_peers()

    def _progress(self, run: Run, p: Progress) -> None:
        run.progress = {
            "frames_in": p.frames_in,
            "frames_out": p.frames_out,
            "frames_dropped": p.frames_dropped,
            "fps": round(p.fps, 2),
            "elapsed_s": round(p.elapsed_s, 2),
            "total_frames": p.total_frames,
            "fraction": round(min(p.frames_out / p.total_frames, 1.0), 4) if p.total_frames else None,
            "queue_depths": list(p.queue_depths),
        }
        if run.changed is not None:
            run.changed.set()

    def _set(self, run: Run, state: str) -> None:
        run.state = state
        self.store.save(run)
        if run.changed is not None:
            run.changed.set()

    def _finish(self, run: Run, state: str, *, error: str | None) -> None:
        run.error = self.secrets.scrub(error) if error else None
        run.finished_at = time.time()
        if state == "done" and run.progress.get("total_frames") is None and run.report:
            run.progress["fraction"] = 1.0
        self._set(run, state)
        if run.uploads is not None:
            shutil.rmtree(run.uploads, ignore_errors=True)
        if state != "done":
            log.info("%s %s: %s%s", run.kind, run.id, state, f": {run.error}" if run.error else "")


def _stopped(run: Run) -> str:
    return "cancelled" if run.kind == "job" else "stopped"


def _release(job: Job) -> None:
    """Let go of the outputs a prepared job claimed but will never write."""
    from facestream.app import leaf_sinks

    for encoder in leaf_sinks(job.pipeline.stages[-1]):
        release = getattr(encoder, "release", None)
        if release is not None:
            release()


def _preview_available() -> bool:
    """Whether streams can have their browser preview (``facestream.preview``, on Starlette)."""
    try:
        import facestream.preview  # noqa: F401
    except ImportError:
        return False
    return True
