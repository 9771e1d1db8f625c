"""``GET /metrics``: the service's figures in the Prometheus text format.

Counters and histograms cover every run since the service started (finished runs' figures are
kept when their pipeline goes); gauges describe what runs now. Metric names:

- ``facestream_runs{kind,state}``: jobs and streams by state; ``facestream_jobs_queued``.
- ``facestream_frames_in_total``, ``facestream_frames_out_total``, ``facestream_frames_dropped_total``
  ``{kind}``.
- ``facestream_stage_seconds{kind,stage}``: a histogram of each stage's time per call (a batch).
- ``facestream_frame_latency_seconds{kind}``: a histogram of decode-to-write latency.
- per running job or stream ``{kind,id}``: ``facestream_run_fps``, ``facestream_run_frames_out``,
  ``facestream_queue_depth{queue}`` and ``facestream_queue_capacity{queue}``.
- ``facestream_gpu_utilization_ratio{gpu}``, ``facestream_gpu_memory_used_bytes{gpu}``,
  ``facestream_gpu_memory_total_bytes{gpu}`` where NVML finds a GPU.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from facestream import __version__
from facestream.pipeline.metrics import LatencyHistogram

if TYPE_CHECKING:
    from facestream.pipeline.runner import Pipeline

    from .jobs import Manager

# Seconds: a stage call (a batch) takes from well under a millisecond to seconds on a CPU.
BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KINDS = ("job", "stream")


@dataclass
class Buckets:
    """A :class:`LatencyHistogram`'s counts, kept after its pipeline is gone and merged over runs."""

    counts: Counter[int] = field(default_factory=Counter)
    total_s: float = 0.0
    n: int = 0

    @classmethod
    def of(cls, h: LatencyHistogram) -> Buckets:
        # The pipeline's histogram keeps log-spaced buckets (1 % wide); they are read as they are
        # under its own lock (it has no public accessor for them).
        with h._lock:
            return cls(Counter(h._buckets), h.total, h.count)

    def merge(self, other: Buckets) -> Buckets:
        return Buckets(self.counts + other.counts, self.total_s + other.total_s, self.n + other.n)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: ``(le, count of values <= le)``, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        for bound in BOUNDS:
            # A bucket counts towards ``le`` when its upper edge is not above it (within 1 %).
            top = math.log(bound / LatencyHistogram._MIN_S, LatencyHistogram._GROWTH) - 1
            out.append((repr(bound), float(sum(c for k, c in self.counts.items() if k <= top))))
        out.append(("+Inf", float(self.n)))
        return out


class ServiceMetrics:
    """The figures of finished runs, and the collector Prometheus' registry calls on each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        self.stages: dict[tuple[str, str], Buckets] = {}
        self.latency: dict[str, Buckets] = {}
        self.manager: Manager | None = None
        self._nvml: Any = None
        self._nvml_tried = False

    def absorb(self, kind: str, pipeline: Pipeline) -> None:
        """Keep a finished run's figures."""
        frames, stages, latency = _pipeline_figures(pipeline)
        with self._lock:
            self.frames[kind].update(frames)
            for stage, b in stages.items():
                self.stages[(kind, stage)] = self.stages.get((kind, stage), Buckets()).merge(b)
            self.latency[kind] = self.latency.get(kind, Buckets()).merge(latency)

    # ------------------------------------------------------------------ prometheus_client collector

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        from .jobs import STATES

        manager = self.manager
        runs = list(manager.runs.values()) if manager is not None else []
        active = [(r, r.job.pipeline) for r in runs if r.job is not None]

        info = GaugeMetricFamily("facestream_info", "The service's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        by_state = GaugeMetricFamily("facestream_runs", "Jobs and streams by state", labels=["kind", "state"])
        for kind in KINDS:
            for state in STATES:
                by_state.add_metric([kind, state], sum(1 for r in runs if r.kind == kind and r.state == state))
        yield by_state
        queued = GaugeMetricFamily("facestream_jobs_queued", "Jobs waiting for a free slot")
        queued.add_metric([], sum(1 for r in runs if r.kind == "job" and r.state == "queued"))
        yield queued

        with self._lock:
            frames = {k: Counter(v) for k, v in self.frames.items()}
            stages = dict(self.stages)
            latency = dict(self.latency)
        for run, pipeline in active:
            f, s, lat = _pipeline_figures(pipeline)
            frames[run.kind].update(f)
            for stage, b in s.items():
                stages[(run.kind, stage)] = stages.get((run.kind, stage), Buckets()).merge(b)
            latency[run.kind] = latency.get(run.kind, Buckets()).merge(lat)

        for what, text in (("in", "Frames decoded"), ("out", "Frames written"),
                           ("dropped", "Frames dropped to keep live latency bounded")):
            c = CounterMetricFamily(f"facestream_frames_{what}", text, labels=["kind"])
            for kind in KINDS:
                c.add_metric([kind], frames[kind][what])
            yield c

        h = HistogramMetricFamily("facestream_stage_seconds", "Time of each stage call (a batch of frames)",
                                  labels=["kind", "stage"])
        for (kind, stage), b in sorted(stages.items()):
            h.add_metric([kind, stage], b.cumulative(), b.total_s)
        yield h
        h = HistogramMetricFamily("facestream_frame_latency_seconds", "Capture-to-write latency of each frame",
                                  labels=["kind"])
        for kind, b in sorted(latency.items()):
            h.add_metric([kind], b.cumulative(), b.total_s)
        yield h

        fps = GaugeMetricFamily("facestream_run_fps", "Frames written per second by a running job or stream",
                                labels=["kind", "id"])
        out = GaugeMetricFamily("facestream_run_frames_out", "Frames written so far by a running job or stream",
                                labels=["kind", "id"])
        depth = GaugeMetricFamily("facestream_queue_depth", "Frames waiting in a queue between two stages",
                                  labels=["kind", "id", "queue"])
        capacity = GaugeMetricFamily("facestream_queue_capacity", "Capacity of a queue between two stages",
                                     labels=["kind", "id", "queue"])
        for run, pipeline in active:
            fps.add_metric([run.kind, run.id], float(run.progress.get("fps") or 0.0))
            out.add_metric([run.kind, run.id], pipeline.stats[-1].frames)
            for ch in pipeline.channels:
                depth.add_metric([run.kind, run.id, ch.name], len(ch))
                capacity.add_metric([run.kind, run.id, ch.name], ch.capacity)
        yield from (fps, out, depth, capacity)
        yield from self._gpus()

    def _gpus(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        nvml = self._nvml_module()
        if nvml is None:
            return
        util = GaugeMetricFamily("facestream_gpu_utilization_ratio", "GPU busy share (NVML)", labels=["gpu"])
        used = GaugeMetricFamily("facestream_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"])
        total = GaugeMetricFamily("facestream_gpu_memory_total_bytes", "GPU memory (NVML)", labels=["gpu"])
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                util.add_metric([str(i)], rates.gpu / 100)
                used.add_metric([str(i)], mem.used)
                total.add_metric([str(i)], mem.total)
        except Exception:  # noqa: BLE001 - a transient NVML failure: no GPU figures this scrape
            return
        yield from (util, used, total)

    def _nvml_module(self) -> Any:
        if not self._nvml_tried:
            self._nvml_tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:  # noqa: BLE001 - no driver or library: no GPU figures
                self._nvml = None
        return self._nvml


def _pipeline_figures(pipeline: Pipeline) -> tuple[Counter[str], dict[str, Buckets], Buckets]:
    frames = Counter({"in": pipeline.stats[0].frames, "out": pipeline.stats[-1].frames,
                      "dropped": sum(ch.drops for ch in pipeline.channels)})
    stages = {stage.name: Buckets.of(st.latency) for stage, st in zip(pipeline.stages, pipeline.stats)}
    return frames, stages, Buckets.of(pipeline.latency)


def render(metrics: ServiceMetrics) -> tuple[bytes, str]:
    """The text exposition and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
