"""Lab conversions: known values, round trip, and colour transfer by mean and spread."""

import pytest
import torch

from facestream.facelib.ops.lab import lab_to_rgb, match_colour, rgb_to_lab
from tests.conftest import all_supported_devices


@pytest.mark.parametrize("device", all_supported_devices())
def test_lab_round_trip_and_transfer(device):
    white = rgb_to_lab(torch.full((1, 3), 255.0, device=device))
    torch.testing.assert_close(white.cpu(), torch.tensor([[100.0, 0.0, 0.0]]), atol=0.05, rtol=0)
    rgb = torch.rand((64, 64, 3), generator=torch.Generator().manual_seed(0)).to(device) * 255
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=0.05, rtol=0)
    target = (rgb * 0.5 + 60).clamp(0, 255)
    out = match_colour(rgb, target, torch.ones((64, 64, 1), device=device))
    got, want = rgb_to_lab(out).reshape(-1, 3), rgb_to_lab(target).reshape(-1, 3)
    torch.testing.assert_close(got.mean(0), want.mean(0), atol=0.5, rtol=0)
