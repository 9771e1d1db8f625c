"""Moving pictures between host and device memory.

On the CPU these are zero-copy views. On CUDA, uploads go through a small ring of pinned host buffers
per picture shape and a copy stream of their own; the compute (current) stream waits on the copy's
event, and the new tensor is recorded on the compute stream so the caching allocator never reuses it
early. Pinned memory is bounded: shapes not seen for a while give their buffers back.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np
import torch


class Fence(Protocol):
    def synchronize(self) -> None: ...


class StagingBuffers:
    """Host buffers to stage uploads in: up to ``slots`` per (shape, dtype), at most ``max_bytes`` in
    all. A shape that needs room takes it from the least recently used other shapes; a buffer is
    handed out again (or freed) only once the copy that last read it has finished (its fence).

    Example:
        >>> pool = StagingBuffers(slots=2, max_bytes=1000, pin=False)
        >>> pool.acquire((10, 10), torch.uint8).shape
        torch.Size([10, 10])
        >>> pool.bytes, pool.acquire((40, 40), torch.uint8)  # larger than the whole budget: none
        (100, None)
    """

    def __init__(self, *, slots: int = 3, max_bytes: int = 256 << 20, pin: bool = True) -> None:
        self.slots = slots
        self.max_bytes = max_bytes
        self.pin = pin
        self.bytes = 0
        self._rings: OrderedDict[tuple[tuple[int, ...], torch.dtype], deque[tuple[torch.Tensor, Fence]]] = OrderedDict()

    def acquire(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """A buffer for this shape, or ``None`` when one would not fit in ``max_bytes`` at all."""
        key = (tuple(shape), dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes > self.max_bytes:
            return None
        ring = self._rings.pop(key, None) or deque()
        self._rings[key] = ring  # the most recently used
        while len(ring) < self.slots and self.bytes + nbytes > self.max_bytes and len(self._rings) > 1:
            self._drop(next(iter(self._rings)))
        if len(ring) < self.slots and self.bytes + nbytes <= self.max_bytes:
            self.bytes += nbytes
            return torch.empty(shape, dtype=dtype, pin_memory=self.pin)
        host, fence = ring.popleft()
        fence.synchronize()  # the copy that last read this buffer has finished
        return host

    def release(self, host: torch.Tensor, fence: Fence) -> None:
        """Give a buffer back once its copy is queued; ``fence`` says when that copy has finished."""
        self._rings.setdefault((tuple(host.shape), host.dtype), deque()).append((host, fence))

    def _drop(self, key: tuple[tuple[int, ...], torch.dtype]) -> None:
        for host, fence in self._rings.pop(key):
            fence.synchronize()
            self.bytes -= host.numel() * host.element_size()
        if self.pin:  # hand the pinned pages back rather than keep them in torch's host cache
            empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None) or getattr(torch._C, "_host_emptyCache", None)
            if empty is not None:
                empty()


class HostToDevice:
    """Uploads host arrays to the run's device.

    Args:
        device: The run's device.
        slots: Pinned buffers per picture shape (uploads in flight at once).
        max_bytes: Pinned memory at most, all shapes together; a picture larger than that is
            uploaded from pageable memory.

    Example:
        >>> up = HostToDevice(torch.device("cpu"))
        >>> up.image(np.zeros((2, 2, 3), np.uint8)).shape
        torch.Size([2, 2, 3])
    """

    def __init__(self, device: torch.device, *, slots: int = 3, max_bytes: int = 256 << 20) -> None:
        self.device = device
        self.buffers = StagingBuffers(slots=slots, max_bytes=max_bytes, pin=device.type == "cuda")
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def image(self, rgb: np.ndarray) -> torch.Tensor:
        """An ``(H, W, 3)`` uint8 array as a tensor on the device."""
        return self.upload(np.ascontiguousarray(rgb))

    def upload(self, array: np.ndarray) -> torch.Tensor:
        if self._stream is None:
            return torch.from_numpy(array)
        source = torch.from_numpy(array)
        host = self.buffers.acquire(source.shape, source.dtype)
        if host is None:
            return source.to(self.device)
        host.copy_(source)
        event = torch.cuda.Event()
        with torch.cuda.stream(self._stream):
            dev = host.to(self.device, non_blocking=True)
            event.record(self._stream)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(event)
        dev.record_stream(compute)
        self.buffers.release(host, event)
        return dev


class DeviceToHost:
    """Brings device tensors to the host through a bounded ring of pinned buffers, copies queued ahead.

    :meth:`download` queues the copies of up to ``slots`` tensors at once on the current stream and
    hands out each host array as its copy finishes, so the host works on one (an encoder encoding
    it) while the next ones are still being prepared and copied. Pinned memory is at most
    ``max_bytes`` (fewer slots for large pictures; a picture larger than that is copied from
    pageable memory, blocking). On the CPU the arrays are views, nothing is copied.

    Args:
        slots: Copies in flight at most.
        max_bytes: Pinned memory at most.
        pin: Pin the buffers (on by default; off only to check the ring's logic on the CPU).

    Example:
        >>> down = DeviceToHost(slots=2, pin=False)
        >>> [a.tolist() for a in down.download([torch.tensor([1]), torch.tensor([2])], force=True)]
        [[1], [2]]
    """

    def __init__(self, *, slots: int = 4, max_bytes: int = 64 << 20, pin: bool = True) -> None:
        self.slots = slots
        self.max_bytes = max_bytes
        self.pin = pin
        self._free: list[torch.Tensor] = []
        self._key: tuple[tuple[int, ...], torch.dtype] | None = None
        self.allocated = 0  # buffers made for the current shape

    def download(self, tensors: Iterable[torch.Tensor], prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 *, force: bool = False) -> Iterator[np.ndarray]:
        """``prepare(t)`` (default: ``t``) of each tensor as a host array, in order.

        Each array is valid until the next one is asked for (its buffer is then reused); copy what
        must outlive that. ``force`` takes the ring on the CPU too (to check it there).
        """
        pending: deque[tuple[torch.Tensor, bool, object]] = deque()  # host array, from the ring, fence
        source = iter(tensors)

        def start() -> bool:
            tensor = next(source, None)
            if tensor is None:
                return False
            if prepare is not None:
                tensor = prepare(tensor)
            if tensor.device.type == "cpu" and not force:
                pending.append((tensor, False, None))
                return True
            host = self._buffer(tuple(tensor.shape), tensor.dtype)
            if host is None:  # no room in the budget: one blocking copy from pageable memory
                pending.append((tensor.to("cpu", copy=True), False, None))
                return True
            host.copy_(tensor, non_blocking=True)
            fence = None
            if tensor.is_cuda:
                fence = torch.cuda.Event()
                fence.record(torch.cuda.current_stream(tensor.device))
            pending.append((host, True, fence))
            return True

        while len(pending) < self.slots and start():
            pass
        while pending:
            host, ringed, fence = pending.popleft()
            if fence is not None:
                fence.synchronize()  # type: ignore[attr-defined]
            yield host.numpy()
            if ringed and self._key == (tuple(host.shape), host.dtype):
                self._free.append(host)  # the caller is done with it: the next copy may reuse it
            start()

    def _buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes > self.max_bytes:
            return None
        if self._key != (shape, dtype):  # a new picture size: the old buffers go
            self._free.clear()
            self._key = (shape, dtype)
            self.allocated = 0
        if self._free:
            return self._free.pop()
        if self.allocated >= max(1, min(self.slots, self.max_bytes // nbytes)):
            return None
        self.allocated += 1
        return torch.empty(shape, dtype=dtype, pin_memory=self.pin)


def to_device(data: np.ndarray | list, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Small host data (an array or nested lists: matrices, indices, sizes) as a tensor on ``device``,
    without making the host wait for the device: the copy is queued on the current stream (CUDA
    stages pageable memory at once, so ``data`` may change afterwards).

    Example:
        >>> to_device([[1, 2]], torch.device("cpu"), torch.float32)
        tensor([[1., 2.]])
    """
    return torch.as_tensor(np.asarray(data), dtype=dtype).to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A device tensor as a host array (a view on the CPU; one synchronous copy on CUDA)."""
    if tensor.device.type == "cpu":
        return tensor.numpy()
    return tensor.to("cpu").numpy()
