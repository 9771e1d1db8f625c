"""YUV 4:2:0 <-> RGB conversions for the decoder and encoder.

On the CPU, OpenCV's SIMD paths (about 0.4 ms and 1.4 ms per 1280x720 frame here, against 1.5 ms and
6 ms for swscale's RGB paths). On CUDA, torch kernels that reproduce OpenCV's fixed-point BT.601
arithmetic bit for bit, so a frame converts the same on every device and the CPU tests check the GPU
maths. Chroma is upsampled by repetition and downsampled by taking the top-left sample of each 2x2
block: an unmodified pixel's chroma survives a decode-encode round trip exactly.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import av
import cv2
import numpy as np
import torch

from .transfer import HostToDevice

# OpenCV's BT.601 limited-range coefficients, scaled by 2**20 (color_yuv.simd.hpp).
_SHIFT = 20
_HALF = 1 << (_SHIFT - 1)
_CY, _CUB, _CUG, _CVG, _CVR = 1220542, 2116026, -409993, -852492, 1673527
_CRY, _CGY, _CBY = 269484, 528482, 102760
_CRU, _CGU, _CBU = -155188, -305135, 460324
_CGV, _CBV = -385875, -74448


def i420_to_rgb_numpy(i420: np.ndarray) -> np.ndarray:
    """``(H*3/2, W)`` uint8 I420 -> ``(H, W, 3)`` uint8 RGB (OpenCV)."""
    return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)


def rgb_to_i420_numpy(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB with even H and W -> ``(H*3/2, W)`` uint8 I420 (OpenCV)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)


def _split_i420(i420: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h = i420.shape[0] * 2 // 3
    w = i420.shape[1]
    y = i420[:h]
    chroma = i420[h:].reshape(-1)
    n = (h // 2) * (w // 2)
    u = chroma[:n].reshape(h // 2, w // 2)
    v = chroma[n : 2 * n].reshape(h // 2, w // 2)
    return y, u, v


def yuv_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Planes ``(H, W)``, ``(H/2, W/2)``, ``(H/2, W/2)`` uint8 -> ``(H, W, 3)`` uint8 RGB."""
    yy = (y.to(torch.int32) - 16).clamp_(min=0) * _CY
    uu = (u.to(torch.int32) - 128).repeat_interleave(2, 0).repeat_interleave(2, 1)
    vv = (v.to(torch.int32) - 128).repeat_interleave(2, 0).repeat_interleave(2, 1)
    uu = uu[: y.shape[0], : y.shape[1]]
    vv = vv[: y.shape[0], : y.shape[1]]
    r = (yy + _HALF + _CVR * vv) >> _SHIFT
    g = (yy + _HALF + _CVG * vv + _CUG * uu) >> _SHIFT
    b = (yy + _HALF + _CUB * uu) >> _SHIFT
    return torch.stack((r, g, b), dim=-1).clamp_(0, 255).to(torch.uint8)


def i420_to_rgb(i420: torch.Tensor) -> torch.Tensor:
    """``(H*3/2, W)`` uint8 I420 on any device -> ``(H, W, 3)`` uint8 RGB on the same device."""
    return yuv_to_rgb(*_split_i420(i420))


def nv12_to_rgb(y: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """NV12 planes ``(H, W)`` and ``(H/2, W)`` or ``(H/2, W/2, 2)`` (interleaved U, V) -> ``(H, W, 3)`` RGB.

    16-bit planes (P010/P016: the sample in the high bits, as NVDEC gives 10-bit video) are rounded
    to 8 bits first, so 10-bit video takes the same arithmetic as 8-bit.
    """
    y, uv = to_8bit(y), to_8bit(uv)
    uv = uv.reshape(uv.shape[0], -1, 2)
    return yuv_to_rgb(y, uv[..., 0], uv[..., 1])


def to_8bit(plane: torch.Tensor) -> torch.Tensor:
    """A uint8 plane as is; a 16-bit one (sample in the high bits) rounded to its top 8 bits.

    Example:
        >>> to_8bit(torch.tensor([0, 0x3FF << 6, 512 << 6], dtype=torch.uint16)).tolist()
        [0, 255, 128]
    """
    if plane.dtype == torch.uint8:
        return plane
    return ((plane.to(torch.int32) + 128) >> 8).clamp_(max=255).to(torch.uint8)


def planes(av_frame: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The two planes of an NV12/P010 ``av.VideoFrame`` as tensors, without a copy (DLPack).

    NVDEC frames decoded with ``is_hw_owned`` stay in GPU memory and come out as CUDA tensors on the
    decoder's GPU. PyAV exports a frame's plane only without a stream argument, so the capsule is
    taken here and handed to torch (``torch.from_dlpack(plane)`` would pass torch's stream).
    """
    return (torch.from_dlpack(av_frame.planes[0].__dlpack__()),
            torch.from_dlpack(av_frame.planes[1].__dlpack__()))


def _rgb_to_yuv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(H, W, 3)`` uint8 RGB (even H, W) -> Y ``(H, W)``, U and V ``(H/2, W/2)``, int32, unclamped."""
    c = rgb.to(torch.int32)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    y = (_CRY * r + _CGY * g + _CBY * b + _HALF + (16 << _SHIFT)) >> _SHIFT
    rs, gs, bs = r[::2, ::2], g[::2, ::2], b[::2, ::2]
    u = (_CRU * rs + _CGU * gs + _CBU * bs + _HALF + (128 << _SHIFT)) >> _SHIFT
    v = (_CBU * rs + _CGV * gs + _CBV * bs + _HALF + (128 << _SHIFT)) >> _SHIFT
    return y, u, v


def rgb_to_i420(rgb: torch.Tensor) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB (even H, W) on any device -> ``(H*3/2, W)`` uint8 I420."""
    h, w = rgb.shape[:2]
    y, u, v = _rgb_to_yuv(rgb)
    out = torch.cat((y.reshape(-1), u.reshape(-1), v.reshape(-1))).clamp_(0, 255).to(torch.uint8)
    return out.reshape(h * 3 // 2, w)


def rgb_to_nv12(rgb: torch.Tensor, align: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, W, 3)`` uint8 RGB (even H, W) -> NV12 planes Y ``(H, W)`` and interleaved UV ``(H/2, W)``.

    Both planes are views of one buffer whose rows are ``align`` bytes apart, chroma right after the
    luma rows: the layout a hardware encoder reads from device memory (NVENC takes one pointer and
    a pitch, and finds the chroma plane at ``pitch * H``). Same arithmetic as :func:`rgb_to_i420`.
    """
    h, w = rgb.shape[:2]
    pitch = -(-w // align) * align
    buffer = torch.empty((h * 3 // 2, pitch), dtype=torch.uint8, device=rgb.device)
    y, u, v = _rgb_to_yuv(rgb)
    luma, chroma = buffer[:h, :w], buffer[h:, :w]
    luma.copy_(y.clamp_(0, 255))
    chroma.view(h // 2, w // 2, 2).copy_(torch.stack((u, v), dim=-1).clamp_(0, 255))
    return luma, chroma


class DeviceFrames:
    """Converts NVDEC's frames where they lie, and keeps each alive until the kernels that read it ran.

    FFmpeg writes NVDEC's output on CUDA's legacy default stream and reuses a frame's memory as soon
    as PyAV lets the frame go, while torch's streams do not wait for the legacy stream. So the
    converting (current) stream first waits on the legacy stream, and each frame's planes are held
    until an event recorded after its conversion has passed (at most ``depth`` frames in flight).
    """

    def __init__(self, depth: int = 4) -> None:
        self.depth = depth
        self._held: deque[tuple[Any, tuple[torch.Tensor, ...]]] = deque()

    def to_rgb(self, av_frame: Any) -> torch.Tensor:
        """``(H, W, 3)`` uint8 RGB on the frame's GPU, queued on the current stream."""
        y, uv = planes(av_frame)
        stream = torch.cuda.current_stream(y.device)
        stream.wait_stream(torch.cuda.default_stream(y.device))
        rgb = nv12_to_rgb(y, uv)
        done = torch.cuda.Event()
        done.record(stream)
        self._held.append((done, (y, uv)))
        while self._held and (len(self._held) > self.depth or self._held[0][0].query()):
            self._held.popleft()[0].synchronize()
        return rgb

    def clear(self) -> None:
        """Wait for every conversion in flight and let their frames go."""
        while self._held:
            self._held.popleft()[0].synchronize()


def device_frames_supported() -> bool:
    """True if PyAV can wrap GPU memory as CUDA frames that an encoder takes as they are (PyAV 18.1:
    ``VideoFrame.from_dlpack`` with a reusable ``CudaContext``; encoders adopt the frames' context)."""
    return (hasattr(av.video.frame, "CudaContext") and hasattr(av.VideoFrame, "sw_format")
            and "cuda" in av.codec.hwaccel.hwdevices_available())


class NV12Frames:
    """RGB pictures as NV12 ``av.VideoFrame`` s built where the pictures lie, for a hardware encoder.

    On a GPU each picture is converted there (:func:`rgb_to_nv12`) and wrapped as a CUDA frame without
    a copy: NVENC reads it from device memory. The frame holds the buffer (DLPack) until the encoder
    lets it go, after encoding it. The encoder works on the stream current when the first frame was
    made (device 0, where PyAV can hand FFmpeg a stream) or on the legacy default stream; that
    stream waits for the conversion of each frame, so nothing waits on the host. On the CPU the
    frames are ordinary NV12 frames over the same memory (this is how the layout is tested).
    """

    def __init__(self) -> None:
        self._context: Any = None
        self._encoder_stream: torch.cuda.Stream | None = None

    def frame(self, rgb: torch.Tensor) -> av.VideoFrame:
        y, uv = rgb_to_nv12(rgb)
        if not y.is_cuda:
            return av.VideoFrame.from_dlpack((y, uv), format="nv12")
        stream = torch.cuda.current_stream(y.device)
        if self._context is None:
            shared = y.device.index == 0 and stream.cuda_stream != 0  # PyAV takes a stream on device 0 only
            self._encoder_stream = stream if shared else torch.cuda.default_stream(y.device)
            self._context = av.video.frame.CudaContext(
                device_id=y.device.index, primary_ctx=True,
                cuda_stream=stream.cuda_stream if shared else None)
        assert self._encoder_stream is not None
        if self._encoder_stream != stream:
            self._encoder_stream.wait_stream(stream)
        return av.VideoFrame.from_dlpack((y, uv), format="nv12", cuda_context=self._context)


def frame_to_rgb(av_frame: Any, upload: HostToDevice, nvdec: DeviceFrames | None = None) -> torch.Tensor:
    """A decoded ``av.VideoFrame`` as ``(H, W, 3)`` uint8 RGB on ``upload``'s device.

    Even-sized limited-range I420 takes OpenCV's SIMD path on the CPU (the I420 planes are uploaded
    and converted on a GPU); NVDEC frames (``cuda``: NV12, or P010 for 10-bit video) convert on
    their GPU from the decoder's own memory, with no host copy (``nvdec`` keeps them alive while
    that runs); anything else goes through swscale.
    """
    fmt = av_frame.format.name
    if fmt == "cuda":
        rgb = (nvdec or DeviceFrames(depth=0)).to_rgb(av_frame)
        return rgb.to(upload.device)
    if fmt == "yuv420p" and av_frame.width % 2 == 0 and av_frame.height % 2 == 0 and av_frame.color_range != 2:
        i420 = av_frame.to_ndarray()
        if upload.device.type == "cpu":
            return torch.from_numpy(i420_to_rgb_numpy(i420))
        return i420_to_rgb(upload.upload(i420))
    return upload.image(av_frame.to_ndarray(format="rgb24"))
