"""One sink per feed: each frame goes to the sink of the feed it came from."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .frame import Frame
from .stage import RunContext, Sink, close_each, open_each


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
        self._opened = open_each([(sink, dataclasses.replace(ctx, source=feed.source, side=feed.side, streams=[]))
                                  for sink, feed in zip(self.sinks, ctx.streams)])

    def write(self, frames: list[Frame]) -> None:
        by_stream: dict[int, list[Frame]] = {}
        for f in frames:
            by_stream.setdefault(f.stream, []).append(f)
        for stream, group in by_stream.items():
            self.sinks[stream].write(group)

    def close(self) -> None:
        close_each(self._opened)

    def report(self) -> dict[str, Any]:
        return {"outputs": [sink.report() for sink in self.sinks]}
