"""What kind of input a user's string names."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from facestream.pipeline.errors import InputError

InputKind = Literal["file", "stream", "webcam", "image", "images", "pattern"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
                    ".mpg", ".mpeg", ".3gp", ".ogv", ".mxf")
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "rtp", "tcp")
NETWORK_SCHEMES = LIVE_SCHEMES + ("http", "https", "hls")


@dataclass(frozen=True)
class InputSpec:
    """A resolved input.

    Attributes:
        kind: ``file`` (a local video), ``stream`` (a URL), ``webcam`` (a V4L2 device), ``image`` (one
            still, looped), ``images`` (a folder of stills, in name order), ``pattern`` (a printf
            pattern such as ``frames/%04d.png``, read by FFmpeg's image2 demuxer).
        target: What to open: a path or URL.
        format: FFmpeg demuxer to force, or ``None`` to probe.
        live: True for sources that run in real time and never end by themselves.
        paths: The stills of an ``images`` folder.
    """

    kind: InputKind
    target: str
    format: str | None = None
    live: bool = False
    paths: tuple[str, ...] = ()


def resolve_input(source: str) -> InputSpec:
    """Resolve ``source`` as a user writes it.

    Accepted: a video file; ``rtsp://``, ``rtmp://``, ``srt://``, ``udp://``, ``http(s)://`` URLs
    (HLS included); ``webcam:0`` or ``/dev/video0``; a still image; a folder of images; a printf
    pattern of images.

    Raises:
        InputError: the path does not exist or the folder holds no images.

    Example:
        >>> resolve_input("webcam:1").target
        '/dev/video1'
    """
    m = re.fullmatch(r"webcam:(\d+)", source)
    if m:
        return InputSpec("webcam", f"/dev/video{m.group(1)}", format="v4l2", live=True)
    if re.fullmatch(r"/dev/video\d+", source):
        return InputSpec("webcam", source, format="v4l2", live=True)
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    if scheme:
        if scheme not in NETWORK_SCHEMES and scheme != "file":
            raise InputError(f"unsupported input URL scheme '{scheme}://' in {source}")
        if scheme != "file":
            return InputSpec("stream", source, live=scheme in LIVE_SCHEMES)
        source = source[len("file://") :]
    if "%" in os.path.basename(source) and re.search(r"%0?\d*d", source):
        if not Path(source).parent.is_dir():
            raise InputError(f"input folder not found: {Path(source).parent}")
        return InputSpec("pattern", source, format="image2")
    path = Path(source)
    if not path.exists():
        raise InputError(f"input not found: {source}")
    if path.is_dir():
        stills = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not stills:
            if any(p.suffix.lower() in VIDEO_EXTENSIONS for p in path.iterdir()):
                raise InputError(f"{source} is a folder of videos: 'facestream batch {source} -o OUTDIR' "
                                 "processes each of them")
            raise InputError(f"input folder holds no images ({', '.join(IMAGE_EXTENSIONS)}): {source}")
        return InputSpec("images", str(path), paths=tuple(stills))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return InputSpec("image", str(path))
    return InputSpec("file", str(path))


SECRET_PARAMETERS = ("passphrase", "password", "pass", "streamid")


def redact_url(url: str) -> str:
    """A URL with its credentials hidden, for messages and reports: the user and password, and
    the values of ``passphrase``, ``password``, ``pass`` and ``streamid`` parameters (SRT).

    Example:
        >>> redact_url("rtmp://user:secret@host/app")
        'rtmp://***@host/app'
        >>> redact_url("srt://host:9000?mode=caller&passphrase=topsecret123")
        'srt://host:9000?mode=caller&passphrase=***'
    """
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0].split("?", 1)[0]:
        url = f"{scheme}://***@{rest.split('@', 1)[1]}"
    if sep and "?" in url:
        base, _, query = url.partition("?")
        hide = re.compile(rf"(^|[&;])({'|'.join(SECRET_PARAMETERS)})=[^&;]+", re.IGNORECASE)
        url = f"{base}?{hide.sub(lambda m: f'{m.group(1)}{m.group(2)}=***', query)}"
    return url
