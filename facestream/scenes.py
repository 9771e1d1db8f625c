"""Clips built from real photos that ship inside PyPI packages, for the demo, benchmarks and tests.

The photos: insightface's ``t1.jpg`` (a group photo, 1280x886, six faces) and scikit-image's
``astronaut.png`` (a NASA portrait in the public domain). They are found on disk without importing
their packages.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from facestream.pipeline.errors import PipelineError

PHOTOS = {
    "group": ("insightface", "data/images/t1.jpg"),
    "astronaut": ("skimage", "data/astronaut.png"),
    "tom": ("insightface", "data/images/Tom_Hanks_54745.png"),
}


def photo_path(name: str) -> Path:
    """Where a packaged photo lies; says which package to install when it is missing."""
    package, rel = PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(
            f"the photo '{name}' ships with the {package} package, which is not installed "
            f"(pip install 'facestream[demo]')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise PipelineError(f"the photo '{name}' is missing from the installed {package} package: {path}")
    return path


def load_photo(name: str) -> np.ndarray:
    """A packaged photo as ``(H, W, 3)`` uint8 RGB."""
    bgr = cv2.imread(str(photo_path(name)), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# A sprite's place at time t: centre x, centre y, scale, and optionally its width's share as it
# turns (1: facing the camera; a face turning away narrows to a sliver), or None off stage.
Trajectory = Callable[[float], "tuple[float, float, float] | tuple[float, float, float, float] | None"]
TURNED_AWAY = 0.3  # narrower than this share of its width (past about 70 degrees), a face is not in view


@dataclass
class Sprite:
    """A photo crop moved over the background; ``path(t)`` gives its centre, scale and (optionally)
    how far it has turned, or ``None`` while it is off stage. ``face`` is the face box within the
    crop, ``[x1, y1, x2, y2]``."""

    name: str
    image: np.ndarray
    path: Trajectory
    face: tuple[float, float, float, float] | None = None
    lure: bool = False  # ``face`` is not a face but something a detector takes for one


@dataclass
class SceneTruth:
    """Per frame, the on-stage sprites' names and face boxes (in frame pixels)."""

    fps: int
    frames: list[list[tuple[str, np.ndarray]]] = field(default_factory=list)
    # Per frame, the faces on stage but hidden behind another sprite (or turned away), and the
    # boxes of things in view that a face detector may take for a face (lures).
    hidden: list[list[tuple[str, np.ndarray]]] = field(default_factory=list)
    lures: list[list[np.ndarray]] = field(default_factory=list)


def render_scene(
    path: str | Path,
    *,
    background: np.ndarray,
    sprites: Sequence[Sprite] = (),
    size: tuple[int, int] = (640, 360),
    fps: int = 25,
    seconds: float = 8.0,
    pan: float = 0.0,
    audio: bool = True,
    crf: int = 20,
) -> SceneTruth:
    """Encode a clip: the background (panned vertically by ``pan`` of its spare height over the clip)
    with sprites composited on top, and a quiet tone as audio. Returns the ground truth."""
    w, h = size
    bg = _cover(background, w, h + int(round(pan * h)))
    n = int(round(seconds * fps))
    truth = SceneTruth(fps=fps)
    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    vs.codec_context.gop_size = fps
    vs.options = {"preset": "veryfast", "crf": str(crf)}
    astream = out.add_stream("aac", rate=48000) if audio else None
    if astream is not None:
        astream.layout = "mono"
    apos = 0
    for i in range(n):
        t = i / fps
        y0 = int(round((bg.shape[0] - h) * (t / max(seconds, 1e-9))))
        frame = bg[y0 : y0 + h].copy()
        on_stage: list[tuple[str, np.ndarray]] = []
        hidden: list[tuple[str, np.ndarray]] = []
        lures: list[np.ndarray] = []
        for sprite in sprites:
            place = sprite.path(t)
            if place is None:
                continue
            box, cover = _paste(frame, sprite, *place)
            # A face mostly covered by this sprite is no longer in view.
            hidden += [(n, b) for n, b in on_stage if _covered(cover, b) >= 0.5]
            on_stage = [(n, b) for n, b in on_stage if _covered(cover, b) < 0.5]
            if box is None:
                continue
            if sprite.lure:
                lures.append(box)
            elif len(place) > 3 and place[3] < TURNED_AWAY:
                hidden.append((sprite.name, box))
            else:
                on_stage.append((sprite.name, box))
        truth.frames.append(on_stage)
        truth.hidden.append(hidden)
        truth.lures.append(lures)
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts = i
        vf.time_base = Fraction(1, fps)
        for packet in vs.encode(vf):
            out.mux(packet)
        while astream is not None and apos / 48000 <= t + 0.05:
            k = np.arange(apos, apos + 1024)
            tone = (0.05 * np.sin(2 * np.pi * 220 * k / 48000)).astype(np.float32).reshape(1, -1)
            af = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            af.sample_rate, af.pts, af.time_base = 48000, apos, Fraction(1, 48000)
            for packet in astream.encode(af):
                out.mux(packet)
            apos += 1024
    for packet in vs.encode(None):
        out.mux(packet)
    if astream is not None:
        for packet in astream.encode(None):
            out.mux(packet)
    out.close()
    return truth


def _cover(image: np.ndarray, w: int, h: int) -> np.ndarray:
    """Scale ``image`` to cover ``w`` x ``h`` and crop the centre."""
    scale = max(w / image.shape[1], h / image.shape[0])
    resized = cv2.resize(image, (int(np.ceil(image.shape[1] * scale)), int(np.ceil(image.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y = (resized.shape[0] - h) // 2
    x = (resized.shape[1] - w) // 2
    return resized[y : y + h, x : x + w]


def _covered(mask: np.ndarray | None, box: np.ndarray) -> float:
    """Share of ``box`` under ``mask``."""
    if mask is None:
        return 0.0
    x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0)
    x2, y2 = min(int(np.ceil(box[2])), mask.shape[1]), min(int(np.ceil(box[3])), mask.shape[0])
    area = max(1.0, float((box[2] - box[0]) * (box[3] - box[1])))
    return float(mask[y1:y2, x1:x2].sum()) / area if x2 > x1 and y2 > y1 else 0.0


def _paste(frame: np.ndarray, sprite: Sprite, cx: float, cy: float, scale: float,
           turn: float = 1.0) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Composite a sprite with a soft elliptical edge, its width scaled by ``turn``; returns its face
    box in the frame (if visible) and the mask of the pixels it covers."""
    img = sprite.image
    sx = scale * turn
    sw, sh = max(2, int(round(img.shape[1] * sx))), max(2, int(round(img.shape[0] * scale)))
    patch = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    yy, xx = np.mgrid[0:sh, 0:sw]
    r = ((xx - sw / 2) / (sw / 2)) ** 2 + ((yy - sh / 2) / (sh / 2)) ** 2
    alpha = np.clip((1.0 - r) * 4, 0, 1)[..., None].astype(np.float32)
    x0, y0 = int(round(cx - sw / 2)), int(round(cy - sh / 2))
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + sw, frame.shape[1]), min(y0 + sh, frame.shape[0])
    if fx1 <= fx0 or fy1 <= fy0:
        return None, None
    px0, py0 = fx0 - x0, fy0 - y0
    region = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    a = alpha[py0 : py0 + fy1 - fy0, px0 : px0 + fx1 - fx0]
    src = patch[py0 : py0 + fy1 - fy0, px0 : px0 + fx1 - fx0].astype(np.float32)
    frame[fy0:fy1, fx0:fx1] = (a * src + (1 - a) * region).astype(np.uint8)
    cover = np.zeros(frame.shape[:2], bool)
    cover[fy0:fy1, fx0:fx1] = a[..., 0] > 0.5
    if sprite.face is None:
        return None, cover
    fx1_, fy1_, fx2_, fy2_ = sprite.face
    box = np.array([x0 + fx1_ * sx, y0 + fy1_ * scale, x0 + fx2_ * sx, y0 + fy2_ * scale], np.float32)
    visible = (min(box[2], frame.shape[1]) - max(box[0], 0)) * (min(box[3], frame.shape[0]) - max(box[1], 0))
    if visible < 0.6 * (box[2] - box[0]) * (box[3] - box[1]):
        return None, cover  # mostly off screen: not a face anyone could be expected to find
    return box, cover


# Face boxes in the packaged photos, measured once with dlib's HOG detector (upsampled once), so
# scenes know where the faces in their sprites are without running a detector.
ASTRONAUT_FACE = (175.0, 76.0, 265.0, 166.0)
GROUP_FACES = (
    (67.0, 283.0, 175.0, 390.0),
    (275.0, 176.0, 364.0, 265.0),
    (450.0, 295.0, 557.0, 402.0),
    (724.0, 367.0, 832.0, 474.0),
    (870.0, 67.0, 999.0, 196.0),
    (1118.0, 283.0, 1226.0, 390.0),
)


def demo_scene(path: str | Path, *, size: tuple[int, int] = (640, 360), fps: int = 25, seconds: float = 8.0) -> SceneTruth:
    """The demo clip: the group photo, slowly panned, with the astronaut's portrait crossing it."""
    group = load_photo("group")
    astronaut = load_photo("astronaut")[20:300, 100:350]
    face = (ASTRONAUT_FACE[0] - 100, ASTRONAUT_FACE[1] - 20, ASTRONAUT_FACE[2] - 100, ASTRONAUT_FACE[3] - 20)
    w, h = size

    def across(t: float) -> tuple[float, float, float] | None:
        u = t / seconds
        return (-0.2 * w + 1.4 * w * u, 0.55 * h, 0.55 * h / astronaut.shape[0])

    return render_scene(
        path, background=group, sprites=[Sprite("astronaut", astronaut, across, face)], size=size, fps=fps,
        seconds=seconds, pan=0.15,
    )


def _face_sprite(name: str, photo: np.ndarray, face: tuple[float, float, float, float], margin: float = 0.45) -> Sprite:
    """A crop around one face of a photo, with the face box in crop coordinates."""
    x1, y1, x2, y2 = face
    pad = margin * (x2 - x1)
    cx1, cy1 = int(max(0, x1 - pad)), int(max(0, y1 - pad))
    cx2, cy2 = int(min(photo.shape[1], x2 + pad)), int(min(photo.shape[0], y2 + pad))
    return Sprite(name, photo[cy1:cy2, cx1:cx2].copy(), lambda t: None, (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1))


def people_scene(path: str | Path, *, size: tuple[int, int] = (640, 360), fps: int = 25, seconds: float = 6.0,
                 face_px: float = 90.0) -> SceneTruth:
    """Real faces that move, cross, leave and come back, over a blurred background (no faces in it).

    - ``astronaut`` crosses from left to right;
    - ``chandler`` (a face of the group photo) crosses from right to left, passing in front of her;
    - ``rachel`` (another) leaves at the bottom at 55 % of the clip and comes back at 75 %, in the
      middle, slowing down as she arrives.
    """
    w, h = size
    group = load_photo("group")
    background = cv2.GaussianBlur(group, (0, 0), 25)
    sprites = {
        "astronaut": _face_sprite("astronaut", load_photo("astronaut"), ASTRONAUT_FACE),
        "chandler": _face_sprite("chandler", group, GROUP_FACES[2]),
        "rachel": _face_sprite("rachel", group, GROUP_FACES[0]),
    }
    scale = {k: face_px / (s.face[2] - s.face[0]) for k, s in sprites.items()}  # type: ignore[index]

    def astronaut(t: float) -> tuple[float, float, float]:
        u = t / seconds
        return (0.1 * w + 0.8 * w * u, 0.36 * h, scale["astronaut"])

    def chandler(t: float) -> tuple[float, float, float]:
        u = t / seconds
        return (0.9 * w - 0.8 * w * u, 0.52 * h, scale["chandler"])

    def rachel(t: float) -> tuple[float, float, float] | None:
        u = t / seconds
        if u < 0.45:
            return (0.82 * w, 0.3 * h, scale["rachel"])
        if u < 0.55:  # walks out at the bottom
            return (0.82 * w, 0.3 * h + (u - 0.45) / 0.1 * 0.9 * h, scale["rachel"])
        if u < 0.75:
            return None
        if u < 0.9:  # and back, easing to a stop
            k = (u - 0.75) / 0.15
            return (0.5 * w, 1.2 * h - (1 - (1 - k) ** 2) * 0.9 * h, scale["rachel"])
        return (0.5 * w, 0.3 * h, scale["rachel"])

    paths = {"astronaut": astronaut, "chandler": chandler, "rachel": rachel}
    placed = [Sprite(n, s.image, paths[n], s.face) for n, s in sprites.items()]
    # Drawn in order: chandler after astronaut, so he passes in front of her.
    placed.sort(key=lambda s: ["rachel", "astronaut", "chandler"].index(s.name))
    return render_scene(path, background=background, sprites=placed, size=size, fps=fps, seconds=seconds)


def lure_sprite() -> Sprite:
    """A patch of scikit-image's coins photo that dlib's HOG takes for a face (weakly) at twice its
    size: a false detection with a known place."""
    import skimage.data

    coins = np.dstack([skimage.data.coins()] * 3)
    coins = cv2.resize(coins, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
    x, y, side = 179, 496, 88  # the detection on the 2x photo
    pad = side // 2
    crop = coins[y - pad:y + side + pad, x - pad:x + side + pad].copy()
    return Sprite("lure", crop, lambda t: None, (pad, pad, pad + side, pad + side), lure=True)


def turning_scene(path: str | Path, *, size: tuple[int, int] = (640, 360), fps: int = 25, seconds: float = 6.0,
                  face_px: float = 90.0) -> SceneTruth:
    """A face that turns away and back, a face that moves, and a thing a detector takes for a face.

    - ``astronaut`` stands at the left and turns away (her width narrowing to a sliver) from 25 %
      to 35 % of the clip, stays turned away until 55 %, and turns back by 65 %;
    - ``rachel`` walks from the right to the middle and back;
    - ``lure``: a patch of the coins photo, still, bottom right (the truth's ``lures``).
    """
    w, h = size
    background = cv2.GaussianBlur(load_photo("group"), (0, 0), 25)
    astro = _face_sprite("astronaut", load_photo("astronaut"), ASTRONAUT_FACE)
    rachel = _face_sprite("rachel", load_photo("group"), GROUP_FACES[0])
    lure = lure_sprite()
    scale = {s.name: face_px / (s.face[2] - s.face[0]) for s in (astro, rachel)}  # type: ignore[index]

    def turning(t: float) -> tuple[float, float, float, float]:
        u = t / seconds
        if u < 0.25 or u >= 0.65:
            turn = 1.0
        elif u < 0.35:
            turn = float(np.cos((u - 0.25) / 0.1 * np.pi / 2 * 0.92))
        elif u < 0.55:
            turn = float(np.cos(np.pi / 2 * 0.92))
        else:
            turn = float(np.cos((0.65 - u) / 0.1 * np.pi / 2 * 0.92))
        return (0.2 * w, 0.4 * h, scale["astronaut"], max(turn, 0.12))

    def walking(t: float) -> tuple[float, float, float]:
        u = t / seconds
        x = 0.85 - 0.35 * np.sin(np.pi * u)
        return (x * w, 0.35 * h, scale["rachel"])

    def still(t: float) -> tuple[float, float, float]:
        return (0.8 * w, 0.68 * h, 1.0)

    placed = [Sprite("lure", lure.image, still, lure.face, lure=True),
              Sprite("astronaut", astro.image, turning, astro.face),
              Sprite("rachel", rachel.image, walking, rachel.face)]
    return render_scene(path, background=background, sprites=placed, size=size, fps=fps, seconds=seconds)
