"""Batches: many files (and long files in segments) into one output folder, resumable after a crash.

The manifest in the output folder (:class:`~facestream.manifest.Manifest`) records every file's
state. Outputs are written under hidden names and moved to their final names only once whole, and
a file is recorded as done only after that move; so whatever stops a batch, the same command again
finds finished files finished, redoes the others, and no half-written file ever carries a final
name. Files run on a pool of workers in one process, so that the models are loaded once and shared.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from facestream.facelib.media.inputs import VIDEO_EXTENSIONS
from facestream.pipeline.config import to_dict
from facestream.pipeline.device import cpu_threads
from facestream.pipeline.errors import ConfigError, OutputError, PipelineError
from facestream.pipeline.progress import ProgressPrinter
from facestream.pipeline.runner import Progress, RunReport
from facestream.facelib.models.shared import sharing
from facestream.stages.encoder import CONTAINERS, is_leftover

from .manifest import Manifest
from .settings import Settings

log = logging.getLogger(__name__)

SEGMENTS_DIR = ".facestream-segments"
LOCK_NAME = ".facestream-batch.lock"


def collect_inputs(items: list[str]) -> list[Path]:
    """Files as given; the videos of folders (by extension, name order); globs (``**`` recurses).

    Raises:
        ConfigError: an item matches nothing.
    """
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            videos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not videos:
                raise ConfigError(f"no videos ({', '.join(VIDEO_EXTENSIONS[:6])}, ...) in folder {path}")
            found += videos
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True))
            matches = [p for p in matches if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
            if not matches:
                raise ConfigError(f"no videos match {item}")
            found += matches
        else:
            raise ConfigError(f"input not found: {item}")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique)


def output_names(inputs: list[Path], outdir: Path, pattern: str) -> dict[Path, Path]:
    """Each input's output: ``pattern`` with ``{stem}``, ``{name}``, ``{ext}`` and ``{parent}``.

    Raises:
        ConfigError: a bad pattern, an unknown container, or two inputs named alike.

    Example:
        >>> output_names([Path("a/talk.mov")], Path("out"), "{stem}_blurred.mp4")[Path("a/talk.mov")]
        PosixPath('out/talk_blurred.mp4')
    """
    names: dict[Path, Path] = {}
    taken: dict[Path, Path] = {}
    for p in inputs:
        try:
            name = pattern.format(stem=p.stem, name=p.name, ext=p.suffix.lstrip("."), parent=p.parent.name)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"--name {pattern!r}: use {{stem}}, {{name}}, {{ext}} or {{parent}} ({exc})") from None
        if "/" in name or name.startswith("."):
            raise ConfigError(f"--name {pattern!r} gives {name!r}: a plain file name is needed")
        out = outdir / name
        if out.suffix.lower() not in CONTAINERS:
            raise ConfigError(f"--name {pattern!r}: outputs must end in {', '.join(sorted(CONTAINERS))}")
        if out in taken:
            raise ConfigError(f"{taken[out]} and {p} would both be written to {out}; "
                              "give --name a pattern with {parent}, say")
        taken[out] = p
        names[p] = out
    return names


def settings_key(settings: Settings, segments: int) -> str:
    """What decides a file's output: the settings less the display and thread ones (a changed key
    means a finished file is redone)."""
    data = to_dict(settings)
    for k in ("stats", "threads", "description"):
        data.pop(k, None)
    data["segments"] = segments
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class BatchOptions:
    """How a batch runs.

    Attributes:
        name: Output file name pattern (see :func:`output_names`).
        jobs: Files (or segments) processed at once, in one process sharing its models.
        segments: Cut each video into this many segments at keyframes (1: whole files).
        overlap_s: Warm-up before each segment (the previous segment's tail), in seconds.
        retry_failed: Rerun only the files that failed before.
        overwrite: Replace outputs that exist but this batch did not write.
        backend: ``local`` (threads of this process) or ``ray`` (actors on a Ray cluster).
        address: The Ray cluster (``auto``, ``HOST:PORT``); None starts a local one.
        ray_cpus: CPUs each Ray actor reserves (on a CPU run).
        ray_copy: Move files through Ray's object store (nodes that share no storage).
    """

    name: str = "{stem}.mp4"
    jobs: int = 1
    segments: int = 1
    overlap_s: float = 2.0
    retry_failed: bool = False
    overwrite: bool = False
    backend: str = "local"
    address: str | None = None
    ray_cpus: float = 1.0
    ray_copy: bool = False


@dataclass
class FileResult:
    input: str
    output: str
    state: str  # done, failed, skipped, pending (interrupted)
    note: str = ""
    frames: int | None = None
    wall_s: float | None = None


@dataclass
class BatchResult:
    files: list[FileResult] = field(default_factory=list)
    interrupted: bool = False
    wall_s: float = 0.0

    def count(self, state: str) -> int:
        return sum(1 for f in self.files if f.state == state)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.count("failed") else 0


@dataclass
class _Unit:
    """One piece of work: a whole file, or one segment of one."""

    input: Path
    output: Path
    segment: int | None = None
    plan: Any = None

    @property
    def label(self) -> str:
        return self.input.name + (f" [segment {self.segment + 1}]" if self.segment is not None else "")


class Batch:
    """Runs a batch to its end (or an interrupt) and reports every file.

    Args:
        settings: The preset, with overrides, every file runs with.
        inputs: Input files (see :func:`collect_inputs`).
        outdir: The output folder (created if missing); it holds the manifest.
        options: See :class:`BatchOptions`.
        stream: Where progress and the per-file lines go.
    """

    def __init__(self, settings: Settings, inputs: list[Path], outdir: str | os.PathLike[str],
                 options: BatchOptions | None = None, *, stream: TextIO | None = None) -> None:
        self.settings = settings
        self.options = options or BatchOptions()
        if self.options.jobs < 1 or self.options.segments < 1:
            raise ConfigError("--jobs and --segments must be at least 1")
        if self.options.backend not in ("local", "ray"):
            raise ConfigError(f"--backend must be local or ray, got {self.options.backend!r}")
        self.outdir = Path(outdir)
        if self.outdir.exists() and not self.outdir.is_dir():
            raise OutputError(f"the output folder is a file: {self.outdir}")
        self.inputs = inputs
        self.names = output_names(inputs, self.outdir, self.options.name)
        for src, out in self.names.items():
            if src.resolve() == out.resolve():
                raise ConfigError(f"the output would overwrite the input: {out}")
        self.key = settings_key(settings, self.options.segments)
        self.stream = stream or sys.stderr
        self._progress = _BatchProgress(self.stream, settings.stats.progress)
        self._lock = threading.Lock()
        self._jobs: dict[int, Any] = {}  # running unit id -> Job
        self._stopping = 0
        self._stop_event = threading.Event()
        self._devices: list[str] = []
        self._pool: Any = None
        self._segments_left: dict[Path, int] = {}
        self._began: dict[Path, float] = {}  # when a file's first segment started
        self._results: dict[Path, FileResult] = {}
        self.manifest: Manifest | None = None

    # ------------------------------------------------------------------ running

    def run(self) -> BatchResult:
        t0 = time.monotonic()
        self.outdir.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.outdir):
            self.manifest = Manifest(self.outdir)
            try:
                self._clean_leftovers()
                units = self._plan()
                self._progress.begin(len(self.inputs), sum(1 for r in self._results.values() if r.state != "pending"))
                # Models loaded once per device; on the CPU up to a copy per worker.
                with _interrupts(self._interrupt), sharing(cpu_copies=self.options.jobs):
                    self._work(units)
            finally:
                self.manifest.close()
                if self._pool is not None:
                    self._pool.close()
        result = BatchResult([self._results[p] for p in self.inputs], interrupted=self._stopping > 0,
                             wall_s=time.monotonic() - t0)
        self._progress.end()
        return result

    def _plan(self) -> list[_Unit]:
        """Record every input, decide what is left to do, and cut videos into segments."""
        m = self.manifest
        assert m is not None
        units: list[_Unit] = []
        for src, out in self.names.items():
            key = str(src)
            m.add(key, str(out), settings=self.key)
            row = m.get(key)
            assert row is not None
            ours = row.state == "done" and row.output == str(out) and _still_ours(row, out)
            if row.output != str(out) or row.settings != self.key:
                if row.state == "done":
                    log.info("batch: %s: settings or name changed since it was done; redoing it", src.name)
                m.reset(key, output=str(out), settings=self.key)
                row = m.get(key)
                assert row is not None
            if row.state == "running" and _finished_before_crash(row, out):
                # The output was moved into place but the batch died before recording it.
                m.finish(key, output=str(out), frames=row.frames, wall_s=None, report=None)
                row = m.get(key)
                assert row is not None
            if row.state == "done":
                if _still_ours(row, out):
                    self._results[src] = FileResult(key, str(out), "skipped", "done earlier", row.frames, row.wall_s)
                    continue
                log.warning("batch: %s changed or vanished since this batch wrote it; redoing it", out)
                m.reset(key, output=str(out), settings=self.key)
            elif row.state == "failed" and not self.options.retry_failed:
                self._results[src] = FileResult(key, str(out), "failed", f"failed earlier: {row.reason} "
                                                "(--retry-failed reruns it)")
                continue
            elif row.state == "running":
                m.reset(key, output=str(out), settings=self.key)  # cut short by a crash: again
            if self.options.retry_failed and row.state != "failed":
                self._results[src] = FileResult(key, str(out), "skipped", f"not failed ({row.state})")
                continue
            if out.exists() and not (ours or self.options.overwrite):
                m.fail(key, f"{out} exists and this batch did not write it (-y replaces it)")
                self._results[src] = FileResult(key, str(out), "failed", f"{out.name} exists (-y replaces it)")
                continue
            self._results[src] = FileResult(key, str(out), "pending")
            units += self._units(src, out)
        return units

    def _units(self, src: Path, out: Path) -> list[_Unit]:
        if self.options.segments == 1 or self.settings.input.start is not None or self.settings.input.end is not None:
            return [_Unit(src, out)]
        from .segments import SegmentPlan, index_video, plan_segments

        m = self.manifest
        assert m is not None
        key = str(src)
        if not m.segments(key):
            try:
                plans = plan_segments(index_video(key), self.options.segments, overlap_s=self.options.overlap_s)
            except PipelineError as exc:
                m.fail(key, str(exc))
                self._results[src] = FileResult(key, str(out), "failed", str(exc))
                return []
            if len(plans) < 2:
                return [_Unit(src, out)]
            m.plan_segments(key, [p.to_dict() for p in plans])
        units = []
        segs = m.segments(key)
        for idx, plan, state in segs:
            unit = _Unit(src, out, idx, SegmentPlan(**plan))
            if state == "done" and self._segment_path(unit).exists():
                continue
            m.segment_state(key, idx, "pending")
            units.append(unit)
        self._segments_left[src] = len(units)
        if not units:  # every segment done before a crash; only the join is left
            self._segments_left[src] = 1
            units.append(_Unit(src, out, -1))
        return units

    def _work(self, units: list[_Unit]) -> None:
        todo: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        for u in units:
            todo.put(u)
        if not units:
            return
        self._devices = self._spread()
        workers = self.options.jobs
        if self.options.backend == "ray":
            from .ray_backend import RayPool

            gpu = self.settings.device.startswith("cuda")
            self._pool = RayPool(slots=None if self.options.jobs == 1 else self.options.jobs,
                                 address=self.options.address, cpus=self.options.ray_cpus, gpu=gpu,
                                 copy_files=self.options.ray_copy)
            workers = self._pool.slots
        workers = min(workers, len(units))
        if self.settings.threads is None and workers > 1 and self._pool is None:
            # The files' runs share this process's cores (see cpu_threads).
            self.settings = dataclasses.replace(self.settings, threads=cpu_threads(workers))
        for _ in range(workers):
            todo.put(None)
        threads = [threading.Thread(target=self._worker, args=(todo, i), name=f"batch-{i}", daemon=True)
                   for i in range(workers)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
            self._progress.tick()

    def _spread(self) -> list[str]:
        """The devices the workers take turns on: several for ``cuda:all`` or a list, else one."""
        spec = self.settings.device
        if spec != "cuda:all" and "," not in spec:
            return [spec]
        if self.options.backend == "ray":
            return ["cuda"]  # Ray gives each actor its own GPU
        from facestream.pipeline.device import resolve_devices

        return [str(d) for d in resolve_devices(spec)]

    def _worker(self, todo: queue.SimpleQueue[_Unit | None], slot: int) -> None:
        settings = self.settings
        device = self._devices[slot % len(self._devices)]
        if device != settings.device:
            settings = dataclasses.replace(settings, device=device)
        while True:
            unit = todo.get()
            if unit is None or self._stopping:
                return
            try:
                if unit.segment is None:
                    self._run_file(unit, settings, slot)
                else:
                    self._run_segment(unit, settings, slot)
            except Exception as exc:  # noqa: BLE001 - one file's failure never stops the batch
                log.info("batch: %s failed", unit.label, exc_info=True)
                self._failed(unit, f"{type(exc).__name__}: {exc}")

    def _run_file(self, unit: _Unit, settings: Settings, slot: int) -> None:
        m = self.manifest
        assert m is not None
        key = str(unit.input)
        tmp = _hidden(unit.output)
        m.start(key)
        report = self._run_job(unit, settings, str(tmp), slot)
        if report is None or self._stopping:  # a stopped run's output is not the whole file
            _remove(tmp)
            if self._stopping:
                m.reset(key, output=str(unit.output), settings=self.key)
            return
        if report.status != "ok":
            _remove(tmp)
            self._failed(unit, str(report.error))
            return
        reason = self._not_done(report)
        if reason:
            _remove(tmp)
            self._failed(unit, reason)
            return
        os.replace(tmp, unit.output)
        self._done(unit, report.stats.get("frames_out"), report.stats.get("wall_s"), report.stats)

    def _run_segment(self, unit: _Unit, settings: Settings, slot: int) -> None:
        m = self.manifest
        assert m is not None
        key = str(unit.input)
        if unit.segment != -1:
            plan = unit.plan
            with self._lock:
                self._began.setdefault(unit.input, time.monotonic())
            m.segment_state(key, unit.segment, "running")
            settings = dataclasses.replace(
                settings,
                input=dataclasses.replace(settings.input, start=plan.decode_from_s or None, end=plan.decode_until_s),
                output=dataclasses.replace(settings.output, audio="none"),
            )
            path = self._segment_path(unit)
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove(path)
            report = self._run_job(unit, settings, str(path), slot, write_from_s=plan.write_from_s)
            if report is None or self._stopping:
                _remove(path)
                if self._stopping:
                    m.segment_state(key, unit.segment, "pending")
                return
            if report.status != "ok":
                _remove(path)
                self._failed(unit, str(report.error))
                return
            written = report.stats["stages"]["encoder"]["frames_written"]
            m.segment_state(key, unit.segment, "done", frames=written, report=_summary(report.stats, written))
        with self._lock:
            self._segments_left[unit.input] -= 1
            last = self._segments_left[unit.input] == 0
        if last:
            self._join(unit)

    def _join(self, unit: _Unit) -> None:
        from .segments import SegmentPlan, index_video, join_segments

        m = self.manifest
        assert m is not None
        key = str(unit.input)
        if self._results[unit.input].state == "failed":
            return
        m.start(key)
        t0 = self._began.get(unit.input, time.monotonic())
        parts = []
        for idx, plan, _ in m.segments(key):
            u = _Unit(unit.input, unit.output, idx)
            parts.append((str(self._segment_path(u)), SegmentPlan(**plan)))
        tmp = _hidden(unit.output)
        frames = join_segments(key, parts, str(tmp), index=index_video(key), audio=self.settings.output.audio)
        os.replace(tmp, unit.output)
        shutil.rmtree(self._segment_path(unit).parent, ignore_errors=True)
        self._done(unit, frames, time.monotonic() - t0, {"segments": m.segment_reports(key)})

    def _run_job(self, unit: _Unit, settings: Settings, output: str, slot: int,
                 write_from_s: float = 0.0) -> RunReport | None:
        """Prepare and run one pipeline; a setup error fails the file (None is returned)."""
        from .app import prepare_job

        if self._pool is not None:
            self._progress.reporter(unit.label)(_started())
            try:
                report = self._pool.run(slot, settings, str(unit.input), output, write_from_s, self._stop_event)
            finally:
                self._progress.forget(unit.label)
                for p in Path(output).parent.iterdir():  # left by a worker that died writing it
                    if is_leftover(p.name, Path(output).name):
                        _remove(p)
            if report is not None and report.status == "error" and not report.stats:
                self._failed(unit, str(report.error))  # the pipeline could not be set up
                return None
            return report
        try:
            job = prepare_job(settings, source=str(unit.input), output=output, overwrite=True,
                              progress=self._progress.reporter(unit.label), write_from_s=write_from_s)
        except PipelineError as exc:
            self._failed(unit, str(exc))
            return None
        with self._lock:
            if self._stopping:
                return None
            self._jobs[id(unit)] = job
        try:
            return job.run()
        finally:
            with self._lock:
                self._jobs.pop(id(unit), None)
            self._progress.forget(unit.label)

    def _not_done(self, report: RunReport) -> str | None:
        """A run that finished but did not do what was asked: a swap that found no face to swap."""
        if self.settings.mode != "swap":
            return None
        gen = report.stats.get("stages", {}).get("generator", {})
        if report.stats.get("frames_out") and not gen.get("faces"):
            return "no face to swap was found in any frame"
        return None

    # ------------------------------------------------------------------ outcomes

    def _done(self, unit: _Unit, frames: int | None, wall_s: float | None, report: dict[str, Any] | None) -> None:
        assert self.manifest is not None
        self.manifest.finish(str(unit.input), output=str(unit.output), frames=frames, wall_s=wall_s, report=report)
        self._results[unit.input] = FileResult(str(unit.input), str(unit.output), "done", "", frames, wall_s)
        self._progress.file_line(f"done {unit.input.name} -> {unit.output} ({frames} frames)")

    def _failed(self, unit: _Unit, reason: str) -> None:
        assert self.manifest is not None
        reason = reason.splitlines()[0] if reason else "failed"
        with self._lock:
            if self._results[unit.input].state == "failed":
                return
            self._results[unit.input] = FileResult(str(unit.input), str(unit.output), "failed", reason)
        self.manifest.fail(str(unit.input), reason)
        self._progress.file_line(f"failed {unit.input.name}: {reason}")

    def _interrupt(self, signum: int) -> None:
        self._stop_event.set()
        with self._lock:
            self._stopping += 1
            jobs = list(self._jobs.values())
        if self._stopping == 1:
            self._progress.file_line(f"{signal.Signals(signum).name}: stopping; unfinished files are redone next time")
        for job in jobs:
            job.pipeline.abort()

    # ------------------------------------------------------------------ files on disk

    def _segment_path(self, unit: _Unit) -> Path:
        digest = hashlib.sha256(str(unit.input).encode()).hexdigest()[:12]
        ext = unit.output.suffix
        return self.outdir / SEGMENTS_DIR / f"{unit.input.stem}-{digest}" / f"{unit.segment:04d}{ext}"

    def _clean_leftovers(self) -> None:
        """Remove what a killed batch left: hidden unfinished outputs, the encoder's partial files
        and locks, and segments of files that are no longer pending."""
        for p in self.outdir.iterdir():
            if p.name != LOCK_NAME and (p.name.startswith(".") and ".unfinished" in p.name or is_leftover(p.name)):
                _remove(p)
        seg_root = self.outdir / SEGMENTS_DIR
        if seg_root.is_dir():
            for p in seg_root.rglob(".*"):
                if p.is_file():
                    _remove(p)


def _summary(stats: dict[str, Any], written: int) -> dict[str, Any]:
    """What the manifest keeps of a segment's run."""
    keep = ("status", "frames_in", "wall_s", "fps", "device", "worker")
    return {"frames_written": written, **{k: stats[k] for k in keep if k in stats}}


def _started() -> Progress:
    return Progress(elapsed_s=0.0, frames_in=0, frames_out=0, frames_dropped=0, fps=0.0, total_frames=None,
                    live=False, latency_p95_ms=0.0)


def _hidden(output: Path) -> Path:
    return output.with_name(f".{output.stem}.unfinished{output.suffix}")


def _still_ours(row: Any, out: Path) -> bool:
    try:
        st = out.stat()
    except OSError:
        return False
    return st.st_size == row.output_size and st.st_mtime_ns == row.output_mtime_ns


def _finished_before_crash(row: Any, out: Path) -> bool:
    """A running file whose output appeared after it started: moved into place just before a crash
    (outputs reach their final name only when whole)."""
    try:
        return row.started is not None and out.stat().st_mtime >= row.started - 1.0 and not _hidden(out).exists()
    except OSError:
        return False


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError(f"another batch is writing to {folder}") from None
        yield
    finally:
        os.close(fd)


@contextmanager
def _interrupts(handler: Callable[[int], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler`` while the batch runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda signum, _frame: handler(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _BatchProgress:
    """The whole batch's progress and the current files', on one line (a bar) or every few seconds."""

    def __init__(self, stream: TextIO, mode: str) -> None:
        self.stream = stream
        if mode == "auto":
            mode = "bar" if stream.isatty() else "lines"
        self.mode = mode
        self.total = 0
        self.finished = 0
        self.active: dict[str, Progress] = {}
        self._lock = threading.Lock()
        self._last = 0.0
        self._t0 = time.monotonic()

    def begin(self, total: int, finished: int) -> None:
        self.total, self.finished = total, finished

    def reporter(self, label: str) -> Callable[[Progress], None]:
        def report(p: Progress) -> None:
            with self._lock:
                self.active[label] = p

        return report

    def forget(self, label: str) -> None:
        with self._lock:
            self.active.pop(label, None)

    def line(self) -> str:
        with self._lock:
            parts = [f"{label} {ProgressPrinter.format(p).split(' [')[0].strip()} {p.fps:.1f} fps"
                     for label, p in self.active.items()]
        elapsed = time.monotonic() - self._t0
        return f"batch {self.finished}/{self.total} files  {elapsed:5.0f} s  " + "  |  ".join(parts)

    def tick(self) -> None:
        if self.mode == "none":
            return
        now = time.monotonic()
        every = 1.0 if self.mode == "bar" else 5.0
        if now - self._last < every:
            return
        self._last = now
        text = self.line()
        if self.mode == "bar":
            self.stream.write("\r" + text.ljust(110)[:160])
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def file_line(self, text: str) -> None:
        with self._lock:
            if text.startswith(("done", "failed")):
                self.finished += 1
        if self.mode == "none" and not text.startswith("failed"):
            return
        prefix = "\r" + " " * 110 + "\r" if self.mode == "bar" else ""
        self.stream.write(f"{prefix}facestream: [{self.finished}/{self.total}] {text}\n")
        self.stream.flush()

    def end(self) -> None:
        if self.mode == "bar":
            self.stream.write("\r" + " " * 110 + "\r")
            self.stream.flush()


def render_table(result: BatchResult) -> str:
    """The final table: one row per file, then the counts."""
    rows = [("FILE", "STATE", "FRAMES", "TIME", "OUTPUT / REASON")]
    for f in result.files:
        rows.append((Path(f.input).name, f.state, "" if f.frames is None else str(f.frames),
                     "" if f.wall_s is None else f"{f.wall_s:.1f} s", f.note if f.state != "done" or f.note
                     else f.output))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    summary = (f"{result.count('done')} done, {result.count('failed')} failed, {result.count('skipped')} skipped"
               + (f", {result.count('pending')} left (interrupted)" if result.count("pending") else "")
               + f" in {result.wall_s:.1f} s")
    return "\n".join([*lines, summary])
