"""The orchestrator: runs each stage in its own thread, joined by bounded channels, supervised
from an asyncio event loop (uvloop where installed) that owns timers and metrics. Signals belong to
the caller: a command line's handler calls :meth:`Pipeline.interrupt`."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

import torch

from .channel import Channel, Policy
from .config import check, positive
from .device import limit_gpu_memory
from .errors import Cancelled, PipelineError, StageError
from .frame import Frame
from .metrics import GpuSampler, LatencyHistogram, QueueStats, StageStats, current_rss_mb, peak_rss_mb
from .stage import RunContext, Sink, Source, Stage, Transform
from .streams import StageStream

Status = Literal["ok", "error", "interrupted"]
FlowPolicy = Literal["auto", Policy]
T = TypeVar("T")


@dataclass
class FlowSettings:
    """How frames move between stages (the ``flow`` section of a preset).

    Attributes:
        policy: ``block``: lossless backpressure; ``latest``: drop the oldest frames to bound
            latency; ``auto``: ``latest`` for live inputs, ``block`` for files.
        queue_size: Capacity of each queue between two stages.
        batch_size: Most consecutive frames a batching stage takes at once.
        max_wait_ms: Longest wait for a batch to fill.

    Example:
        >>> FlowSettings(policy="latest").resolve(live=False)
        'latest'
    """

    policy: FlowPolicy = "auto"
    queue_size: int = 8
    batch_size: int = 8
    max_wait_ms: float = 20.0

    def __post_init__(self) -> None:
        policies = get_args(FlowPolicy)
        check(self.policy in policies, "policy", self.policy, f"must be one of {', '.join(policies)}")
        positive(self, "queue_size", "batch_size")
        check(self.max_wait_ms >= 0, "max_wait_ms", self.max_wait_ms, "must be >= 0")

    def resolve(self, *, live: bool) -> Policy:
        """The channel policy for an input that is (or is not) live."""
        if self.policy == "auto":
            return "latest" if live else "block"
        return self.policy


@dataclass
class Progress:
    """A snapshot handed to the progress display on every status tick."""

    elapsed_s: float
    frames_in: int
    frames_out: int
    frames_dropped: int
    fps: float
    total_frames: int | None
    live: bool
    latency_p95_ms: float
    queue_depths: list[int] = field(default_factory=list)
    final: bool = False
    streams: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunReport:
    """The outcome of a run: its status, the error if any, and the JSON-ready statistics."""

    status: Status
    error: PipelineError | None
    signal: int | None
    stats: dict[str, Any]

    @property
    def exit_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        if self.error is not None:
            return self.error.exit_code
        return 0


@dataclass
class _FeedFigures:
    """One feed's share of a run that reads several."""

    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def summary(self, stream: int) -> dict[str, Any]:
        return {"stream": stream, "frames_in": self.frames_in, "frames_out": self.frames_out,
                "frames_dropped": self.frames_dropped, "latency_ms": self.latency.summary_ms()}


def _stream_of(frame: Frame) -> int:
    return frame.stream


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a new event loop: uvloop where installed, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class Pipeline:
    """A linear graph: one source, any number of transforms, one sink.

    Args:
        stages: Source first, sink last.
        device: The run's device (shared by every stage), e.g. ``"cpu"`` or ``torch.device("cuda:0")``.
        policy: ``block`` (lossless backpressure) or ``latest`` (drop the oldest frames when
            downstream falls behind, for live sources).
        queue_size: Capacity of each channel (raised to the consumer's batch size if smaller).
        status_interval_s: How often ``on_progress`` is called.
        on_progress: Receives a :class:`Progress` every ``status_interval_s`` and once at the end.
        drain_timeout_s: After a second interrupt or a failure, how long to wait for threads.
        pinned_mb: Page-locked host memory the run's transfers may keep (``RunContext.pinned_bytes``).
        gpu_fraction: On CUDA, the share of the GPU's memory this process may take (torch's caching
            allocator raises out-of-memory beyond it; see :func:`~facestream.pipeline.device.limit_gpu_memory`).

    Example:
        >>> report = Pipeline([decoder, PassThrough(), encoder], device=torch.device("cpu")).run()
        ... # doctest: +SKIP
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        device: Any,
        policy: Policy = "block",
        queue_size: int = 8,
        status_interval_s: float = 1.0,
        on_progress: Callable[[Progress], None] | None = None,
        drain_timeout_s: float = 30.0,
        pinned_mb: int = 256,
        gpu_fraction: float | None = None,
    ) -> None:
        if len(stages) < 2 or not isinstance(stages[0], Source) or not isinstance(stages[-1], Sink):
            raise ValueError("a pipeline needs a Source first and a Sink last")
        if not all(isinstance(s, Transform) for s in stages[1:-1]):
            raise ValueError("the stages between the source and the sink must be Transforms")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.stages = list(stages)
        self.ctx = RunContext(device=torch.device(device), pinned_bytes=int(pinned_mb) << 20)
        limit_gpu_memory(self.ctx.device, gpu_fraction)
        self.policy = policy
        self.status_interval_s = status_interval_s
        self.on_progress = on_progress
        self.drain_timeout_s = drain_timeout_s
        self.channels: list[Channel[Frame]] = [
            Channel(
                capacity=max(queue_size, nxt.batch_size),
                policy=policy,
                name=f"{cur.name}->{nxt.name}",
                on_drop=self._count_drop,
                key=_stream_of,
            )
            for cur, nxt in zip(self.stages, self.stages[1:])
        ]
        self.stats = [StageStats(s.name) for s in self.stages]
        self.queue_stats = [QueueStats(ch.name, ch.capacity) for ch in self.channels]
        self.latency = LatencyHistogram()
        # Per feed, when the source reads several (frame.stream): frames in, out, dropped, latency.
        self._feeds: dict[int, _FeedFigures] = {}
        self._feeds_lock = threading.Lock()
        self._error: PipelineError | None = None
        self._failed_stage: int | None = None
        self._signal: int | None = None
        self._aborted = False
        self._threads: list[threading.Thread] = []
        self._opened: list[Stage] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._alive = 0
        self._t0 = 0.0
        self._t_end = 0.0
        self._gpu: GpuSampler | None = None
        self._recent: list[tuple[float, int]] = []
        # After finish(): the last frame index that may still reach the sink, and how many frames
        # were dropped to stop soon.
        self._finishing = False
        self._cut: int | None = None
        self._cut_lock = threading.Lock()
        self._discarded = 0

    # ------------------------------------------------------------------ public API

    def run(self) -> RunReport:
        """Run to the end of the source (or an error, or a stop) on a new event loop (uvloop where
        installed) and report. Inside a running loop, ``await pipeline.arun()`` instead."""
        return run_coroutine(self.arun())

    def snapshot(self) -> dict[str, Any]:
        """The report's figures so far, while the run goes on (a service's metrics, a live
        preview): the same keys as the final report, with ``status`` ``running`` until it ends."""
        if self._loop is None or self._t0 == 0.0:
            status: str = "starting"
        elif self._done is not None and self._done.done():
            status = "error" if self._error else ("interrupted" if self._signal else "ok")
        else:
            status = "running"
        return self._build_stats(status)  # type: ignore[arg-type]

    def request_stop(self) -> None:
        """Finish gracefully: the source stops, queued frames drain, the sink finalises."""
        self.ctx.stop.set()

    def finish(self) -> None:
        """Stop soon, keeping the output whole: the source stops, the frames still queued between
        stages are dropped, the frames being worked on go through to the sink, and the sink
        finalises. The output ends at a frame with nothing missing before it; a slow stage holds
        up the end by the batches in its hands, not by every queued frame."""
        self.ctx.stop.set()
        with self._cut_lock:
            # Stage threads look at the cut under this lock: a frame that reaches a channel
            # while the channels are being emptied is judged against the final cut.
            self._finishing = True
            lowest: int | None = None
            for ch in self.channels:
                dropped = ch.discard()
                self._discarded += len(dropped)
                for frame in dropped:
                    lowest = frame.index if lowest is None else min(lowest, frame.index)
            if lowest is not None:
                # Anything queued was dropped; frames in stages' hands below it go on, and any
                # above it would follow a gap, so they are dropped as they come out.
                self._cut = lowest - 1

    def abort(self) -> None:
        """Stop now: queued frames are discarded; the sink still finalises what it wrote."""
        self._aborted = True
        self.ctx.stop.set()
        for ch in self.channels:
            ch.cancel()

    def interrupt(self, signum: int) -> None:
        """A user's interrupt (the caller's signal handler calls this): the first finishes soon
        (:meth:`finish`), a second aborts. The report then says ``interrupted`` with that signal."""
        name = signal.Signals(signum).name
        if self._signal is None:
            self._signal = signum
            self.ctx.log.warning("%s: finishing the frames in hand and finalising the output (again to abort)", name)
            self.finish()
        else:
            self.ctx.log.warning("%s again: aborting", name)
            self.abort()

    # ------------------------------------------------------------------ orchestration

    async def arun(self) -> RunReport:
        """Run inside the current event loop: stage threads do the work while the loop supervises,
        samples queues and reports progress. A pipeline runs once."""
        if self._loop is not None:
            raise RuntimeError("a pipeline runs once; build a new one")
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        try:
            await self._in_thread(self._open_all)
        except PipelineError as exc:
            return RunReport("error", exc, None, {"status": "error", "error": str(exc)})
        for ch in self.channels:
            # Room for a frame of every feed, so that under ``latest`` none pushes out the others.
            ch.capacity = max(ch.capacity, len(self.ctx.streams))
        if self.ctx.device.type == "cuda":
            self._gpu = GpuSampler(self.ctx.device.index or 0)
        self._t0 = time.monotonic()
        self._start_threads()
        ticker = asyncio.ensure_future(self._tick())
        cancelled = False
        try:
            try:
                await asyncio.shield(self._done)
            except asyncio.CancelledError:
                # The awaiting task was cancelled (a service stopping a job, Ctrl-C under
                # asyncio.run): stop now, but let the sink finalise before passing it on.
                cancelled = True
                self.abort()
                await self._done
        finally:
            ticker.cancel()
            self._t_end = time.monotonic()
        await self._in_thread(self._join_threads)
        self._emit_progress(final=True)
        if self._gpu is not None:
            self._gpu.close()
        if cancelled:
            raise asyncio.CancelledError
        status: Status = "error" if self._error else ("interrupted" if self._signal else "ok")
        return RunReport(status, self._error, self._signal, self._build_stats(status))

    async def _in_thread(self, fn: Callable[[], Any]) -> Any:
        """Run blocking work in a daemon thread, so a hung call can never block interpreter exit."""
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        loop = self._loop

        def target() -> None:
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, fut, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, fut, result, None)

        threading.Thread(target=target, name="pipeline-helper", daemon=True).start()
        return await fut

    def _open_all(self) -> None:
        try:
            for stage in self.stages:
                try:
                    stage.open(self.ctx)
                except PipelineError:
                    raise
                except Exception as exc:
                    raise PipelineError(
                        f"stage '{stage.name}' could not start: {type(exc).__name__}: {exc}"
                    ) from exc
                self._opened.append(stage)
        except BaseException:
            for stage in reversed(self._opened):
                try:
                    stage.close()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
            self._opened.clear()
            raise

    def _start_threads(self) -> None:
        n = len(self.stages)
        self._alive = n
        for i, stage in enumerate(self.stages):
            inbox = self.channels[i - 1] if i > 0 else None
            outbox = self.channels[i] if i < n - 1 else None
            t = threading.Thread(
                target=self._worker, args=(i, stage, inbox, outbox), name=f"stage-{stage.name}", daemon=True
            )
            self._threads.append(t)
        for t in self._threads:
            t.start()

    def _join_threads(self) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ stage threads

    def _worker(self, i: int, stage: Stage, inbox: Channel[Frame] | None, outbox: Channel[Frame] | None) -> None:
        exc: BaseException | None = None
        frames: tuple[int, int] | None = None
        try:
            lane = StageStream(self.ctx.device)  # in this thread: it binds the thread to the device
            if isinstance(stage, Source):
                frames = self._run_source(i, stage, outbox, lane)
            else:
                frames = self._run_consumer(i, stage, inbox, outbox, lane)
        except Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 - reported to the orchestrator
            exc = e
            frames = getattr(e, "_pipeline_frames", frames)
        finally:
            if outbox is not None:
                outbox.close()
            try:
                stage.close()
            except BaseException as e:  # noqa: BLE001
                exc = exc or e
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._on_worker_exit, i, exc, frames)
            except RuntimeError:  # loop already closed after an abort
                pass

    def _run_source(self, i: int, stage: Source, outbox: Channel[Frame] | None,
                    lane: StageStream) -> tuple[int, int] | None:
        assert outbox is not None
        stats = self.stats[i]
        it = iter(stage.read())
        last = None
        while True:
            t = time.perf_counter()
            try:
                with lane:
                    frame = next(it)
                lane.mark(frame)
            except StopIteration:
                break
            except BaseException as e:
                e._pipeline_frames = (last + 1, last + 1) if last is not None else None  # type: ignore[attr-defined]
                raise
            dt = time.perf_counter() - t
            stats.record(1, dt)
            frame.timings[stage.name] = dt
            self._feed(frame.stream).frames_in += 1
            last = frame.index
            outbox.put(frame)
        return None

    def _run_consumer(
        self, i: int, stage: Stage, inbox: Channel[Frame] | None, outbox: Channel[Frame] | None, lane: StageStream
    ) -> tuple[int, int] | None:
        assert inbox is not None
        stats = self.stats[i]
        is_sink = isinstance(stage, Sink)
        wait_s = stage.max_wait_ms / 1000
        # Under ``latest``, a frame that has waited a whole frame interval is stale once a newer
        # one is queued: a stage that falls behind takes the freshest frame, not a stale batch.
        rate = self.ctx.source.frame_rate if self.ctx.source is not None else None
        max_age_s = float(1 / rate) if self.policy == "latest" and rate else None
        while True:
            batch = inbox.get_batch(stage.batch_size, wait_s, max_age_s)
            if batch is None:
                return None
            if self._finishing:
                batch = self._keep(batch)
                if not batch:
                    continue
            t = time.perf_counter()
            try:
                with lane:
                    lane.take(batch)
                    if is_sink:
                        stage.write(batch)  # type: ignore[union-attr]
                        out = batch
                    else:
                        out = stage.process(batch)  # type: ignore[union-attr]
                        lane.hand_on(out)
            except BaseException as e:
                e._pipeline_frames = (batch[0].index, batch[-1].index)  # type: ignore[attr-defined]
                raise
            dt = time.perf_counter() - t
            stats.record(len(batch), dt)
            if any(f.stream != batch[0].stream for f in batch):
                stats.mixed_batches += 1
            share = dt / len(batch)
            for f in batch:
                f.timings[stage.name] = share
            if is_sink:
                now = time.time()
                for f in batch:
                    latency = max(0.0, now - f.captured_at)
                    self.latency.add(latency)
                    feed = self._feed(f.stream)
                    feed.frames_out += 1
                    feed.latency.add(latency)
            else:
                assert outbox is not None
                if self._finishing:
                    out = self._keep(out)
                for f in out:
                    outbox.put(f)

    def _feed(self, stream: int) -> _FeedFigures:
        feed = self._feeds.get(stream)
        if feed is None:
            with self._feeds_lock:
                feed = self._feeds.setdefault(stream, _FeedFigures())
        return feed

    def _count_drop(self, frame: Frame) -> None:
        feed = self._feed(frame.stream)
        with self._feeds_lock:
            feed.frames_dropped += 1

    @property
    def _multi_feed(self) -> bool:
        return len(self.ctx.streams) > 1

    def _feed_figures(self) -> list[dict[str, Any]]:
        """Per feed (runs that read several): frames in, out, dropped between stages, latency."""
        if not self._multi_feed:
            return []
        return [self._feed(k).summary(k) for k in range(len(self.ctx.streams))]

    def _keep(self, frames: list[Frame]) -> list[Frame]:
        """After :meth:`finish`: the frames at or before the cut; the rest are dropped (counted)."""
        with self._cut_lock:
            if self._cut is None:
                return frames
            kept = [f for f in frames if f.index <= self._cut]
            self._discarded += len(frames) - len(kept)
        return kept

    # ------------------------------------------------------------------ supervision (event loop)

    def _on_worker_exit(self, i: int, exc: BaseException | None, frames: tuple[int, int] | None) -> None:
        self._alive -= 1
        if exc is not None and self._error is None:
            self._error = StageError(self.stages[i].name, frames, exc)
            self._failed_stage = i
            self._error.__cause__ = exc
            # Upstream stops; downstream drains what it already has, so the sink finalises the
            # frames done so far.
            self.ctx.stop.set()
            for ch in self.channels[:i]:
                ch.cancel()
        if self._alive == 0 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _tick(self) -> None:
        sample_every = 0.1
        status_every = max(self.status_interval_s, sample_every)
        next_status = time.monotonic() + status_every
        while True:
            await asyncio.sleep(sample_every)
            for qs, ch in zip(self.queue_stats, self.channels):
                qs.sample(len(ch))
            now = time.monotonic()
            if now >= next_status:
                next_status = now + status_every
                if self._gpu is not None:
                    self._gpu.sample()
                self._emit_progress(final=False)

    def _emit_progress(self, *, final: bool) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        out = self.stats[-1].frames
        self._recent.append((now, out))
        while len(self._recent) > 2 and now - self._recent[0][0] > 5.0:
            self._recent.pop(0)
        elapsed = (self._t_end if final and self._t_end else now) - self._t0
        if final:
            fps = out / elapsed if elapsed > 0 else 0.0
        else:
            # The recent rate, over the last seconds; while batches are still on their way (nothing
            # written in that window), the average so far rather than a misleading 0.
            (t_a, n_a), (t_b, n_b) = self._recent[0], self._recent[-1]
            fps = (n_b - n_a) / (t_b - t_a) if t_b > t_a and n_b > n_a else (out / elapsed if elapsed > 0 else 0.0)
        info = self.ctx.source
        self.on_progress(
            Progress(
                elapsed_s=elapsed,
                frames_in=self.stats[0].frames,
                frames_out=out,
                frames_dropped=sum(ch.drops for ch in self.channels),
                fps=fps,
                total_frames=info.frame_count if info else None,
                live=bool(info and info.live),
                latency_p95_ms=self.latency.percentile(95) * 1e3,
                queue_depths=[len(ch) for ch in self.channels],
                final=final,
                streams=self._feed_figures(),
            )
        )

    # ------------------------------------------------------------------ report

    def _build_stats(self, status: Status) -> dict[str, Any]:
        end = self._t_end or (time.monotonic() if self._t0 else 0.0)
        wall = max(end - self._t0, 1e-9)
        frames_out = self.stats[-1].frames
        stages: dict[str, Any] = {}
        for stage, st in zip(self.stages, self.stats):
            stages[stage.name] = {**st.summary(wall), **stage.report()}
            if self._multi_feed and not isinstance(stage, Source):
                stages[stage.name]["mixed_batches"] = st.mixed_batches
        feeds = {"streams": self._feed_figures()} if self._multi_feed else {}
        return {
            "status": status,
            "error": str(self._error) if self._error else None,
            "signal": signal.Signals(self._signal).name if self._signal else None,
            "device": str(self.ctx.device),
            "policy": self.policy,
            "frames_in": self.stats[0].frames,
            "frames_out": frames_out,
            "frames_dropped": sum(ch.drops for ch in self.channels),
            "frames_dropped_on_stop": self._discarded,
            "wall_s": round(wall, 3),
            "fps": round(frames_out / wall, 2),
            "latency_ms": self.latency.summary_ms(),
            **feeds,
            "stages": stages,
            "queues": {
                ch.name: qs.summary(ch.drops) for ch, qs in zip(self.channels, self.queue_stats)
            },
            "gpu": self._gpu.summary() if self._gpu else None,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_mb": round(current_rss_mb(), 1),
        }
