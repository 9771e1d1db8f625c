"""sRGB <-> CIE Lab in torch (any device), and colour transfer by mean and spread in Lab."""

from __future__ import annotations

import functools

import torch

_M = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


@functools.lru_cache(maxsize=8)
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB -> XYZ and XYZ -> RGB matrices (transposed) and the white point, on ``device``, uploaded
    once (each upload from pageable memory would make the host wait)."""
    return _M.T.to(device), torch.linalg.inv(_M).T.to(device), _WHITE.to(device)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` RGB in 0..255 -> Lab (L 0..100)."""
    c = rgb.float() / 255.0
    lin = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    to_xyz, _, white = _constants(rgb.device)
    xyz = lin @ to_xyz / white
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack((116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])), dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> ``(..., 3)`` RGB in 0..255 (float, clamped)."""
    fy = (lab[..., 0] + 16) / 116
    fx = fy + lab[..., 1] / 500
    fz = fy - lab[..., 2] / 200
    f = torch.stack((fx, fy, fz), dim=-1)
    _, to_rgb, white = _constants(lab.device)
    xyz = torch.where(f > 0.206893, f**3, (f - 16 / 116) / 7.787) * white
    lin = xyz @ to_rgb
    c = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin)
    return (c * 255.0).clamp(0, 255)


def match_colour(source: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Shift and scale ``source``'s Lab channels so that, under ``weight`` (``(..., 1)``, 0..1), their
    mean and standard deviation equal ``target``'s. Images are ``(h, w, 3)`` in 0..255."""
    w = weight.float()
    total = w.sum().clamp(min=1e-6)
    src, tgt = rgb_to_lab(source), rgb_to_lab(target)

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (x * w).sum(dim=(0, 1)) / total
        std = (((x - mean) ** 2 * w).sum(dim=(0, 1)) / total).sqrt()
        return mean, std

    sm, ss = stats(src)
    tm, ts = stats(tgt)
    scale = (ts / ss.clamp(min=1e-3)).clamp(0.5, 2.0)  # never blow noise up or flatten a face
    return lab_to_rgb((src - sm) * scale + tm)
