"""Several feeds as one source: their frames merged into one flow, each tagged with its feed."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from .channel import POLICIES, Policy, SideChannel
from .errors import InputError, PipelineError
from .frame import Frame
from .stage import RunContext, Source, SourceInfo, close_each, open_each


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, PipelineError) else f"{type(error).__name__}: {error}"


class Muxer(Source):
    """Reads several sources at once and hands their frames on in the order they arrive, so that
    every stage after it batches frames of all the feeds together (as DeepStream's stream muxer does).

    Each source is read in its own thread into a small queue of its own (``queue_size`` frames):
    under ``latest`` a full queue drops its oldest frame (counted per feed), under ``block`` the
    feed waits, and in neither case does one feed wait for another: a slow, stalled or dead feed
    holds up only itself. Frames are tagged with their feed (``frame.stream``, the position of the
    source in ``sources``), keep their position in that feed as ``frame.stream_index`` and are given
    run-wide indices in the order they leave the muxer.

    Each source opens with a context of its own (its own ``SourceInfo`` and side channel, the run's
    device and log), listed in ``ctx.streams`` for the sink that writes each feed (see
    :class:`~facestream.pipeline.router.Router`); ``ctx.source`` describes them together (the first
    feed's size, the highest frame rate, live if any is). A feed that fails while the run goes on
    ends only itself: the others go on, and once they are done the muxer raises one error naming
    every feed that failed.

    Args:
        sources: The feeds, in stream order.
        policy: ``latest`` (live feeds: drop the oldest frame of a feed that is ahead) or ``block``.
        queue_size: Frames each feed may have waiting.

    Example:
        >>> Muxer([], policy="latest").name
        'muxer'
    """

    name = "muxer"

    def __init__(self, sources: Sequence[Source], *, policy: Policy = "block", queue_size: int = 2) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.sources = list(sources)
        self.policy = policy
        self.queue_size = queue_size
        self.errors: dict[int, BaseException] = {}
        self.drops = [0] * len(self.sources)
        self.frames = [0] * len(self.sources)
        self._ctx: RunContext | None = None
        self._contexts: list[RunContext] = []
        self._stop = threading.Event()  # the feeds' own stop: the run's, or the muxer closing
        self._queue: deque[tuple[int, Frame]] = deque()
        self._waiting = [0] * len(self.sources)
        self._cond = threading.Condition()
        self._running = 0
        self._threads: list[threading.Thread] = []
        self._next = 0

    # ------------------------------------------------------------------ lifecycle

    def open(self, ctx: RunContext) -> None:
        if not self.sources:
            raise ValueError("a muxer needs at least one source")
        self._ctx = ctx
        share = ctx.pinned_bytes // max(1, len(self.sources))  # each feed's uploads take their share
        contexts = [RunContext(device=ctx.device, side=SideChannel(), stop=self._stop, log=ctx.log,
                               pinned_bytes=share)
                    for _ in self.sources]
        open_each(list(zip(self.sources, contexts)))
        self._contexts = contexts
        infos = [c.source for c in self._contexts if c.source is not None]
        first = infos[0] if infos else self.sources[0].info
        rates = [i.frame_rate for i in infos if i.frame_rate]
        counts = [i.frame_count for i in infos]
        durations = [i.duration_s for i in infos]
        self.info = SourceInfo(
            width=first.width, height=first.height, frame_rate=max(rates) if rates else None,
            time_base=first.time_base, live=any(i.live for i in infos),
            duration_s=max(durations) if durations and None not in durations else None,  # type: ignore[type-var]
            frame_count=sum(counts) if counts and None not in counts else None,  # type: ignore[arg-type]
        )
        ctx.source = self.info
        ctx.streams = self._contexts

    def read(self) -> Iterator[Frame]:
        assert self._ctx is not None
        run_stop = self._ctx.stop
        self._running = len(self.sources)
        for k, source in enumerate(self.sources):
            t = threading.Thread(target=self._pump, args=(k, source), name=f"feed-{k}", daemon=True)
            self._threads.append(t)
            t.start()
        while True:
            with self._cond:
                while not self._queue and self._running and not run_stop.is_set():
                    self._cond.wait(0.1)
                if run_stop.is_set() or not self._queue:
                    break
                k, frame = self._queue.popleft()
                self._waiting[k] -= 1
                self._cond.notify_all()
            frame.stream, frame.stream_index, frame.index = k, frame.index, self._next
            self._next += 1
            yield frame
        self._stop.set()
        if self.errors and not run_stop.is_set():
            raise InputError("; ".join(f"feed {k} failed: {_describe(e)}" for k, e in sorted(self.errors.items())))

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(10.0)
        # A feed still inside a read that ignores the stop is left alone: closing under it is unsafe.
        close_each([source for source, thread in zip(self.sources, self._threads or [None] * len(self.sources))
                    if thread is None or not thread.is_alive()])

    def report(self) -> dict[str, Any]:
        return {
            "feeds": [
                {"stream": k, **source.report(), "frames": self.frames[k], "dropped": self.drops[k],
                 "error": _describe(self.errors[k]) if k in self.errors else None}
                for k, source in enumerate(self.sources)
            ]
        }

    # ------------------------------------------------------------------ feed threads

    def _pump(self, k: int, source: Source) -> None:
        try:
            for frame in source.read():
                self._put(k, frame)
                if self._stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - this feed ends; the others go on
            self.errors[k] = exc
            assert self._ctx is not None
            self._ctx.log.warning("feed %d failed, the others go on: %s", k, _describe(exc))
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _put(self, k: int, frame: Frame) -> None:
        with self._cond:
            if self._waiting[k] >= self.queue_size:
                if self.policy == "latest":
                    for j, (stream, _) in enumerate(self._queue):
                        if stream == k:
                            del self._queue[j]
                            break
                    self._waiting[k] -= 1
                    self.drops[k] += 1
                else:
                    while self._waiting[k] >= self.queue_size and not self._stop.is_set():
                        self._cond.wait(0.1)
                    if self._stop.is_set():
                        return
            self._queue.append((k, frame))
            self._waiting[k] += 1
            self.frames[k] += 1
            self._cond.notify_all()
