"""One sink that writes every frame to several (a recording and a live stream from one run)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from .channel import SideChannel
from .frame import Frame
from .stage import RunContext, Sink, close_each, open_each


class Tee(Sink):
    """Hands each batch to every one of ``sinks``, in order.

    Each sink gets a side channel of its own: the items the source sends around the processing
    stages (compressed audio) are given to the first sink as they are and to the others as copies
    made by ``copy_side``, since a sink may change what it writes. A sink that fails fails the run;
    closing closes every sink, and the first error is raised once all are closed.

    Example:
        >>> Tee([], copy_side=lambda item: item).name
        'outputs'
    """

    name = "outputs"

    def __init__(self, sinks: Sequence[Sink], *, copy_side: Callable[[Any], Any]) -> None:
        self.sinks = list(sinks)
        self.copy_side = copy_side
        self._ctx: RunContext | None = None
        self._contexts: list[RunContext] = []

    def open(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._contexts = [dataclasses.replace(ctx, side=SideChannel()) for _ in self.sinks]
        open_each(list(zip(self.sinks, self._contexts)))

    def _share_side(self) -> None:
        assert self._ctx is not None
        items = self._ctx.side.take_all()
        # Copies first: the first sink may change the originals as it writes them.
        for child in self._contexts[1:]:
            for item in items:
                child.side.put(self.copy_side(item))
        if self._contexts:
            for item in items:
                self._contexts[0].side.put(item)

    def write(self, frames: list[Frame]) -> None:
        self._share_side()
        for sink in self.sinks:
            sink.write(frames)

    def close(self) -> None:
        if self._ctx is not None:
            self._share_side()
        close_each(self.sinks)

    def report(self) -> dict[str, Any]:
        return {"outputs": [sink.report() for sink in self.sinks]}
