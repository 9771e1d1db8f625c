"""Choosing the run's one device."""

from __future__ import annotations

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
