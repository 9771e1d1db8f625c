"""Moving pictures between host and device memory.

On the CPU these are zero-copy views. On CUDA, uploads go through a small ring of pinned host buffers
and a copy stream of their own; the compute (default) stream waits on the copy's event, and the new
tensor is recorded on the compute stream so the caching allocator never reuses it early.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch


class HostToDevice:
    """Uploads host arrays to the run's device.

    Example:
        >>> up = HostToDevice(torch.device("cpu"))
        >>> up.image(np.zeros((2, 2, 3), np.uint8)).shape
        torch.Size([2, 2, 3])
    """

    def __init__(self, device: torch.device, *, slots: int = 3) -> None:
        self.device = device
        self._slots = slots
        self._rings: dict[tuple[tuple[int, ...], str], deque[tuple[torch.Tensor, torch.cuda.Event]]] = {}
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def image(self, rgb: np.ndarray) -> torch.Tensor:
        """An ``(H, W, 3)`` uint8 array as a tensor on the device."""
        return self.upload(np.ascontiguousarray(rgb))

    def upload(self, array: np.ndarray) -> torch.Tensor:
        if self._stream is None:
            return torch.from_numpy(array)
        key = (array.shape, array.dtype.str)
        ring = self._rings.setdefault(key, deque())
        if len(ring) < self._slots:
            host = torch.empty(array.shape, dtype=torch.from_numpy(array[:0]).dtype, pin_memory=True)
            event = torch.cuda.Event()
        else:
            host, event = ring.popleft()
            event.synchronize()  # the copy that last read this buffer has finished
        host.numpy()[...] = array
        with torch.cuda.stream(self._stream):
            dev = host.to(self.device, non_blocking=True)
            event.record(self._stream)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(event)
        dev.record_stream(compute)
        ring.append((host, event))
        return dev


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A device tensor as a host array (a view on the CPU; one synchronous copy on CUDA)."""
    if tensor.device.type == "cpu":
        return tensor.numpy()
    return tensor.to("cpu").numpy()
