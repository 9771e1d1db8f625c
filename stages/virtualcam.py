"""The virtual camera stage: RGB frames in; raw video out to a v4l2loopback device (``-o v4l2:/dev/videoN``)."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import stat
import struct
import time
from typing import Any

import av

from facestream.pipeline.errors import OutputError
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext

from .encoder import Encoder, EncoderSettings

log = logging.getLogger(__name__)

VIDEO_MAJOR = 81  # Linux character devices of video4linux
VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability), 104 bytes
V4L2_CAP_VIDEO_OUTPUT = 0x00000002
V4L2_CAP_DEVICE_CAPS = 0x80000000
PIXEL_FORMATS = ("yuv420p", "yuyv422")


def query_capabilities(device: str) -> tuple[str, int]:
    """The driver's name and the device's capabilities (``VIDIOC_QUERYCAP``).

    Raises:
        OSError: the device cannot be opened or does not answer.
    """
    fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    try:
        buf = fcntl.ioctl(fd, VIDIOC_QUERYCAP, bytes(104))
    finally:
        os.close(fd)
    driver = buf[:16].split(b"\0", 1)[0].decode("ascii", "replace")
    caps, device_caps = struct.unpack_from("<II", buf, 84)
    return driver, device_caps if caps & V4L2_CAP_DEVICE_CAPS else caps


def check_virtual_camera(device: str) -> None:
    """A one-line :class:`OutputError` unless ``device`` is a video device that takes output.

    Example:
        >>> check_virtual_camera("/dev/video-that-is-not-there")
        Traceback (most recent call last):
        ...
        facestream.pipeline.errors.OutputError: virtual camera /dev/video-that-is-not-there not found (create one with v4l2loopback: sudo modprobe v4l2loopback video_nr=N)
    """
    hint = "create one with v4l2loopback: sudo modprobe v4l2loopback video_nr=N"
    try:
        st = os.stat(device)
    except FileNotFoundError:
        raise OutputError(f"virtual camera {device} not found ({hint})") from None
    except OSError as exc:
        raise OutputError(f"cannot use {device} as a virtual camera: {exc.strerror}") from None
    if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != VIDEO_MAJOR:
        raise OutputError(f"{device} is not a video device ({hint})")
    try:
        driver, caps = query_capabilities(device)
    except OSError as exc:
        raise OutputError(f"cannot use {device} as a virtual camera: {exc.strerror or exc}") from None
    if not caps & V4L2_CAP_VIDEO_OUTPUT:
        raise OutputError(f"{device} ({driver}) is a capture device, not a virtual camera output ({hint})")


class VirtualCamera(Encoder):
    """Shows the processed video on a virtual camera (a v4l2loopback device) that video-call apps,
    OBS or browsers open as a webcam: raw frames (``yuv420p``, or ``yuyv422`` for apps that want
    YUYV) at the source's rate, through FFmpeg's ``v4l2`` output device. No audio.

    Frames of a live source are shown as they come; frames of a file are paced at its own rate.

    Args:
        settings: ``pix_fmt`` picks the pixel format (``yuv420p`` or ``yuyv422``); the rest is unused.
        device: The loopback device, e.g. ``/dev/video10``.

    Example:
        >>> VirtualCamera(device="/dev/video10").format
        'v4l2'
    """

    name = "virtualcam"

    def __init__(self, settings: EncoderSettings | None = None, *, device: str) -> None:
        settings = settings or EncoderSettings()
        if settings.pix_fmt not in PIXEL_FORMATS:
            settings = dataclasses.replace(settings, pix_fmt="yuv420p")
        super().__init__(settings, path="camera.mkv", in_place=True)
        self.path = self._write_path = device
        self.format = "v4l2"
        self._t0: float | None = None
        self._first_time = 0.0

    # A device: nothing to lock or move into place; checked before any model loads.
    def claim(self) -> None:
        check_virtual_camera(self.path)

    def release(self) -> None:
        pass

    def open(self, ctx: RunContext) -> None:
        self._ctx = ctx
        info = ctx.source
        if info is None:
            raise OutputError("the virtual camera needs an open source")
        if info.frame_rate:
            self._frame_dt = float(1 / info.frame_rate)
        self.claim()
        self.codec_used = "rawvideo"
        w, h = info.width - info.width % 2, info.height - info.height % 2
        self._size = (w, h)
        try:
            self._container = av.open(self.path, "w", format="v4l2")
            stream = self._container.add_stream("rawvideo", rate=info.frame_rate or 30)
            stream.width, stream.height, stream.pix_fmt = w, h, self.settings.pix_fmt
            self._video = stream
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            if self._container is not None:
                self._container.close()
                self._container = None
            raise OutputError(f"cannot write to the virtual camera {self.path}: {exc}") from None

    def write(self, frames: list[Frame]) -> None:
        assert self._ctx is not None
        live = self._ctx.source is not None and self._ctx.source.live
        for frame in frames:
            if not live:  # a file: shown at its own pace
                if self._t0 is None:
                    self._t0, self._first_time = time.monotonic(), frame.time
                delay = self._t0 + frame.time - self._first_time - time.monotonic()
                if delay > 0:
                    self._ctx.stop.wait(delay)
            av_frame = self._to_av(frame.image)
            av_frame.pts = None
            for packet in self._video.encode(av_frame):
                self._container.mux(packet)
            self.frames_written += 1
            self._ctx.side.take_until(lambda p: p.time <= frame.time)  # no audio on a camera

    def close(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except (av.error.FFmpegError, OSError) as exc:
                log.warning("virtualcam: %s closed with an error: %s", self.path, exc)

    def report(self) -> dict[str, Any]:
        return {"output": self.path, "codec": "rawvideo", "pix_fmt": self.settings.pix_fmt,
                "frames_written": self.frames_written}
