"""The decoder stage: files, network streams, webcams and stills in; RGB frames on the device out."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import av
import torch

from facestream.facelib.media.clock import LiveClock
from facestream.facelib.media.colour import DeviceFrames, frame_to_rgb
from facestream.facelib.media.demux import Demuxer, open_container, reason
from facestream.facelib.media.inputs import InputSpec, redact_url, resolve_input
from facestream.facelib.media.reconnect import Reconnector
from facestream.facelib.media.srt import SrtBridge
from facestream.facelib.media.stills import Stills
from facestream.facelib.media.transfer import HostToDevice
from facestream.pipeline.config import check, positive
from facestream.pipeline.errors import InputError
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Source, SourceInfo

HwAccel = Literal["none", "cuda"]

log = logging.getLogger(__name__)


class _StreamDropped(Exception):
    """A live stream ended or failed; the decoder may reconnect."""


@dataclass
class DecoderSettings:
    """How the input is read (the ``input`` section of a preset).

    Attributes:
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
        hwaccel: ``cuda`` decodes with NVDEC on the run's GPU where it can (otherwise, and for codecs
            the GPU lacks, in software, with one warning).
        webcam_size, webcam_fps, webcam_format: V4L2 capture settings (``"1280x720"``, 30, ``"mjpeg"``).
        options: Extra FFmpeg options for the demuxer (e.g. ``{"rtsp_transport": "udp"}``).

    Example:
        >>> DecoderSettings(start=2.0, end=5.0).end
        5.0
    """

    start: float | None = None
    end: float | None = None
    realtime: bool = False
    live: bool | None = None
    image_duration_s: float = 5.0
    image_fps: float = 25.0
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    reconnect: bool = True
    reconnect_timeout_s: float = 60.0
    backoff_s: tuple[float, float] = (0.5, 8.0)
    audio: bool = True
    hwaccel: HwAccel = "none"
    webcam_size: str | None = None
    webcam_fps: float | None = None
    webcam_format: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.start is None or self.start >= 0, "start", self.start, "must be >= 0 seconds")
        check(self.end is None or self.end > (self.start or 0), "end", self.end,
              f"must be after start ({self.start or 0})")
        positive(self, "image_duration_s", "image_fps", "open_timeout_s", "read_timeout_s", "reconnect_timeout_s",
                 "webcam_fps")
        check(len(self.backoff_s) == 2 and 0 < self.backoff_s[0] <= self.backoff_s[1], "backoff_s",
              self.backoff_s, "must be [first, longest] with 0 < first <= longest")
        check(self.webcam_size is None or bool(re.fullmatch(r"\d+x\d+", self.webcam_size)), "webcam_size",
              self.webcam_size, "must look like 1280x720")


class Decoder(Source):
    """Decodes any input FFmpeg can read into RGB frames on the run's device.

    Files are read as fast as downstream takes them (or paced in real time with ``realtime``). Live
    sources (RTSP, RTMP, SRT, UDP, webcams) open with low-latency options and timeouts and reconnect
    with exponential backoff when the stream drops, continuing the same output timeline; each gap is
    reported. Audio streams are passed untouched to the sink through the side channel, re-timed with
    the same origin as the video so trims keep them in sync.

    The work is split over the media library: :func:`resolve_input` names the kind of input,
    :class:`Stills` reads pictures, :func:`open_container` and :class:`Demuxer` read containers and
    route audio, :class:`LiveClock` anchors live timestamps, :class:`Reconnector` brings dropped
    streams back, and :func:`frame_to_rgb` converts pixels.

    Args:
        settings: How to read.
        source: A path, URL, ``webcam:N``, still image, folder of images or image pattern.

    Example:
        >>> dec = Decoder(DecoderSettings(start=2.0, end=5.0), source="clip.mp4")
        >>> dec.settings.start
        2.0
    """

    name = "decoder"

    def __init__(self, settings: DecoderSettings | None = None, *, source: str) -> None:
        self.settings = settings or DecoderSettings()
        self.source = source
        self._spec: InputSpec | None = None
        self._ctx: RunContext | None = None
        self._upload: HostToDevice | None = None
        self._device_frames = DeviceFrames()  # NVDEC frames converted in place, held while that runs
        self._demuxer: Demuxer | None = None
        self._reconnector: Reconnector | None = None
        self._frames: Iterator[Frame] | None = None
        self._peeked: Frame | None = None
        self._live = False
        self._feed_live = False
        self._index = 0
        self._corrupt_earlier = 0
        self._t_first: float | None = None
        self._hw_fallback = False  # NVDEC was asked for but cannot serve: software decoding
        self._srt: SrtBridge | None = None  # srt:// inputs arrive through srt-live-transmit

    # ------------------------------------------------------------------ lifecycle

    def open(self, ctx: RunContext) -> None:
        s = self.settings
        self._ctx = ctx
        self._spec = resolve_input(self.source)
        live = self._spec.live if s.live is None else s.live
        # A live feed reconnects and is read with low-latency options; ``realtime`` only paces a
        # recorded input (a file, a video over HTTP) as if it were arriving live.
        self._feed_live = live
        self._live = live or s.realtime
        self._upload = HostToDevice(ctx.device, max_bytes=ctx.pinned_bytes * 3 // 4)
        if self._spec.kind in ("image", "images"):
            looped = self._spec.kind == "image"
            stills = Stills(list(self._spec.paths) if not looped else [self._spec.target], fps=s.image_fps,
                            duration_s=s.image_duration_s, looped=looped)
            self.info = SourceInfo(width=stills.width, height=stills.height, frame_rate=stills.frame_rate,
                                   time_base=1 / stills.frame_rate, live=self._live,
                                   duration_s=stills.count / float(stills.frame_rate), frame_count=stills.count)
            self._frames = self._read_stills(stills)
        else:
            container = self._open_container()
            self.info = self._describe(container)
            self._demuxer = self._new_demuxer(container, last_time=0.0)
            self._frames = self._read_media()
        # Decode the first frame now: rotation, colour and the true size are known only from a frame,
        # and the sink needs them before it writes its header.
        try:
            self._peeked = next(self._frames)
        except StopIteration:
            raise InputError(f"no video frames in {self.source}") from None
        first = self._demuxer.first_frame if self._demuxer is not None else None
        if first is not None:
            self.info.rotation = int(getattr(first, "rotation", 0) or 0)
            self.info.colour = {"color_primaries": first.color_primaries, "color_trc": first.color_trc,
                                "colorspace": first.colorspace}
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
        if self._demuxer is not None:
            self._demuxer.container.close()
            self._demuxer = None
        if self._srt is not None:
            self._srt.close()
        self._device_frames.clear()

    def report(self) -> dict[str, Any]:
        return {
            "input": redact_url(self.source),
            "kind": self._spec.kind if self._spec else None,
            "live": self._live,
            "reconnects": self._reconnector.reconnects if self._reconnector else 0,
            "gaps": self._reconnector.gaps if self._reconnector else [],
            "corrupt_packets": self._corrupt_earlier + (self._demuxer.corrupt_packets if self._demuxer else 0),
        }

    # ------------------------------------------------------------------ opening

    def _open_container(self) -> Any:
        s, spec = self.settings, self._spec
        assert spec is not None
        options: dict[str, str] = {}
        if spec.kind == "stream" and spec.target.lower().startswith("rtsp"):
            options["rtsp_transport"] = "tcp"
        if self._feed_live and spec.kind in ("stream", "webcam"):
            options.update({"fflags": "nobuffer", "flags": "low_delay"})
        if spec.kind == "webcam":
            if s.webcam_size:
                options["video_size"] = s.webcam_size
            if s.webcam_fps:
                options["framerate"] = str(s.webcam_fps)
            if s.webcam_format:
                options["input_format"] = s.webcam_format
        if spec.kind == "pattern":
            options["framerate"] = str(s.image_fps)
        options.update(s.options)
        timeouts = (s.open_timeout_s, s.read_timeout_s)
        if spec.kind == "stream" and spec.target.lower().startswith("srt://"):
            return self._open_srt(spec, options, timeouts)
        hwaccel = self._nvdec() if s.hwaccel == "cuda" else None
        try:
            return open_container(spec, options=options, timeouts=timeouts, hwaccel=hwaccel)
        except InputError as exc:
            if hwaccel is None:
                raise
            self._software(f"NVDEC cannot open {spec.target} ({exc})")
            return open_container(spec, options=options, timeouts=timeouts)

    def _open_srt(self, spec: InputSpec, options: dict[str, str], timeouts: tuple[float, float]) -> Any:
        """SRT through a supervised srt-live-transmit that hands the MPEG-TS over on a local UDP port."""
        if self._srt is None:
            self._srt = SrtBridge(spec.target, direction="receive", backoff_s=self.settings.backoff_s,
                                  error=InputError)
            self._srt.start()
        local = InputSpec("stream", self._srt.local_url, format="mpegts", live=True)
        try:
            return open_container(local, options=options, timeouts=timeouts)
        except InputError as exc:
            why = self._srt.last_message or str(exc).rsplit(": ", 1)[-1]
            raise InputError(f"cannot open {self._srt.name}: {why}") from None

    def _nvdec(self) -> Any:
        """NVDEC on the run's GPU, or None (with one warning) where it cannot serve."""
        assert self._ctx is not None
        if self._hw_fallback:
            return None
        device = self._ctx.device
        if device.type != "cuda":
            self._software("input.hwaccel cuda needs a CUDA run (device is cpu)")
            return None
        from av.codec.hwaccel import HWAccel, hwdevices_available

        if "cuda" not in hwdevices_available():
            self._software("this FFmpeg has no CUDA hardware decoding")
            return None
        # is_hw_owned: frames stay in GPU memory (PyAV would otherwise copy each one to the host).
        return HWAccel(device_type="cuda", device=str(device.index or 0), allow_software_fallback=True,
                       is_hw_owned=True)

    def _software(self, why: str) -> None:
        if not self._hw_fallback:
            log.warning("input: %s; decoding on the CPU", why)
        self._hw_fallback = True

    def _describe(self, container: Any) -> SourceInfo:
        s = self.settings
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
            stop = min(duration, s.end) if s.end is not None else duration
            duration = max(0.0, stop - (s.start or 0.0))
        elif s.end is not None:
            duration = s.end - (s.start or 0.0)
        frame_count = None
        if duration is not None and rate:
            frame_count = int(round(duration * rate))
        if vs.frames and s.start is None and s.end is None:
            frame_count = int(vs.frames)
        return SourceInfo(
            width=cc.width,
            height=cc.height,
            frame_rate=rate,
            time_base=Fraction(vs.time_base) if vs.time_base else Fraction(1, 90000),
            live=self._live,
            duration_s=duration,
            frame_count=frame_count,
            side_streams=list(container.streams.audio) if s.audio else [],
            metadata={k: v for k, v in container.metadata.items() if k in ("title", "comment", "language")},
        )

    def _new_demuxer(self, container: Any, *, last_time: float) -> Demuxer:
        s, ctx = self.settings, self._ctx
        assert ctx is not None
        return Demuxer(container, audio=s.audio, on_audio=ctx.side.put, live=self._live_stream,
                       start=s.start, end=s.end, realtime=s.realtime, frame_rate=self.info.frame_rate,
                       should_stop=ctx.stop.is_set, wait=ctx.stop.wait, last_time=last_time, name=redact_url(self.source))

    @property
    def _live_stream(self) -> bool:
        return self._feed_live and self._spec is not None and self._spec.kind != "file"

    # ------------------------------------------------------------------ reading

    def _read_stills(self, stills: Stills) -> Iterator[Frame]:
        s, ctx = self.settings, self._ctx
        assert ctx is not None and self._upload is not None
        tb = self.info.time_base
        t_start = time.monotonic()
        skip = int(round((s.start or 0.0) / float(tb)))
        for i, rgb in enumerate(stills):
            t = i * float(tb)
            if s.end is not None and t >= s.end:
                return
            if s.start is not None and t < s.start:
                continue
            if ctx.stop.is_set():
                return
            if s.realtime:
                delay = t_start + t - (s.start or 0.0) - time.monotonic()
                if delay > 0:
                    ctx.stop.wait(delay)
            yield self._frame(i - skip, tb, self._upload.image(rgb))

    def _read_media(self) -> Iterator[Frame]:
        """Read the container, reconnecting live streams that drop."""
        ctx, s = self._ctx, self.settings
        assert ctx is not None and self._upload is not None
        out_tb = self.info.time_base
        clock = LiveClock(0.0) if self._live_stream else None
        gap: float | None = None
        while True:
            demuxer = self._demuxer
            assert demuxer is not None
            try:
                for rel, av_frame in demuxer.frames(clock, produced=self._index):
                    if self._t_first is None:
                        self._t_first = time.monotonic()
                    image = frame_to_rgb(av_frame, self._upload, self._device_frames)
                    frame = self._frame(int(round(rel / out_tb)), out_tb, image)
                    frame.gap_s, gap = gap, None
                    yield frame
                if ctx.stop.is_set() or demuxer.ended:
                    return
                if not self._live_stream:
                    self._check_complete(demuxer)
                    return
                raise _StreamDropped("the stream ended")
            except (_StreamDropped, av.error.FFmpegError, OSError) as exc:
                if ctx.stop.is_set() or demuxer.ended:
                    return
                if not (self._live_stream and s.reconnect):
                    raise InputError(
                        f"reading {redact_url(self.source)} failed at {demuxer.last_time:.2f} s: {reason(exc)}"
                    ) from None
                reopened = self._reconnect(exc, demuxer)
                if reopened is None:
                    return
                offset_s, gap = reopened
                clock = LiveClock(offset_s)

    def _reconnect(self, exc: BaseException, demuxer: Demuxer) -> tuple[float, float] | None:
        """Reopen a dropped live stream; returns the new segment's time offset and the gap."""
        assert self._ctx is not None
        if self._reconnector is None:
            s = self.settings
            self._reconnector = Reconnector(redact_url(self.source), open_input=self._open_container, stop=self._ctx.stop,
                                            timeout_s=s.reconnect_timeout_s, backoff_s=s.backoff_s)
        try:
            demuxer.container.close()
        except Exception:  # noqa: BLE001 - it is gone either way
            pass
        self._corrupt_earlier += demuxer.corrupt_packets
        self._demuxer = None
        container = self._reconnector.reopen(exc, at_s=demuxer.last_time)
        if container is None:
            return None
        self._demuxer = self._new_demuxer(container, last_time=demuxer.last_time)
        # The new segment continues the timeline at the wall-clock time it resumed.
        since_first = time.monotonic() - self._t_first if self._t_first is not None else 0.0
        return max(since_first, demuxer.last_time + 1e-3), self._reconnector.gaps[-1]["gap_s"]

    def _check_complete(self, demuxer: Demuxer) -> None:
        """A file whose frames stop well before its declared duration is truncated."""
        expected = self.info.duration_s
        if expected is None or self._spec.kind != "file":  # type: ignore[union-attr]
            return
        got = demuxer.last_time + demuxer.frame_dt
        if got < expected - max(1.0, 0.02 * expected):
            raise InputError(
                f"{self.source} ended at {got:.1f} s of {expected:.1f} s: the file is truncated or corrupt"
            )

    def _frame(self, pts: int, tb: Fraction, image: Any) -> Frame:
        frame = Frame(index=self._index, pts=pts, time_base=tb, captured_at=time.time(), image=image)
        if image.is_cuda:  # the stages after this one wait for the picture's kernels and copies
            frame.ready = torch.cuda.Event()
            frame.ready.record(torch.cuda.current_stream(image.device))
        self._index += 1
        return frame
