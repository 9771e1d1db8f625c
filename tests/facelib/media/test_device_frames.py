"""The NVDEC and NVENC paths' conversions, and the encoder's download ring, checked on the CPU.

NVDEC hands out NV12 (P010 for 10-bit video) planes in GPU memory through DLPack, and NVENC takes NV12
frames wrapped from GPU memory the same way. PyAV exports and imports a software frame's planes
through DLPack too, so the CPU runs the same export, import and torch arithmetic the GPU does, and
they must agree with the software path.
"""

from __future__ import annotations

import gc
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from facestream.facelib.media.colour import (
    NV12Frames,
    frame_to_rgb,
    nv12_to_rgb,
    planes,
    rgb_to_i420,
    rgb_to_nv12,
    to_8bit,
)
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


@pytest.mark.parametrize("size", [(240, 320), (122, 162)])
def test_nv12_for_an_encoder_is_the_i420_picture_in_one_pitched_buffer(size: tuple[int, int]) -> None:
    h, w = size
    rgb = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(h))
    y, uv = rgb_to_nv12(rgb)
    i420 = rgb_to_i420(rgb)
    pitch = y.stride(0)
    assert pitch % 256 == 0 and pitch >= w and uv.stride(0) == pitch
    assert uv.data_ptr() - y.data_ptr() == pitch * h  # chroma right after the luma rows, as NVENC reads it
    assert y.shape == (h, w) and uv.shape == (h // 2, w)
    torch.testing.assert_close(y, i420[:h], rtol=0, atol=0)
    chroma = i420[h:].reshape(-1)
    n = (h // 2) * (w // 2)
    torch.testing.assert_close(uv[:, 0::2], chroma[:n].reshape(h // 2, w // 2), rtol=0, atol=0)
    torch.testing.assert_close(uv[:, 1::2], chroma[n:].reshape(h // 2, w // 2), rtol=0, atol=0)


def test_nv12_frames_wrap_the_pictures_and_keep_them_until_encoded() -> None:
    """Frames made from tensors that are then dropped still encode the right pictures (the frame
    holds the memory), losslessly through a real encoder, and decode to the I420 of each picture."""
    gen = torch.Generator().manual_seed(7)
    pictures = [torch.randint(0, 256, (120, 160, 3), dtype=torch.uint8, generator=gen) for _ in range(6)]
    expected = [rgb_to_i420(p).numpy() for p in pictures]
    wrap = NV12Frames()
    frames = [wrap.frame(p.clone()) for p in pictures]
    del pictures
    gc.collect()
    for _ in range(20):  # churn the allocator: freed memory would be reused and overwritten now
        torch.full((120 * 3 // 2, 256), 255, dtype=torch.uint8).add_(0)
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt, enc.time_base = 160, 120, "yuv420p", Fraction(1, 25)
    enc.options = {"qp": "0", "preset": "ultrafast"}
    packets = []
    for i, frame in enumerate(frames):
        assert frame.format.name == "nv12" and frame.planes[0].line_size == 256
        frame.pts = i
        packets += enc.encode(frame)
    packets += enc.encode(None)
    dec = av.CodecContext.create("h264", "r")
    decoded = [f.to_ndarray() for p in packets for f in dec.decode(p)] + [f.to_ndarray() for f in dec.decode(None)]
    assert len(decoded) == len(expected)
    for got, want in zip(decoded, expected, strict=True):
        np.testing.assert_array_equal(got, want)
