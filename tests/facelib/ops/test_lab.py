"""Lab conversions: known values, round trip, and colour transfer by mean and spread."""

import pytest
import torch

from facestream.facelib.ops.lab import host_lab_to_rgb, host_rgb_to_lab, lab_to_rgb, match_colour, rgb_to_lab
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



def test_opencv_path_on_the_host_matches_the_torch_formulas():
    """On the host the colour transfer goes through OpenCV's conversions: the same constants, so the
    same result as the torch formulas within a level and a half, on real photos' crops."""
    from facestream.scenes import load_photo

    astronaut = torch.from_numpy(load_photo("astronaut")[:192, 150:342].copy()).float()
    group = torch.from_numpy(load_photo("group")[100:292, 200:392].copy()).float()
    # OpenCV approximates the sRGB curve with splines: within half a Lab unit (invisible, Delta E < 1).
    torch.testing.assert_close(host_rgb_to_lab(group), rgb_to_lab(group), atol=0.5, rtol=0)
    lab = rgb_to_lab(group)
    torch.testing.assert_close(host_lab_to_rgb(lab), lab_to_rgb(lab), atol=0.2, rtol=0)
    weight = (torch.rand((192, 192, 1), generator=torch.Generator().manual_seed(1)) > 0.3).float()
    fast = match_colour(astronaut, group, weight)
    slow = match_colour(astronaut, group, weight, engine="torch")
    assert (fast - slow).abs().max() < 1.5 and (fast - slow).abs().mean() < 0.5
    assert (fast - astronaut).abs().mean() > 5, "the transfer did change the colours"
