"""Letterboxing on the device samples the uint8 frames as F.interpolate would, without a float copy
of the whole frame."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facestream.facelib.ops.image import fit_size, letterbox
from facestream.scenes import load_photo
from tests.conftest import all_supported_devices


@pytest.mark.parametrize("device", all_supported_devices())
def test_device_letterbox_samples_as_interpolate(device):
    group = load_photo("group")
    images = [group, np.ascontiguousarray(group[:200, :300]), np.ascontiguousarray(group[::3, ::2])]  # down and up
    frames = [torch.from_numpy(im).to(device) for im in images]
    blob, scales = letterbox(frames, (640, 640), use_torch=True)
    assert blob.device.type == device
    for i, im in enumerate(frames):
        nw, nh = fit_size(tuple(im.shape[:2]), (640, 640))
        x = im.permute(2, 0, 1)[None].float()
        ref = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)[0].round().clamp(0, 255)
        got = blob[i, :, :nh, :nw] * 128 + 127.5
        diff = (got - ref).abs()
        assert diff.max() <= 1.01 and (diff > 0.5).float().mean() < 1e-3
        assert torch.all(blob[i, :, nh:, :] == -127.5 / 128) and torch.all(blob[i, :, :, nw:] == -127.5 / 128)
        assert scales[i] == nh / im.shape[0]
