"""Long videos in segments: cut at keyframes, processed apart, joined losslessly into one file.

A segment is processed from an earlier keyframe (its *warm-up*: the previous segment's tail) so that
tracks, smoothing and identity decisions at its first frame are the ones a single pipeline would
have; the warm-up frames pass through every stage but are not written. The segments' video
packets are then joined without re-encoding, on the source's own timestamps, and every audio
stream is carried once from the original, exactly as a single run carries it.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from facestream.facelib.media.audio import AudioWriter
from facestream.facelib.media.demux import SidePacket, retime
from facestream.pipeline.errors import InputError, OutputError
from facestream.stages.encoder import CONTAINERS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentPlan:
    """One segment, in the source video stream's time base (``tb_num/tb_den``).

    ``warm`` is the keyframe decoding starts at, ``start`` the keyframe of its first written frame,
    ``end`` the first frame of the next segment (None for the last). ``origin`` is the stream's
    start time, from which output times are measured.
    """

    warm: int
    start: int
    end: int | None
    origin: int
    tb_num: int
    tb_den: int

    @property
    def time_base(self) -> Fraction:
        return Fraction(self.tb_num, self.tb_den)

    def seconds(self, pts: int) -> float:
        """Output seconds of a source timestamp."""
        return float((pts - self.origin) * self.time_base)

    @property
    def decode_from_s(self) -> float:
        return self.seconds(self.warm)

    @property
    def decode_until_s(self) -> float | None:
        return None if self.end is None else self.seconds(self.end)

    @property
    def write_from_s(self) -> float:
        """Output time of the first written frame, on the segment's own timeline (from ``warm``)."""
        return float((self.start - self.warm) * self.time_base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VideoIndex:
    """Presentation timestamps of a video stream's frames and which of them are keyframes."""

    pts: list[int]
    keyframes: set[int]
    time_base: Fraction
    origin: int
    frame_rate: Fraction | None


def index_video(path: str) -> VideoIndex:
    """Read a file's video packets (no decoding) for their timestamps and keyframes.

    Raises:
        InputError: not a video FFmpeg can read, or its frames carry no timestamps.
    """
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    with container:
        if not container.streams.video:
            raise InputError(f"no video stream in {path}")
        vs = container.streams.video[0]
        pts: list[int] = []
        keys: set[int] = set()
        for packet in container.demux(vs):
            if packet.pts is None:
                if packet.size:
                    raise InputError(f"{path}: video packets without timestamps cannot be cut into segments")
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.add(packet.pts)
        pts.sort()
        rate = vs.average_rate or vs.guessed_rate
        return VideoIndex(pts, keys, Fraction(vs.time_base), int(vs.start_time or 0), Fraction(rate) if rate else None)


def plan_segments(index: VideoIndex, count: int, *, overlap_s: float = 2.0) -> list[SegmentPlan]:
    """Cut into at most ``count`` segments of about equal frame counts, at keyframes; each begins
    decoding at the last keyframe at least ``overlap_s`` before its first frame.

    Example:
        >>> idx = VideoIndex(list(range(100)), {0, 25, 50, 75}, Fraction(1, 25), 0, Fraction(25))
        >>> [(p.warm, p.start, p.end) for p in plan_segments(idx, 4, overlap_s=1.0)]
        [(0, 0, 25), (0, 25, 50), (25, 50, 75), (50, 75, None)]
    """
    frames = index.pts
    if not frames:
        return []
    keys = [i for i, p in enumerate(frames) if p in index.keyframes]
    if not keys or keys[0] != 0:
        keys = [0, *keys]
    cuts = [0]
    for k in range(1, count):
        ideal = round(k * len(frames) / count)
        best = min(keys, key=lambda i: abs(i - ideal))
        if best > cuts[-1]:
            cuts.append(best)
    rate = index.frame_rate or Fraction(25)
    overlap = int(round(overlap_s * rate))
    tb = index.time_base
    plans = []
    for n, cut in enumerate(cuts):
        warm = max([i for i in keys if i <= cut - overlap] or [0]) if cut else 0
        end = frames[cuts[n + 1]] if n + 1 < len(cuts) else None
        plans.append(SegmentPlan(frames[warm], frames[cut], end, index.origin, tb.numerator, tb.denominator))
    return plans


def join_segments(source: str, parts: list[tuple[str, SegmentPlan]], output: str, *, index: VideoIndex,
                  audio: str = "copy") -> int:
    """Join processed segments into ``output`` without re-encoding video; carry the source's audio.

    Each part's frames take the timestamps a single run gives the same source frames (``index``
    lists them), so that a container counting in milliseconds rounds them alike. Audio is taken
    from ``source`` with the rule of a single run: from the first frame to one frame interval after
    the last. Returns the number of video frames written.

    Raises:
        OutputError: a part is missing or does not continue the previous one.
    """
    fmt = CONTAINERS[Path(output).suffix.lower()]
    for path, _ in parts:
        if not Path(path).is_file():
            raise OutputError(f"segment {path} is missing")
    head = av.open(parts[0][0])
    try:
        first = head.streams.video[0]
        rotation = _rotation(parts[0][0])
        out = av.open(output, "w", format=fmt)
        try:
            vout = out.add_stream_from_template(first)
            vout.time_base = first.time_base
            if rotation:
                vout.set_display_rotation(rotation)
            for key, value in head.metadata.items():
                if key not in ("encoder", "major_brand", "minor_version", "compatible_brands"):
                    out.metadata[key] = value
            src = av.open(source)
            try:
                audio_writer = AudioWriter(out, fmt, list(src.streams.audio), mode=audio) if audio != "none" else None
                # A single run keeps the audio up to one frame interval after the last frame.
                last_time = float((index.pts[-1] - index.origin) * index.time_base)
                until = last_time + (float(1 / index.frame_rate) if index.frame_rate else 1 / 30)
                streams = [_video_packets(parts, vout, index)]
                if audio_writer is not None and src.streams.audio:
                    streams.append(_audio_packets(src, first_video=src.streams.video[0], until=until))
                frames = 0
                for _, kind, item in heapq.merge(*streams, key=lambda x: (x[0], x[1])):
                    if kind == 0:
                        out.mux(item)
                        frames += 1
                    else:
                        assert audio_writer is not None
                        audio_writer.write(item)
                if audio_writer is not None:
                    audio_writer.flush()
            finally:
                src.close()
        finally:
            out.close()
    finally:
        head.close()
    return frames


def _rotation(path: str) -> int:
    """A part's display rotation (read from its first frame)."""
    with av.open(path) as container:
        return next((int(getattr(f, "rotation", 0) or 0) for f in container.decode(video=0)), 0)


def _video_packets(parts: list[tuple[str, SegmentPlan]], vout: Any, index: VideoIndex) -> Iterator[tuple[float, int, Any]]:
    """Every part's packets in decode order, on the source's timeline, keyed by time.

    A part holds exactly the source frames from its plan's ``start`` to its ``end``, in order: the
    n-th of its presentation times becomes the n-th of theirs, in the part's time base. Each part
    is read twice (its timestamps, then its packets), never held whole in memory.
    """
    last_dts: int | None = None
    for path, plan in parts:
        with av.open(path) as container:
            vs = container.streams.video[0]
            own = sorted(p.pts for p in container.demux(vs) if p.pts is not None and p.dts is not None)
        source = [p for p in index.pts if p >= plan.start and (plan.end is None or p < plan.end)]
        if len(own) != len(source):
            raise OutputError(f"segment {path} holds {len(own)} frames where {len(source)} were expected")
        with av.open(path) as container:
            vs = container.streams.video[0]
            to_part = plan.time_base / Fraction(vs.time_base)
            final = {old: round((new - plan.origin) * to_part) for old, new in zip(own, source)}
            shift = round((plan.warm - plan.origin) * to_part)
            for packet in container.demux(vs):
                if packet.pts is None or packet.dts is None:
                    continue
                pts = final[packet.pts]
                packet.dts = min(packet.dts + shift, pts)
                packet.pts = pts
                if last_dts is not None and packet.dts <= last_dts:
                    raise OutputError("segments overlap: their frames do not continue each other")
                last_dts = packet.dts
                packet.stream = vout
                yield float(packet.dts * packet.time_base), 0, packet


def _audio_packets(src: Any, *, first_video: Any, until: float) -> Iterator[tuple[float, int, SidePacket]]:
    """The source's audio packets on the output timeline, from 0 to ``until`` seconds."""
    origin_s = float((first_video.start_time or 0) * first_video.time_base)
    index = {s.index: k for k, s in enumerate(src.streams.audio)}
    for packet in src.demux(*src.streams.audio):
        if packet.pts is None or packet.dts is None:
            continue
        if retime(packet, origin_s):
            item = SidePacket(index[packet.stream.index], packet)
            if item.time <= until:
                yield item.time, 1, item
