"""The insightface model families on either engine: SCRFD detectors, 2d106/1k3d68 landmarkers and
ArcFace recognisers, batched across all frames and faces of a batch, with insightface's own
pre- and post-processing arithmetic (so outputs match its reference classes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from ..media.transfer import to_device
from ..ops.align import crop_transform, estimate_norm, invert_affine, transform_points, warp_faces
from ..ops.detection import anchor_centers, greedy_nms_rounds, largest_central_rank, suppressors
from ..ops.image import letterbox
from .engines import BatchSplitter, create_engine
from .factory import DEFAULT_BUCKETS
from .packs import load_checked


@dataclass
class EngineOptions:
    """How a model runs: engine, device, precision, onnxruntime providers and threads.

    onnxruntime's worker threads do not spin by default here: several stages run models side by
    side, and a spinning idle session takes the cores the others need (``models.spin``). ``tf32``:
    TensorFloat-32 for float32 on CUDA (torch engine; process-wide). ``tensorrt_cache``: the folder
    for TensorRT's engine and timing caches (the tensorrt engine; the onnxruntime engine uses
    TensorRT only given one). ``buckets``: the batch sizes batches are padded to (torch on CUDA,
    tensorrt). ``cuda_graphs``: the torch engine on CUDA replays fixed shapes as CUDA graphs."""

    engine: str = "onnxruntime"
    device: torch.device = torch.device("cpu")
    dtype: str = "float32"
    providers: list[str] | None = None
    threads: int | None = None
    spin: bool = False
    tf32: bool = False
    tensorrt_cache: str | None = None
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    cuda_graphs: bool = True

    def create(self, role: str, path: Path, model: onnx.ModelProto):  # noqa: ANN201 - an Engine
        providers = self.providers
        if providers is None and self.device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        try:
            return create_engine(
                path, engine=self.engine, device=self.device, dtype=self.dtype,  # type: ignore[arg-type]
                providers=providers, threads=self.threads, model=model, spin=self.spin,
                tf32=self.tf32, tensorrt_cache=self.tensorrt_cache, buckets=self.buckets,
                cuda_graphs=self.cuda_graphs,
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
    """SCRFD on a batch of frames: letterbox (top-left, zero padding), one forward pass, then anchor
    decoding, thresholds, NMS and face selection for the whole batch on the device (insightface's
    arithmetic, so its results), and one copy of the final faces to the host."""

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
        self._anchor_cache: dict[tuple, torch.Tensor] = {}
        self.split = BatchSplitter(name="detector")

    NMS_ROUNDS = 12  # rounds of batched NMS before its settling is checked (with the final copy)
    NMS_ELEMENTS = 1 << 25  # most (images x candidates x candidates) one NMS works on at once

    def detect(self, images: list[torch.Tensor]) -> list[Detections]:
        """``(H, W, 3)`` uint8 RGB frames -> their detections, in frame pixels.

        Everything after the forward pass runs on the device for the whole batch; the host waits
        twice a batch, whatever its frames and faces: to learn how many candidates the most crowded
        frame has (the size of the NMS), and for the final faces, copied in one piece."""
        if not images:
            return []
        blob, scales = letterbox(images, self.input_size)
        outputs = self.split(self.engine, blob)
        b, n = len(images), len(self.strides)
        scores = torch.cat([o.reshape(b, -1) for o in outputs[:n]], 1)  # (B, N): every anchor, strides in order
        count = (scores >= self.score_threshold).sum(1)
        k = int(count.max())  # host wait 1: the NMS's size
        if k == 0:
            return [self._empty() for _ in images]
        # Each frame's candidates best first, ties in anchor order (a stable sort of the top k).
        index = scores.topk(k, dim=1).indices.sort(1).values
        top = scores.gather(1, index).sort(dim=1, descending=True, stable=True)
        table = self._decode(outputs, index.gather(1, top.indices), top.values)
        table[..., 1:] /= to_device(scales, scores.device, torch.float32)[:, None, None]
        valid = torch.arange(k, device=scores.device) < count[:, None]
        hw = to_device([tuple(im.shape[:2]) for im in images], scores.device)
        step = max(1, self.NMS_ELEMENTS // (k * k))
        out: list[Detections] = []
        for i in range(0, len(images), step):
            out += self._select(table[i : i + step], valid[i : i + step], hw[i : i + step])
        return out

    def _decode(self, outputs: list[torch.Tensor], index: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The anchors at ``index`` (``(B, K)`` into every anchor, strides in order) decoded:
        ``(B, K, 15)`` score, box and keypoints (zeros without them), in input pixels."""
        w, h = self.input_size
        b, n = index.shape[0], len(self.strides)
        table = scores.new_zeros((*index.shape, 15))
        table[..., 0] = scores
        start = 0
        for k, stride in enumerate(self.strides):
            size = outputs[k].numel() // b
            local = (index - start).clamp(0, size - 1)
            mine = ((index >= start) & (index < start + size))[..., None]
            centers = self._centers(h // stride, w // stride, stride, index.device)[local]  # (B, K, 2)

            def rows(o: torch.Tensor, width: int) -> torch.Tensor:  # rank-3 batched outputs and batch-major rows alike
                return o.reshape(b, -1, width).gather(1, local[..., None].expand(-1, -1, width)) * stride

            dist = rows(outputs[k + n], 4)
            parts = [centers - dist[..., :2], centers + dist[..., 2:]]
            if self.with_kps:
                parts.append((rows(outputs[k + 2 * n], 10).reshape(b, -1, 5, 2) + centers[:, :, None]).reshape(b, -1, 10))
            decoded = torch.cat(parts, -1)
            table[..., 1 : 1 + decoded.shape[-1]] = torch.where(mine, decoded, table[..., 1 : 1 + decoded.shape[-1]])
            start += size
        return table

    def _centers(self, height: int, width: int, stride: int, device: torch.device) -> torch.Tensor:
        key = (height, width, stride, str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = torch.tensor(anchor_centers(height, width, stride, self.anchors), device=device)
        return self._anchor_cache[key]

    def _select(self, table: torch.Tensor, valid: torch.Tensor, hw: torch.Tensor) -> list[Detections]:
        """NMS, ``max_faces`` and ``min_size`` on ``(B, K, 15)`` candidates (score, box, keypoints;
        best first), then one copy of the faces to the host."""
        k = table.shape[1]
        boxes = table[..., 1:5]
        final = keep = valid
        rank = torch.arange(k, device=table.device).expand_as(valid)
        if self.min_size > 0:
            final = final & (torch.minimum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]) >= self.min_size)
        m = min(k, self.max_faces) if self.max_faces else k
        suppress = suppressors(boxes, valid, self.nms_threshold)
        while True:
            keep, settled = greedy_nms_rounds(suppress, valid, keep, self.NMS_ROUNDS)
            chosen = final & keep
            if self.max_faces:  # insightface's rule, where more faces than that remain
                crowded = keep.sum(1, keepdim=True) > self.max_faces
                rank = torch.where(crowded, largest_central_rank(boxes, keep, hw), rank)
                chosen &= (rank < self.max_faces) | ~crowded
            # The chosen faces first, in their order; one copy of their rows, counts and flags.
            pick = torch.where(chosen, rank, rank + k).argsort(1)[:, :m]
            rows = table.gather(1, pick[..., None].expand(-1, -1, table.shape[-1]))
            extra = torch.stack((chosen.sum(1), settled), 1).to(table.dtype)
            host = torch.cat((rows.reshape(-1), extra.reshape(-1))).cpu().numpy()  # host wait 2
            counts, settled_h = host[rows.numel():].reshape(-1, 2).T
            if settled_h.all():
                break
        out = []
        for r, c in zip(host[: rows.numel()].reshape(rows.shape), counts.astype(int)):
            r = r[:c]
            kps = r[:, 5:].reshape(-1, 5, 2).copy() if self.with_kps else None
            out.append(Detections(r[:, 1:5].copy(), r[:, 0].copy(), kps))
        return out

    def _empty(self) -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                          np.zeros((0, 5, 2), np.float32) if self.with_kps else None)


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
        self.split = BatchSplitter(name="landmarker")

    def predict(self, frames: list[torch.Tensor], frame_of: list[int], boxes: np.ndarray) -> np.ndarray:
        """``(B, count, 2)`` landmarks in frame pixels (x, y)."""
        if not len(frame_of):
            return np.zeros((0, self.count, 2), np.float32)
        m = crop_transform(boxes, self.size)
        crops = warp_faces(frames, frame_of, m, self.size)
        (pred,) = self.split(self.engine, _blob(crops, self.mean, self.std))
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
        self.split = BatchSplitter(name="recognizer")

    def aligned(self, frames: list[torch.Tensor], frame_of: list[int], kps: np.ndarray) -> torch.Tensor:
        return warp_faces(frames, frame_of, estimate_norm(kps, self.size), self.size)

    def embed(self, frames: list[torch.Tensor], frame_of: list[int], faces: list) -> np.ndarray:
        """``(B, D)`` float32 unit vectors, one per face (aligned by its keypoints)."""
        if not len(frame_of):
            return np.zeros((0, self.dim or 512), np.float32)
        kps = np.stack([f.kps for f in faces])
        return self.embed_crops(self.aligned(frames, frame_of, kps))

    def embed_crops(self, crops: torch.Tensor) -> np.ndarray:
        (out,) = self.split(self.engine, _blob(crops, self.mean, self.std))
        out = torch.nn.functional.normalize(out.float(), dim=1)
        return out.cpu().numpy().astype(np.float32)
