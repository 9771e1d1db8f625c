"""The NVDEC path's conversions, and the encoder's download ring, checked on the CPU.

NVDEC hands out NV12 (P010 for 10-bit video) planes in GPU memory through DLPack. PyAV exports a
software frame's planes the same way, so the CPU runs the same export and the same torch arithmetic
the GPU does, and they must agree with the software decoder's own path.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from facestream.facelib.media.colour import frame_to_rgb, nv12_to_rgb, planes, to_8bit
from facestream.facelib.media.transfer import DeviceToHost, HostToDevice
from tests.media import make_clip


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[av.VideoFrame]:
    path = make_clip(tmp_path_factory.mktemp("nv12") / "clip.mp4", seconds=0.4, size=(320, 240), audio=None)
    with av.open(str(path)) as container:
        return [f for f in container.decode(video=0)]


def test_nv12_planes_through_dlpack_convert_exactly_as_the_software_path(frames: list[av.VideoFrame]) -> None:
    upload = HostToDevice(torch.device("cpu"))
    for frame in frames:
        assert frame.format.name == "yuv420p"
        expected = frame_to_rgb(frame, upload).numpy()
        y, uv = planes(frame.reformat(format="nv12"))
        assert y.shape == (240, 320) and uv.shape == (120, 160, 2) and y.dtype == torch.uint8
        np.testing.assert_array_equal(nv12_to_rgb(y, uv).numpy(), expected)


def test_p010_planes_of_ten_bit_video_come_within_a_level_of_the_eight_bit_picture(frames: list[av.VideoFrame]) -> None:
    upload = HostToDevice(torch.device("cpu"))
    for frame in frames[:4]:
        expected = frame_to_rgb(frame, upload).numpy().astype(int)
        y, uv = planes(frame.reformat(format="p010le"))
        assert y.dtype == torch.uint16 and uv.shape[-1] == 2
        got = nv12_to_rgb(y, uv).numpy().astype(int)
        # 8 -> 10 bits by swscale and back by rounding: a sample moves at most one level.
        assert np.abs(got - expected).max() <= 3
        assert np.abs(got - expected).mean() < 0.5


def test_to_8bit_rounds_the_high_bits() -> None:
    ten = torch.arange(1024, dtype=torch.int32)
    back = to_8bit((ten << 6).to(torch.uint16)).to(torch.int32)
    assert torch.equal(back, ((ten + 2) >> 2).clamp(max=255))


def test_download_ring_keeps_order_and_bounds_its_buffers() -> None:
    down = DeviceToHost(slots=3, pin=False)
    images = [torch.full((4, 6), i, dtype=torch.uint8) for i in range(20)]
    got = [a.copy() for a in down.download(images, lambda t: t + 1, force=True)]
    assert [int(a[0, 0]) for a in got] == list(range(1, 21))
    assert down.allocated == 3  # three buffers served twenty frames
    # A new picture size lets the old buffers go; a picture larger than the budget is copied directly.
    small = DeviceToHost(slots=2, max_bytes=10, pin=False)
    assert [int(a[0, 0]) for a in small.download(images[:3], force=True)] == [0, 1, 2]
    assert small.allocated == 0


def test_download_ring_hands_out_each_array_before_reusing_its_buffer() -> None:
    down = DeviceToHost(slots=2, pin=False)
    images = [torch.full((2, 2), i, dtype=torch.uint8) for i in range(6)]
    seen = []
    for array in down.download(images, force=True):
        seen.append(int(array[0, 0]))  # read while it is ours: the next copy has not overwritten it
        assert (array == seen[-1]).all()
    assert seen == list(range(6))


@pytest.mark.needs_cuda
def test_download_ring_from_the_gpu_matches_a_blocking_copy() -> None:
    down = DeviceToHost(slots=3)
    images = [torch.randint(0, 255, (360, 640, 3), dtype=torch.uint8, device="cuda") for _ in range(10)]
    for image, array in zip(images, down.download(images)):
        np.testing.assert_array_equal(array, image.cpu().numpy())
    assert down.allocated == 3
