"""The insightface model families on either engine: SCRFD detectors, 2d106/1k3d68 landmarkers and
ArcFace recognisers, batched across all frames and faces of a batch, with insightface's own
pre- and post-processing arithmetic (so outputs match its reference classes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from ..ops.align import crop_transform, estimate_norm, invert_affine, transform_points, warp_faces
from ..ops.detection import anchor_centers, nms, select_largest_central
from ..ops.image import letterbox
from .engines import create_engine
from .packs import load_checked


@dataclass
class EngineOptions:
    """How a model runs: engine, device, precision, onnxruntime providers and threads.

    onnxruntime's worker threads do not spin by default here: several stages run models side by
    side, and a spinning idle session takes the cores the others need (``models.spin``)."""

    engine: str = "onnxruntime"
    device: torch.device = torch.device("cpu")
    dtype: str = "float32"
    providers: list[str] | None = None
    threads: int | None = None
    spin: bool = False

    def create(self, role: str, path: Path, model: onnx.ModelProto):  # noqa: ANN201 - an Engine
        providers = self.providers
        if providers is None and self.device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        try:
            return create_engine(
                path, engine=self.engine, device=self.device, dtype=self.dtype,  # type: ignore[arg-type]
                providers=providers, threads=self.threads, model=model, spin=self.spin,
            )
        except ValueError as exc:  # UnsupportedOperatorError included: its message suggests onnxruntime
            from facestream.pipeline.errors import ModelError

            raise ModelError(f"models.{role}: {path.name}: {exc}") from None


def _mxnet_normalisation(model: onnx.ModelProto, *, bn_data: bool) -> bool:
    """insightface's rule: Sub and Mul among the first nodes means the graph normalises itself."""
    sub = mul = False
    for i, node in enumerate(model.graph.node[:8]):
        if node.name.startswith(("Sub", "_minus")):
            sub = True
        if node.name.startswith(("Mul", "_mul")):
            mul = True
        if bn_data and i < 3 and node.name == "bn_data":
            sub = mul = True
    return sub and mul


def _blob(crops: torch.Tensor, mean: float, std: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 RGB -> ``(B, 3, H, W)`` normalised float."""
    return (crops.permute(0, 3, 1, 2).to(dtype) - mean) / std


# ---------------------------------------------------------------------------------------------- SCRFD


@dataclass
class Detections:
    """One image's faces: boxes ``(N, 4)``, scores ``(N,)``, keypoints ``(N, 5, 2)`` or ``None``;
    ``plausible`` ``(N,)`` bool where the detector checked its boxes (``None``: not checked)."""

    boxes: np.ndarray
    scores: np.ndarray
    kps: np.ndarray | None
    landmarks: np.ndarray | None = None
    plausible: np.ndarray | None = None


class ScrfdDetector:
    """SCRFD on a batch of frames: letterbox (top-left, zero padding), one forward pass, anchor
    decoding of the candidates above the threshold (on the device), NMS on the host."""

    def __init__(
        self,
        path: Path,
        options: EngineOptions,
        *,
        input_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        max_faces: int = 0,
        min_size: float = 0.0,
    ) -> None:
        model, sig = load_checked("detector", path)
        n_out = len(sig.outputs)
        self.strides = (8, 16, 32) if n_out in (6, 9) else (8, 16, 32, 64, 128)
        self.anchors = 2 if n_out in (6, 9) else 1
        self.with_kps = n_out in (9, 15)
        shape = sig.inputs[0][1]
        fixed = isinstance(shape[2], int) and isinstance(shape[3], int)
        self.input_size = (int(shape[3]), int(shape[2])) if fixed else input_size  # (w, h)
        self.engine = options.create("detector", path, model)
        self.device = options.device
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_faces = max_faces
        self.min_size = min_size

    def detect(self, images: list[torch.Tensor]) -> list[Detections]:
        """``(H, W, 3)`` uint8 RGB frames -> their detections, in frame pixels."""
        if not images:
            return []
        blob, scales = letterbox(images, self.input_size)
        outputs = self.engine(blob)
        b = len(images)
        n = len(self.strides)
        per_image: list[list[torch.Tensor]] = [[] for _ in range(b)]
        for o in outputs:
            rows = o.reshape(b, -1, o.shape[-1])  # rank-3 batched outputs and batch-major rows alike
            for i in range(b):
                per_image[i].append(rows[i])
        results = []
        for i, outs in enumerate(per_image):
            scores, boxes, kps = self._decode(outs, n)
            boxes /= scales[i]
            if kps is not None:
                kps /= scales[i]
            results.append(self._finish(scores, boxes, kps, images[i].shape[:2]))
        return results

    def _decode(self, outs: list[torch.Tensor], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        w, h = self.input_size
        scores_l, boxes_l, kps_l = [], [], []
        for k, stride in enumerate(self.strides):
            s = outs[k].reshape(-1)
            keep = torch.nonzero(s >= self.score_threshold).reshape(-1)
            scores = s[keep].cpu().numpy()
            idx = keep.cpu().numpy()
            centers = anchor_centers(h // stride, w // stride, stride, self.anchors)[idx]
            dist = outs[k + n].reshape(-1, 4)[keep].cpu().numpy() * stride
            boxes = np.stack((centers[:, 0] - dist[:, 0], centers[:, 1] - dist[:, 1],
                              centers[:, 0] + dist[:, 2], centers[:, 1] + dist[:, 3]), -1)
            scores_l.append(scores)
            boxes_l.append(boxes)
            if self.with_kps:
                kd = outs[k + 2 * n].reshape(-1, 10)[keep].cpu().numpy() * stride
                kps_l.append(kd.reshape(-1, 5, 2) + centers[:, None, :])
        kps = np.concatenate(kps_l).astype(np.float32) if self.with_kps else None
        return np.concatenate(scores_l).astype(np.float32), np.concatenate(boxes_l).astype(np.float32), kps

    def _finish(self, scores: np.ndarray, boxes: np.ndarray, kps: np.ndarray | None, hw: tuple[int, int]) -> Detections:
        order = np.argsort(-scores, kind="stable")
        scores, boxes = scores[order], boxes[order]
        kps = kps[order] if kps is not None else None
        keep = nms(boxes, scores, self.nms_threshold)
        scores, boxes = scores[keep], boxes[keep]
        kps = kps[keep] if kps is not None else None
        if self.max_faces and len(boxes) > self.max_faces:
            pick = select_largest_central(boxes, hw, self.max_faces)
            scores, boxes = scores[pick], boxes[pick]
            kps = kps[pick] if kps is not None else None
        if self.min_size > 0 and len(boxes):
            big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_size
            scores, boxes = scores[big], boxes[big]
            kps = kps[big] if kps is not None else None
        return Detections(boxes, scores, kps)


# ---------------------------------------------------------------------------------------------- landmarks


class LandmarkModel:
    """2d106det or 1k3d68: a square crop of 1.5x the box around each face, all faces in one pass."""

    def __init__(self, path: Path, options: EngineOptions) -> None:
        model, sig = load_checked("landmarker", path)
        self.size = int(sig.inputs[0][1][2])  # type: ignore[arg-type]
        out_dim = sig.outputs[0][1][1]
        self.dim = 3 if out_dim == 3309 else 2
        self.count = 68 if self.dim == 3 else int(out_dim) // 2  # type: ignore[arg-type]
        mx = _mxnet_normalisation(model, bn_data=True)
        self.mean, self.std = (0.0, 1.0) if mx else (127.5, 128.0)
        self.engine = options.create("landmarker", path, model)

    def predict(self, frames: list[torch.Tensor], frame_of: list[int], boxes: np.ndarray) -> np.ndarray:
        """``(B, count, 2)`` landmarks in frame pixels (x, y)."""
        if not len(frame_of):
            return np.zeros((0, self.count, 2), np.float32)
        m = crop_transform(boxes, self.size)
        crops = warp_faces(frames, frame_of, m, self.size)
        (pred,) = self.engine(_blob(crops, self.mean, self.std))
        pred = pred.cpu().numpy().reshape(len(frame_of), -1, self.dim)[:, -self.count :, :2].astype(np.float32)
        pred = (pred + 1) * (self.size // 2)
        return transform_points(pred, invert_affine(m)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- ArcFace


class ArcFaceModel:
    """ArcFace: each face aligned to the template by its five keypoints, all faces in one pass,
    L2-normalised embeddings."""

    def __init__(self, path: Path, options: EngineOptions) -> None:
        model, sig = load_checked("recognizer", path)
        self.size = int(sig.inputs[0][1][2])  # type: ignore[arg-type]
        self.dim = sig.outputs[0][1][-1]
        mx = _mxnet_normalisation(model, bn_data=False)
        self.mean, self.std = (0.0, 1.0) if mx else (127.5, 127.5)
        self.engine = options.create("recognizer", path, model)

    def aligned(self, frames: list[torch.Tensor], frame_of: list[int], kps: np.ndarray) -> torch.Tensor:
        return warp_faces(frames, frame_of, estimate_norm(kps, self.size), self.size)

    def embed(self, frames: list[torch.Tensor], frame_of: list[int], faces: list) -> np.ndarray:
        """``(B, D)`` float32 unit vectors, one per face (aligned by its keypoints)."""
        if not len(frame_of):
            return np.zeros((0, self.dim or 512), np.float32)
        kps = np.stack([f.kps for f in faces])
        return self.embed_crops(self.aligned(frames, frame_of, kps))

    def embed_crops(self, crops: torch.Tensor) -> np.ndarray:
        (out,) = self.engine(_blob(crops, self.mean, self.std))
        out = torch.nn.functional.normalize(out.float(), dim=1)
        return out.cpu().numpy().astype(np.float32)
