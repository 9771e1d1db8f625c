"""The streamer stage: RGB frames in; a live stream out (RTMP push, RTSP publish, MPEG-TS over UDP)."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import av

from facestream.facelib.media.inputs import redact_url as redact
from facestream.facelib.media.srt import SrtBridge
from facestream.pipeline.errors import OutputError
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext

from .encoder import Encoder, EncoderSettings

log = logging.getLogger(__name__)

# URL scheme -> FFmpeg muxer.
STREAM_FORMATS = {"rtmp": "flv", "rtmps": "flv", "rtsp": "rtsp", "udp": "mpegts", "tcp": "mpegts", "srt": "mpegts"}


def is_stream_url(target: str) -> bool:
    """True for live outputs: what the streamer writes (``rtmp://``, ``rtsp://``, ``udp://``,
    ``srt://``, ...) and virtual cameras (``v4l2:/dev/videoN``).

    Example:
        >>> is_stream_url("rtmp://live.example/app/key"), is_stream_url("v4l2:/dev/video9"), is_stream_url("out.mp4")
        (True, True, False)
    """
    if target.lower().startswith("v4l2:"):
        return True
    return target.split("://", 1)[0].lower() in STREAM_FORMATS if "://" in target else False


def live_output(settings: EncoderSettings | None, target: str, *, backoff_s: tuple[float, float] = (0.5, 8.0)) -> Encoder:
    """The sink for a live output: a :class:`Streamer`, or a virtual camera for ``v4l2:``.

    Example:
        >>> type(live_output(None, "srt://127.0.0.1:9000")).__name__
        'Streamer'
    """
    if target.lower().startswith("v4l2:"):
        from .virtualcam import VirtualCamera

        return VirtualCamera(settings, device=target[len("v4l2:"):])
    return Streamer(settings, url=target, backoff_s=backoff_s)


class Streamer(Encoder):
    """Pushes the processed video live to a server: RTMP (FLV), RTSP (publish, over TCP), MPEG-TS
    over UDP or TCP, or MPEG-TS over SRT, with the source's audio (AAC).

    SRT goes through a supervised ``srt-live-transmit`` (:class:`SrtBridge`): the stream is written
    to it over UDP on 127.0.0.1. A caller URL must connect when the run starts; a listener URL
    (``?mode=listener``) waits for its callers, and frames before the first one are dropped.

    The encoder is tuned for latency unless the settings say otherwise (x264 ``zerolatency``, one
    keyframe a second, no B-frames). When the server goes away the run goes on: frames that arrive
    while the stream is down are dropped and counted, and the stream is opened again with backoff;
    the first frame after it comes back is a keyframe.

    Args:
        settings: How to encode.
        url: Where to push, e.g. ``rtmp://host/live/key`` or ``udp://239.0.0.1:1234``.
        backoff_s: First and longest wait between reconnection attempts.

    Example:
        >>> Streamer(url="rtmp://127.0.0.1/live/cam").format
        'flv'
    """

    name = "streamer"
    gpu_frames = False  # the header goes out at connect, before a first frame could open NVENC on the GPU

    def __init__(self, settings: EncoderSettings | None = None, *, url: str,
                 backoff_s: tuple[float, float] = (0.5, 8.0)) -> None:
        scheme = url.split("://", 1)[0].lower()
        if scheme not in STREAM_FORMATS:
            raise OutputError(f"cannot stream to {redact(url)}: use rtmp://, rtsp://, srt://, udp:// or tcp://")
        settings = settings or EncoderSettings()
        options = {"bf": "0", **settings.options}
        settings = dataclasses.replace(settings, tune=settings.tune or "zerolatency", fragmented=False,
                                       faststart=False, options=options)
        super().__init__(settings, path="stream.mp4", in_place=True)
        self.path = self._write_path = url
        self.format = STREAM_FORMATS[scheme]
        self.backoff_s = backoff_s
        self.frames_dropped = 0
        self.reconnects = 0
        self.gaps: list[dict[str, float]] = []
        self._down_since: float | None = None
        self._next_try = 0.0
        self._wait = backoff_s[0]
        self._bridge: SrtBridge | None = None
        self._losses_seen = 0
        if scheme == "srt":
            self._bridge = SrtBridge(url, direction="send", backoff_s=backoff_s, error=OutputError)

    # An output on the network: nothing to lock or move into place.
    def claim(self) -> None:
        pass

    def release(self) -> None:
        if self._bridge is not None:
            self._bridge.close()

    def open(self, ctx: RunContext) -> None:
        info = ctx.source
        if info is not None and "g" not in self.settings.options:
            rate = float(info.frame_rate or 30)
            self.settings.options["g"] = str(max(1, round(rate)))  # a keyframe a second: viewers join fast
        bridge = self._bridge
        try:
            if bridge is not None:
                self._open_srt(bridge)
            super().open(ctx)
        except OutputError as exc:
            if bridge is not None:
                bridge.close()
            raise OutputError(str(exc).replace(self.path, redact(self.path))) from None
        except BaseException:
            if bridge is not None:
                bridge.close()
            raise
        if bridge is not None and not bridge.connected:  # a listener with no caller yet
            self._hang_up()
            log.warning("streamer: %s: waiting for an SRT caller; frames until then are dropped", bridge.name)

    def _open_srt(self, bridge: SrtBridge, connect_timeout_s: float = 5.0) -> None:
        """Start the bridge; a caller must reach its listener now (as other protocols must)."""
        bridge.start()
        self._write_path = bridge.local_url
        query = self.path.partition("?")[2].lower()
        listener = "mode=listener" in query or "mode=server" in query or self.path[len("srt://"):].startswith(":")
        if not listener and not bridge.wait_connected(connect_timeout_s):
            why = bridge.last_message or f"no SRT listener answered within {connect_timeout_s:.0f} s"
            raise OutputError(f"cannot stream to {bridge.name}: {why}")

    def _connect(self, info: Any) -> None:
        """Open the stream and send its header now: a server that is not there fails here."""
        super()._connect(info)
        try:
            self._container.start_encoding()
        except (av.error.FFmpegError, OSError) as exc:
            container, self._container = self._container, None
            try:
                container.close()
            except Exception:  # noqa: BLE001 - it never opened
                pass
            raise OutputError(f"cannot stream to {redact(self.path)}: {exc}") from None

    def _container_options(self) -> dict[str, str]:
        if self.format == "flv":
            return {"flvflags": "no_duration_filesize"}
        if self.format == "rtsp":
            return {"rtsp_transport": "tcp"}
        return {"flush_packets": "1"}

    def write(self, frames: list[Frame]) -> None:
        for frame in frames:
            bridge = self._bridge
            if bridge is not None and self._container is not None and (
                    not bridge.connected or bridge.losses != self._losses_seen):
                self._losses_seen = bridge.losses
                self._lost(OSError("the SRT link was lost"))
            if self._container is None and not self._reconnect():
                self.frames_dropped += 1
                assert self._ctx is not None
                self._ctx.side.take_until(lambda p: p.time <= frame.time)
                continue
            written = self.frames_written
            try:
                super().write([frame])
            except (av.error.FFmpegError, OSError) as exc:
                self._lost(exc)
                self.frames_dropped += self.frames_written == written  # the frame itself did not go out

    def close(self) -> None:
        try:
            self._close_stream()
        finally:
            if self._bridge is not None:  # the last packets still have to go out over SRT
                self._bridge.close(linger_s=0.5)

    def _close_stream(self) -> None:
        if self._container is None:
            return
        if not self.frames_written:  # nothing was sent: just hang up
            self._hang_up()
            return
        try:
            super().close()
        except (av.error.FFmpegError, OSError) as exc:
            log.warning("streamer: %s closed with an error: %s", redact(self.path), exc)
            self._container = None

    def _hang_up(self) -> None:
        container, self._container = self._container, None
        self._video = self._audio = None
        try:
            container.close()
        except (av.error.FFmpegError, OSError):
            pass

    def report(self) -> dict[str, Any]:
        out = super().report()
        out.update({"output": redact(self.path), "bytes": None, "frames_dropped": self.frames_dropped,
                    "reconnects": self.reconnects, "gaps": self.gaps})
        if self._bridge is not None:
            out["srt"] = self._bridge.report()
        return out

    # ------------------------------------------------------------------ the connection

    def _lost(self, exc: BaseException) -> None:
        log.warning("streamer: %s went away (%s); reconnecting", redact(self.path), exc)
        container, self._container = self._container, None
        try:
            container.close()
        except Exception:  # noqa: BLE001 - the connection is gone either way
            pass
        self._video = self._audio = None
        self._down_since = time.monotonic()
        self._wait = self.backoff_s[0]
        self._next_try = self._down_since + self._wait

    def _reconnect(self) -> bool:
        now = time.monotonic()
        if self._bridge is not None:  # srt-live-transmit reconnects; the stream reopens once it has
            if not self._bridge.connected:
                return False
        elif now < self._next_try:
            return False
        assert self._ctx is not None and self._ctx.source is not None
        try:
            self._connect(self._ctx.source)
        except OutputError:
            self._wait = min(self._wait * 2, self.backoff_s[1])
            self._next_try = time.monotonic() + self._wait
            return False
        self._last_pts = None
        if self._down_since is not None:
            gap = time.monotonic() - self._down_since
            self.gaps.append({"gap_s": round(gap, 3)})
            self.reconnects += 1
            log.warning("streamer: %s is back after %.1f s", redact(self.path), gap)
            self._down_since = None
        return True
