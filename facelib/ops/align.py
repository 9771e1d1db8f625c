"""Similarity alignment to the ArcFace template and affine warps of face crops, batched.

The geometry is insightface's: ``estimate_norm`` (a least-squares similarity from five keypoints to
``ARCFACE_DST``, scaled for 112- or 128-pixel crops) and ``norm_crop`` (``cv2.warpAffine`` with a
black border). On the CPU each crop is one ``cv2.warpAffine``; on CUDA all crops of a batch are sampled
at once from the uint8 frames where they lie, reading only the pixels the crops need.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..media.transfer import to_device
from .image import sample_bilinear

ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def template(size: int) -> np.ndarray:
    """The five-point template for a ``size`` crop (112-multiples: scaled; 128-multiples: shifted)."""
    if size % 112 == 0:
        ratio, shift = size / 112.0, 0.0
    elif size % 128 == 0:
        ratio = size / 128.0
        shift = 8.0 * ratio
    else:
        raise ValueError(f"crop size must be a multiple of 112 or 128, got {size}")
    dst = ARCFACE_DST * ratio
    dst[:, 0] += shift
    return dst


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Args:
        src: ``(B, N, 2)`` or ``(N, 2)`` points.
        dst: ``(N, 2)`` target points.

    Returns:
        ``(B, 2, 3)`` (or ``(2, 3)``) float64 matrices ``M`` with ``dst ~ M @ [x, y, 1]``. In two
        dimensions the Umeyama estimate has this closed form.
    """
    single = src.ndim == 2
    s = np.asarray(src, np.float64).reshape(-1, src.shape[-2], 2)
    d = np.asarray(dst, np.float64)
    s_mean = s.mean(axis=1, keepdims=True)
    d_mean = d.mean(axis=0)
    sc = s - s_mean
    dc = d - d_mean
    var = (sc**2).sum(axis=(1, 2))
    a = (sc[..., 0] * dc[:, 0] + sc[..., 1] * dc[:, 1]).sum(axis=1) / var
    b = (sc[..., 0] * dc[:, 1] - sc[..., 1] * dc[:, 0]).sum(axis=1) / var
    m = np.zeros((s.shape[0], 2, 3))
    m[:, 0, 0], m[:, 0, 1] = a, -b
    m[:, 1, 0], m[:, 1, 1] = b, a
    m[:, :, 2] = d_mean - np.einsum("bij,bj->bi", m[:, :, :2], s_mean[:, 0])
    return m[0] if single else m


def estimate_norm(kps: np.ndarray, size: int = 112) -> np.ndarray:
    """``(B, 5, 2)`` keypoints -> ``(B, 2, 3)`` matrices taking each face onto the template."""
    return similarity(kps, template(size))


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of ``(..., 2, 3)`` affine matrices."""
    a = m[..., :2]
    inv = np.linalg.inv(a)
    t = -np.einsum("...ij,...j->...i", inv, m[..., 2])
    return np.concatenate([inv, t[..., None]], axis=-1)


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply ``(2, 3)`` (or ``(B, 2, 3)``) affine matrices to ``(..., N, 2)`` points."""
    return np.einsum("...ij,...nj->...ni", m[..., :2], points) + m[..., None, :, 2]


def crop_transform(boxes: np.ndarray, size: int, margin: float = 1.5) -> np.ndarray:
    """Matrices taking a square of ``margin`` x the box's longer side, centred on the box, onto a
    ``size`` x ``size`` crop (insightface's landmark crop, rotation 0)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    scale = size / (np.maximum(w, h) * margin)
    m = np.zeros((len(boxes), 2, 3))
    m[:, 0, 0] = m[:, 1, 1] = scale
    m[:, 0, 2] = size / 2 - cx * scale
    m[:, 1, 2] = size / 2 - cy * scale
    return m


def warp_faces(
    frames: list[torch.Tensor], frame_of: list[int], matrices: np.ndarray, size: int
) -> torch.Tensor:
    """Warp one crop per face out of its frame.

    Args:
        frames: ``(H, W, 3)`` uint8 RGB frames, all on one device.
        frame_of: For each face, the index of its frame in ``frames``.
        matrices: ``(B, 2, 3)`` matrices from frame pixels to crop pixels, one per face.
        size: Crop side.

    Returns:
        ``(B, size, size, 3)`` uint8 crops on the frames' device (black outside the frame).
    """
    if not len(frame_of):
        device = frames[0].device if frames else torch.device("cpu")
        return torch.empty((0, size, size, 3), dtype=torch.uint8, device=device)
    if frames[0].device.type == "cpu":
        crops = [
            cv2.warpAffine(frames[f].numpy(), m.astype(np.float64), (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
            for f, m in zip(frame_of, matrices)
        ]
        return torch.from_numpy(np.stack(crops))
    return warp_faces_torch(frames, frame_of, matrices, size)


def warp_faces_torch(
    frames: list[torch.Tensor], frame_of: list[int], matrices: np.ndarray, size: int
) -> torch.Tensor:
    """:func:`warp_faces` on any device, for all faces at once, reading only the pixels it needs.

    Each crop pixel maps back to a point of its frame; the four frame pixels around that point are
    read straight from the uint8 frame and mixed bilinearly (pixels outside the frame are black, as
    ``cv2.warpAffine``'s border). No frame is converted or copied whole: memory and work grow with
    faces x crop pixels, whatever the frames' size. One gather per frame that has faces."""
    device = frames[0].device
    n = len(frame_of)
    inv = to_device(invert_affine(np.asarray(matrices, np.float64)), device, torch.float32)
    axis = torch.arange(size, device=device, dtype=torch.float32)
    xs, ys = axis[None, None, :], axis[None, :, None]
    sx = inv[:, 0, 0, None, None] * xs + inv[:, 0, 1, None, None] * ys + inv[:, 0, 2, None, None]  # (n, S, S)
    sy = inv[:, 1, 0, None, None] * xs + inv[:, 1, 1, None, None] * ys + inv[:, 1, 2, None, None]
    out = torch.empty((n, size, size, 3), dtype=torch.float32, device=device)
    by_frame: dict[int, list[int]] = {}
    for face, f in enumerate(frame_of):
        by_frame.setdefault(f, []).append(face)
    for f, faces in by_frame.items():
        idx = to_device(faces, device) if len(faces) < n else slice(None)
        out[idx] = sample_bilinear(frames[f], sx[idx], sy[idx])
    return out.round_().clamp_(0, 255).to(torch.uint8)


def footprint(matrix: np.ndarray, crop_wh: tuple[int, int], frame_hw: tuple[int, int], margin: int = 2) -> tuple[int, int, int, int] | None:
    """The frame region ``(x0, y0, x1, y1)`` a crop covers when warped back with the inverse of
    ``matrix`` (frame -> crop), plus ``margin``, clipped to the frame; ``None`` if outside."""
    w, h = crop_wh
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64)
    pts = transform_points(corners, invert_affine(np.asarray(matrix, np.float64)))
    x0 = max(int(np.floor(pts[:, 0].min())) - margin, 0)
    y0 = max(int(np.floor(pts[:, 1].min())) - margin, 0)
    x1 = min(int(np.ceil(pts[:, 0].max())) + margin, frame_hw[1])
    y1 = min(int(np.ceil(pts[:, 1].max())) + margin, frame_hw[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def region_inverse(matrix: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """The matrix taking crop pixels to region pixels (``matrix`` maps frame -> crop)."""
    inv = invert_affine(np.asarray(matrix, np.float64))
    inv[:, 2] -= (region[0], region[1])
    return inv


def warp_to_region(crop: torch.Tensor, matrix: np.ndarray, region: tuple[int, int, int, int]) -> torch.Tensor:
    """Warp a crop (``(h, w, C)``, any dtype, on any device) back into its frame region, bilinear,
    black outside: ``cv2.warpAffine`` with the inverse matrix on the CPU, ``grid_sample`` elsewhere.
    Returns ``(rh, rw, C)`` float32."""
    x0, y0, x1, y1 = region
    rw, rh = x1 - x0, y1 - y0
    if crop.device.type == "cpu":
        src = crop.numpy()  # uint8 crops warp as uint8, like insightface's paste-back
        out = cv2.warpAffine(src, region_inverse(matrix, region), (rw, rh), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        return torch.from_numpy(out.reshape(rh, rw, -1).astype(np.float32))
    return warp_to_region_torch(crop, matrix, region)


def warp_to_region_torch(crop: torch.Tensor, matrix: np.ndarray, region: tuple[int, int, int, int]) -> torch.Tensor:
    """:func:`warp_to_region` with ``grid_sample`` (any device)."""
    return warp_to_regions_torch([crop], [matrix], [region])[0]


def warp_to_regions(crops: list[torch.Tensor], matrices: list[np.ndarray],
                    regions: list[tuple[int, int, int, int]]) -> list[torch.Tensor]:
    """:func:`warp_to_region` for many faces: one ``cv2.warpAffine`` each on the CPU; elsewhere one
    batched ``grid_sample`` per crop size, the regions padded to the largest."""
    if not crops:
        return []
    if crops[0].device.type == "cpu":
        return [warp_to_region(c, m, r) for c, m, r in zip(crops, matrices, regions)]
    return warp_to_regions_torch(crops, matrices, regions)


def warp_to_regions_torch(crops: list[torch.Tensor], matrices: list[np.ndarray],
                          regions: list[tuple[int, int, int, int]]) -> list[torch.Tensor]:
    """:func:`warp_to_regions` with batched ``grid_sample`` (any device)."""
    out: list[torch.Tensor | None] = [None] * len(crops)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, c in enumerate(crops):
        groups.setdefault(tuple(c.shape), []).append(i)
    device = crops[0].device
    for shape, idx in groups.items():
        h, w = shape[:2]
        sizes = [(regions[i][3] - regions[i][1], regions[i][2] - regions[i][0]) for i in idx]
        hmax, wmax = max(s[0] for s in sizes), max(s[1] for s in sizes)
        ys, xs = torch.meshgrid(torch.arange(hmax, device=device, dtype=torch.float32),
                                torch.arange(wmax, device=device, dtype=torch.float32), indexing="ij")
        m = to_device(np.stack([np.asarray(matrices[i], np.float64) for i in idx]), device, torch.float32)
        origin = to_device([[regions[i][0], regions[i][1]] for i in idx], device, torch.float32)
        fx = xs[None] + origin[:, 0, None, None]
        fy = ys[None] + origin[:, 1, None, None]
        cx = m[:, 0, 0, None, None] * fx + m[:, 0, 1, None, None] * fy + m[:, 0, 2, None, None]
        cy = m[:, 1, 0, None, None] * fx + m[:, 1, 1, None, None] * fy + m[:, 1, 2, None, None]
        grid = torch.stack(((2 * cx + 1) / w - 1, (2 * cy + 1) / h - 1), dim=-1)
        src = torch.stack([crops[i].reshape(h, w, -1) for i in idx]).permute(0, 3, 1, 2).float()
        warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        for k, i in enumerate(idx):
            rh, rw = sizes[k]
            out[i] = warped[k, :, :rh, :rw].permute(1, 2, 0)
    return out  # type: ignore[return-value]
