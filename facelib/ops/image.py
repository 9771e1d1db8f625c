"""Detector input preparation: resize to fit, letterbox top-left, normalise, batched."""

from __future__ import annotations

import cv2
import torch
import torch.nn.functional as F


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
    is ``F.interpolate`` (bilinear, no antialiasing, the same sampling), rounded to whole levels.
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
        if torch_path:
            x = img.permute(2, 0, 1)[None].float()
            resized = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)[0].round_().clamp_(0, 255)
        else:
            resized = torch.from_numpy(cv2.resize(img.numpy(), (nw, nh))).permute(2, 0, 1).float()
        # Normalised where the picture is, the padding's value elsewhere: each value written once.
        torch.div(resized.sub_(mean), std, out=blob[i, :, :nh, :nw])
        blob[i, :, nh:, :] = pad
        blob[i, :, :nh, nw:] = pad
    return blob, scales
