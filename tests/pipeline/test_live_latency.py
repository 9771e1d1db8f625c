"""The live flow's latency: a source twice as fast as the pipeline can go adds at most one frame
interval of waiting to what the stages themselves take, and what it cannot take is dropped and counted."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import torch

from facestream.pipeline.frame import Frame
from facestream.pipeline.runner import Pipeline
from facestream.pipeline.stage import RunContext, Sink, Source, SourceInfo, Transform
from facestream.settings import load_settings

FPS = 25.0
INTERVAL = 1 / FPS


class LiveSource(Source):
    """Frames at a steady real-time rate, each stamped with its capture time."""

    name = "camera"

    def __init__(self, n: int) -> None:
        self.n = n

    def open(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.info = SourceInfo(width=8, height=8, frame_rate=Fraction(int(FPS)), time_base=Fraction(1, 1000),
                               live=True)
        ctx.source = self.info

    def read(self):
        t0 = time.monotonic()
        for i in range(self.n):
            delay = t0 + i * INTERVAL - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self.ctx.stop.is_set():
                return
            yield Frame(index=i, pts=round(i * INTERVAL * 1000), time_base=Fraction(1, 1000), captured_at=time.time(),
                        image=torch.zeros(8, 8, 3, dtype=torch.uint8))


class Work(Transform):
    """Takes a known time per frame (a batch of n takes n times as long); notes each frame's compute."""

    name = "work"

    def __init__(self, per_frame_s: float, batch_size: int, max_wait_ms: float) -> None:
        self.per_frame_s, self.batch_size, self.max_wait_ms = per_frame_s, batch_size, max_wait_ms
        self.compute: dict[int, float] = {}

    def process(self, frames):
        t = time.perf_counter()
        time.sleep(self.per_frame_s * len(frames))
        took = time.perf_counter() - t  # no frame of the batch leaves before the whole batch is done
        for f in frames:
            self.compute[f.index] = took
        return frames


class Viewer(Sink):
    name = "viewer"

    def __init__(self) -> None:
        self.latency: dict[int, float] = {}
        self.indices: list[int] = []

    def write(self, frames):
        now = time.time()
        for f in frames:
            self.latency[f.index] = now - f.captured_at
            self.indices.append(f.index)


def test_live_flow_adds_at_most_a_frame_interval_when_the_source_is_twice_too_fast():
    flow = load_settings(preset="live").flow
    assert flow.resolve(live=True) == "latest"
    work = Work(per_frame_s=2 * INTERVAL, batch_size=flow.batch_size, max_wait_ms=flow.max_wait_ms)
    viewer = Viewer()
    n = 100  # 4 s
    report = Pipeline([LiveSource(n), work, viewer], device="cpu", policy=flow.resolve(live=True),
                      queue_size=flow.queue_size).run()
    stats = report.stats
    assert report.status == "ok"
    # Half the frames cannot be processed: they are dropped, and every one is counted.
    assert stats["frames_in"] == n
    assert 0.3 * n <= stats["frames_dropped"] <= 0.7 * n, stats
    assert stats["frames_out"] + stats["frames_dropped"] == n
    assert viewer.indices == sorted(viewer.indices)
    # What is shown waited, beyond its own compute, at most one frame interval (p95).
    added = np.array([viewer.latency[i] - work.compute[i] for i in viewer.indices])
    assert np.percentile(added, 95) <= INTERVAL, np.percentile(added, [50, 95, 100])
    # The run report's end-to-end latency says the same: compute (2 intervals) plus at most one.
    assert stats["latency_ms"]["p95_ms"] <= 1e3 * (3 * INTERVAL + 0.01), stats["latency_ms"]
