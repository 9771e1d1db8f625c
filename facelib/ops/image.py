"""Detector input preparation: resize to fit, letterbox top-left, normalise, batched."""

from __future__ import annotations

import cv2
import torch


def sample_bilinear(image: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, edges: bool = False) -> torch.Tensor:
    """Bilinear samples of an ``(H, W, C)`` image (any dtype, any device) at points ``x``, ``y`` (any
    shape ``S``, pixel centres at whole numbers): ``S + (C,)`` float32. Only the four pixels around
    each point are read and converted, never the whole image. Outside the image: black, or with
    ``edges`` the nearest edge pixel (``F.interpolate``'s rule)."""
    h, w = image.shape[:2]
    flat = image.reshape(h * w, -1)
    x0, y0 = x.floor(), y.floor()
    ax, ay = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.long(), y0.long()

    def read(dx: int, dy: int) -> torch.Tensor:
        xi, yi = x0 + dx, y0 + dy
        pixels = flat[(yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(-1)].reshape(*xi.shape, -1).float()
        if edges:
            return pixels
        return pixels * ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h))[..., None]

    top = read(0, 0) * (1 - ax) + read(1, 0) * ax
    bottom = read(0, 1) * (1 - ax) + read(1, 1) * ax
    return top * (1 - ay) + bottom * ay


def fit_size(hw: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """(new_width, new_height) of an ``hw`` image scaled to fit ``box`` (width, height), as insightface
    computes it (truncating)."""
    h, w = hw
    bw, bh = box
    if h / w > bh / bw:
        return int(bh / (h / w)), bh
    return bw, int(bw * (h / w))


def letterbox(
    images: list[torch.Tensor], size: tuple[int, int], *, mean: float = 127.5, std: float = 128.0,
    use_torch: bool | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """``(H, W, 3)`` uint8 RGB images -> ``(B, 3, h, w)`` normalised blob and each image's scale.

    Each image is resized to fit ``size`` (width, height) keeping its aspect, placed top-left, and the
    rest padded with zeros (before normalisation), as insightface's SCRFD does. On the CPU the
    resize is ``cv2.resize`` (bilinear), exactly insightface's; elsewhere (or with ``use_torch``) it
    samples as ``F.interpolate`` does (bilinear, no antialiasing, the same sampling), rounded to
    whole levels, reading only the pixels it needs (no float copy of the whole frame).
    """
    device = images[0].device
    w_in, h_in = size
    blob = torch.empty((len(images), 3, h_in, w_in), dtype=torch.float32, device=device)
    pad = (0.0 - mean) / std
    scales = []
    torch_path = device.type != "cpu" if use_torch is None else use_torch
    for i, img in enumerate(images):
        nw, nh = fit_size(tuple(img.shape[:2]), size)
        scales.append(nh / img.shape[0])
        if torch_path:  # F.interpolate's sampling, reading only the pixels it needs from the uint8 frame
            def centres(n_out: int, n_in: int) -> torch.Tensor:
                return ((torch.arange(n_out, device=device, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0)

            xs, ys = centres(nw, img.shape[1]), centres(nh, img.shape[0])
            resized = sample_bilinear(img, xs[None, :].expand(nh, nw), ys[:, None].expand(nh, nw), edges=True)
            resized = resized.round_().clamp_(0, 255).permute(2, 0, 1)
        else:
            resized = torch.from_numpy(cv2.resize(img.numpy(), (nw, nh))).permute(2, 0, 1).float()
        # Normalised where the picture is, the padding's value elsewhere: each value written once.
        torch.div(resized.sub_(mean), std, out=blob[i, :, :nh, :nw])
        blob[i, :, nh:, :] = pad
        blob[i, :, :nh, nw:] = pad
    return blob, scales
