"""What the generator stage runs: the inswapper family, the builtin swapper, and anonymisers.

Each takes the faces to change (with their frames) and returns, per face, a crop of the new face and
the matrix taking frame pixels to crop pixels; the blender pastes it back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from facestream.pipeline.errors import InputError, ModelError

from ..media.transfer import to_device
from ..ops.align import estimate_norm, warp_faces
from .factory import AnonymizerStyle
from .engines import BatchSplitter
from .insightface_pack import EngineOptions
from .packs import load_checked

log = logging.getLogger(__name__)


@dataclass
class Generated:
    """A generated face crop.

    Attributes:
        crop: ``(S, S, 3)`` uint8 RGB on the run's device.
        matrix: ``(2, 3)`` frame pixels -> crop pixels.
        target: The same crop of the original frame (for colour statistics), or ``None``.
        kind: Which generator made it (``inswapper``, ``builtin``, ``blur``, ``pixelate``, ``solid``).
        hull: Frame-space points outlining the generated face (for hull masks), or ``None``.
        coverage: ``(S, S)`` float32 crop-space map of the pixels the generator produced (the rest
            is empty), or ``None`` when it filled the whole crop.
    """

    crop: torch.Tensor
    matrix: np.ndarray
    target: torch.Tensor | None
    kind: str
    hull: np.ndarray | None = None
    coverage: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.crop.shape[0])


# ---------------------------------------------------------------------------------------------- inswapper


class InSwapper:
    """inswapper_128 and its kin (the emap family), batched across all faces of a batch.

    The source latent of each identity is ``normalise(normalise(embedding) @ emap)``, computed once.
    Target crops are aligned to the ArcFace template shifted for 128-pixel crops (insightface's
    ``norm_crop2``), RGB / 255. With float16/bfloat16 (torch engine), the engine checks the first
    batch against float32, and any later output that is not finite; non-finite or far-off output
    switches to float32 with one warning (see :class:`~.engines.TorchEngine`).
    """

    def __init__(self, path: Path, options: EngineOptions) -> None:
        model, sig = load_checked("swapper", path)
        self.size = int(sig.inputs[0][1][2])  # type: ignore[arg-type]
        self.path = path
        self.options = options
        self.engine = options.create("swapper", path, model)
        self.emap = self.engine.initializers_last().astype(np.float32)
        if self.emap.ndim != 2 or self.emap.shape[0] != self.emap.shape[1]:
            raise ModelError(f"models.swapper: {path.name}: its last initializer is {self.emap.shape}, not a square emap")
        self.latents: dict[str, np.ndarray] = {}
        self.split = BatchSplitter(name="swapper")

    def set_sources(self, embeddings: dict[str, np.ndarray]) -> None:
        """Identity -> unit ArcFace embedding of the source person."""
        for name, e in embeddings.items():
            latent = (e / np.linalg.norm(e)) @ self.emap
            self.latents[name] = (latent / np.linalg.norm(latent)).astype(np.float32)

    # Faces a forward at most: on a GPU, 8 keeps the device busy; on a CPU, 4 runs as fast and its
    # activations are smaller (the group-shot benchmark's peak: about 60 MB less than with 8).
    FORWARD_FACES = 8
    FORWARD_FACES_CPU = 4
    forward_faces: int | None = None  # ``memory.faces_per_forward``: overrides both

    def set_forward_faces(self, most: int | None) -> None:
        """At most ``most`` faces a forward (``None``: the defaults above)."""
        self.forward_faces = most

    def generate(self, frames: list[torch.Tensor], frame_of: list[int], faces: list) -> list[Generated]:
        if not faces:
            return []
        matrices = estimate_norm(np.stack([f.kps for f in faces]), self.size)
        aligned = warp_faces(frames, frame_of, matrices, self.size)
        blob = aligned.permute(0, 3, 1, 2).float() / 255.0
        device = blob.device
        latent = to_device(np.stack([self.latents[f.identity] for f in faces]), device)
        # At most FORWARD_FACES faces a forward: the activations of one forward (and the engine's
        # memory arena, which keeps its largest) stay bounded however many faces a batch holds;
        # fewer after running out of device memory.
        most = self.forward_faces or (self.FORWARD_FACES if device.type == "cuda" else self.FORWARD_FACES_CPU)
        (pred,) = self.split(lambda b, s: [self._run(b, s)], blob, latent, most=most)
        # insightface: clip(255 * x, 0, 255) truncated to uint8.
        crops = (pred.clamp(0, 1) * 255.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return [Generated(c, m, a, "inswapper") for c, m, a in zip(crops, matrices, aligned)]

    @property
    def fell_back(self) -> bool:
        """Whether reduced precision fell short and the swapper runs in float32."""
        return bool(getattr(self.engine, "fell_back", False))

    def _run(self, blob: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        (pred,) = self.engine(target=blob, source=latent)
        return pred


# ---------------------------------------------------------------------------------------------- builtin


@dataclass
class _Source:
    image: torch.Tensor  # (H, W, 3) uint8 on the device
    points: np.ndarray  # (68, 2) landmarks
    triangles: np.ndarray  # (T, 3) indices into the 68 points


class BuiltinSwapper:
    """The source face warped onto each target's 68 landmarks, triangle by triangle (a Delaunay
    triangulation of the source's landmarks), no neural swapper needed. The triangles are
    rasterised on the host (geometry only); the source's pixels are sampled on the device. The
    blender colour-matches the result to the target's skin.

    Args:
        size: Side of the generated crop (the target's landmark box, 10 % larger).
    """

    def __init__(self, *, device: torch.device, size: int = 192) -> None:
        from .builtin_pack import DlibDetector, DlibLandmarks

        self.device = device
        self.size = size
        self._detector = DlibDetector(upsample=1, score_threshold=0.3)
        self._landmarks = DlibLandmarks()
        self.sources: dict[str, _Source] = {}

    def set_sources(self, people: dict[str, list[str]]) -> None:
        """Identity -> images; the best view (largest, most confident face) of each person is used."""
        from scipy.spatial import Delaunay

        from ..media.stills import read_rgb

        for name, paths in people.items():
            best = None
            for path in paths:
                rgb = read_rgb(path)
                det = self._detector.detect([torch.from_numpy(rgb)])[0]
                if not len(det.boxes):
                    raise InputError(f"no face found in {path}")
                area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
                i = int(np.argmax(area * det.scores**2))
                value = float(area[i] * det.scores[i] ** 2)
                if best is None or value > best[0]:
                    best = (value, rgb, det.landmarks[i])
            assert best is not None
            _, rgb, points = best
            triangles = Delaunay(points).simplices.astype(np.int64)
            self.sources[name] = _Source(torch.from_numpy(rgb).to(self.device), points.astype(np.float32), triangles)

    def generate(self, frames: list[torch.Tensor], frame_of: list[int], faces: list) -> list[Generated]:
        missing = [i for i, f in enumerate(faces) if f.landmarks is None or len(f.landmarks) != 68]
        if missing:
            points = self._landmarks.predict(frames, [frame_of[i] for i in missing], np.stack([faces[i].box for i in missing]))
            for i, p in zip(missing, points):
                faces[i].landmarks = p
        out = []
        for f, face in zip(frame_of, faces):
            src = self.sources[face.identity]
            matrix, crop_pts = self._crop_geometry(face.landmarks)
            crop, coverage = self._render(src, crop_pts)
            target = warp_faces([frames[f]], [0], matrix[None], self.size)[0]
            out.append(Generated(crop, matrix, target, "builtin", hull=face.landmarks, coverage=coverage))
        return out

    def _crop_geometry(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = points.min(axis=0), points.max(axis=0)
        centre, side = (lo + hi) / 2, float((hi - lo).max()) * 1.1 + 1.0
        s = self.size / side
        m = np.array([[s, 0, self.size / 2 - centre[0] * s], [0, s, self.size / 2 - centre[1] * s]], np.float64)
        return m, (points * s + m[:, 2]).astype(np.float32)

    def _render(self, src: _Source, crop_pts: np.ndarray, *, use_torch: bool | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """Sample the source face into the target's crop, one affine map per triangle; also the map
        of the pixels a triangle covers (a pose can fold triangles and leave holes)."""
        size = self.size
        index = np.zeros((size, size), np.uint8)  # 0 = outside; k + 1 = triangle k
        maps = np.zeros((len(src.triangles) + 1, 2, 3), np.float64)
        for k, tri in enumerate(src.triangles):
            dst = crop_pts[tri]
            e1, e2 = dst[1] - dst[0], dst[2] - dst[0]
            if abs(e1[0] * e2[1] - e1[1] * e2[0]) < 1e-3:
                continue  # degenerate in this pose
            maps[k + 1] = cv2.getAffineTransform(dst.astype(np.float32), src.points[tri].astype(np.float32))
            cv2.fillConvexPoly(index, np.round(dst).astype(np.int32), int(k + 1))
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
        a = maps[index]  # (size, size, 2, 3)
        sx = (a[..., 0, 0] * xs + a[..., 0, 1] * ys + a[..., 0, 2]).astype(np.float32)
        sy = (a[..., 1, 0] * xs + a[..., 1, 1] * ys + a[..., 1, 2]).astype(np.float32)
        inside = index > 0
        h, w = src.image.shape[:2]
        if not (self.device.type != "cpu" if use_torch is None else use_torch):
            crop = cv2.remap(src.image.numpy(), sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            crop[~inside] = 0
            return torch.from_numpy(crop), inside.astype(np.float32)
        device = src.image.device
        grid = to_device(np.stack(((2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1), -1), device)[None]
        img = src.image.permute(2, 0, 1)[None].float()
        crop = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        crop = crop.permute(1, 2, 0) * to_device(inside, device)[..., None]
        return crop.round().clamp(0, 255).to(torch.uint8), inside.astype(np.float32)


# ---------------------------------------------------------------------------------------------- anonymise


class Anonymizer:
    """Blur, pixelate or cover each face: a square of ``expand`` times the face box, processed on the
    device, pasted back by the blender with a feathered box mask.

    Args:
        style: ``blur``, ``pixelate`` or ``solid``.
        strength: 1 is strong enough that no face detector finds a face; more is stronger.
        expand: The square's side relative to the face box's longer side.
    """

    def __init__(self, *, style: AnonymizerStyle = "blur", strength: float = 1.0,
                 expand: float = 1.6) -> None:
        if style not in get_args(AnonymizerStyle):
            raise ValueError(f"style must be one of {get_args(AnonymizerStyle)}, got {style!r}")
        if strength <= 0 or expand < 1:
            raise ValueError("strength must be > 0 and expand >= 1")
        self.style = style
        self.strength = strength
        self.expand = expand
        self.size = 96

    def generate(self, frames: list[torch.Tensor], frame_of: list[int], faces: list) -> list[Generated]:
        if not faces:
            return []
        boxes = np.stack([f.box for f in faces])
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * self.expand
        s = self.size / np.maximum(side, 1.0)
        m = np.zeros((len(faces), 2, 3))
        m[:, 0, 0] = m[:, 1, 1] = s
        m[:, :, 2] = self.size / 2 - centre * s[:, None]
        crops = warp_faces(frames, frame_of, m, self.size)
        done = self._apply(crops.permute(0, 3, 1, 2).float())
        out = done.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return [Generated(c, mm, None, self.style) for c, mm in zip(out, m)]

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.style == "solid":
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        if self.style == "pixelate":
            cells = max(2, int(round(8 / self.strength)))
            small = F.adaptive_avg_pool2d(x, cells)
            return F.interpolate(small, size=x.shape[-2:], mode="nearest")
        sigma = self.size / 8 * self.strength
        radius = int(3 * sigma)
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-(t**2) / (2 * sigma**2))
        k = (k / k.sum()).reshape(1, 1, 1, -1).repeat(3, 1, 1, 1)
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        x = F.conv2d(x, k, groups=3)
        return F.conv2d(x, k.transpose(-1, -2), groups=3)
