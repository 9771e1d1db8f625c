"""The encoder stage: RGB frames in; an mp4, mkv, mov or webm file out, with every audio stream."""

from __future__ import annotations

import fcntl
import functools
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, get_args

import av
import cv2
import numpy as np
import torch

from facestream.pipeline.config import check
from facestream.pipeline.errors import OutputError
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Sink

from facestream.facelib.media.audio import AudioWriter
from facestream.facelib.media.colour import NV12Frames, device_frames_supported, rgb_to_i420, rgb_to_i420_numpy
from facestream.facelib.media.transfer import DeviceToHost, to_host

log = logging.getLogger(__name__)

AudioMode = Literal["copy", "reencode", "none"]
VideoCodec = Literal["auto", "libx264", "libx265", "libvpx-vp9", "h264_nvenc", "hevc_nvenc"]
SpeedPreset = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"
]
VIDEO_CODECS: tuple[str, ...] = get_args(VideoCodec)

CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm"}
_CODEC_FAMILY = {
    "libx264": "h264",
    "h264_nvenc": "h264",
    "libx265": "hevc",
    "hevc_nvenc": "hevc",
    "libvpx-vp9": "vp9",
}


@dataclass
class EncoderSettings:
    """How the output is encoded (the ``output`` section of a preset, less what other stages read).

    Attributes:
        codec: ``auto`` (NVENC where it opens on a CUDA run, else libx264; VP9 for webm), libx264,
            libx265, libvpx-vp9, h264_nvenc, hevc_nvenc.
        crf: Constant quality (lower is better; x264/x265 0-51, VP9 0-63, NVENC as ``cq``).
        preset: Speed preset (x264/x265 names; mapped for VP9 and NVENC).
        tune: Encoder tune, e.g. ``zerolatency`` for live output (x264/x265).
        pix_fmt: Output pixel format.
        audio: ``copy`` (re-encode only what the container cannot take), ``reencode`` or ``none``.
        faststart: Move the mp4/mov index to the front (one extra pass at the end).
        fragmented: Write fragmented mp4/mov, playable even if the process is killed.
        options: Extra encoder options passed to FFmpeg.

    Example:
        >>> EncoderSettings(crf=0, preset="ultrafast").crf
        0
    """

    codec: VideoCodec = "auto"
    crf: int = 18
    preset: SpeedPreset = "veryfast"
    tune: str | None = None
    pix_fmt: str = "yuv420p"
    audio: AudioMode = "copy"
    faststart: bool = False
    fragmented: bool = False
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.codec in VIDEO_CODECS, "codec", self.codec, f"must be one of {', '.join(VIDEO_CODECS)}")
        check(0 <= self.crf <= 63, "crf", self.crf, "must be within 0..63")
        check(self.preset in get_args(SpeedPreset), "preset", self.preset,
              f"must be one of {', '.join(get_args(SpeedPreset))}")
        check(self.audio in get_args(AudioMode), "audio", self.audio, f"must be one of {', '.join(get_args(AudioMode))}")


@functools.lru_cache(maxsize=None)
def hardware_encoder_opens(codec: str) -> bool:
    """True if ``codec`` (e.g. ``h264_nvenc``) exists in this FFmpeg and a session actually opens.

    Data-centre GPUs (H100, A100) have NVDEC but no NVENC: the codec is listed, yet fails to open.
    """
    if codec not in av.codecs_available:
        return False
    try:
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 30)
        ctx.open()
        ctx.close() if hasattr(ctx, "close") else None
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


@functools.lru_cache(maxsize=None)
def encoder_takes_device_frames(codec: str, width: int, height: int, options: tuple[tuple[str, str], ...],
                                device_index: int) -> bool:
    """True if ``codec`` encodes CUDA frames from device memory with these settings on this GPU.

    One black frame of the real size and options goes through a throwaway session, so a failure
    shows before the run's first frame and the frames go through host memory instead.
    """
    if not device_frames_supported():
        log.warning("encoder: this PyAV cannot hand GPU frames to %s (needs av>=18.1); frames go through "
                    "host memory", codec)
        return False
    try:
        with torch.cuda.device(device_index):
            ctx = av.CodecContext.create(codec, "w")
            ctx.width, ctx.height, ctx.pix_fmt = width, height, "cuda"
            ctx.time_base = Fraction(1, 30)
            ctx.options = dict(options)
            black = torch.zeros((height, width, 3), dtype=torch.uint8, device=torch.device("cuda", device_index))
            frame = NV12Frames().frame(black)
            frame.pts = 0
            ctx.encode(frame)
            ctx.encode(None)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "use the host path"
        log.warning("encoder: %s does not take frames from GPU memory here (%s); frames go through host memory",
                    codec, exc)
        return False


def pick_video_codec(codec: str, container: str, device: torch.device) -> str:
    """Resolve ``auto`` and fall back from a hardware encoder that does not open."""
    if codec == "auto":
        if container == "webm":
            return "libvpx-vp9"
        if device.type == "cuda" and hardware_encoder_opens("h264_nvenc"):
            return "h264_nvenc"
        return "libx264"
    if codec.endswith("_nvenc") and not hardware_encoder_opens(codec):
        log.warning("encoder: %s does not open on this machine; using libx264 instead", codec)
        return "libx264"
    return codec


class Encoder(Sink):
    """Encodes frames into a file and carries the source's audio streams.

    Timestamps are the frames' own (variable frame rate is safe), in the source's time base. The
    source's rotation and colour tags are kept. Audio is stream-copied where the container allows
    the codec, else re-encoded (AAC for mp4/mov, Opus for webm/mkv), and interleaved by time. On
    ``close`` (also after errors and interrupts) the file is finalised, so it always plays; a run that
    wrote no frame leaves no file. A lock beside the output makes a second run on the same output
    fail at once (:meth:`claim`).

    Args:
        settings: How to encode.
        path: Output file; its extension picks the container (.mp4, .mkv, .mov, .webm).
        metadata: Container metadata to write.
        in_place: Write under the final name as frames come (live recordings, with ``fragmented``:
            playable up to the last fragment whatever happens). Otherwise the file is written beside
            it under a hidden temporary name and moved into place when finalised, so a reader never
            sees half a file and a crashed run never destroys an existing one.
        write_from_s: Frames earlier than this output time pass through the pipeline (warming up
            tracks and decisions) but are not written: a segment of a longer video.

    Example:
        >>> enc = Encoder(EncoderSettings(preset="ultrafast", crf=0), path="out.mkv")
        >>> enc.format
        'matroska'
    """

    name = "encoder"
    # NVENC may take the pictures from GPU memory. Its session then opens with the first frame (it
    # adopts that frame's CUDA frames context), so an output that must open before any frame
    # (a stream's header goes out at connect) keeps host frames.
    gpu_frames = True

    def __init__(self, settings: EncoderSettings | None = None, *, path: str,
                 metadata: Mapping[str, str] | None = None, in_place: bool = False,
                 write_from_s: float = 0.0) -> None:
        ext = Path(path).suffix.lower()
        if ext not in CONTAINERS:
            raise OutputError(f"output must end in one of {', '.join(sorted(CONTAINERS))}, got {path!r}")
        self.settings = settings or EncoderSettings()
        self.path = path
        self.format = CONTAINERS[ext]
        self.metadata = dict(metadata or {})
        self.in_place = in_place
        self.write_from_s = write_from_s
        final = Path(path)
        self._write_path = path if in_place else str(final.with_name(f".{final.name}.partial-{os.getpid()}{ext}"))
        self._lock: int | None = None

        self._container: Any = None
        self._video: Any = None
        self._audio: AudioWriter | None = None
        self._ctx: RunContext | None = None
        self._size = (0, 0)
        self._last_pts: int | None = None
        self._last_time = 0.0
        self._frame_dt = 1 / 30
        self.frames_written = 0
        self.pts_repaired = 0
        self.codec_used: str | None = None
        self._download = DeviceToHost()  # pictures leave a GPU through a bounded pinned ring
        self._nv12: NV12Frames | None = None  # set where NVENC takes the pictures from GPU memory

    # ------------------------------------------------------------------ lifecycle

    def open(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._download.max_bytes = ctx.pinned_bytes // 4
        info = ctx.source
        if info is None:
            raise OutputError("the encoder needs an open source")
        if info.frame_rate:
            self._frame_dt = float(1 / info.frame_rate)
        self.claim()
        self.codec_used = pick_video_codec(self.settings.codec, self.format, ctx.device)
        try:
            self._connect(info)
        except BaseException:
            _remove(self._write_path)
            self.release()
            raise

    def _container_options(self) -> dict[str, str]:
        options: dict[str, str] = {}
        movflags = []
        if self.format in ("mp4", "mov"):
            if self.settings.fragmented:
                # A fragment at least every second, keyframe or not: a killed run loses one second.
                movflags.append("+frag_keyframe+empty_moov+default_base_moof")
                options.update({"frag_duration": "1000000", "flush_packets": "1"})
            elif self.settings.faststart:
                movflags.append("+faststart")
            if any(k not in ("title", "comment", "description", "copyright", "artist") for k in self.metadata):
                movflags.append("+use_metadata_tags")
        if movflags:
            options["movflags"] = "".join(movflags)
        return options

    def _connect(self, info: Any) -> None:
        """Create the output container and its video and audio streams."""
        codec = self.codec_used
        assert codec is not None
        try:
            self._container = av.open(self._write_path, "w", format=self.format,
                                      container_options=self._container_options(), timeout=(10.0, 10.0))
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot create {self.path}: {exc}") from None
        try:
            family = _CODEC_FAMILY[codec]
            if self.format in CONTAINERS.values() and family not in self._container.supported_codecs:
                raise OutputError(f"{codec} ({family}) cannot be written to a {self.format} file; choose another codec")
            self._open_video(codec, info)
            self._open_audio(info.side_streams)
            for key, value in {**info.metadata, **self.metadata}.items():
                self._container.metadata[key] = str(value)
            if codec.endswith("_nvenc") and self._nv12 is None:
                # Open the hardware encoder now, with the real size and options: a GPU that cannot
                # take them falls back here rather than failing at the first frame.
                self._container.start_encoding()
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self._container.close()
            self._container = None
            if not codec.endswith("_nvenc"):
                raise
            log.warning("encoder: %s does not open for this output (%s); using libx264 instead", codec, exc)
            _remove(self._write_path)
            self.codec_used = "libx264"
            self._connect(info)
        except BaseException:
            self._container.close()
            self._container = None
            raise

    def claim(self) -> None:
        """Take the output for this run: a lock beside it (released by the OS if the process dies).

        Raises:
            OutputError: the folder is missing, or another run is writing the same output.
        """
        if self._lock is not None:
            return
        final = Path(self.path).resolve()
        if not final.parent.is_dir():
            raise OutputError(f"output folder does not exist: {final.parent}")
        lock_path = final.with_name(f".{final.name}.lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write to {final.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(f"{self.path} is being written by another run") from None
        self._lock = fd
        self._lock_path = lock_path

    def release(self) -> None:
        """Let go of the output's lock (a run that never opened the encoder calls this)."""
        if self._lock is not None:
            _remove(str(self._lock_path))
            os.close(self._lock)
            self._lock = None

    def _open_video(self, codec: str, info: Any) -> None:
        w, h = info.width - info.width % 2, info.height - info.height % 2
        if (w, h) != (info.width, info.height):
            log.warning("encoder: %dx%d is odd; writing %dx%d (last row/column dropped)", info.width, info.height, w, h)
        self._size = (w, h)
        rate = info.frame_rate or Fraction(30)
        stream = self._container.add_stream(codec, rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = self.settings.pix_fmt
        stream.time_base = info.time_base
        stream.codec_context.time_base = info.time_base
        options = _codec_options(codec, self.settings.crf, self.settings.preset, self.settings.tune)
        options.update(self.settings.options)
        stream.options = options
        self._nv12 = None
        if self._takes_gpu_frames(codec, w, h, options):
            # NVENC reads the pictures where they lie; the session opens with the first frame, whose
            # frames context it adopts (the probe opened one with the same settings).
            stream.pix_fmt = "cuda"
            self._nv12 = NV12Frames()
        cc = stream.codec_context
        cc.color_range = 1  # our RGB->YUV conversion writes limited range
        for key, value in info.colour.items():
            if value not in (None, 2):  # 2 = unspecified
                setattr(cc, key, value)
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        self._video = stream

    def _takes_gpu_frames(self, codec: str, width: int, height: int, options: dict[str, str]) -> bool:
        device = self._ctx.device if self._ctx is not None else torch.device("cpu")
        if not (self.gpu_frames and codec.endswith("_nvenc") and device.type == "cuda"
                and self.settings.pix_fmt == "yuv420p"):
            return False
        index = device.index if device.index is not None else torch.cuda.current_device()
        return encoder_takes_device_frames(codec, width, height, tuple(sorted(options.items())), index)

    def _open_audio(self, templates: list[Any]) -> None:
        if self.settings.audio != "none":
            self._audio = AudioWriter(self._container, self.format, templates, mode=self.settings.audio,
                                      fragmented=self.settings.fragmented)

    def write(self, frames: list[Frame]) -> None:
        kept = [f for f in frames if f.time >= self.write_from_s - 1e-6]
        for frame, av_frame in zip(kept, self._to_av([f.image for f in kept])):
            pts = int(frame.pts)
            if self._last_pts is not None and pts <= self._last_pts:
                pts = self._last_pts + 1
                self.pts_repaired += 1
            self._last_pts = pts
            av_frame.pts = pts
            av_frame.time_base = frame.time_base
            for packet in self._video.encode(av_frame):
                self._container.mux(packet)
            self.frames_written += 1
            self._last_time = frame.time
            self._mux_side(until=frame.time)

    def close(self) -> None:
        if self._container is None:
            self.release()
            return
        try:
            if self.frames_written:
                for packet in self._video.encode(None):
                    self._container.mux(packet)
                # Audio ends with the video: whatever the source had beyond the last frame written
                # (read ahead, or left by an interrupted run) is dropped.
                self._mux_side(until=self._last_time + self._frame_dt)
                assert self._ctx is not None
                self._ctx.side.take_all()
                if self._audio is not None:
                    self._audio.flush()
        finally:
            container, self._container = self._container, None
            try:
                container.close()
            finally:
                if not self.frames_written:
                    _remove(self._write_path)
                    log.warning("encoder: no frames were written; %s was not kept", self.path)
                elif not self.in_place:
                    os.replace(self._write_path, self.path)  # readers never see half a file
                self.release()

    def report(self) -> dict[str, Any]:
        return {
            "output": self.path,
            "codec": self.codec_used,
            "frames_written": self.frames_written,
            "pts_repaired": self.pts_repaired,
            "frames_from": "device" if self._nv12 is not None else "host",
            "audio_streams": self._audio.describe() if self._audio is not None else [],
            "bytes": os.path.getsize(self.path) if os.path.exists(self.path) else 0,
        }

    # ------------------------------------------------------------------ helpers

    def _fit(self, image: torch.Tensor) -> torch.Tensor:
        w, h = self._size
        if image.shape[0] != h or image.shape[1] != w:
            if image.shape[0] >= h and image.shape[1] >= w and image.shape[0] - h <= 1 and image.shape[1] - w <= 1:
                image = image[:h, :w]
            else:  # the source changed size mid-stream (e.g. after a reconnect)
                image = torch.from_numpy(cv2.resize(to_host(image), (w, h), interpolation=cv2.INTER_AREA))
        return image

    def _to_av(self, images: list[torch.Tensor]) -> Iterator[av.VideoFrame]:
        """The pictures as frames to encode, in order. For NVENC on a GPU they stay there (NV12 in
        device memory). Otherwise from a GPU each leaves the device once, as I420 (1.5 bytes a pixel)
        converted there, through the pinned ring: the next pictures' conversions and copies are
        queued while this one is encoded."""
        images = [self._fit(image) for image in images]
        if self._nv12 is not None:
            assert self._ctx is not None
            for image in images:
                yield self._nv12.frame(image.to(self._ctx.device))
        elif self.settings.pix_fmt != "yuv420p":
            for rgb in self._download.download(images):
                yield av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        elif images and images[0].is_cuda:
            for i420 in self._download.download(images, rgb_to_i420):
                yield av.VideoFrame.from_ndarray(i420, format="yuv420p")  # a copy: the buffer is reused
        else:
            for image in images:
                yield av.VideoFrame.from_ndarray(rgb_to_i420_numpy(to_host(image)), format="yuv420p")

    def _mux_side(self, until: float | None) -> None:
        assert self._ctx is not None
        side = self._ctx.side
        items = side.take_all() if until is None else side.take_until(lambda p: p.time <= until)
        if self._audio is not None:
            for item in items:
                self._audio.write(item)


def _codec_options(codec: str, crf: int, preset: str, tune: str | None) -> dict[str, str]:
    speed = get_args(SpeedPreset).index(preset)  # 0 = fastest
    if codec in ("libx264", "libx265"):
        opts = {"crf": str(min(crf, 51)), "preset": preset}
        if tune:
            opts["tune"] = tune
        if codec == "libx265":
            opts["x265-params"] = "log-level=error"
        return opts
    if codec == "libvpx-vp9":
        return {
            "crf": str(crf),
            "b": "0",
            "deadline": "realtime" if speed <= 2 else "good",
            "cpu-used": str(max(0, 8 - speed)),
            "row-mt": "1",
        }
    # NVENC: p1 (fastest) .. p7 (best); constant quality is vbr with a cq and no bitrate target.
    opts = {"preset": f"p{min(7, 1 + speed * 6 // 9)}", "rc": "vbr", "cq": str(min(crf, 51)), "b": "0"}
    if crf == 0:  # cq 0 is not lossless on NVENC
        opts = {"preset": opts["preset"], "tune": "lossless"}
    elif tune == "zerolatency":
        opts["tune"] = "ull"
    return opts


def is_leftover(name: str, output: str | None = None) -> bool:
    """A file an encoder leaves beside its output when its process dies: the hidden partial file
    or the lock (of ``output``, or of any output)."""
    prefix = f".{output}." if output else "."
    return name.startswith(prefix) and (".partial-" in name or name.endswith(".lock"))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
