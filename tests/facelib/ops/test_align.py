"""Face crops on the device: sampled from uint8 frames, equal to cv2.warpAffine's."""

import numpy as np
import pytest
import torch

from facestream.facelib.ops.align import warp_faces, warp_faces_torch
from facestream.scenes import load_photo
from tests.conftest import all_supported_devices


def similarity_matrices(rng, n):
    """Rotations, zooms in and out, and shifts that put some crops partly or wholly off the frame."""
    m = np.zeros((n, 2, 3))
    for i in range(n):
        s, th = rng.uniform(0.1, 3), rng.uniform(-1, 1)
        m[i, :, :2] = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        m[i, :, 2] = rng.uniform(-400, 150, 2)
    return m


@pytest.mark.parametrize("device", all_supported_devices())
@pytest.mark.parametrize("size", [112, 128])
def test_device_crops_equal_warp_affine(device, size):
    group, astronaut = load_photo("group"), load_photo("astronaut")
    frames = [group, astronaut, np.ascontiguousarray(group[::-1, ::2])]  # three sizes
    frame_of = [0, 0, 1, 2, 2, 1, 0, 2, 1]
    m = similarity_matrices(np.random.default_rng(size), len(frame_of))
    expected = warp_faces([torch.from_numpy(f) for f in frames], frame_of, m, size).numpy().astype(int)
    got = warp_faces_torch([torch.from_numpy(f).to(device) for f in frames], frame_of, m, size)
    assert got.dtype == torch.uint8 and got.device.type == device
    diff = np.abs(got.cpu().numpy().astype(int) - expected)
    assert 0.2 < (expected == 0).mean() < 0.8  # some crops leave the frame, most do not
    # cv2 interpolates with 5-bit fixed-point weights: a pixel may round the other way.
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_one_frame_all_faces_and_no_faces():
    image = torch.from_numpy(load_photo("group"))
    m = similarity_matrices(np.random.default_rng(3), 4)
    got = warp_faces_torch([image], [0] * 4, m, 112)
    assert np.abs(got.numpy().astype(int) - warp_faces([image], [0] * 4, m, 112).numpy()).max() <= 1
    assert warp_faces([image], [], m[:0], 112).shape == (0, 112, 112, 3)
