"""Test media made with real PyAV encoders, and probes that read outputs back."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

FLASH_LEVEL = 235


def make_clip(
    path: str | Path,
    *,
    seconds: float = 2.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    audio: str | tuple[str, ...] | None = "aac",
    sample_rate: int = 48000,
    markers: tuple[float, ...] = (),
    vfr: bool = False,
    rotation: int = 0,
    codec: str = "libx264",
    faststart: bool = False,
    gop: int | None = None,
) -> Path:
    """Write a clip with moving content, optional audio, and optional sync markers.

    At each time in ``markers`` the video shows one bright frame and the audio starts a 40 ms beep;
    everywhere else the picture is dark and the audio silent, so a probe can find both again.
    With ``vfr`` the frame intervals alternate between 1/fps and 2/fps.
    """
    path = Path(path)
    w, h = size
    options = {"movflags": "+faststart"} if faststart else {}
    out = av.open(str(path), "w", container_options=options)
    vs = out.add_stream(codec, rate=fps)
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    tb = Fraction(1, fps * 2 if vfr else fps)
    vs.time_base = tb
    vs.codec_context.time_base = tb
    vs.codec_context.gop_size = gop or fps  # a keyframe every second, as cameras and streams send
    vs.options = {"preset": "ultrafast", "crf": "20"} if codec.startswith("libx26") else {}
    if rotation:
        vs.set_display_rotation(rotation)
    astreams = []
    for name in (audio,) if isinstance(audio, str) else (audio or ()):
        astream = out.add_stream(name, rate=sample_rate)
        astream.layout = "mono"
        if name.startswith("pcm_"):
            astream.format = "s16"
        astreams.append(astream)
    # Frame times.
    times: list[float] = []
    t = 0.0
    i = 0
    while t < seconds - 1e-9:
        times.append(t)
        step = (1 if (not vfr or i % 2 == 0) else 2) / fps
        t += step
        i += 1
    flash_frames = {min(range(len(times)), key=lambda k: abs(times[k] - m)) for m in markers}
    yy, xx = np.mgrid[0:h, 0:w]
    # Audio: silence with beeps at the markers.
    n_audio = int(round(seconds * sample_rate))
    samples = np.zeros(n_audio, np.float32)
    for m in markers:
        a = int(round(m * sample_rate))
        b = min(n_audio, a + int(0.04 * sample_rate))
        k = np.arange(b - a)
        samples[a:b] = 0.6 * np.sin(2 * np.pi * 1000 * k / sample_rate)
    audio_pos = 0
    chunk = 1024
    for k, t in enumerate(times):
        if k in flash_frames:
            rgb = np.full((h, w, 3), FLASH_LEVEL, np.uint8)
        else:
            phase = int(t * 60)
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[..., 0] = ((xx + phase) % 64).astype(np.uint8)
            rgb[..., 1] = ((yy + 2 * phase) % 48).astype(np.uint8)
            rgb[..., 2] = 40
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = int(round(t / tb))
        frame.time_base = tb
        for packet in vs.encode(frame):
            out.mux(packet)
        # Keep the audio interleaved with the video.
        while astreams and audio_pos < n_audio and audio_pos / sample_rate <= t + 0.05:
            audio_pos = _write_audio(out, astreams, samples, audio_pos, chunk, sample_rate)
    while astreams and audio_pos < n_audio:
        audio_pos = _write_audio(out, astreams, samples, audio_pos, chunk, sample_rate)
    for packet in vs.encode(None):
        out.mux(packet)
    for astream in astreams:
        for packet in astream.encode(None):
            out.mux(packet)
    out.close()
    return path


def _write_audio(out, astreams, samples, pos: int, chunk: int, rate: int) -> int:
    part = samples[pos : pos + chunk]
    for astream in astreams:
        af = av.AudioFrame.from_ndarray(part.reshape(1, -1), format="flt", layout="mono")
        af.sample_rate = rate
        af.pts = pos
        af.time_base = Fraction(1, rate)
        for packet in astream.encode(af):
            out.mux(packet)
    return pos + len(part)


@dataclass
class Probe:
    frames: int
    video_times: list[float]
    frame_means: list[float]
    audio_streams: list[str]
    audio_duration: float | None
    audio_start: float | None
    beep_times: list[float]
    rotation: int
    width: int
    height: int
    video_codec: str
    metadata: dict[str, str]


def probe(path: str | Path, *, markers: bool = False) -> Probe:
    """Decode a file completely: frame times, mean brightness per frame, audio extent and beeps."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        times: list[float] = []
        means: list[float] = []
        rotation = 0
        for i, f in enumerate(c.decode(vs)):
            if i == 0:
                rotation = int(getattr(f, "rotation", 0) or 0)
            times.append(float(f.pts * vs.time_base))
            if markers:
                means.append(float(f.to_ndarray(format="gray").mean()))
        codec = vs.codec_context.name
        w, h = vs.codec_context.width, vs.codec_context.height
        metadata = dict(c.metadata)
    audio_streams: list[str] = []
    audio_duration = audio_start = None
    beeps: list[float] = []
    with av.open(str(path)) as c:
        audio_streams = [s.codec_context.name for s in c.streams.audio]
        if c.streams.audio:
            a = c.streams.audio[0]
            first = last = None
            pcm: list[np.ndarray] = []
            rate = a.codec_context.sample_rate
            for frame in c.decode(a):
                t0 = float(frame.pts * frame.time_base) if frame.pts is not None else None
                if first is None:
                    first = t0
                last = (t0 or 0.0) + frame.samples / frame.sample_rate
                if markers:
                    pcm.append(frame.to_ndarray().reshape(len(frame.layout.channels), -1)[0].astype(np.float32))
            audio_start = first
            audio_duration = (last - first) if first is not None and last is not None else None
            if markers and pcm:
                data = np.abs(np.concatenate(pcm))
                if data.max() > 1.5:  # integer samples
                    data = data / 32768.0
                loud = np.flatnonzero(data > 0.2)
                if len(loud):
                    starts = [loud[0]] + [b for a_, b in zip(loud[:-1], loud[1:]) if b - a_ > rate // 10]
                    beeps = [(first or 0.0) + s / rate for s in starts]
    return Probe(
        frames=len(times),
        video_times=times,
        frame_means=means,
        audio_streams=audio_streams,
        audio_duration=audio_duration,
        audio_start=audio_start,
        beep_times=beeps,
        rotation=rotation,
        width=w,
        height=h,
        video_codec=codec,
        metadata=metadata,
    )


def flash_times(p: Probe, threshold: float = 150.0) -> list[float]:
    """Times of the bright marker frames in a probe made with ``markers=True``."""
    return [t for t, m in zip(p.video_times, p.frame_means) if m > threshold]


def av_end_gap(p: Probe, fps: float) -> float:
    """Seconds between the end of the audio and the end of the video (last frame + one frame)."""
    assert p.video_times and p.audio_start is not None and p.audio_duration is not None
    return abs((p.audio_start + p.audio_duration) - (p.video_times[-1] + 1 / fps))


AUDIO_FRAME_S = 1024 / 48000  # one AAC frame of the test clips


def audio_packets(path: str | Path) -> dict[int, list[tuple[int, bytes]]]:
    """Every audio stream's packets (timestamp and bytes), to compare two files' audio bit for bit."""
    with av.open(str(path)) as c:
        out: dict[int, list[tuple[int, bytes]]] = {}
        for p in c.demux(*c.streams.audio):
            if p.size:
                out.setdefault(p.stream.index, []).append((p.pts, bytes(p)))
        return out


def remux(src: str | Path, dst: str | Path, **kwargs: Any) -> None:
    """Copy every stream's packets into another container (``kwargs``: PyAV's ``format``, ``options``)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", **kwargs) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
