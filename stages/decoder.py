"""The decoder stage: files, network streams, webcams and stills in; RGB frames on the device out."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import av
import cv2
import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.frame import Frame
from pipeline.stage import RunContext, Source, SourceInfo

from .media.colour import i420_to_rgb, i420_to_rgb_numpy, nv12_to_rgb
from .media.inputs import InputSpec, resolve_input
from .media.transfer import HostToDevice

log = logging.getLogger("facestream.decoder")

HwAccel = Literal["none", "cuda"]

_MAX_SKEW_S = 1.0  # live streams: most the stream clock may drift from the wall clock before re-anchoring


@dataclass
class SidePacket:
    """A compressed packet of the source's ``index``-th side stream (audio), already re-timed."""

    index: int
    packet: av.Packet

    @property
    def time(self) -> float:
        return float(self.packet.pts * self.packet.time_base) if self.packet.pts is not None else 0.0


class _StreamDropped(Exception):
    """A live stream ended or failed; the decoder may reconnect."""


class Decoder(Source):
    """Decodes any input FFmpeg can read into RGB frames on the run's device.

    Files are read as fast as downstream takes them (or paced in real time with ``realtime``). Live
    sources (RTSP, RTMP, SRT, UDP, webcams) open with low-latency options and timeouts and reconnect
    with exponential backoff when the stream drops, continuing the same output timeline; each gap is
    reported. Audio streams are passed untouched to the sink through the side channel, re-timed with
    the same origin as the video so trims keep them in sync.

    Args:
        source: A path, URL, ``webcam:N``, still image, folder of images or image pattern.
        start: Seconds to skip at the start (files).
        end: Stop at this time in seconds (files: a trim; live: a duration).
        realtime: Pace a file at its frame rate, as a live source would arrive.
        live: Force live handling on or off (default: from the kind of input).
        image_duration_s: How long a single still is shown.
        image_fps: Frame rate given to stills and image sequences.
        open_timeout_s: Longest wait to open the input.
        read_timeout_s: Longest wait for data from a live input before it counts as dropped.
        reconnect: Reconnect live inputs that drop.
        reconnect_timeout_s: Give up when a dropped stream stays away this long.
        backoff_s: First and longest wait between reconnection attempts.
        audio: Carry audio streams to the sink.
        options: Extra FFmpeg options for the demuxer (e.g. ``{"rtsp_transport": "udp"}``).
        hwaccel: ``cuda`` decodes with NVDEC where FFmpeg offers it (falls back to software).
        webcam_size, webcam_fps, webcam_format: V4L2 capture settings (e.g. ``"1280x720"``, 30,
            ``"mjpeg"``).

    Example:
        >>> dec = Decoder(source="clip.mp4", start=2.0, end=5.0)  # doctest: +SKIP
    """

    name = "decoder"

    def __init__(
        self,
        *,
        source: str,
        start: float | None = None,
        end: float | None = None,
        realtime: bool = False,
        live: bool | None = None,
        image_duration_s: float = 5.0,
        image_fps: float = 25.0,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
        reconnect: bool = True,
        reconnect_timeout_s: float = 60.0,
        backoff_s: tuple[float, float] = (0.5, 8.0),
        audio: bool = True,
        options: Mapping[str, str] | None = None,
        hwaccel: HwAccel = "none",
        webcam_size: str | None = None,
        webcam_fps: float | None = None,
        webcam_format: str | None = None,
    ) -> None:
        if start is not None and start < 0:
            raise ValueError(f"start must be >= 0 seconds, got {start}")
        if end is not None and end <= (start or 0):
            raise ValueError(f"end must be after start, got start={start} end={end}")
        for label, value in (
            ("image_duration_s", image_duration_s),
            ("image_fps", image_fps),
            ("open_timeout_s", open_timeout_s),
            ("read_timeout_s", read_timeout_s),
            ("reconnect_timeout_s", reconnect_timeout_s),
        ):
            if value <= 0:
                raise ValueError(f"{label} must be > 0, got {value}")
        if len(backoff_s) != 2 or not 0 < backoff_s[0] <= backoff_s[1]:
            raise ValueError(f"backoff_s must be (first, longest) with 0 < first <= longest, got {backoff_s}")
        if hwaccel not in ("none", "cuda"):
            raise ValueError(f"hwaccel must be 'none' or 'cuda', got {hwaccel!r}")
        self.source = source
        self.start = start
        self.end = end
        self.realtime = realtime
        self.live_override = live
        self.image_duration_s = image_duration_s
        self.image_fps = image_fps
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.reconnect = reconnect
        self.reconnect_timeout_s = reconnect_timeout_s
        self.backoff_s = backoff_s
        self.audio = audio
        self.options = dict(options or {})
        self.hwaccel = hwaccel
        self.webcam_size = webcam_size
        self.webcam_fps = webcam_fps
        self.webcam_format = webcam_format

        self._spec: InputSpec | None = None
        self._container: Any = None
        self._ctx: RunContext | None = None
        self._upload: HostToDevice | None = None
        self._frames: Iterator[Frame] | None = None
        self._peeked: Frame | None = None
        self._index = 0
        self.reconnects = 0
        self.gaps: list[dict[str, float]] = []
        self.corrupt_packets = 0
        self._last_time = 0.0
        self._ended = False
        self._t_first: float | None = None
        self._gap_pending: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._spec = resolve_input(self.source)
        live = self._spec.live if self.live_override is None else self.live_override
        self._live = live or self.realtime
        self._upload = HostToDevice(ctx.device)
        if self._spec.kind in ("image", "images"):
            self.info = self._open_stills()
            self._frames = self._read_stills()
        else:
            self._container = self._open_container()
            self.info = self._describe(self._container)
            self._frames = self._read_media()
        # Decode the first frame now: rotation, colour and the true size are known only from a frame,
        # and the sink needs them before it writes its header.
        try:
            self._peeked = next(self._frames)
        except StopIteration:
            raise InputError(f"no video frames in {self.source}") from None
        self.info.rotation = int(self._peeked.meta.pop("_rotation", 0))
        self.info.colour = self._peeked.meta.pop("_colour", {})
        ctx.source = self.info

    def read(self) -> Iterator[Frame]:
        assert self._frames is not None
        if self._peeked is not None:
            first, self._peeked = self._peeked, None
            yield first
        yield from self._frames

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
            self._frames = None
        if self._container is not None:
            self._container.close()
            self._container = None

    def report(self) -> dict[str, Any]:
        return {
            "input": self.source,
            "kind": self._spec.kind if self._spec else None,
            "live": getattr(self, "_live", None),
            "reconnects": self.reconnects,
            "gaps": self.gaps,
            "corrupt_packets": self.corrupt_packets,
        }

    # ------------------------------------------------------------------ opening

    def _open_container(self) -> Any:
        spec = self._spec
        assert spec is not None
        options: dict[str, str] = {}
        if spec.kind == "stream" and spec.target.lower().startswith("rtsp"):
            options["rtsp_transport"] = "tcp"
        if self._live and spec.kind in ("stream", "webcam"):
            options.update({"fflags": "nobuffer", "flags": "low_delay"})
        if spec.kind == "webcam":
            if self.webcam_size:
                options["video_size"] = self.webcam_size
            if self.webcam_fps:
                options["framerate"] = str(self.webcam_fps)
            if self.webcam_format:
                options["input_format"] = self.webcam_format
        if spec.kind == "pattern":
            options["framerate"] = str(self.image_fps)
        options.update(self.options)
        kwargs: dict[str, Any] = {}
        if self.hwaccel == "cuda":
            from av.codec.hwaccel import HWAccel

            kwargs["hwaccel"] = HWAccel(device_type="cuda", allow_software_fallback=True)
        try:
            container = av.open(
                spec.target,
                format=spec.format,
                options=options,
                timeout=(self.open_timeout_s, self.read_timeout_s),
                **kwargs,
            )
        except FileNotFoundError:
            raise InputError(f"input not found: {spec.target}") from None
        except av.error.InvalidDataError:
            raise InputError(
                f"cannot read {spec.target}: not a video file FFmpeg can parse, or truncated"
            ) from None
        except (av.error.FFmpegError, OSError) as exc:
            raise InputError(f"cannot open {spec.target}: {_reason(exc)}") from None
        if container.format.name == "tty" and not spec.target.lower().endswith((".ans", ".art", ".asc", ".diz", ".ice")):
            container.close()  # FFmpeg renders any text file as ANSI art
            raise InputError(f"cannot read {spec.target}: not a video file FFmpeg can parse, or truncated")
        if not container.streams.video:
            container.close()
            raise InputError(f"no video stream in {spec.target}")
        return container

    def _describe(self, container: Any) -> SourceInfo:
        vs = container.streams.video[0]
        cc = vs.codec_context
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        rate = Fraction(rate) if rate else None
        duration = None
        if container.duration:
            duration = container.duration / 1e6
        elif vs.duration and vs.time_base:
            duration = float(vs.duration * vs.time_base)
        if duration is not None and not self._spec.live:  # type: ignore[union-attr]
            stop = min(duration, self.end) if self.end is not None else duration
            duration = max(0.0, stop - (self.start or 0.0))
        elif self.end is not None:
            duration = self.end - (self.start or 0.0)
        frame_count = None
        if duration is not None and rate:
            frame_count = int(round(duration * rate))
        if vs.frames and self.start is None and self.end is None:
            frame_count = int(vs.frames)
        return SourceInfo(
            width=cc.width,
            height=cc.height,
            frame_rate=rate,
            time_base=Fraction(vs.time_base) if vs.time_base else Fraction(1, 90000),
            live=self._live,
            duration_s=duration,
            frame_count=frame_count,
            side_streams=list(container.streams.audio) if self.audio else [],
            metadata={k: v for k, v in container.metadata.items() if k in ("title", "comment", "language")},
        )

    def _open_stills(self) -> SourceInfo:
        spec = self._spec
        assert spec is not None
        self._stills = list(spec.paths) if spec.kind == "images" else [spec.target]
        first = _read_image(self._stills[0])
        if spec.kind == "image":
            count = max(1, int(round(self.image_duration_s * self.image_fps)))
        else:
            count = len(self._stills)
        rate = Fraction(self.image_fps).limit_denominator(1001)
        return SourceInfo(
            width=first.shape[1],
            height=first.shape[0],
            frame_rate=rate,
            time_base=1 / rate,
            live=self._live,
            duration_s=count / float(rate),
            frame_count=count,
        )

    # ------------------------------------------------------------------ reading

    def _read_stills(self) -> Iterator[Frame]:
        assert self._spec is not None
        tb = self.info.time_base
        if self._spec.kind == "image":
            image = _read_image(self._stills[0])
            # A copy per frame: later stages paint into their frame's picture.
            sources = (image.copy() for _ in range(self.info.frame_count or 1))
        else:
            sources = (_read_image(p) for p in self._stills)
        t_start = time.monotonic()
        for i, rgb in enumerate(sources):
            t = i * float(tb)
            if self.end is not None and t >= self.end:
                return
            if self.start is not None and t < self.start:
                continue
            if self._should_stop():
                return
            if self.realtime:
                self._sleep_until(t_start + t - (self.start or 0.0))
            pts = i - int(round((self.start or 0.0) / float(tb)))
            yield self._frame(pts, tb, self._upload.image(rgb))  # type: ignore[union-attr]

    def _read_media(self) -> Iterator[Frame]:
        """Read the container, reconnecting live streams that drop."""
        spec = self._spec
        assert spec is not None
        out_tb = self.info.time_base
        offset_s = 0.0
        first = True
        while True:
            try:
                yield from self._demux(self._container, out_tb, offset_s, first)
                if not (self._live and spec.kind != "file") or self._should_stop() or self._past_end():
                    return
                raise _StreamDropped("the stream ended")
            except (_StreamDropped, av.error.FFmpegError, OSError) as exc:
                if self._should_stop() or self._past_end():
                    return
                if not (self._live and spec.kind != "file" and self.reconnect):
                    raise InputError(f"reading {self.source} failed at {self._last_time:.2f} s: {_reason(exc)}") from None
                first = False
                offset_s = self._reconnect(exc)
                if offset_s is None:
                    return

    def _reconnect(self, exc: BaseException) -> float | None:
        """Reopen a dropped live stream with backoff; returns the new segment's time offset."""
        assert self._ctx is not None
        dropped_at = time.monotonic()
        log.warning("input: %s dropped at %.1f s (%s); reconnecting", self.source, self._last_time, _reason(exc))
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001
                pass
            self._container = None
        wait = self.backoff_s[0]
        attempts = 0
        while not self._should_stop():
            if time.monotonic() - dropped_at > self.reconnect_timeout_s:
                raise InputError(
                    f"{self.source} dropped at {self._last_time:.1f} s and did not come back within "
                    f"{self.reconnect_timeout_s:.0f} s ({attempts} attempts)"
                )
            attempts += 1
            try:
                self._container = self._open_container()
            except InputError:
                self._ctx.stop.wait(wait)
                wait = min(wait * 2, self.backoff_s[1])
                continue
            gap = time.monotonic() - dropped_at
            self.reconnects += 1
            self.gaps.append({"at_s": round(self._last_time, 3), "gap_s": round(gap, 3), "attempts": attempts})
            log.warning("input: reconnected after %.1f s (attempt %d)", gap, attempts)
            self._gap_pending = gap
            # The new segment continues the timeline at the wall-clock time it resumed.
            since_first = time.monotonic() - self._t_first if self._t_first is not None else 0.0
            return max(since_first, self._last_time + 1e-3)
        return None

    def _demux(self, container: Any, out_tb: Fraction, offset_s: float, first: bool) -> Iterator[Frame]:
        """Demux one connection (or the whole file): decoded video frames out, audio to the side channel.

        Times are put on the output timeline: for files, seconds since the trim start; for live
        streams, seconds since the run started, anchored to the wall clock (a stream whose timestamps
        are missing or jump by more than ``_MAX_SKEW_S`` is re-anchored), so a reconnect resumes at the
        time it happened and the gap stays visible.
        """
        vs = container.streams.video[0]
        audio = list(container.streams.audio) if self.audio else []
        live_stream = self._live and self._spec.kind != "file"  # type: ignore[union-attr]
        tb = vs.time_base or Fraction(1, 90000)
        origin: float | None = None  # stream time that maps to output time `offset_s`
        if not live_stream:
            origin = float((vs.start_time or 0) * tb) + (self.start or 0.0)
            if self.start:
                container.seek(int(origin / tb), stream=vs, backward=True)
        limit = None if self.end is None else self.end - (self.start or 0.0)
        audio_done = [False] * len(audio)
        video_done = False
        t_wall0: float | None = None if live_stream else time.monotonic()  # live: the segment's first frame
        frame_dt = float(1 / self.info.frame_rate) if self.info.frame_rate else 1 / 30
        for packet in container.demux(vs, *audio):
            if self._should_stop():
                return
            if packet.stream.type == "audio":
                if packet.pts is None or packet.dts is None or origin is None:
                    continue
                k = audio.index(packet.stream)
                rel = float(packet.pts * packet.time_base) - origin + offset_s
                if limit is not None and rel >= limit:
                    audio_done[k] = True
                elif rel >= offset_s - 1e-6:
                    self._send_side(k, packet, origin - offset_s)
                if video_done and all(audio_done):
                    return
                continue
            if video_done:
                if all(audio_done):
                    return
                continue
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:
                self.corrupt_packets += 1
                if self.corrupt_packets == 1:
                    log.warning("input: skipping corrupt video data in %s", self.source)
                continue
            for av_frame in decoded:
                t = float(av_frame.pts * tb) if av_frame.pts is not None else None
                if live_stream:
                    if t_wall0 is None:
                        t_wall0 = time.monotonic()
                    wall = time.monotonic() - t_wall0
                    if t is None:
                        t = (origin or 0.0) + wall
                    if origin is None or abs((t - origin) - wall) > _MAX_SKEW_S:
                        origin = t - wall
                    rel = max(t - origin + offset_s, self._last_time + 1e-4 if self._index else 0.0)
                else:
                    if t is None:
                        t = origin + self._last_time + frame_dt  # type: ignore[operator]
                    if t < origin - 1e-6:  # type: ignore[operator]
                        continue
                    rel = t - origin  # type: ignore[operator]
                    if self.realtime:
                        self._sleep_until(t_wall0 + rel)  # type: ignore[operator]
                if limit is not None and rel >= limit - 1e-6:
                    video_done = self._ended = True
                    break
                self._last_time = rel
                if self._t_first is None:
                    self._t_first = time.monotonic()
                frame = self._frame(int(round(rel / out_tb)), out_tb, self._to_tensor(av_frame))
                if self._gap_pending is not None:
                    frame.meta["gap_s"] = self._gap_pending
                    self._gap_pending = None
                if first and self._index == 1:
                    frame.meta["_rotation"] = getattr(av_frame, "rotation", 0) or 0
                    frame.meta["_colour"] = {
                        "color_primaries": av_frame.color_primaries,
                        "color_trc": av_frame.color_trc,
                        "colorspace": av_frame.colorspace,
                    }
                yield frame
                if self._should_stop():
                    return
            if video_done and (not audio or all(audio_done)):
                return
        if not live_stream:
            self._check_complete(frame_dt)

    def _check_complete(self, frame_dt: float) -> None:
        """A file whose frames stop well before its declared duration is truncated."""
        expected = self.info.duration_s
        if expected is None or self._spec.kind != "file":  # type: ignore[union-attr]
            return
        got = self._last_time + frame_dt
        if got < expected - max(1.0, 0.02 * expected):
            raise InputError(
                f"{self.source} ended at {got:.1f} s of {expected:.1f} s: the file is truncated or corrupt"
            )

    def _send_side(self, k: int, packet: av.Packet, shift_s: float) -> None:
        """Re-time an audio packet onto the output timeline (``t_out = t - shift_s``) and pass it on."""
        assert self._ctx is not None
        shift = int(round(shift_s / packet.time_base))
        packet.pts -= shift
        packet.dts -= shift
        if packet.pts < 0:
            return
        self._ctx.side.put(SidePacket(k, packet))

    # ------------------------------------------------------------------ helpers

    def _frame(self, pts: int, tb: Fraction, image: torch.Tensor) -> Frame:
        frame = Frame(index=self._index, pts=pts, time_base=tb, captured_at=time.time(), image=image)
        self._index += 1
        return frame

    def _to_tensor(self, av_frame: Any) -> torch.Tensor:
        up = self._upload
        assert up is not None
        fmt = av_frame.format.name
        if fmt == "cuda":
            return _cuda_frame_to_rgb(av_frame, up.device)
        if fmt == "yuv420p" and av_frame.width % 2 == 0 and av_frame.height % 2 == 0 and av_frame.color_range != 2:
            i420 = av_frame.to_ndarray()
            if up.device.type == "cpu":
                return torch.from_numpy(i420_to_rgb_numpy(i420))
            return i420_to_rgb(up.upload(i420))
        return up.image(av_frame.to_ndarray(format="rgb24"))

    def _should_stop(self) -> bool:
        return self._ctx is not None and self._ctx.stop.is_set()

    def _past_end(self) -> bool:
        return self._ended

    def _sleep_until(self, deadline: float) -> None:
        assert self._ctx is not None
        delay = deadline - time.monotonic()
        if delay > 0:
            self._ctx.stop.wait(delay)


def _read_image(path: str) -> np.ndarray:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _cuda_frame_to_rgb(av_frame: Any, device: torch.device) -> torch.Tensor:
    """NVDEC output (NV12 in device memory) -> RGB on the device, without a host copy."""
    y = torch.from_dlpack(av_frame.planes[0])
    uv = torch.from_dlpack(av_frame.planes[1])
    return nv12_to_rgb(y[: av_frame.height, : av_frame.width], uv[: av_frame.height // 2, : av_frame.width]).to(device)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
