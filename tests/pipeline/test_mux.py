"""Several feeds on one pipeline, with the runtime alone: the Muxer and the Router."""

import threading
import time
from fractions import Fraction

import pytest
import torch

from facestream.pipeline.mux import Muxer
from facestream.pipeline.router import Router
from facestream.pipeline.runner import Pipeline
from facestream.pipeline.stage import RunContext, Sink, Source, SourceInfo, Transform
from tests.pipeline.test_runner import Collect, CountingSource

CPU = torch.device("cpu")


class Feed(CountingSource):
    """A paced feed that sends a side item with each frame, and can stall or fail after a while."""

    def __init__(self, n, *, fps=None, size=(32, 24), stall_after=None, fail_after=None):
        super().__init__(n, fps=fps, size=size)
        self.stall_after, self.fail_after = stall_after, fail_after
        self.closed = False

    def read(self):
        for frame in super().read():
            if frame.index == self.stall_after:
                self.ctx.stop.wait()  # stuck until the run stops, as a feed with no data and no timeout
                return
            if frame.index == self.fail_after:
                raise RuntimeError("the feed broke")
            self.ctx.side.put(("side", frame.index))
            yield frame

    def close(self):
        self.closed = True


class Batches(Transform):
    name = "model"

    def __init__(self, batch_size=8, max_wait_ms=30.0):
        self.batch_size, self.max_wait_ms = batch_size, max_wait_ms
        self.streams = []

    def process(self, frames):
        self.streams.append({f.stream for f in frames})
        return frames


class FeedSink(Sink):
    """One feed's output: what it was opened with, the frames and side items it got."""

    def __init__(self):
        self.frames, self.side = [], []
        self.info = None
        self.closed = False

    def open(self, ctx: RunContext) -> None:
        self.ctx, self.info = ctx, ctx.source

    def write(self, frames):
        self.frames += frames
        self.side += self.ctx.side.take_all()

    def close(self):
        self.side += self.ctx.side.take_all()
        self.closed = True


def _run_until(pipeline, done, timeout=20.0):
    """Run on a thread; stop the run once ``done()`` holds (or at the timeout)."""
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("report", pipeline.run()))
    t.start()
    deadline = time.monotonic() + timeout
    while t.is_alive() and not done() and time.monotonic() < deadline:
        time.sleep(0.02)
    pipeline.request_stop()
    t.join(20)
    assert not t.is_alive()
    return result["report"]


def test_frames_are_merged_in_arrival_order_and_each_feed_keeps_its_order():
    sink = Collect()
    frames = []
    sink.write = lambda batch: frames.extend(batch)  # noqa: E731 - keep the frames themselves
    model = Batches()
    feeds = [Feed(30, fps=60), Feed(12, fps=25), Feed(20, fps=40)]
    report = Pipeline([Muxer(feeds), model, sink], device=CPU).run()
    assert report.status == "ok", report.error
    # Run-wide indices: every frame once, in order; each feed's frames all there, in its own order.
    assert [f.index for f in frames] == list(range(62))
    for k, feed in enumerate(feeds):
        assert [f.stream_index for f in frames if f.stream == k] == list(range(feed.n))
    # Arrival order: the feeds interleave as their frames were captured (not one feed after another).
    captured = [f.captured_at for f in frames]
    assert all(b >= a - 0.005 for a, b in zip(captured, captured[1:]))
    assert [f.stream for f in frames[:10]] != [frames[0].stream] * 10
    # The model's batches hold frames of several feeds, and the report counts them.
    assert any(len(s) > 1 for s in model.streams)
    assert report.stats["stages"]["model"]["mixed_batches"] == sum(len(s) > 1 for s in model.streams)
    figures = report.stats["streams"]
    assert [(f["frames_in"], f["frames_out"]) for f in figures] == [(30, 30), (12, 12), (20, 20)]
    assert all(feed.closed for feed in feeds)


@pytest.mark.parametrize("policy", ["block", "latest"])
def test_a_stalled_feed_does_not_stall_the_others(policy):
    sinks = [FeedSink(), FeedSink()]
    stalled, fast = Feed(100, fps=50, stall_after=3), Feed(40, fps=50)
    pipeline = Pipeline([Muxer([stalled, fast], policy=policy), Batches(max_wait_ms=5), Router(sinks)], device=CPU, policy=policy)
    report = _run_until(pipeline, lambda: bool(sinks[1].frames) and sinks[1].frames[-1].stream_index == 39)
    assert report.status == "ok", report.error
    # The fast feed went through to its end while the other sent nothing after its third frame
    # (whole under ``block``; under ``latest`` a frame that waited a frame interval may be dropped).
    got = [f.stream_index for f in sinks[1].frames]
    assert got == list(range(40)) if policy == "block" else (got == sorted(got) and got[-1] == 39 and len(got) >= 30)
    assert [f.stream_index for f in sinks[0].frames] == [0, 1, 2]
    assert all(s.closed for s in sinks) and stalled.closed and fast.closed


def test_a_failing_feed_ends_alone_and_the_run_names_it():
    sinks = [FeedSink(), FeedSink()]
    broken, whole = Feed(50, fps=50, fail_after=5), Feed(40, fps=50, size=(48, 16))
    report = Pipeline([Muxer([broken, whole]), Batches(), Router(sinks)], device=CPU).run()
    assert report.status == "error"
    assert "feed 0 failed: RuntimeError: the feed broke" in str(report.error)
    # The other feed went on to its end; the broken one's frames before the failure were written.
    assert [f.stream_index for f in sinks[1].frames] == list(range(40))
    assert [f.stream_index for f in sinks[0].frames] == list(range(5))
    feeds = report.stats["stages"]["muxer"]["feeds"]
    assert "the feed broke" in feeds[0]["error"] and feeds[1]["error"] is None
    assert all(s.closed for s in sinks)


def test_each_output_opens_with_its_own_feed_and_gets_its_own_side_items():
    sinks = [FeedSink(), FeedSink()]
    feeds = [Feed(10, fps=50, size=(32, 24)), Feed(15, fps=50, size=(64, 48))]
    report = Pipeline([Muxer(feeds), Batches(), Router(sinks)], device=CPU).run()
    assert report.status == "ok", report.error
    assert [(s.info.width, s.info.height) for s in sinks] == [(32, 24), (64, 48)]
    assert [len(s.frames) for s in sinks] == [10, 15]
    assert all({f.stream for f in s.frames} == {k} for k, s in enumerate(sinks))
    assert [s.side for s in sinks] == [[("side", i) for i in range(10)], [("side", i) for i in range(15)]]


def test_latest_feeds_drop_their_own_oldest_frames_when_the_pipeline_falls_behind():
    class Slow(Batches):
        def process(self, frames):
            time.sleep(0.05)
            return frames

    sink = Collect()
    muxer = Muxer([CountingSource(60, fps=100), CountingSource(60, fps=100)], policy="latest", queue_size=1)
    # The slow stage takes up to a frame of each feed at once (as the model stages and the Router do).
    report = Pipeline([muxer, Slow(batch_size=2, max_wait_ms=0), sink], device=CPU, policy="latest",
                      queue_size=1).run()
    assert report.status == "ok", report.error
    # Each feed dropped frames of its own (in its queue or between stages), and none starved.
    feeds, figures = report.stats["stages"]["muxer"]["feeds"], report.stats["streams"]
    assert all(f["dropped"] + g["frames_dropped"] > 0 for f, g in zip(feeds, figures))
    assert all(g["frames_out"] >= 5 for g in figures)
    assert sink.indices == sorted(sink.indices)


def test_a_router_needs_one_output_per_feed():
    pipeline = Pipeline([Muxer([CountingSource(3), CountingSource(3)]), Router([FeedSink()])], device=CPU)
    report = pipeline.run()
    assert report.status == "error" and "1 outputs for 2 feeds" in str(report.error)


def test_a_channel_shared_by_feeds_drops_a_frame_only_for_a_newer_one_of_its_own_feed():
    from facestream.pipeline.channel import Channel

    ch = Channel(capacity=3, policy="latest", key=lambda item: item[0])
    for item in [("a", 0), ("b", 0), ("a", 1)]:
        ch.put(item)
    ch.put(("a", 2))  # full: the oldest of feed a goes, feed b's frame stays
    assert ch.drops == 1
    time.sleep(0.03)
    ch.put(("b", 1))  # full again: feed b's older frame goes
    # Stale: everything waited longer than 10 ms, but only a frame with a newer one of its own feed goes.
    assert ch.get_batch(8, max_age_s=0.01) == [("a", 2), ("b", 1)]
    assert ch.drops == 3
