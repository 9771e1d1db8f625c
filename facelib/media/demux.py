"""Opening an input with FFmpeg and demuxing it: video frames on the output timeline, audio packets
re-timed to the same origin and handed on untouched."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av

from facestream.pipeline.errors import InputError

from .clock import FileClock, LiveClock
from .inputs import InputSpec

log = logging.getLogger(__name__)

_ANSI_ART = (".ans", ".art", ".asc", ".diz", ".ice")


@dataclass
class SidePacket:
    """A compressed packet of the source's ``index``-th side stream (audio), already re-timed."""

    index: int
    packet: av.Packet

    @property
    def time(self) -> float:
        return float(self.packet.pts * self.packet.time_base) if self.packet.pts is not None else 0.0

    def copy(self) -> SidePacket:
        """The same packet, in a buffer of its own (for a second sink)."""
        p = av.Packet(bytes(self.packet))
        p.pts, p.dts, p.duration, p.time_base = self.packet.pts, self.packet.dts, self.packet.duration, \
            self.packet.time_base
        p.is_keyframe = self.packet.is_keyframe
        return SidePacket(self.index, p)


def reason(exc: BaseException) -> str:
    """A short human reason for an FFmpeg or OS error."""
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def open_container(spec: InputSpec, *, options: Mapping[str, str], timeouts: tuple[float, float],
                   hwaccel: Any = None) -> Any:
    """Open ``spec`` with FFmpeg; every failure is one :class:`InputError` line.

    Raises:
        InputError: missing, unreadable, not a video, or no video stream.
    """
    kwargs: dict[str, Any] = {"hwaccel": hwaccel} if hwaccel is not None else {}
    try:
        container = av.open(spec.target, format=spec.format, options=dict(options), timeout=timeouts, **kwargs)
    except FileNotFoundError:
        raise InputError(f"input not found: {spec.target}") from None
    except av.error.InvalidDataError:
        raise InputError(f"cannot read {spec.target}: not a video file FFmpeg can parse, or truncated") from None
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"cannot open {spec.target}: {reason(exc)}") from None
    if container.format.name == "tty" and not spec.target.lower().endswith(_ANSI_ART):
        container.close()  # FFmpeg renders any text file as ANSI art
        raise InputError(f"cannot read {spec.target}: not a video file FFmpeg can parse, or truncated")
    if not container.streams.video:
        container.close()
        raise InputError(f"no video stream in {spec.target}")
    return container


class Demuxer:
    """Demuxes one connection of a live stream, or a whole file.

    Video frames come out decoded, with their time on the output timeline (files: seconds since the
    trim start; live streams: from a :class:`LiveClock`). Audio packets within the trim are re-timed
    with the same origin and passed to ``on_audio(k, packet)``; they are never decoded.

    Args:
        container: An open PyAV input container.
        audio: Carry the audio streams.
        on_audio: Receives ``SidePacket``s.
        live: A live stream (wall-clock timeline) rather than a file.
        start, end: The trim in seconds (files); ``end`` is a duration for live streams.
        realtime: Pace a file at its own speed.
        frame_rate: The nominal rate (for frames without timestamps).
        should_stop: Polled between packets.
        wait: ``wait(seconds)`` sleeps, returning early when the run stops.
        last_time: Output time of the last frame already produced (across reconnects).
        name: The input, for messages.
    """

    def __init__(self, container: Any, *, audio: bool, on_audio: Callable[[SidePacket], None], live: bool,
                 start: float | None, end: float | None, realtime: bool, frame_rate: Fraction | None,
                 should_stop: Callable[[], bool], wait: Callable[[float], None], last_time: float = 0.0,
                 name: str = "") -> None:
        self.container = container
        self.name = name
        self.audio = list(container.streams.audio) if audio else []
        self.on_audio = on_audio
        self.live = live
        self.start = start
        self.end = end
        self.realtime = realtime
        self.frame_dt = float(1 / frame_rate) if frame_rate else 1 / 30
        self.should_stop = should_stop
        self.wait = wait
        self.last_time = last_time
        self.ended = False  # the trim's end was reached
        self.corrupt_packets = 0
        self.first_frame: Any = None  # the first decoded frame (rotation and colour tags)

    def frames(self, clock: LiveClock | None, *, produced: int) -> Iterator[tuple[float, Any]]:
        """``(output seconds, av.VideoFrame)`` in order. ``produced``: frames already produced."""
        vs = self.container.streams.video[0]
        tb = vs.time_base or Fraction(1, 90000)
        file_clock = None
        if not self.live:
            file_clock = FileClock(float((vs.start_time or 0) * tb) + (self.start or 0.0))
            if self.start:
                self.container.seek(int(file_clock.origin / tb), stream=vs, backward=True)
        limit = None if self.end is None else self.end - (self.start or 0.0)
        audio_done = [False] * len(self.audio)
        video_done = False
        t_wall0 = time.monotonic()
        paced = 0
        for packet in self.container.demux(vs, *self.audio):
            if self.should_stop() and not video_done:
                if self.live or not self.audio or not produced:
                    return
                # A file stopped early: read on only for the audio of the frames already produced,
                # so that audio and video end together.
                video_done = True
                limit = self.last_time + self.frame_dt
            if packet.stream.type == "audio":
                shift = file_clock.origin if file_clock else (clock.shift() if clock else None)
                if packet.pts is None or packet.dts is None or shift is None:
                    continue
                k = self.audio.index(packet.stream)
                rel = float(packet.pts * packet.time_base) - shift
                offset = clock.offset_s if clock else 0.0
                if limit is not None and rel >= limit:
                    audio_done[k] = True
                elif rel >= offset - 1e-6:
                    self._send_audio(k, packet, shift)
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
                    log.warning("input: skipping corrupt video data in %s", self.name)
                continue
            for av_frame in decoded:
                t = float(av_frame.pts * tb) if av_frame.pts is not None else None
                if file_clock is None:
                    assert clock is not None
                    rel = clock.place(t, after=self.last_time + 1e-4 if produced else 0.0)
                else:
                    if t is None:
                        t = file_clock.origin + self.last_time + self.frame_dt
                    if t < file_clock.origin - 1e-6:
                        continue
                    rel = file_clock.place(t)
                    if self.realtime:
                        now = time.monotonic()
                        if paced == 1:
                            # A first frame read ahead at open (to learn the stream) does not start the
                            # clock: the rest follow at the file's pace from when the next is asked for.
                            t_wall0 = max(t_wall0, now - self.last_time)
                        paced += 1
                        delay = t_wall0 + rel - now
                        if delay > 0:
                            self.wait(delay)
                if limit is not None and rel >= limit - 1e-6:
                    video_done = self.ended = True
                    break
                self.last_time = rel
                if self.first_frame is None:
                    self.first_frame = av_frame
                produced += 1
                yield rel, av_frame
                if self.should_stop() and (self.live or not self.audio):
                    return
            if video_done and (not self.audio or all(audio_done)):
                return

    def _send_audio(self, k: int, packet: av.Packet, shift_s: float) -> None:
        if retime(packet, shift_s):
            self.on_audio(SidePacket(k, packet))


def retime(packet: av.Packet, shift_s: float) -> bool:
    """Move a packet onto the output timeline (``t_out = t - shift_s``); False if it falls before 0."""
    shift = int(round(shift_s / packet.time_base))
    packet.pts -= shift
    packet.dts -= shift
    return packet.pts >= 0
