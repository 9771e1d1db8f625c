"""The orchestrator, with small synthetic stages around the real decoder and encoder."""

import random
import threading
import time
from fractions import Fraction

import pytest
import torch

from facestream.pipeline.errors import StageError
from facestream.pipeline.frame import Frame
from facestream.pipeline.runner import Pipeline
from facestream.pipeline.stage import RunContext, Sink, Source, SourceInfo, Transform
from facestream.stages.decoder import Decoder
from facestream.stages.encoder import Encoder, EncoderSettings
from tests.media import probe

CPU = torch.device("cpu")


class CountingSource(Source):
    name = "source"

    def __init__(self, n, *, fps=None, size=(32, 24)):
        self.n, self.fps, self.size = n, fps, size

    def open(self, ctx: RunContext) -> None:
        self.ctx = ctx
        w, h = self.size
        self.info = SourceInfo(width=w, height=h, frame_rate=Fraction(self.fps or 25), time_base=Fraction(1, 1000),
                               live=self.fps is not None, frame_count=self.n)
        ctx.source = self.info

    def read(self):
        t0 = time.monotonic()
        w, h = self.size
        for i in range(self.n):
            if self.ctx.stop.is_set():
                return
            if self.fps:
                delay = t0 + i / self.fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            image = torch.full((h, w, 3), i % 256, dtype=torch.uint8)
            yield Frame(index=i, pts=i * 40, time_base=Fraction(1, 1000), captured_at=time.time(), image=image)


class Collect(Sink):
    name = "sink"

    def __init__(self):
        self.indices = []
        self.latencies = []
        self.closed = False

    def write(self, frames):
        now = time.time()
        for f in frames:
            self.indices.append(f.index)
            self.latencies.append(now - f.captured_at)

    def close(self):
        self.closed = True


class Jitter(Transform):
    """Sleeps a random time per batch; checks that batches are consecutive frames."""

    def __init__(self, name, batch_size=1, max_wait_ms=0.0, delay=0.002):
        self.name, self.batch_size, self.max_wait_ms, self.delay = name, batch_size, max_wait_ms, delay
        self.batches = []

    def process(self, frames):
        assert [f.index for f in frames] == list(range(frames[0].index, frames[0].index + len(frames)))
        self.batches.append(len(frames))
        time.sleep(random.uniform(0, self.delay))
        return frames


class FailAt(Transform):
    name = "faulty"

    def __init__(self, index, exc=RuntimeError("boom")):
        self.index, self.exc = index, exc

    def process(self, frames):
        if any(f.index == self.index for f in frames):
            raise self.exc
        return frames


class Slow(Transform):
    name = "slow"

    def __init__(self, seconds):
        self.seconds = seconds

    def process(self, frames):
        time.sleep(self.seconds * len(frames))
        return frames


def stage_threads():
    return [t for t in threading.enumerate() if t.name.startswith("stage-")]


def test_batched_stages_keep_order_and_batch_consecutive_frames():
    random.seed(1)
    batcher = Jitter("batcher", batch_size=4, max_wait_ms=5)
    sink = Collect()
    report = Pipeline([CountingSource(300), Jitter("a"), batcher, Jitter("b", batch_size=3, max_wait_ms=1), sink],
                      device=CPU, queue_size=4).run()
    assert report.status == "ok" and report.exit_code == 0
    assert sink.indices == list(range(300))
    assert max(batcher.batches) == 4 and sum(batcher.batches) == 300
    assert sum(b > 1 for b in batcher.batches) > 10, "the batching stage should actually batch"
    stats = report.stats
    assert stats["frames_in"] == stats["frames_out"] == 300 and stats["frames_dropped"] == 0
    for name in ("source", "a", "batcher", "b", "sink"):
        s = stats["stages"][name]
        assert s["frames"] == 300 and {"fps", "p50_ms", "p95_ms", "max_ms", "busy"} <= s.keys()
        assert s["p50_ms"] <= s["p95_ms"] <= s["max_ms"]


def test_a_failing_stage_stops_the_graph_and_names_stage_and_frame(tmp_path, clip):
    src = clip("fail.mp4", seconds=4, fps=25, audio="aac")
    out = tmp_path / "out.mp4"
    report = Pipeline([Decoder(source=str(src)), FailAt(40), Encoder(EncoderSettings(preset="ultrafast"), path=str(out))],
                      device=CPU, queue_size=4).run()
    assert report.status == "error" and report.exit_code != 0
    assert isinstance(report.error, StageError)
    assert report.error.stage == "faulty" and report.error.frames == (40, 40)
    assert "stage 'faulty' at frame 40 failed: RuntimeError: boom" in str(report.error)
    # Everything before the failing frame reached the encoder, and the file plays.
    p = probe(out)
    assert p.frames == 40
    assert p.audio_streams == ["aac"]
    assert not stage_threads()


def test_an_error_during_open_is_reported_and_nothing_is_left_running(tmp_path):
    report = Pipeline([Decoder(source=str(tmp_path / "missing.mp4")), Collect()], device=CPU).run()
    assert report.status == "error" and "input not found" in str(report.error)
    assert not stage_threads()


def test_a_failing_sink_stops_upstream_without_hanging():
    class BadSink(Collect):
        def write(self, frames):
            if frames[0].index >= 10:
                raise OSError("disk full")
            super().write(frames)

    sink = BadSink()
    t = time.monotonic()
    report = Pipeline([CountingSource(100_000), Jitter("a"), sink], device=CPU, queue_size=2).run()
    assert time.monotonic() - t < 20
    assert report.status == "error" and "stage 'sink' at frame 10 failed: OSError: disk full" in str(report.error)
    assert sink.closed
    assert not stage_threads()


def test_request_stop_drains_every_decoded_frame():
    sink = Collect()
    pipe = Pipeline([CountingSource(100_000, fps=400), Jitter("a", delay=0.004), sink], device=CPU, queue_size=8,
                    policy="block")
    threading.Timer(0.5, pipe.request_stop).start()
    report = pipe.run()
    assert report.status == "ok"
    assert 0 < report.stats["frames_out"] == report.stats["frames_in"]
    assert sink.indices == list(range(len(sink.indices)))


def test_abort_discards_queued_frames_but_still_closes_the_sink():
    sink = Collect()
    pipe = Pipeline([CountingSource(100_000), Slow(0.05), sink], device=CPU, queue_size=8)
    threading.Timer(0.5, pipe.abort).start()
    t = time.monotonic()
    report = pipe.run()
    assert time.monotonic() - t < 10
    # Both queues were full (the source is far faster than the slow stage): abort dropped them.
    stats = report.stats
    assert stats["frames_in"] - stats["frames_out"] >= 8, stats
    assert sink.indices == list(range(len(sink.indices))), "what was written is in order, with no gap"
    assert sink.closed
    assert not stage_threads()


@pytest.mark.parametrize("queue_size", [1, 3])
def test_latest_policy_bounds_latency_and_counts_drops_behind_a_slow_stage(queue_size):
    """A real-time 50 fps source feeding a stage that manages only 10 fps."""
    sink = Collect()
    slow = Slow(0.1)
    pipe = Pipeline([CountingSource(150, fps=50), slow, sink], device=CPU, policy="latest", queue_size=queue_size)
    report = pipe.run()
    stats = report.stats
    assert report.status == "ok"
    assert stats["frames_dropped"] > 50, "most frames must be dropped when the stage is 5x too slow"
    assert stats["frames_in"] == 150
    assert stats["frames_out"] + stats["frames_dropped"] == 150
    assert sum(q["drops"] for q in stats["queues"].values()) == stats["frames_dropped"]
    assert all(q["depth_max"] <= q["capacity"] for q in stats["queues"].values())
    # The backlog never grows: late frames wait no longer than early ones, and every frame waits
    # at most the queued frames' worth of processing plus its own.
    bound = (queue_size + 2) * 0.1 + 0.25
    assert max(sink.latencies) < bound
    third = len(sink.latencies) // 3
    early = sum(sink.latencies[:third]) / third
    late = sum(sink.latencies[-third:]) / third
    assert late < early + 0.15
    assert sink.indices == sorted(sink.indices)


def test_block_policy_behind_the_same_slow_stage_loses_nothing():
    sink = Collect()
    report = Pipeline([CountingSource(30, fps=50), Slow(0.02), sink], device=CPU, policy="block", queue_size=2).run()
    assert report.stats["frames_dropped"] == 0 and sink.indices == list(range(30))


def test_pipeline_shape_is_validated():
    with pytest.raises(ValueError, match="Source first"):
        Pipeline([Collect(), Collect()], device=CPU)
    with pytest.raises(ValueError, match="unique"):
        Pipeline([CountingSource(1), Jitter("x"), Jitter("x"), Collect()], device=CPU)


class Stamped(Transform):
    """Sleeps per frame and records when each batch started."""

    def __init__(self, name, seconds, batch_size=1):
        self.name, self.seconds, self.batch_size = name, seconds, batch_size
        self.started = []

    def process(self, frames):
        self.started.append((time.monotonic(), [f.index for f in frames]))
        time.sleep(self.seconds * len(frames))
        return frames


def _interrupt_at(*delays):
    import os
    import signal

    for d in delays:
        threading.Timer(d, os.kill, (os.getpid(), signal.SIGINT)).start()


def test_first_interrupt_finishes_the_frames_in_hand_and_keeps_the_output_whole():
    """The first Ctrl-C does not wait for every queued frame to cross a slow stage: queued frames
    are dropped, the ones in stages' hands are written, and the output has no gap."""
    import signal

    from facestream.app import Job
    from facestream.cli import run_interruptible
    from facestream.settings import Settings

    fast, slow, sink = Stamped("fast", 0.002, batch_size=4), Stamped("slow", 0.1, batch_size=4), Collect()
    pipe = Pipeline([CountingSource(100_000), fast, slow, sink], device=CPU, queue_size=8)
    _interrupt_at(1.0)
    report = run_interruptible(Job(pipe, Settings(), "counting", "collect"))
    assert report.signal == signal.SIGINT and report.exit_code == 130 and report.status == "interrupted"
    assert sink.closed and sink.indices == list(range(len(sink.indices))), "the output has no gap"
    signalled = pipe._t0 + 1.0
    after = [idx for t, idx in slow.started if t > signalled + 0.05]
    # Draining would have pushed every queued frame (8 before the slow stage, more before that)
    # through it; finishing lets at most the frames already past the queues reach it.
    assert sum(len(b) for b in after) <= 4, after
    stats = report.stats
    assert stats["frames_dropped_on_stop"] >= 8
    assert stats["frames_in"] == stats["frames_out"] + stats["frames_dropped_on_stop"]


def test_first_interrupt_finishes_second_aborts():
    """A second SIGINT discards what is left, even the batch a slow stage is working on; the sink
    is closed either way and the handler is removed afterwards."""
    import signal

    from facestream.app import Job
    from facestream.cli import run_interruptible
    from facestream.settings import Settings

    sink = Collect()
    pipe = Pipeline([CountingSource(100_000), Slow(0.5), sink], device=CPU, queue_size=8)
    _interrupt_at(0.6, 0.9)
    t = time.monotonic()
    report = run_interruptible(Job(pipe, Settings(), "counting", "collect"))
    elapsed = time.monotonic() - t
    assert report.signal == signal.SIGINT and report.exit_code == 130 and report.status == "interrupted"
    assert sink.closed
    assert report.stats["frames_out"] < report.stats["frames_in"]
    assert sink.indices == list(range(len(sink.indices)))
    assert elapsed < 3.0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is removed afterwards"


def test_the_runtime_installs_no_signal_handler():
    """Signals belong to the caller: a plain ``run()`` leaves SIGTERM alone (asyncio's own runner
    takes SIGINT to cancel the run, which then aborts and finalises: the test below)."""
    import signal

    seen = []

    class Peek(Transform):
        name = "peek"

        def process(self, frames):
            seen.append(signal.getsignal(signal.SIGTERM))
            return frames

    Pipeline([CountingSource(3), Peek(), Collect()], device=CPU).run()
    assert seen and all(h is signal.SIG_DFL for h in seen)


def test_cancelling_the_awaiting_task_aborts_and_still_finalises():
    import asyncio

    sink = Collect()

    async def main():
        pipe = Pipeline([CountingSource(100_000), Slow(0.05), sink], device=CPU, queue_size=4)
        task = asyncio.ensure_future(pipe.arun())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pipe

    pipe = asyncio.run(main())
    assert sink.closed and 0 < len(sink.indices) < 100
    assert not stage_threads()
    assert pipe.stats[0].frames > len(sink.indices), "queued frames were discarded, not drained"


def test_pipelines_are_awaited_inside_a_running_loop():
    """Two pipelines awaited side by side in one event loop (as a web service or a notebook does)."""
    import asyncio

    sinks = [Collect(), Collect()]

    async def main():
        pipes = [Pipeline([CountingSource(50), Jitter(f"j{k}"), sink], device=CPU) for k, sink in enumerate(sinks)]
        return await asyncio.gather(*(p.arun() for p in pipes))

    reports = asyncio.run(main())
    assert [r.status for r in reports] == ["ok", "ok"]
    assert all(s.indices == list(range(50)) and s.closed for s in sinks)
    with pytest.raises(RuntimeError, match="runs once"):
        pipe = Pipeline([CountingSource(1), Collect()], device=CPU)
        pipe.run()
        pipe.run()


def test_progress_shows_the_average_rate_while_batches_are_on_their_way(monkeypatch):
    """Slow batching stages write frames in bursts seconds apart; between bursts the status shows
    the rate so far, not 0.0 fps."""
    import facestream.pipeline.runner as runner

    seen = []
    pipe = Pipeline([CountingSource(1), Collect()], device=CPU, on_progress=seen.append)
    clock = [0.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    pipe._t0 = 0.0
    for t, written in ((1, 0), (2, 0), (3, 8), (4, 8), (5, 8), (6, 8), (7, 8), (8, 8), (9, 8), (10, 16)):
        clock[0] = float(t)
        pipe.stats[-1].frames = written
        pipe._emit_progress(final=False)
    rates = [p.fps for p in seen if p.frames_out > 0]
    assert len(rates) == 8 and all(r > 0 for r in rates), rates


def test_snapshot_gives_the_figures_so_far_while_the_run_goes_on():
    """A service's metrics and a live preview read the figures mid-run, from the event loop."""
    import asyncio

    sink = Collect()
    pipe = Pipeline([CountingSource(200, fps=100), Jitter("j"), sink], device=CPU)
    assert pipe.snapshot()["status"] == "starting"
    seen = []

    async def main():
        task = asyncio.ensure_future(pipe.arun())
        while not task.done():
            await asyncio.sleep(0.3)
            seen.append(pipe.snapshot())
        return await task

    report = asyncio.run(main())
    running = [s for s in seen if s["status"] == "running"]
    assert len(running) >= 3
    outs = [s["frames_out"] for s in running]
    assert outs == sorted(outs) and outs[-1] > outs[0] > 0
    assert all(0 < a["wall_s"] < b["wall_s"] for a, b in zip(running, running[1:]))
    assert set(running[-1]["stages"]) == {"source", "j", "sink"}
    assert pipe.snapshot()["status"] == report.status == "ok"
    assert pipe.snapshot()["frames_out"] == 200
