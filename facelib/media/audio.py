"""Carrying a source's audio streams into an output container, untouched where the container allows."""

from __future__ import annotations

import logging
from typing import Any

import av

from .demux import SidePacket

log = logging.getLogger(__name__)

# Audio codecs each container takes by stream copy without "experimental" flags.
AUDIO_COPY: dict[str, set[str] | None] = {
    "mp4": {"aac", "mp3", "opus", "alac", "flac", "ac3", "eac3"},
    "mov": {"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s24le", "pcm_s16be", "pcm_f32le"},
    "webm": {"opus", "vorbis"},
    "matroska": None,  # anything FFmpeg's muxer lists
    # Live streams.
    "flv": {"aac", "mp3"},
    "mpegts": {"aac", "mp3", "ac3", "eac3", "opus"},
    "rtsp": {"aac", "opus"},
}
AUDIO_REENCODE = {"mp4": "aac", "mov": "aac", "webm": "libopus", "matroska": "libopus", "flv": "aac", "mpegts": "aac",
                  "rtsp": "aac"}
_STREAMS = ("flv", "mpegts", "rtsp")


class AudioWriter:
    """The output's audio streams, one per source stream: copied where the container takes the
    codec (``mode="copy"``), else re-encoded (AAC for mp4/mov, Opus for webm/mkv).

    Args:
        container: The output container (open for writing, before its header is written).
        format: Its format name (mp4, mov, webm, matroska).
        templates: The source's audio streams.
        mode: ``copy`` or ``reencode``.
        fragmented: A fragmented mp4/mov (ADTS audio cannot be copied into one).

    Example:
        >>> AUDIO_REENCODE["webm"]
        'libopus'
    """

    def __init__(self, container: Any, format: str, templates: list[Any], *, mode: str = "copy",
                 fragmented: bool = False) -> None:
        self.container = container
        self.streams: list[tuple[Any, bool]] = []  # (output stream, copied?)
        self._decoders: dict[int, Any] = {}  # re-encoded streams: this writer's own decoder
        allowed = AUDIO_COPY[format]
        supported = container.supported_codecs if format not in _STREAMS else allowed
        for template in templates:
            name = template.codec_context.name
            can_copy = name in supported and (allowed is None or name in allowed)
            if fragmented and format in ("mp4", "mov") and not template.codec_context.extradata:
                # ADTS audio (from MPEG-TS, say) needs its header in the moov, which a fragmented
                # file writes first: re-encode it.
                can_copy = False
            if mode == "copy" and can_copy:
                self.streams.append((container.add_stream_from_template(template), True))
                continue
            target = AUDIO_REENCODE[format]
            rate = template.codec_context.sample_rate or 48000
            if target == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
                rate = 48000
            out = container.add_stream(target, rate=rate)
            layout = template.codec_context.layout
            if layout is not None and layout.nb_channels <= 2:
                out.layout = layout.name
            log.info("audio %s re-encoded to %s for %s", name, target, format)
            self._decoders[len(self.streams)] = _decoder(template)
            self.streams.append((out, False))

    def write(self, item: SidePacket) -> None:
        """Mux one source packet (already on the output timeline) into its output stream."""
        if item.index >= len(self.streams):
            return
        stream, copied = self.streams[item.index]
        packet = item.packet
        if copied:
            packet.stream = stream
            self.container.mux(packet)
            return
        try:
            decoded = self._decoders[item.index].decode(packet)
        except av.error.FFmpegError:
            return
        for audio_frame in decoded:
            for out_packet in stream.encode(audio_frame):
                self.container.mux(out_packet)

    def flush(self) -> None:
        """Drain the re-encoders (at the end of the output)."""
        for stream, copied in self.streams:
            if not copied:
                for packet in stream.encode(None):
                    self.container.mux(packet)

    def describe(self) -> list[dict[str, str]]:
        return [{"codec": s.codec_context.name, "mode": "copy" if copied else "reencode"} for s, copied in self.streams]


def _decoder(template: Any) -> Any:
    """A decoder of its own for a source audio stream (several writers may carry the same one)."""
    src = template.codec_context
    dec = av.CodecContext.create(src.name, "r")
    if src.extradata:
        dec.extradata = src.extradata
    dec.sample_rate = src.sample_rate
    if src.layout is not None:
        dec.layout = src.layout
    return dec
