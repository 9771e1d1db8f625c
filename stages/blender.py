"""The blender stage: generated faces pasted back into their frames, touching only each face's region."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import cv2
import numpy as np
import torch

from facestream.pipeline.config import check
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Transform

from facestream.facelib.media.transfer import to_host
from facestream.facelib.ops.align import footprint, warp_to_regions
from facestream.facelib.ops.lab import match_colour
from facestream.facelib.ops.masks import MOUTH, box_mask, coverage_mask, hull_mask, insightface_mask

if TYPE_CHECKING:
    from facestream.facelib.models.swappers import Generated

MaskKind = Literal["auto", "insightface", "box", "hull"]
ColourKind = Literal["auto", "none", "lab", "histogram"]
MASKS: tuple[str, ...] = get_args(MaskKind)
COLOURS: tuple[str, ...] = get_args(ColourKind)


@dataclass
class BlendSettings:
    """How generated faces are pasted back (the ``blend`` section of a preset).

    Attributes:
        mask: ``insightface`` (its paste-back mask), ``box`` (the crop's square, inset and
            feathered), ``hull`` (the landmarks' hull, feathered), or ``auto``: insightface for
            inswapper crops, box for anonymised faces, and for the builtin swapper the pixels it
            actually produced (shrunk and feathered).
        padding: Inset (box) or growth (hull), as a fraction of the face.
        feather: Feather width, as a fraction of the face.
        keep_mouth: Hull masks leave the target's own mouth (speech stays in sync).
        colour: ``lab`` matches mean and spread in Lab to the target's, ``histogram`` matches each
            channel's histogram, ``none`` leaves the crop; ``auto``: lab for the builtin swapper.
        poisson: Poisson blending (``cv2.seamlessClone``, on the CPU): seamless, slower.

    Example:
        >>> BlendSettings(mask="hull", keep_mouth=True).mask
        'hull'
    """

    mask: MaskKind = "auto"
    padding: float = 0.1
    feather: float = 0.08
    keep_mouth: bool = False
    colour: ColourKind = "auto"
    poisson: bool = False

    def __post_init__(self) -> None:
        check(self.mask in MASKS, "mask", self.mask, f"must be one of {', '.join(MASKS)}")
        check(0 <= self.padding < 0.5, "padding", self.padding, "must be within 0..0.5")
        check(0 <= self.feather < 0.5, "feather", self.feather, "must be within 0..0.5")
        check(self.colour in COLOURS, "colour", self.colour, f"must be one of {', '.join(COLOURS)}")


class Blender(Transform):
    """Pastes each face's generated crop back with the inverse of its matrix, through a soft mask,
    over the face's frame region only (never a full-frame mask per face).

    Args:
        settings: Mask, colour matching and Poisson blending.
        watermark: Text drawn in the bottom-right corner of every frame, or ``None``.
        batch_size, max_wait_ms: Frames per batch and longest wait for a batch to fill.

    Example:
        >>> blender = Blender(BlendSettings(colour="lab"), watermark="AI-generated")
        >>> blender.settings.colour, blender.watermark
        ('lab', 'AI-generated')
    """

    name = "blender"

    def __init__(self, settings: BlendSettings | None = None, *, watermark: str | None = None,
                 batch_size: int = 1, max_wait_ms: float = 0.0) -> None:
        self.settings = settings or BlendSettings()
        self.watermark = watermark
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self._overlays: dict[tuple[int, int], tuple[tuple[int, int, int, int], torch.Tensor, torch.Tensor]] = {}
        self.faces_pasted = 0

    def open(self, ctx: RunContext) -> None:
        self._device = ctx.device

    def process(self, frames: list[Frame]) -> list[Frame]:
        jobs = []
        for frame in frames:
            for face in frame.faces:
                g = face.generated
                face.generated = None  # the crop is done with once pasted; free it
                if g is None:
                    continue
                region = footprint(g.matrix, (g.size, g.size), (frame.height, frame.width))
                if region is not None:
                    jobs.append((frame, face, g, region))
        # Every crop of the batch warped back at once (one batched grid_sample per crop size on a
        # GPU), then blended one face at a time, in order, so overlapping faces compose as pasted.
        warped = warp_to_regions([self._corrected(g) for _, _, g, _ in jobs], [g.matrix for _, _, g, _ in jobs],
                                 [r for *_, r in jobs])
        for (frame, face, g, region), gen in zip(jobs, warped):
            self._blend(frame, face, g, region, gen)
            self.faces_pasted += 1
        if self.watermark:
            for frame in frames:
                self._stamp(frame)
        return frames

    def _mask(self, face: Any, g: Generated, region: tuple[int, int, int, int]) -> tuple[np.ndarray, str]:
        """The paste-back mask over ``region`` (host, geometry only) and its kind."""
        kind = self.settings.mask if self.settings.mask != "auto" else {"inswapper": "insightface", "builtin": "coverage"}.get(g.kind, "box")
        points = g.hull if g.hull is not None else face.landmarks
        if kind == "hull" and points is None:
            kind = "box"
        if kind == "coverage" and g.coverage is None:
            kind = "box"
        if kind == "coverage":
            mouth = points[MOUTH[len(points)]] if self.settings.keep_mouth and points is not None and len(points) in MOUTH else None
            return coverage_mask(g.coverage, g.matrix, region, feather=self.settings.feather, mouth=mouth), kind
        if kind == "insightface":
            return insightface_mask(g.matrix, g.size, region), kind
        if kind == "hull":
            return hull_mask(points, region, padding=self.settings.padding / 2, feather=self.settings.feather, keep_mouth=self.settings.keep_mouth), kind
        return box_mask(g.matrix, g.size, region, padding=self.settings.padding, feather=self.settings.feather), kind

    def _blend(self, frame: Frame, face: Any, g: Generated, region: tuple[int, int, int, int], gen: torch.Tensor) -> None:
        image = frame.image
        x0, y0, x1, y1 = region
        mask, kind = self._mask(face, g, region)
        orig = image[y0:y1, x0:x1].float()
        m = torch.from_numpy(mask.astype(np.float32)).to(image.device)[..., None]
        out = m * gen + (1 - m) * orig
        if self.settings.poisson:
            out = self._poisson(out, orig, mask)
        # insightface truncates to uint8; everything else rounds.
        out = out.floor() if kind == "insightface" else out.round()
        image[y0:y1, x0:x1] = out.clamp(0, 255).to(torch.uint8)

    def _corrected(self, g: Generated) -> torch.Tensor:
        mode = self.settings.colour if self.settings.colour != "auto" else ("lab" if g.kind == "builtin" else "none")
        if mode == "none" or g.target is None:
            return g.crop
        # Statistics over the generated face: its non-black pixels (builtin) or the crop's middle.
        if g.kind == "builtin":
            weight = (g.crop > 0).any(dim=-1, keepdim=True)
        else:
            weight = torch.zeros((*g.crop.shape[:2], 1), dtype=torch.bool, device=g.crop.device)
            q = g.size // 5
            weight[q:-q, q:-q] = True
        if mode == "lab":
            fixed = match_colour(g.crop.float(), g.target.float(), weight)
        else:
            fixed = _match_histograms(g.crop.float(), g.target.float(), weight)
        return torch.where(weight, fixed.round().clamp(0, 255).to(torch.uint8), g.crop)

    @staticmethod
    def _poisson(out: torch.Tensor, orig: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
        binary = (mask > 0.5).astype(np.uint8) * 255
        ys, xs = np.nonzero(binary)
        if len(ys) < 16 or ys.min() == 0 or xs.min() == 0 or ys.max() >= mask.shape[0] - 1 or xs.max() >= mask.shape[1] - 1:
            return out  # seamlessClone needs the mask inside the region
        src = to_host(out.round().clamp(0, 255).to(torch.uint8)).copy()
        dst = to_host(orig.round().clamp(0, 255).to(torch.uint8)).copy()
        centre = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
        cloned = cv2.seamlessClone(src, dst, binary, centre, cv2.NORMAL_CLONE)
        return torch.from_numpy(cloned).to(out.device).float()

    def _stamp(self, frame: Frame) -> None:
        key = (frame.width, frame.height)
        if key not in self._overlays:
            self._overlays[key] = _render_watermark(self.watermark or "", frame.width, frame.height, frame.image.device)
        (x0, y0, x1, y1), colour, alpha = self._overlays[key]
        region = frame.image[y0:y1, x0:x1].float()
        frame.image[y0:y1, x0:x1] = (alpha * colour + (1 - alpha) * region).round().to(torch.uint8)

    def report(self) -> dict[str, Any]:
        return {"faces": self.faces_pasted, "mask": self.settings.mask, "colour": self.settings.colour, "poisson": self.settings.poisson}


def _render_watermark(text: str, w: int, h: int, device: torch.device) -> tuple[tuple[int, int, int, int], torch.Tensor, torch.Tensor]:
    """White text on a translucent dark box, bottom right: the region, its colours and alpha."""
    scale = max(0.4, h / 720 * 0.7)
    thickness = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = int(6 * scale) + 2
    bw, bh = min(w, tw + 2 * pad), min(h, th + base + 2 * pad)
    x0, y0 = w - bw, h - bh
    colour = np.zeros((bh, bw, 3), np.uint8)
    alpha = np.full((bh, bw), 0.55, np.float32)
    cv2.putText(colour, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    ink = colour.max(axis=2) > 0
    alpha[ink] = 0.9
    return (x0, y0, w, h), torch.from_numpy(colour).float().to(device), torch.from_numpy(alpha)[..., None].to(device)


def _match_histograms(source: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Map each channel of ``source`` so its histogram under ``weight`` matches ``target``'s."""
    sel = weight[..., 0] > 0
    out = source.clone()
    for c in range(3):
        s = source[..., c][sel]
        t = torch.sort(target[..., c][sel]).values
        if not len(s) or not len(t):
            return source
        ranks = torch.argsort(torch.argsort(s)).float() / max(len(s) - 1, 1)
        idx = (ranks * (len(t) - 1)).round().long()
        channel = out[..., c]
        channel[sel] = t[idx]
    return out
