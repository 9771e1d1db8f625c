"""One sink per feed: each frame goes to the sink of the feed it came from."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .frame import Frame
from .stage import RunContext, Sink


class Router(Sink):
    """Hands each frame to ``sinks[frame.stream]``, in order (the sink of a :class:`Muxer`'s feeds).

    Sink ``k`` opens with feed ``k``'s own source info and side channel (from ``ctx.streams``,
    filled by the muxer), so each output gets its feed's size, frame rate and audio. A sink that
    fails fails the run; closing closes every sink (each output is finalised, also that of a feed
    that ended early), and the first error is raised once all are closed.

    Example:
        >>> Router([]).name
        'outputs'
    """

    name = "outputs"

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)
        # Up to a frame of every feed at once: under the ``latest`` flow a sink that falls behind
        # then takes the newest frame of each feed, rather than serving some feeds and not others.
        self.batch_size = max(1, len(self.sinks))
        self._opened: list[Sink] = []

    def open(self, ctx: RunContext) -> None:
        if len(ctx.streams) != len(self.sinks):
            raise ValueError(f"{len(self.sinks)} outputs for {len(ctx.streams)} feeds: give one output per feed")
        try:
            for sink, feed in zip(self.sinks, ctx.streams):
                sink.open(dataclasses.replace(ctx, source=feed.source, side=feed.side, streams=[]))
                self._opened.append(sink)
        except BaseException:
            for sink in reversed(self._opened):
                try:
                    sink.close()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
            self._opened.clear()
            raise

    def write(self, frames: list[Frame]) -> None:
        by_stream: dict[int, list[Frame]] = {}
        for f in frames:
            by_stream.setdefault(f.stream, []).append(f)
        for stream, group in by_stream.items():
            self.sinks[stream].write(group)

    def close(self) -> None:
        error: BaseException | None = None
        for sink in self._opened:
            try:
                sink.close()
            except BaseException as exc:  # noqa: BLE001 - every sink is closed before raising
                error = error or exc
        if error is not None:
            raise error

    def report(self) -> dict[str, Any]:
        return {"outputs": [sink.report() for sink in self.sinks]}
