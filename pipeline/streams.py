"""A CUDA stream per stage thread, and handing frames from one stream to the next.

On a GPU every stage thread queues its kernels on a stream of its own, so a stage that waits for its
own work (a small copy to the host, say) does not wait for the other stages' queued kernels, and the
stages' work overlaps on the device. A frame crosses from one stream to the next by event: the stage
that hands it on records ``frame.ready`` after its last kernel, the next stage's stream waits on it
(on the device: the host does not wait), and every tensor the frame carries is recorded on the new
stream so that the caching allocator does not hand its memory out again while that stream may still
read it. On the CPU all of this does nothing.

The runtime knows nothing of what the frames carry: it finds tensors in the frame's fields, in the
items of its lists, and one level into those items' own fields.

Example:
    >>> lane = StageStream(torch.device("cpu"))
    >>> with lane:
    ...     pass
    >>> lane.stream is None
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .frame import Frame


def tensors_in(value: Any, depth: int = 2) -> Iterator[torch.Tensor]:
    """The tensors in ``value``: itself, the items of a list or tuple, the fields of a dataclass or
    an object with attributes, down to ``depth`` levels.

    Example:
        >>> @dataclasses.dataclass
        ... class Item:
        ...     crop: torch.Tensor
        >>> [t.shape[0] for t in tensors_in([Item(torch.zeros(2)), torch.zeros(3), "x"])]
        [2, 3]
    """
    if isinstance(value, torch.Tensor):
        yield value
    elif depth <= 0 or value is None or isinstance(value, (str, bytes, int, float, bool)):
        return
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item, depth)  # a list is not a level of its own
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from tensors_in(getattr(value, f.name, None), depth - 1)
    elif hasattr(value, "__dict__"):
        for item in vars(value).values():
            yield from tensors_in(item, depth - 1)


def frame_tensors(frame: Frame) -> Iterator[torch.Tensor]:
    """The CUDA tensors a frame carries: its picture, and those in what the stages attached to it."""
    yield from (t for t in tensors_in([frame.image, frame.faces], depth=3) if t.is_cuda)


class StageStream:
    """The stream one stage thread works on (``None`` on the CPU).

    Use it as a context manager around the stage's verb (``with lane: ...``): the stage's kernels
    then go to its own stream. ``take`` before the verb, ``hand_on`` after it.

    Args:
        device: The run's device. On CUDA the thread is bound to it (``torch.cuda.set_device``) and
            gets a new stream on it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream: torch.cuda.Stream | None = None
        if device.type == "cuda":
            torch.cuda.set_device(device)
            self.stream = torch.cuda.Stream(device)
        self._context: contextlib.AbstractContextManager[Any] | None = None

    def __enter__(self) -> StageStream:
        self._context = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._context is not None
        self._context.__exit__(*exc)

    def take(self, frames: Iterable[Frame]) -> None:
        """Make this stream wait for the work queued on these frames, and record their tensors on it."""
        if self.stream is None:
            return
        waited: set[int] = set()
        for frame in frames:
            ready = frame.ready
            if ready is not None and id(ready) not in waited:  # a batch shares one event
                self.stream.wait_event(ready)
                waited.add(id(ready))
            for tensor in frame_tensors(frame):
                tensor.record_stream(self.stream)

    def hand_on(self, frames: Iterable[Frame]) -> None:
        """Mark the frames ready once the work queued so far on this stream has run."""
        if self.stream is None:
            return
        event = torch.cuda.Event()
        event.record(self.stream)
        for frame in frames:
            frame.ready = event

    def mark(self, frame: Frame) -> None:
        """A source's frame: ready after this stream's work, unless its source recorded that itself."""
        if self.stream is not None and frame.ready is None:
            self.hand_on([frame])
