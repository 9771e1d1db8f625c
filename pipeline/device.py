"""Choosing the run's one device, and its CPU threads."""

from __future__ import annotations

import os

import torch

from .errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda[:N]`` must exist.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda:all" or "," in spec:
        return resolve_devices(spec)[0]  # one run uses one device; a batch spreads over them
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{spec}' asked for, but CUDA is not available "
                f"(torch {torch.__version__}{'' if torch.version.cuda else ' is a CPU-only build'})"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{spec}' asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def resolve_devices(spec: str, *, count: int | None = None) -> list[torch.device]:
    """Every device ``spec`` names: ``cuda:all``, a list (``cuda:0,cuda:2`` or ``cuda:0,2``), or one.

    ``count``: CUDA devices present (default: as torch sees them).

    Example:
        >>> resolve_devices("cuda:all", count=2)
        [device(type='cuda', index=0), device(type='cuda', index=1)]
        >>> resolve_devices("cuda:0,2", count=4)
        [device(type='cuda', index=0), device(type='cuda', index=2)]
    """
    present = torch.cuda.device_count() if count is None else count
    if spec == "cuda:all":
        if not present:
            raise ConfigError(f"device '{spec}' asked for, but no CUDA device exists")
        return [torch.device("cuda", k) for k in range(present)]
    if "," not in spec:
        return [resolve_device(spec)] if count is None else [torch.device(spec)]
    devices = []
    for part in spec.split(","):
        part = part.strip()
        index = part.removeprefix("cuda:")
        if not index.isdigit():
            raise ConfigError(f"device list '{spec}': '{part}' is not cuda:N")
        if int(index) >= present:
            raise ConfigError(f"device '{spec}' asked for, but only {present} CUDA device(s) exist")
        devices.append(torch.device("cuda", int(index)))
    return devices


def set_tf32(enabled: bool) -> None:
    """TensorFloat-32 for float32 matrix products and convolutions on CUDA, on or off, explicitly.

    Off, float32 is float32: the torch engine agrees with onnxruntime to about 1e-5. On, Ampere and
    later GPUs run float32 convolutions several times faster with 10-bit mantissas (about 1e-3
    relative error). PyTorch's own defaults differ between the two (convolutions on, matrix products
    off); this sets both. The setting is process-wide.

    Example:
        >>> set_tf32(False); torch.backends.cudnn.allow_tf32
        False
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def limit_gpu_memory(device: torch.device, fraction: float | None) -> None:
    """Let this process take at most ``fraction`` of ``device``'s memory (``None``: no limit; nothing
    on the CPU). Beyond it torch raises out-of-memory as if the GPU were that small, which the
    batched models answer by halving their batches, so a run shares a GPU without taking it all.

    Example:
        >>> limit_gpu_memory(torch.device("cpu"), 0.5)
    """
    if fraction is None or device.type != "cuda":
        return
    if not 0 < fraction <= 1:
        raise ConfigError(f"memory.gpu_fraction must be within (0, 1], got {fraction}")
    torch.cuda.set_per_process_memory_fraction(fraction, device)


def cpu_threads(pipelines: int = 1) -> int:
    """Torch's intra-op threads for CPU runs of ``pipelines`` pipelines at once: half the cores of
    each one's share. Every stage already runs in its own thread, so stages keep the cores busy
    side by side; intra-op threads on every core on top of that make them wait on one another (on
    2 cores, one thread per op made the demo's blender about 4 times faster than two).

    Example:
        >>> cpu_threads(pipelines=os.cpu_count() or 1)
        1
    """
    return max(1, (os.cpu_count() or 1) // (2 * max(1, pipelines)))
