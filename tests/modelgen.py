"""ONNX models with the tensor signatures of insightface's model families and random weights.

Every ``make_*`` function builds a graph with ``onnx.helper`` (no exporter), deterministically from
its seed, writes it to ``path`` and returns the path. Names, shapes, output order and operator
types follow the real files closely enough that insightface's own classes load them
(``insightface.model_zoo.get_model``) and the torch engine meets the same operators it will meet in
production. Scales:

* ``"tiny"``: a few tens of MFLOPs per item at the families' usual input sizes, files < 2 MB,
  for unit tests;
* ``"cpu"`` (inswapper only): 5-10 GFLOPs per face, for CPU benchmarks;
* ``"real"``: about the compute of the real models, for benchmarks (files as large as the real
  ones: do not generate them in unit tests).

:func:`count_flops` reports ``2 x`` the multiply-adds of Conv, ConvTranspose, Gemm and MatMul.

Example:
    >>> path = make_arcface(tmp / "w600k_r50.onnx", scale="tiny")  # doctest: +SKIP
    >>> count_flops(path, {"input.1": [1, 3, 112, 112]}) / 1e9  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "count_flops",
    "make_arcface",
    "make_inswapper",
    "make_landmark_2d106",
    "make_landmark_3d68",
    "make_scrfd",
    "synthetic_image",
]

Scale = Literal["tiny", "cpu", "real"]
PathLike = str | os.PathLike[str]
OPSET = 11  # what the insightface model zoo files were exported with


class _Graph:
    """A graph under construction with deterministic random weights."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._counter = 0

    def _name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        """Add an initializer and return its name."""
        name = name or self._name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], **attrs: object) -> str:
        """Add a node named like a PyTorch export (``Conv_12``) and return its output."""
        name = self._name(op_type)
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [f"{name}_out"], name=name, **attrs)
        )
        return f"{name}_out"

    def randn(self, *shape: int, std: float = 1.0) -> np.ndarray:
        """Normal float32 samples with the given standard deviation."""
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        groups: int = 1,
        pad: int | None = None,
        gain: float = math.sqrt(2.0),
        bias: bool = True,
    ) -> str:
        """Conv with He-style weights (``gain / sqrt(fan_in)``) and a small bias."""
        fan_in = cin // groups * k * k
        w = self.const(self.randn(cout, cin // groups, k, k, std=gain / math.sqrt(fan_in)))
        inputs = [x, w] + ([self.const(self.randn(cout, std=0.01))] if bias else [])
        p = k // 2 if pad is None else pad
        return self.op(
            "Conv",
            inputs,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[p, p, p, p],
            group=groups,
            dilations=[1, 1],
        )

    def bn(self, x: str, c: int, gamma: float = 1.0) -> str:
        """Inference BatchNormalization with near-identity statistics."""
        scale = self.const((gamma * self.rng.uniform(0.8, 1.2, c)).astype(np.float32))
        shift = self.const(self.randn(c, std=0.05))
        mean = self.const(self.randn(c, std=0.05))
        var = self.const(self.rng.uniform(0.8, 1.2, c).astype(np.float32))
        return self.op("BatchNormalization", [x, scale, shift, mean, var], epsilon=1e-5)

    def prelu(self, x: str, c: int) -> str:
        """PRelu with per-channel ``(C, 1, 1)`` slopes in 0.1-0.3."""
        return self.op(
            "PRelu", [x, self.const(self.rng.uniform(0.1, 0.3, (c, 1, 1)).astype(np.float32))]
        )

    def gemm(self, x: str, cin: int, cout: int, std: float | None = None) -> str:
        """Gemm ``x @ W.T + b`` (``transB=1``); weight spread ``std`` or ``1 / sqrt(cin)``."""
        w = self.const(self.randn(cout, cin, std=std if std is not None else 1 / math.sqrt(cin)))
        return self.op(
            "Gemm", [x, w, self.const(self.randn(cout, std=0.01))], alpha=1.0, beta=1.0, transB=1
        )

    def model(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str
    ) -> onnx.ModelProto:
        """The checked ModelProto of everything added so far."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        opsets = [helper.make_opsetid("", OPSET)]
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            producer_name="facestream-modelgen",
            ir_version=helper.find_min_ir_version_for(opsets),
        )
        onnx.checker.check_model(model)
        return model


def _value(name: str, shape: Sequence[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _save(model: onnx.ModelProto, path: PathLike) -> str:
    path = os.fspath(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def _check_scale(scale: str, table: Mapping[str, object], family: str) -> None:
    if scale not in table:
        raise ValueError(f"{family}: scale must be one of {sorted(table)}, got {scale!r}")


def _probe(
    model: onnx.ModelProto, names: Sequence[str], feeds: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """Values of intermediate tensors, computed by onnxruntime on a copy with extra outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(list(names), dict(feeds))


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(value.astype(np.float32), name)
            )
            return
    raise KeyError(name)


def _get_init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like ``(H, W, 3)`` uint8 BGR picture.

    Natural-image statistics (a ``1/f`` spectrum) plus a few solid ellipses, so that detector
    responses calibrated on it transfer to real photos.
    """
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]
    falloff = np.sqrt(fy**2 + fx**2)
    falloff[0, 0] = 1.0
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        spectrum = (
            rng.standard_normal((height, width)) + 1j * rng.standard_normal((height, width))
        ) / falloff
        plane = np.real(np.fft.ifft2(spectrum))
        img[..., c] = (plane - plane.mean()) / (plane.std() + 1e-12) * 45 + rng.uniform(90, 150)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(8):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.04, 0.15) * height, rng.uniform(0.04, 0.15) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img[inside] = 0.5 * img[inside] + 0.5 * rng.uniform(20, 235, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# SCRFD


@dataclass(frozen=True)
class _ScrfdSize:
    stem: int
    stages: tuple[tuple[int, int], ...]  # (channels, residual blocks) at strides 4, 8, 16, 32
    fpn: int
    head: int
    tower: int  # Conv-BN-Relu layers per head


_SCRFD = {
    "tiny": _ScrfdSize(
        stem=8, stages=((8, 0), (16, 1), (16, 1), (24, 1)), fpn=16, head=16, tower=1
    ),
    "real": _ScrfdSize(
        stem=28, stages=((28, 2), (56, 2), (88, 2), (224, 2)), fpn=64, head=80, tower=3
    ),
}
_STRIDES = (8, 16, 32)
_ANCHORS = 2
# Anchors above 0.5 on a 640x640 picture the calibration aims at, per stride.
_SCRFD_POSITIVES = {8: 8, 16: 6, 32: 4}


def _basic_block(g: _Graph, x: str, c: int) -> str:
    h = g.op("Relu", [g.bn(g.conv(x, c, c, bias=False), c)])
    h = g.bn(g.conv(h, c, c, bias=False), c, gamma=0.3)
    return g.op("Relu", [g.op("Add", [x, h])])


def make_scrfd(
    path: PathLike,
    *,
    scale: Scale = "tiny",
    with_kps: bool = True,
    batched: bool = False,
    fixed_size: int | tuple[int, int] | None = None,
    seed: int = 0,
) -> str:
    """An SCRFD-style face detector (det_10g / det_2.5g / det_500m signature).

    Input ``input.1`` ``[1, 3, '?', '?']`` (or ``[1, 3, h, w]`` with ``fixed_size``), RGB normalised
    as ``(x - 127.5) / 128`` by the caller. A ResNet-style backbone and an FPN with nearest x2
    Resize feed one head per stride (8, 16, 32) with 2 anchors per location. Outputs, in order:
    scores 8/16/32 (Sigmoid, ``(N, 1)``), bboxes 8/16/32 (``(N, 4)``, l/t/r/b distances in stride
    units), then keypoints 8/16/32 (``(N, 10)``) when ``with_kps``. With ``batched`` the outputs
    keep a batch dim (``(1, N, k)``), reshaped through a ``Shape -> Gather -> Unsqueeze -> Concat``
    sub-graph. Weights are calibrated so that a 640x640 photo gets tens to about a hundred anchors
    above 0.5 (depending on its content) and bbox distances mostly in 0.5-6.

    Args:
        path: Where to write the model.
        scale: ``tiny`` or ``real`` (about 10 GFLOPs at 640x640, det_10g class).
        with_kps: Add the keypoint outputs (9 outputs instead of 6).
        batched: Keep a batch dim in the outputs.
        fixed_size: ``(width, height)`` (or one int for both) to declare a fixed input size.
        seed: Weight seed.

    Returns:
        ``path`` as a string.
    """
    _check_scale(scale, _SCRFD, "make_scrfd")
    size = _SCRFD[scale]
    g = _Graph(seed)
    x = g.op("Relu", [g.bn(g.conv("input.1", 3, size.stem, stride=2, bias=False), size.stem)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in, features = size.stem, []
    for level, (c, blocks) in enumerate(size.stages):
        if level > 0 or c != c_in:
            x = g.op("Relu", [g.bn(g.conv(x, c_in, c, stride=2 if level else 1, bias=False), c)])
        for _ in range(blocks):
            x = _basic_block(g, x, c)
        c_in = c
        if level > 0:
            features.append((x, c))
    laterals = [g.conv(f, c, size.fpn, k=1, gain=1.0) for f, c in features]
    scales = g.const(np.array([1, 1, 2, 2], np.float32), "fpn_up_scales")
    roi = g.const(np.zeros(0, np.float32), "fpn_up_roi")
    merged = [laterals[2]]
    for lateral in (laterals[1], laterals[0]):
        up = g.op(
            "Resize",
            [merged[0], roi, scales],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
        merged.insert(0, g.op("Add", [lateral, up]))
    pyramid = [
        g.op("Relu", [g.bn(g.conv(m, size.fpn, size.head, bias=False), size.head)]) for m in merged
    ]

    widths = {"score": 1, "bbox": 4, "kps": 10}
    kinds = ["score", "bbox"] + (["kps"] if with_kps else [])
    convs: dict[tuple[str, int], tuple[str, str]] = {}  # conv output, weight initializer
    for stride, feat in zip(_STRIDES, pyramid):
        for _ in range(size.tower):
            feat = g.op("Relu", [g.bn(g.conv(feat, size.head, size.head, bias=False), size.head)])
        for kind in kinds:
            conv = g.conv(feat, size.head, _ANCHORS * widths[kind], gain=1.0)
            convs[kind, stride] = conv, g.nodes[-1].input[1]
            nhwc = g.op("Transpose", [conv], perm=[0, 2, 3, 1])
            if batched:
                batch = g.op(
                    "Unsqueeze",
                    [
                        g.op(
                            "Gather",
                            [g.op("Shape", [nhwc]), g.const(np.array(0, np.int64))],
                            axis=0,
                        )
                    ],
                    axes=[0],
                )
                target = g.op(
                    "Concat", [batch, g.const(np.array([-1, widths[kind]], np.int64))], axis=0
                )
            else:
                target = g.const(np.array([-1, widths[kind]], np.int64))
            out = g.op("Reshape", [nhwc, target])
            if kind == "score":
                g.op("Sigmoid", [out])
            g.nodes[-1].output[0] = f"{kind}_{stride}"

    outputs = [
        _value(
            f"{kind}_{stride}",
            [1, f"n{stride}", widths[kind]] if batched else [f"n{stride}", widths[kind]],
        )
        for kind in kinds
        for stride in _STRIDES
    ]
    height, width = (
        (fixed_size, fixed_size)
        if isinstance(fixed_size, int)
        else (fixed_size or ("?", "?"))[::-1]
    )
    model = g.model([_value("input.1", [1, 3, height, width])], outputs, "scrfd")
    _calibrate_scrfd(model, convs, kinds, fixed_size)
    return _save(model, path)


def _scrfd_blob(img: np.ndarray) -> np.ndarray:
    rgb = img[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((rgb - 127.5) / 128.0).transpose(2, 0, 1)[None])


def _calibrate_scrfd(
    model: onnx.ModelProto,
    convs: dict[tuple[str, int], tuple[str, str]],
    kinds: list[str],
    fixed_size: int | tuple[int, int] | None,
) -> None:
    """Set head weight scales and biases from the responses to a synthetic letterboxed photo.

    Scores: the weights are made orthogonal to the features of a black (letterbox) area, so that
    area scores exactly the bias; logits get a spread of 1.5 and a bias that puts about
    ``_SCRFD_POSITIVES`` anchors per stride above 0.5 while black stays below 0.27. Boxes:
    distances with mean 3.5 and spread 1 stride unit. Keypoints: offsets with spread 1.
    """
    if isinstance(fixed_size, int):
        width = height = fixed_size
    else:
        width, height = fixed_size or (640, 640)
    photo = np.zeros((height, width, 3), np.uint8)
    content = int(height * 0.7)
    photo[:content] = synthetic_image(content, width, seed=1)
    nodes = {n.output[0]: n for n in model.graph.node if n.output}
    score_inputs = [nodes[convs["score", s][0]].input[0] for s in _STRIDES]
    black = _probe(model, score_inputs, {"input.1": _scrfd_blob(np.zeros_like(photo))})
    for stride, feats in zip(_STRIDES, black):
        weight = convs["score", stride][1]
        w = _get_init(model, weight).astype(np.float64)
        centre = feats[0, :, feats.shape[2] // 2, feats.shape[3] // 2].astype(np.float64)
        patch = np.broadcast_to(centre[:, None, None], w.shape[1:])  # a uniform area's 3x3 input
        w -= (
            np.einsum("ochw,chw->o", w, patch)[:, None, None, None]
            * patch
            / max((patch**2).sum(), 1e-12)
        )
        _set_init(model, weight, w)
    names = [convs[k, s][0] for k in kinds for s in _STRIDES]
    responses = dict(zip(names, _probe(model, names, {"input.1": _scrfd_blob(photo)})))
    area = width * height / 640.0 / 640.0
    for kind in kinds:
        for stride in _STRIDES:
            conv, weight = convs[kind, stride]
            bias = nodes[conv].input[2]
            out = responses[conv] - _get_init(model, bias).reshape(1, -1, 1, 1)
            factor = {"score": 1.5, "bbox": 1.0, "kps": 1.0}[kind] / (float(out.std()) + 1e-12)
            _set_init(model, weight, _get_init(model, weight) * factor)
            if kind == "score":
                logits = np.sort(out.reshape(-1) * factor)[::-1]
                wanted = max(1, int(_SCRFD_POSITIVES[stride] * area))
                new_bias = np.full(_ANCHORS, -max(float(logits[min(wanted, logits.size - 1)]), 1.0))
            elif kind == "bbox":
                new_bias = np.full(_ANCHORS * 4, 3.5)
            else:
                new_bias = np.zeros(_ANCHORS * 10)
            _set_init(model, bias, new_bias)


# --------------------------------------------------------------------------------------------
# ArcFace (IResNet)


@dataclass(frozen=True)
class _ResNetSize:
    stem: int
    layers: tuple[int, ...]
    widths: tuple[int, ...]


_ARCFACE = {
    "tiny": _ResNetSize(stem=8, layers=(1, 1, 1, 1), widths=(8, 8, 8, 8)),
    "real": _ResNetSize(stem=64, layers=(3, 4, 14, 3), widths=(64, 128, 256, 512)),
}


def _iresnet_block(g: _Graph, x: str, cin: int, cout: int, stride: int) -> str:
    """IResNet block: BN, Conv, BN, PRelu, Conv(stride), BN (+ Conv1x1-BN shortcut)."""
    h = g.bn(x, cin)
    h = g.conv(h, cin, cout, bias=False)
    h = g.prelu(g.bn(h, cout), cout)
    h = g.bn(g.conv(h, cout, cout, stride=stride, bias=False, gain=1.0), cout, gamma=0.3)
    shortcut = x
    if stride != 1 or cin != cout:
        shortcut = g.bn(g.conv(x, cin, cout, k=1, stride=stride, bias=False, gain=1.0), cout)
    return g.op("Add", [h, shortcut])


def make_arcface(
    path: PathLike, *, scale: Scale = "tiny", seed: int = 0, mxnet_style: bool = False
) -> str:
    """An ArcFace recogniser (w600k_r50 / glint r100 signature).

    Input ``input.1`` ``[None, 3, 112, 112]``; output ``683`` ``[None, 512]`` (not normalised).
    IResNet layout: Conv, BN, PRelu, residual blocks with Add, then BN, Flatten, Gemm, BN.

    Args:
        path: Where to write the model.
        scale: ``tiny`` or ``real`` (IResNet-50, about 12 GFLOPs).
        seed: Weight seed.
        mxnet_style: Start with ``Sub``/``Mul`` nodes that normalise raw 0-255 pixels, as the
            mxnet-converted models do (insightface then feeds mean 0 / std 1).

    Returns:
        ``path`` as a string.
    """
    _check_scale(scale, _ARCFACE, "make_arcface")
    size = _ARCFACE[scale]
    g = _Graph(seed)
    x = "input.1"
    if mxnet_style:
        x = g.op("Sub", [x, g.const(np.array(127.5, np.float32))])
        x = g.op("Mul", [x, g.const(np.array(0.0078125, np.float32))])
    x = g.prelu(g.bn(g.conv(x, 3, size.stem, bias=False), size.stem), size.stem)
    cin = size.stem
    for blocks, width in zip(size.layers, size.widths):
        for i in range(blocks):
            x = _iresnet_block(g, x, cin, width, 2 if i == 0 else 1)
            cin = width
    x = g.op("Flatten", [g.bn(x, cin)], axis=1)
    x = g.gemm(x, cin * 7 * 7, 512)
    g.bn(x, 512)
    g.nodes[-1].output[0] = "683"
    model = g.model(
        [_value("input.1", [None, 3, 112, 112])], [_value("683", [None, 512])], "arcface"
    )
    return _save(model, path)


# --------------------------------------------------------------------------------------------
# Landmarks


@dataclass(frozen=True)
class _MobileSize:
    stem: int
    blocks: tuple[tuple[int, int], ...]  # (channels, stride) per depthwise-separable block


_LMK_2D = {
    "tiny": _MobileSize(stem=8, blocks=((8, 2), (16, 2), (16, 2), (24, 2))),
    "real": _MobileSize(
        stem=32,
        blocks=(
            (64, 1),
            (128, 2),
            (128, 1),
            (256, 2),
            (256, 1),
            (512, 2),
            (512, 1),
            (512, 1),
            (512, 1),
            (512, 1),
            (512, 1),
            (1024, 2),
        ),
    ),
}
_LMK_3D = {
    "tiny": _ResNetSize(stem=8, layers=(1, 1, 1, 1), widths=(8, 16, 16, 16)),
    "real": _ResNetSize(stem=64, layers=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
}


def _landmark_blob(seed: int) -> np.ndarray:
    img = synthetic_image(192, 192, seed=seed)[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((img - 127.5) / 128.0).transpose(2, 0, 1)[None])


def _calibrate_fc(
    model: onnx.ModelProto, gemm_out: str, weight: str, bias: str, spread: float, input_name: str
) -> None:
    """Scale the last Gemm so outputs on a synthetic face crop have the wanted spread, mean 0."""
    (out,) = _probe(model, [gemm_out], {input_name: _landmark_blob(2)})
    old_bias = _get_init(model, bias)
    centred = out - old_bias
    factor = spread / (float(centred.std()) + 1e-12)
    _set_init(model, weight, _get_init(model, weight) * factor)
    _set_init(model, bias, -centred.mean(axis=0) * factor)


def make_landmark_2d106(path: PathLike, *, scale: Scale = "tiny", seed: int = 0) -> str:
    """A 2d106det-style landmarker.

    Input ``data`` ``[None, 3, 192, 192]``; output ``fc1`` ``[None, 212]`` with values mostly in
    (-1, 1) (insightface maps them with ``(p + 1) * 96``). MobileNet-style: depthwise Conv
    (``group``), BN, PRelu / Relu, GlobalAveragePool, Flatten, Gemm.

    Args:
        path: Where to write the model.
        scale: ``tiny`` or ``real`` (MobileNetV1 width 1 at 192x192).
        seed: Weight seed.

    Returns:
        ``path`` as a string.
    """
    _check_scale(scale, _LMK_2D, "make_landmark_2d106")
    size = _LMK_2D[scale]
    g = _Graph(seed)
    x = g.prelu(g.bn(g.conv("data", 3, size.stem, stride=2, bias=False), size.stem), size.stem)
    cin = size.stem
    for i, (c, stride) in enumerate(size.blocks):
        x = g.bn(g.conv(x, cin, cin, stride=stride, groups=cin, bias=False), cin)
        x = g.op("Relu", [x]) if i % 2 else g.prelu(x, cin)
        x = g.prelu(g.bn(g.conv(x, cin, c, k=1, bias=False), c), c)
        cin = c
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    g.gemm(x, cin, 212)
    gemm = g.nodes[-1]
    gemm.output[0] = "fc1"
    model = g.model(
        [_value("data", [None, 3, 192, 192])], [_value("fc1", [None, 212])], "landmark_2d106"
    )
    _calibrate_fc(model, "fc1", gemm.input[1], gemm.input[2], 0.35, "data")
    return _save(model, path)


def make_landmark_3d68(path: PathLike, *, scale: Scale = "tiny", seed: int = 0) -> str:
    """A 1k3d68-style landmarker.

    Input ``data`` ``[None, 3, 192, 192]``; output ``fc1`` ``[None, 3309]`` (insightface uses the
    last 68 x 3 values, mapped like the 2-D ones). ResNet-style: Conv, BN, Relu, MaxPool, residual
    blocks, GlobalAveragePool, Flatten, Gemm.

    Args:
        path: Where to write the model.
        scale: ``tiny`` or ``real`` (ResNet-18 layout at 192x192).
        seed: Weight seed.

    Returns:
        ``path`` as a string.
    """
    _check_scale(scale, _LMK_3D, "make_landmark_3d68")
    size = _LMK_3D[scale]
    g = _Graph(seed)
    x = g.op("Relu", [g.bn(g.conv("data", 3, size.stem, stride=2, bias=False), size.stem)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = size.stem
    for level, (blocks, width) in enumerate(zip(size.layers, size.widths)):
        for i in range(blocks):
            if i == 0 and (level > 0 or cin != width):
                x = g.op(
                    "Relu",
                    [g.bn(g.conv(x, cin, width, stride=2 if level else 1, bias=False), width)],
                )
            x = _basic_block(g, x, width)
            cin = width
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    g.gemm(x, cin, 3309)
    gemm = g.nodes[-1]
    gemm.output[0] = "fc1"
    model = g.model(
        [_value("data", [None, 3, 192, 192])], [_value("fc1", [None, 3309])], "landmark_3d68"
    )
    _calibrate_fc(model, "fc1", gemm.input[1], gemm.input[2], 0.35, "data")
    return _save(model, path)


# --------------------------------------------------------------------------------------------
# inswapper_128


@dataclass(frozen=True)
class _SwapperSize:
    encoder: tuple[int, int, int]  # channels at 128, 64 and 32 pixels
    blocks: int  # AdaIN residual blocks at 32x32
    decoder: tuple[int, int]  # channels at 64 and 128 pixels


_INSWAPPER = {
    "tiny": _SwapperSize(encoder=(4, 8, 16), blocks=2, decoder=(8, 4)),
    "cpu": _SwapperSize(encoder=(32, 64, 160), blocks=6, decoder=(64, 32)),
    "real": _SwapperSize(encoder=(128, 256, 768), blocks=6, decoder=(384, 128)),
}


def _reflect_conv(
    g: _Graph, x: str, cin: int, cout: int, k: int, gain: float = math.sqrt(2.0)
) -> str:
    p = k // 2
    padded = g.op("Pad", [x, g.const(np.array([0, 0, p, p, 0, 0, p, p], np.int64))], mode="reflect")
    return g.conv(padded, cin, cout, k=k, pad=0, gain=gain)


def _adain(g: _Graph, x: str, source: str, c: int, side: int) -> str:
    """Instance norm from ReduceMean/Sub/Mul/Sqrt/Div/Add, then ``x * (1 + gamma) + beta``.

    gamma and beta come from the source latent through Gemm and a Reshape to ``[1, 2, C, 1, 1]``;
    beta is Expanded to ``[1, C, side, side]``: both hard-code a batch of 1, like the real export.
    """
    mean = g.op("ReduceMean", [x], axes=[2, 3], keepdims=1)
    centred = g.op("Sub", [x, mean])
    var = g.op("ReduceMean", [g.op("Mul", [centred, centred])], axes=[2, 3], keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, g.const(np.array(1e-8, np.float32))])])
    normed = g.op("Div", [centred, std])
    style = g.gemm(source, 512, 2 * c, std=0.3 / math.sqrt(512))
    style = g.op("Reshape", [style, g.const(np.array([1, 2, c, 1, 1], np.int64))])
    gamma = g.op("Gather", [style, g.const(np.array(0, np.int64))], axis=1)
    beta = g.op("Gather", [style, g.const(np.array(1, np.int64))], axis=1)
    beta = g.op("Expand", [beta, g.const(np.array([1, c, side, side], np.int64))])
    scaled = g.op("Mul", [normed, g.op("Add", [gamma, g.const(np.array(1.0, np.float32))])])
    return g.op("Add", [scaled, beta])


def make_inswapper(path: PathLike, *, scale: Scale = "tiny", seed: int = 0) -> str:
    """An inswapper_128-style face swapper.

    Inputs ``target`` ``[1, 3, 128, 128]`` (RGB / 255) and ``source`` ``[1, 512]`` (the latent,
    ``normed_embedding @ emap`` normalised); output ``output`` ``[1, 3, 128, 128]`` in about
    [0, 1]. Encoder: reflect-Pad Convs with LeakyRelu down to 32x32; AdaIN residual blocks
    conditioned on the source; decoder: Resize x2 (linear) + Conv twice, a 7x7 Conv, Tanh, then
    ``(t + 1) / 2``. The last initializer is an unused 512x512 ``emap`` (insightface reads
    ``graph.initializer[-1]``).

    Args:
        path: Where to write the model.
        scale: ``tiny``, ``cpu`` (5-10 GFLOPs) or ``real`` (about 175 GFLOPs per face).
        seed: Weight seed.

    Returns:
        ``path`` as a string.
    """
    _check_scale(scale, _INSWAPPER, "make_inswapper")
    size = _INSWAPPER[scale]
    g = _Graph(seed)
    e0, e1, e2 = size.encoder
    x = g.op("LeakyRelu", [_reflect_conv(g, "target", 3, e0, 7)], alpha=0.2)
    x = g.op("LeakyRelu", [g.conv(x, e0, e1, stride=2)], alpha=0.2)
    x = g.op("LeakyRelu", [g.conv(x, e1, e2, stride=2)], alpha=0.2)
    for _ in range(size.blocks):
        h = g.op("Relu", [_adain(g, _reflect_conv(g, x, e2, e2, 3), "source", e2, 32)])
        h = _adain(g, _reflect_conv(g, h, e2, e2, 3, gain=0.5), "source", e2, 32)
        x = g.op("Add", [x, h])
    up_scales = g.const(np.array([1, 1, 2, 2], np.float32), "up_scales")
    roi = g.const(np.zeros(0, np.float32), "up_roi")
    cin = e2
    for c in size.decoder:
        x = g.op(
            "Resize",
            [x, roi, up_scales],
            mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        )
        x = g.op("LeakyRelu", [g.bn(g.conv(x, cin, c, bias=False), c)], alpha=0.2)
        cin = c
    x = g.op("Tanh", [_reflect_conv(g, x, cin, 3, 7, gain=0.5)])
    x = g.op("Add", [x, g.const(np.array(1.0, np.float32))])
    g.nodes.append(
        helper.make_node(
            "Div", [x, g.const(np.array(2.0, np.float32))], ["output"], name="Div_output"
        )
    )
    g.const(g.randn(512, 512, std=1 / math.sqrt(512)), "emap")
    model = g.model(
        [_value("target", [1, 3, 128, 128]), _value("source", [1, 512])],
        [_value("output", [1, 3, 128, 128])],
        "inswapper",
    )
    return _save(model, path)


# --------------------------------------------------------------------------------------------
# FLOPs


def count_flops(
    path: PathLike | onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]
) -> float:
    """FLOPs of one run: 2 x the multiply-adds of Conv, ConvTranspose, Gemm and MatMul.

    Args:
        path: The ``.onnx`` file (or a ModelProto).
        input_shapes: Concrete shape of every graph input, by name.

    Returns:
        The FLOP count.

    Raises:
        ValueError: An input shape is missing or a counted node's shapes cannot be inferred.
    """
    model = onnx.ModelProto()
    model.CopyFrom(path if isinstance(path, onnx.ModelProto) else onnx.load(os.fspath(path)))
    for tensor in model.graph.initializer:
        if tensor.ByteSize() > 1024:  # shape inference needs dims only
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.DEFAULT
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in inits:
            continue
        if value.name not in input_shapes:
            raise ValueError(f"count_flops needs the shape of input {value.name!r}")
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for d in input_shapes[value.name]:
            dims.add().dim_value = int(d)
    for value in model.graph.output:
        value.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int]] = dict(inits)
    for value in (
        list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    ):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]

    def shape(name: str, node: onnx.NodeProto) -> list[int]:
        if name not in shapes:
            raise ValueError(
                f"count_flops: cannot infer the shape of {name!r} (node {node.name!r})"
            )
        return shapes[name]

    flops = 0
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            flops += (
                2
                * math.prod(shape(node.output[0], node))
                * math.prod(shape(node.input[1], node)[1:])
            )
        elif node.op_type == "ConvTranspose":
            w = shape(node.input[1], node)
            flops += 2 * math.prod(shape(node.input[0], node)) * math.prod(w[1:])
        elif node.op_type == "Gemm":
            a = shape(node.input[0], node)
            k = a[0] if any(at.name == "transA" and at.i for at in node.attribute) else a[1]
            flops += 2 * math.prod(shape(node.output[0], node)) * k
        elif node.op_type == "MatMul":
            flops += 2 * math.prod(shape(node.output[0], node)) * shape(node.input[0], node)[-1]
    return float(flops)
