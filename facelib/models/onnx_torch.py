"""Run an ONNX graph as a ``torch.nn.Module``, eagerly, node by node.

This is a focused importer for the graphs the face-analysis stages use (insightface's SCRFD
detectors, 2d106det / 1k3d68 landmarkers, ArcFace recognisers and the inswapper_128 swapper), not
a general converter: every operator is one small function in :data:`OPS`, and a graph that uses
anything else is refused at load time with :class:`UnsupportedOperatorError`.

How values live:

* Initializers (and ``Constant`` nodes, and nodes whose inputs are all constant, which are folded
  at load time) that feed tensor computations become **buffers**, so ``.to(device)``, ``.half()``
  and ``.to(torch.bfloat16)`` work as on any module. Constants that are only read as parameters
  (a Reshape target, Slice bounds, Resize scales, Pad amounts, axes ...) are kept as host numpy
  arrays and never touch the device.
* Shape arithmetic runs on the host: ``Shape`` returns a CPU int64 tensor, and every node whose
  inputs are all such host values or constants runs on the CPU in float32/int64, whatever the
  module's device and dtype. Reading a target shape therefore never synchronises a GPU. A host
  value used as data by a device node (not as a parameter) is copied to the device, floats in the
  working dtype. Integer ``ConstantOfShape`` results count as host values, float ones as data.
* The working float dtype is the current dtype of the graph's float32 initializers (float32 unless
  the module was cast). Graph inputs declared float are cast to it, and ``Cast(to=FLOAT)`` and
  float ``ConstantOfShape`` on device produce it, so a ``.half()`` module stays half throughout.
* Intermediate tensors are released as soon as their last consumer has run.
* ``Conv -> BatchNormalization`` pairs are folded into one Conv at load time (``fold_batchnorm``;
  1-7 % faster on CPU for the generated model families).

Batch rule (graphs exported with a fixed batch of 1, like inswapper_128): let ``B`` be the leading
dim of the first graph input as passed to :meth:`OnnxModule.forward`. The rule is active only when
``B != 1`` and the graph declares that input's leading dim as the fixed value ``1``. Then, for a
``Reshape``, ``Expand`` or ``ConstantOfShape`` (and ``Resize`` ``sizes``) whose target shape is a
constant (an initializer, a ``Constant`` node or folded from them) with at least two entries and a
leading entry of ``1``:

* ``Reshape``: the leading ``1`` becomes ``B`` when the data's leading dim is ``B`` and the element
  count still fits (``(1, 2C, 1, 1)`` on a ``(B, 2C)`` tensor gives ``(B, 2C, 1, 1)``).
* ``Expand``: the leading ``1`` becomes ``B`` when the data's leading dim is ``1`` or ``B`` or the
  data has fewer dims than the target.
* ``ConstantOfShape``: the leading ``1`` becomes ``B``.
* ``Resize`` with constant ``sizes``: a leading ``1`` becomes ``B`` when the data's leading dim
  is ``B``.

Targets computed at run time (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``) already carry
the real batch and are never touched; nor are targets such as ``(-1, 1)`` that merge the batch
into rows (SCRFD heads), which is the exported graph's own semantics.

Example:
    >>> module = load_onnx("w600k_r50.onnx")  # doctest: +SKIP
    >>> (embedding,) = module(torch.zeros(4, 3, 112, 112))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

__all__ = [
    "OPS",
    "OnnxModule",
    "UnsupportedOperatorError",
    "load_model_proto",
    "load_onnx",
]

ORT_HINT = "use the onnxruntime engine (models.engine: onnxruntime)"

Value = torch.Tensor | np.ndarray | None
"""What an operator function receives: a tensor, a host numpy array for a constant parameter
input (see :class:`OpSpec`), or ``None`` for an omitted optional input."""


class UnsupportedOperatorError(ValueError):
    """The graph uses operators (or operator variants) this importer does not implement.

    Attributes:
        operators: Unsupported op type (with the variant, e.g. ``Resize(mode=cubic)``) -> the
            name of one node that uses it.
    """

    def __init__(self, operators: dict[str, str]) -> None:
        self.operators = dict(operators)
        listing = ", ".join(f"{op} (e.g. node {name!r})" for op, name in self.operators.items())
        super().__init__(
            f"the torch engine does not support these ONNX operators: {listing}; {ORT_HINT}"
        )


# --------------------------------------------------------------------------------------------
# Loading


def load_model_proto(model: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    """Parse an ONNX file (external data included) or pass a ModelProto through.

    Args:
        model: Path to an ``.onnx`` file, or an already loaded ModelProto.

    Returns:
        The ModelProto.

    Raises:
        FileNotFoundError: The path does not exist.
        ValueError: The file is not a valid ONNX model.
    """
    if isinstance(model, onnx.ModelProto):
        return model
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ONNX model at {path}")
    try:
        proto = onnx.load(path)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises several others
        raise ValueError(f"{path} is not a valid ONNX model: {exc}") from exc
    if not proto.graph.node or not proto.graph.output:
        raise ValueError(f"{path} is not a valid ONNX model: it has no graph nodes or outputs")
    return proto


def load_onnx(
    model: str | os.PathLike[str] | onnx.ModelProto, *, fold_batchnorm: bool = True
) -> OnnxModule:
    """Load an ONNX model as an :class:`OnnxModule` on the CPU in float32.

    Args:
        model: Path to an ``.onnx`` file, or a ModelProto.
        fold_batchnorm: Fold inference BatchNormalization into the Conv that feeds it.

    Returns:
        The module; move it with ``.to(device)`` and cast it with ``.half()`` as usual.

    Raises:
        ValueError: The file is not a valid ONNX model.
        UnsupportedOperatorError: The graph uses operators this importer does not implement.
    """
    return OnnxModule(load_model_proto(model), fold_batchnorm=fold_batchnorm)


# --------------------------------------------------------------------------------------------
# Run-time context and small helpers


@dataclass(frozen=True, slots=True)
class _Ctx:
    """What operator functions may need besides their inputs.

    Attributes:
        opset: The graph's default-domain opset.
        float_dtype: Dtype that float values are computed in.
        device: Device that new tensors are created on.
        batch: ``B`` while the batch rule is active (see the module docstring), else ``None``.
    """

    opset: int
    float_dtype: torch.dtype
    device: torch.device
    batch: int | None


_TORCH_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.BOOL: torch.bool,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
}


def _to_torch(array: np.ndarray) -> torch.Tensor:
    """Copy a numpy array (bfloat16 included) into a new CPU tensor."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(np.array(array).view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


def _ints(value: torch.Tensor | np.ndarray | Sequence[int]) -> list[int]:
    """Flatten a host parameter (tensor, array or list) into Python ints."""
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in np.asarray(value).reshape(-1).tolist()]


def _floats(value: torch.Tensor | np.ndarray | Sequence[float]) -> list[float]:
    """Flatten a host parameter into Python floats."""
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.reshape(-1).tolist()]
    return [float(v) for v in np.asarray(value).reshape(-1).tolist()]


def _given(value: Value) -> bool:
    """True when an optional input is present and not an empty tensor."""
    return value is not None and int(np.prod(value.shape)) > 0


def _index(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host index array as a tensor on ``device`` (copied without waiting for the device)."""
    return torch.from_numpy(array).to(device, non_blocking=True)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _torch_pads(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX per-axis begin/end pads -> ``F.pad``'s last-axis-first list."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [int(b), int(e)]
    return out


def _fits(shape: Sequence[int], numel: int) -> bool:
    """Whether ``reshape(shape)`` can hold ``numel`` elements (``-1`` allowed once)."""
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        return known > 0 and numel % known == 0
    return known == numel


def _batch_target(ctx: _Ctx, shape: Value, dims: list[int]) -> bool:
    """Whether the batch rule may replace the leading 1 of a constant target shape."""
    return (
        ctx.batch is not None and isinstance(shape, np.ndarray) and len(dims) >= 2 and dims[0] == 1
    )


# --------------------------------------------------------------------------------------------
# Operators: each takes (ctx, attrs, *inputs) and returns a tensor or a tuple of tensors.

Attrs = dict[str, Any]


def _spatial_pads(
    a: Attrs,
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[list[int], list[int]]:
    """Begin and end pads of a Conv/Pool from ``pads`` or ``auto_pad``."""
    nd = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        return begin, end
    if auto == "VALID":
        return [0] * nd, [0] * nd
    pads = list(a.get("pads", [0] * (2 * nd)))
    return pads[:nd], pads[nd:]


def _conv(ctx: _Ctx, a: Attrs, x: torch.Tensor, w: torch.Tensor, b: Value = None) -> torch.Tensor:
    nd = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = a.get("strides", [1] * nd)
    dilations = a.get("dilations", [1] * nd)
    begin, end = _spatial_pads(a, x.shape[2:], kernel, strides, dilations)
    padding: list[int] | int = begin
    if begin != end:
        x, padding = F.pad(x, _torch_pads(begin, end)), 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return conv(x, w, b, strides, padding, dilations, a.get("group", 1))


def _conv_transpose(
    ctx: _Ctx, a: Attrs, x: torch.Tensor, w: torch.Tensor, b: Value = None
) -> torch.Tensor:
    nd = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = a.get("strides", [1] * nd)
    dilations = a.get("dilations", [1] * nd)
    out_pad = list(a.get("output_padding", [0] * nd))
    groups = a.get("group", 1)
    full = [
        (i - 1) * s + (k - 1) * d + 1 + p
        for i, s, k, d, p in zip(x.shape[2:], strides, kernel, dilations, out_pad)
    ]
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        if "output_shape" in a:
            target = list(a["output_shape"])[-nd:]
        else:
            target = [i * s for i, s in zip(x.shape[2:], strides)]
        total = [f - t for f, t in zip(full, target)]
        if auto == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        end = [t - bg for t, bg in zip(total, begin)]
    elif auto == "VALID":
        begin, end = [0] * nd, [0] * nd
    else:
        pads = list(a.get("pads", [0] * (2 * nd)))
        begin, end = pads[:nd], pads[nd:]
    convt = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    if begin == end and all(0 <= p < max(s, d) for p, s, d in zip(out_pad, strides, dilations)):
        return convt(x, w, b, strides, begin, out_pad, groups, dilations)
    y = convt(x, w, None, strides, 0, 0, groups, dilations)
    y = F.pad(y, _torch_pads([0] * nd, out_pad))
    y = y[
        (slice(None), slice(None)) + tuple(slice(bg, f - e) for bg, e, f in zip(begin, end, full))
    ]
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * nd))
    return y


def _batch_norm(
    ctx: _Ctx,
    a: Attrs,
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
) -> torch.Tensor:
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def _instance_norm(
    ctx: _Ctx, a: Attrs, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=a.get("epsilon", 1e-5))


def _prelu(ctx: _Ctx, a: Attrs, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    per_channel = (
        x.dim() >= 2
        and slope.dim() == x.dim() - 1
        and slope.shape[0] == x.shape[1]
        and all(s == 1 for s in slope.shape[1:])
    )
    if slope.numel() == 1 or per_channel:
        return F.prelu(x, slope.reshape(-1))
    return torch.where(x >= 0, x, x * slope)


def _softmax(ctx: _Ctx, a: Attrs, x: torch.Tensor) -> torch.Tensor:
    if ctx.opset >= 13:
        return torch.softmax(x, a.get("axis", -1))
    axis = _axis(a.get("axis", 1), x.dim())  # opset < 13 coerces the input to 2-D
    rows = math.prod(x.shape[:axis])
    return torch.softmax(x.reshape(rows, -1), 1).reshape(x.shape)


def _clip(ctx: _Ctx, a: Attrs, x: torch.Tensor, lo: Value = None, hi: Value = None) -> torch.Tensor:
    low = a.get("min", _floats(lo)[0] if _given(lo) else None)
    high = a.get("max", _floats(hi)[0] if _given(hi) else None)
    if low is None and high is None:
        return x
    return torch.clamp(x, low, high)


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def op(ctx: _Ctx, a: Attrs, x: torch.Tensor) -> torch.Tensor:
        return fn(x)

    return op


def _binary(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[..., torch.Tensor]:
    def op(ctx: _Ctx, a: Attrs, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fn(x, y)

    return op


def _variadic(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[..., torch.Tensor]:
    def op(ctx: _Ctx, a: Attrs, *xs: torch.Tensor) -> torch.Tensor:
        return reduce(fn, xs)

    return op


def _div(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point() or y.is_floating_point():
        return x / y
    return torch.div(x, y, rounding_mode="trunc")  # ONNX integer division truncates


def _pow(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.pow(x, y).to(x.dtype)  # the result has the base's type


def _gemm(ctx: _Ctx, a: Attrs, x: torch.Tensor, w: torch.Tensor, c: Value = None) -> torch.Tensor:
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if a.get("transA", 0):
        x = x.t()
    trans_b = a.get("transB", 0)
    if trans_b and alpha == 1.0 and (c is None or (beta == 1.0 and c.dim() == 1)):
        return F.linear(x, w, c)
    y = x @ (w.t() if trans_b else w)
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def _flatten(ctx: _Ctx, a: Attrs, x: torch.Tensor) -> torch.Tensor:
    axis = _axis(a.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _reshape(
    ctx: _Ctx, a: Attrs, x: torch.Tensor, shape: torch.Tensor | np.ndarray
) -> torch.Tensor:
    dims = _ints(shape)
    if not a.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if _batch_target(ctx, shape, dims) and x.dim() >= 1 and x.shape[0] == ctx.batch:
        candidate = [ctx.batch, *dims[1:]]
        if _fits(candidate, x.numel()):
            dims = candidate
    return x.reshape(dims)


def _transpose(ctx: _Ctx, a: Attrs, x: torch.Tensor) -> torch.Tensor:
    return x.permute(a.get("perm", list(range(x.dim()))[::-1]))


def _concat(ctx: _Ctx, a: Attrs, *xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, dim=a["axis"])


def _split(ctx: _Ctx, a: Attrs, x: torch.Tensor, split: Value = None) -> tuple[torch.Tensor, ...]:
    axis = _axis(a.get("axis", 0), x.dim())
    if "split" in a:
        sizes = list(a["split"])
    elif _given(split):
        sizes = _ints(split)
    else:
        parts = a.get("num_outputs", a["_num_outputs"])
        chunk = -(-x.shape[axis] // parts)
        sizes = [chunk] * (parts - 1) + [x.shape[axis] - chunk * (parts - 1)]
    return tuple(torch.split(x, sizes, dim=axis))


def _slice(
    ctx: _Ctx,
    a: Attrs,
    x: torch.Tensor,
    starts: Value = None,
    ends: Value = None,
    axes: Value = None,
    steps: Value = None,
) -> torch.Tensor:
    if "starts" in a:  # opset < 10: attributes
        start_list, end_list = list(a["starts"]), list(a["ends"])
        axis_list = list(a.get("axes", range(len(start_list))))
        step_list = [1] * len(start_list)
    else:
        start_list, end_list = _ints(starts), _ints(ends)
        axis_list = _ints(axes) if _given(axes) else list(range(len(start_list)))
        step_list = _ints(steps) if _given(steps) else [1] * len(start_list)
    index: list[slice] = [slice(None)] * x.dim()
    reversed_axes: list[tuple[int, torch.Tensor]] = []
    for start, end, axis, step in zip(start_list, end_list, axis_list, step_list):
        axis = _axis(axis, x.dim())
        size = x.shape[axis]
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        if step > 0:
            index[axis] = slice(min(max(start, 0), size), min(max(end, 0), size), step)
        else:
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
            reversed_axes.append((axis, torch.arange(start, end, step, device=x.device)))
    y = x[tuple(index)]
    for axis, idx in reversed_axes:
        y = y.index_select(axis, idx)
    return y


def _squeeze(ctx: _Ctx, a: Attrs, x: torch.Tensor, axes: Value = None) -> torch.Tensor:
    if "axes" in a:
        dims = list(a["axes"])
    elif _given(axes):
        dims = _ints(axes)
    else:
        return x.squeeze()
    return x.squeeze(tuple(_axis(d, x.dim()) for d in dims))


def _unsqueeze(ctx: _Ctx, a: Attrs, x: torch.Tensor, axes: Value = None) -> torch.Tensor:
    dims = list(a["axes"]) if "axes" in a else _ints(axes)
    rank = x.dim() + len(dims)
    for d in sorted(_axis(d, rank) for d in dims):
        x = x.unsqueeze(d)
    return x


def _gather(ctx: _Ctx, a: Attrs, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    axis = _axis(a.get("axis", 0), x.dim())
    idx = indices.to(device=x.device, dtype=torch.int64, non_blocking=True)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


def _shape(ctx: _Ctx, a: Attrs, x: torch.Tensor) -> torch.Tensor:
    dims = list(x.shape)[a.get("start", 0) : a.get("end")]
    return torch.tensor(dims, dtype=torch.int64)


def _constant_of_shape(ctx: _Ctx, a: Attrs, shape: torch.Tensor | np.ndarray) -> torch.Tensor:
    dims = _ints(shape)
    if _batch_target(ctx, shape, dims):
        dims[0] = ctx.batch  # type: ignore[assignment]
    value = a.get("value", np.zeros(1, np.float32))
    dtype = _to_torch(value).dtype
    if dtype.is_floating_point:
        return torch.full(
            dims, float(value.reshape(-1)[0]), dtype=ctx.float_dtype, device=ctx.device
        )
    # Integer/bool constants are shape-like (masks for Expand/Where patterns): keep them on host.
    return torch.full(dims, value.reshape(-1)[0].item(), dtype=dtype)


def _cast(ctx: _Ctx, a: Attrs, x: torch.Tensor) -> torch.Tensor:
    to = a["to"]
    return x.to(ctx.float_dtype if to == onnx.TensorProto.FLOAT else _TORCH_DTYPES[to])


def _identity(ctx: _Ctx, a: Attrs, x: torch.Tensor, *_: Value) -> torch.Tensor:
    return x


def _dropout(
    ctx: _Ctx, a: Attrs, x: torch.Tensor, *_: Value
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    if a["_num_outputs"] > 1:
        return x, torch.ones(x.shape, dtype=torch.bool, device=x.device)
    return x


def _coordinates(mode: str, out_size: int, in_size: int, scale: np.float32) -> np.ndarray:
    """Source coordinate of every output index, in float32 as onnxruntime computes it."""
    x = np.arange(out_size, dtype=np.float32)
    half = np.float32(0.5)
    if mode == "half_pixel":
        return (x + half) / scale - half
    if mode == "pytorch_half_pixel":
        return (x + half) / scale - half if out_size > 1 else np.zeros(out_size, np.float32)
    if mode == "align_corners":
        if out_size == 1:
            return np.zeros(1, np.float32)
        return x * np.float32(in_size - 1) / np.float32(out_size - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + half) / scale
    raise ValueError(f"Resize coordinate_transformation_mode {mode!r} is not supported")


def _nearest_index(coords: np.ndarray, rounding: str, in_size: int, downsample: bool) -> np.ndarray:
    """Round source coordinates to source indices per ``nearest_mode``."""
    if rounding == "round_prefer_floor":
        idx = np.ceil(coords - np.float32(0.5))
    elif rounding == "round_prefer_ceil":
        idx = np.floor(coords + np.float32(0.5))
    elif rounding == "floor":
        idx = np.floor(coords)
    elif rounding == "ceil":
        idx = np.ceil(coords)
    elif rounding == "simple":  # Resize-10 / Upsample: truncate, but ceil when downsampling
        idx = np.ceil(coords) if downsample else np.trunc(coords)
    else:
        raise ValueError(f"Resize nearest_mode {rounding!r} is not supported")
    return np.clip(idx, 0, in_size - 1).astype(np.int64)


def _interpolate(
    x: torch.Tensor,
    out_sizes: list[int],
    scales: list[np.float32],
    *,
    mode: str,
    coordinate_mode: str,
    rounding: str,
    from_sizes: bool,
) -> torch.Tensor:
    """Resize every axis of ``x`` to ``out_sizes`` with ONNX Resize semantics.

    Args:
        x: The data.
        out_sizes: Output size of every axis.
        scales: Per-axis scale used by the coordinate transform.
        mode: ``nearest`` or ``linear``.
        coordinate_mode: ONNX ``coordinate_transformation_mode``.
        rounding: ONNX ``nearest_mode`` (or ``simple`` for Resize-10 / Upsample).
        from_sizes: The output sizes were given (scales are ``out / in``).

    Returns:
        The resized tensor. Common cases use ``F.interpolate``; the rest gather per axis.
    """
    in_sizes = list(x.shape)
    spatial_only = out_sizes[:2] == in_sizes[:2] and x.dim() >= 3
    if mode == "nearest" and spatial_only:
        factors = [o // i if i and o % i == 0 else 0 for o, i in zip(out_sizes[2:], in_sizes[2:])]
        pow2 = all(f > 0 and f & (f - 1) == 0 for f in factors)
        if pow2:
            matches = all(
                np.array_equal(
                    _nearest_index(_coordinates(coordinate_mode, o, i, s), rounding, i, False),
                    np.arange(o) // f,
                )
                for o, i, s, f in zip(out_sizes[2:], in_sizes[2:], scales[2:], factors)
            )
            if matches:
                return F.interpolate(x, size=out_sizes[2:], mode="nearest")
    if mode == "linear" and spatial_only and x.dim() == 4:
        if coordinate_mode == "align_corners":
            return F.interpolate(x, size=out_sizes[2:], mode="bilinear", align_corners=True)
        torch_half_pixel = coordinate_mode == "half_pixel" or (
            coordinate_mode == "pytorch_half_pixel" and min(out_sizes[2:]) > 1
        )
        if torch_half_pixel and from_sizes:
            return F.interpolate(x, size=out_sizes[2:], mode="bilinear", align_corners=False)
        torch_sizes = [math.floor(i * float(s)) for i, s in zip(in_sizes[2:], scales[2:])]
        if torch_half_pixel and torch_sizes == out_sizes[2:]:
            return F.interpolate(
                x,
                scale_factor=[float(s) for s in scales[2:]],
                mode="bilinear",
                align_corners=False,
                recompute_scale_factor=False,
            )
    for axis, (out, size, scale) in enumerate(zip(out_sizes, in_sizes, scales)):
        if out == size and scale == 1 and coordinate_mode != "align_corners":
            continue
        coords = _coordinates(coordinate_mode, out, size, scale)
        if mode == "nearest":
            idx = _nearest_index(coords, rounding, size, bool(scale < 1))
            x = x.index_select(axis, _index(idx, x.device))
            continue
        coords = np.clip(coords, 0, size - 1)
        low = np.minimum(coords.astype(np.int64), size - 1)
        high = np.minimum(low + 1, size - 1)
        view = [1] * x.dim()
        view[axis] = out
        weight = torch.from_numpy(coords - low).to(x.device, x.dtype, non_blocking=True)
        weight = weight.reshape(view)
        x0 = x.index_select(axis, _index(low, x.device))
        x1 = x.index_select(axis, _index(high, x.device))
        x = x0 + (x1 - x0) * weight
    return x


def _resize(
    ctx: _Ctx,
    a: Attrs,
    x: torch.Tensor,
    roi: Value = None,
    scales: Value = None,
    sizes: Value = None,
) -> torch.Tensor:
    if ctx.opset < 11:  # Resize-10: (X, scales), asymmetric coordinates
        scales, coordinate_mode, rounding = roi, "asymmetric", "simple"
    else:
        coordinate_mode = a.get("coordinate_transformation_mode", "half_pixel")
        rounding = a.get("nearest_mode", "round_prefer_floor")
    in_sizes = list(x.shape)
    if _given(sizes):
        out_sizes = _ints(sizes)  # type: ignore[arg-type]
        if _batch_target(ctx, sizes, out_sizes) and x.shape[0] == ctx.batch:
            out_sizes[0] = x.shape[0]
        factors = [np.float32(o) / np.float32(i) for o, i in zip(out_sizes, in_sizes)]
    else:
        factors = [np.float32(s) for s in _floats(scales)]  # type: ignore[arg-type]
        out_sizes = [int(f * np.float32(i)) for f, i in zip(factors, in_sizes)]
    mode = "linear" if a.get("mode", "nearest") in ("linear", "bilinear") else "nearest"
    return _interpolate(
        x,
        out_sizes,
        factors,
        mode=mode,
        coordinate_mode=coordinate_mode,
        rounding=rounding,
        from_sizes=_given(sizes),
    )


def _upsample(ctx: _Ctx, a: Attrs, x: torch.Tensor, scales: Value = None) -> torch.Tensor:
    values = a["scales"] if "scales" in a else _floats(scales)  # type: ignore[arg-type]
    factors = [np.float32(s) for s in values]
    out_sizes = [int(f * np.float32(i)) for f, i in zip(factors, x.shape)]
    mode = "linear" if a.get("mode", "nearest") in ("linear", "bilinear") else "nearest"
    return _interpolate(
        x,
        out_sizes,
        factors,
        mode=mode,
        coordinate_mode="asymmetric",
        rounding="simple",
        from_sizes=False,
    )


def _pool_geometry(
    a: Attrs, x: torch.Tensor
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """Kernel, strides, dilations and begin/end pads of a pooling node."""
    kernel = list(a["kernel_shape"])
    nd = len(kernel)
    strides = list(a.get("strides", [1] * nd))
    dilations = list(a.get("dilations", [1] * nd))
    begin, end = _spatial_pads(a, x.shape[2:], kernel, strides, dilations)
    return kernel, strides, dilations, begin, end


def _max_pool(ctx: _Ctx, a: Attrs, x: torch.Tensor) -> torch.Tensor:
    kernel, strides, dilations, begin, end = _pool_geometry(a, x)
    padding: list[int] | int = begin
    if begin != end or any(p > k // 2 for p, k in zip(begin, kernel)):
        x, padding = F.pad(x, _torch_pads(begin, end), value=-math.inf), 0
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(kernel) - 1]
    return pool(x, kernel, strides, padding, dilations, bool(a.get("ceil_mode", 0)))


def _average_pool(ctx: _Ctx, a: Attrs, x: torch.Tensor) -> torch.Tensor:
    kernel, strides, _, begin, end = _pool_geometry(a, x)
    ceil_mode = bool(a.get("ceil_mode", 0))
    include_pad = bool(a.get("count_include_pad", 0))
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(kernel) - 1]
    if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel)):
        return pool(x, kernel, strides, begin, ceil_mode, include_pad)
    pads = _torch_pads(begin, end)
    total = pool(F.pad(x, pads), kernel, strides, 0, ceil_mode, True)
    if include_pad:
        return total
    ones = F.pad(torch.ones_like(x[:1, :1]), pads)
    return total / pool(ones, kernel, strides, 0, ceil_mode, True)


def _global_average_pool(ctx: _Ctx, a: Attrs, x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _reduce(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def op(ctx: _Ctx, a: Attrs, x: torch.Tensor, axes: Value = None) -> torch.Tensor:
        if "axes" in a:
            dims = list(a["axes"])
        elif _given(axes):
            dims = _ints(axes)
        elif a.get("noop_with_empty_axes", 0):
            return x
        else:
            dims = list(range(x.dim()))
        return fn(x, dim=tuple(_axis(d, x.dim()) for d in dims), keepdim=bool(a.get("keepdims", 1)))

    return op


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def _pad(
    ctx: _Ctx,
    a: Attrs,
    x: torch.Tensor,
    pads: Value = None,
    value: Value = None,
    axes: Value = None,
) -> torch.Tensor:
    amounts = list(a["pads"]) if "pads" in a else _ints(pads)  # type: ignore[arg-type]
    fill = a.get("value", _floats(value)[0] if _given(value) else 0.0)
    rank = x.dim()
    axis_list = [_axis(d, rank) for d in _ints(axes)] if _given(axes) else list(range(rank))
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axis_list):
        begin[axis], end[axis] = amounts[i], amounts[i + len(axis_list)]
    mode = _PAD_MODES[a.get("mode", "constant")]
    if mode == "constant":
        return F.pad(x, _torch_pads(begin, end), value=fill)
    padded = [i for i in range(rank) if begin[i] or end[i]]
    if not padded:
        return x
    # F.pad pads the trailing k axes of a (k+1)- or (k+2)-D input in these modes, k <= 3.
    k = max(rank - padded[0], rank - 2)
    if not 1 <= k <= min(3, rank - 1):
        raise NotImplementedError(f"Pad mode {a.get('mode')} on axes {padded} of a {rank}-D tensor")
    return F.pad(x, _torch_pads(begin[rank - k :], end[rank - k :]), mode=mode)


def _expand(ctx: _Ctx, a: Attrs, x: torch.Tensor, shape: torch.Tensor | np.ndarray) -> torch.Tensor:
    dims = _ints(shape)
    if _batch_target(ctx, shape, dims) and (x.dim() < len(dims) or x.shape[0] in (1, ctx.batch)):
        dims[0] = ctx.batch  # type: ignore[assignment]
    return x.expand(torch.broadcast_shapes(x.shape, tuple(dims)))


def _where(
    ctx: _Ctx, a: Attrs, cond: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return torch.where(cond.bool(), x, y)


@dataclass(frozen=True)
class OpSpec:
    """How one ONNX operator runs.

    Attributes:
        fn: ``fn(ctx, attrs, *inputs)`` returning a tensor or a tuple of tensors.
        host_inputs: Input positions read as parameters (shapes, axes, bounds, scales): when such
            an input is a constant, the function receives it as a host numpy array, which also
            tells the batch rule that a target shape is constant.
        check: Optional ``check(attrs, node) -> label or None`` naming an unsupported variant.
    """

    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]
    host_inputs: frozenset[int] = frozenset()
    check: Callable[[Attrs, onnx.NodeProto], str | None] | None = None


def _check_batch_norm(a: Attrs, node: onnx.NodeProto) -> str | None:
    trained = a.get("training_mode", 0) or sum(1 for o in node.output if o) > 1
    return "BatchNormalization(training_mode=1)" if trained else None


def _check_resize(a: Attrs, node: onnx.NodeProto) -> str | None:
    mode = a.get("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        return f"{node.op_type}(mode={mode})"
    coordinate_mode = a.get("coordinate_transformation_mode", "half_pixel")
    if coordinate_mode not in (
        "half_pixel",
        "pytorch_half_pixel",
        "align_corners",
        "asymmetric",
        "tf_half_pixel_for_nn",
    ):
        return f"{node.op_type}(coordinate_transformation_mode={coordinate_mode})"
    rounding = a.get("nearest_mode", "round_prefer_floor")
    if rounding not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        return f"{node.op_type}(nearest_mode={rounding})"
    if (
        a.get("antialias", 0)
        or "axes" in a
        or a.get("keep_aspect_ratio_policy", "stretch") != "stretch"
    ):
        return f"{node.op_type}(antialias/axes/keep_aspect_ratio_policy)"
    return None


def _check_max_pool(a: Attrs, node: onnx.NodeProto) -> str | None:
    return "MaxPool(Indices output)" if len([o for o in node.output if o]) > 1 else None


def _check_pad(a: Attrs, node: onnx.NodeProto) -> str | None:
    mode = a.get("mode", "constant")
    return None if mode in _PAD_MODES else f"Pad(mode={mode})"


def _check_cast(a: Attrs, node: onnx.NodeProto) -> str | None:
    to = a.get("to")
    return None if to in _TORCH_DTYPES else f"Cast(to={onnx.helper.tensor_dtype_to_string(to)})"


OPS: dict[str, OpSpec] = {
    "Conv": OpSpec(_conv),
    "ConvTranspose": OpSpec(_conv_transpose),
    "BatchNormalization": OpSpec(_batch_norm, check=_check_batch_norm),
    "InstanceNormalization": OpSpec(_instance_norm),
    "PRelu": OpSpec(_prelu),
    "Relu": OpSpec(_unary(torch.relu)),
    "LeakyRelu": OpSpec(lambda ctx, a, x: F.leaky_relu(x, a.get("alpha", 0.01))),
    "Sigmoid": OpSpec(_unary(torch.sigmoid)),
    "Tanh": OpSpec(_unary(torch.tanh)),
    "HardSigmoid": OpSpec(
        lambda ctx, a, x: torch.clamp(x * a.get("alpha", 0.2) + a.get("beta", 0.5), 0.0, 1.0)
    ),
    "Softmax": OpSpec(_softmax),
    "Clip": OpSpec(_clip, frozenset({1, 2})),
    "Add": OpSpec(_binary(torch.add)),
    "Sub": OpSpec(_binary(torch.sub)),
    "Mul": OpSpec(_binary(torch.mul)),
    "Div": OpSpec(_binary(_div)),
    "Pow": OpSpec(_binary(_pow)),
    "Sqrt": OpSpec(_unary(torch.sqrt)),
    "Neg": OpSpec(_unary(torch.neg)),
    "Exp": OpSpec(_unary(torch.exp)),
    "Abs": OpSpec(_unary(torch.abs)),
    "Erf": OpSpec(_unary(torch.erf)),
    "Floor": OpSpec(_unary(torch.floor)),
    "Ceil": OpSpec(_unary(torch.ceil)),
    "Max": OpSpec(_variadic(torch.maximum)),
    "Min": OpSpec(_variadic(torch.minimum)),
    "Equal": OpSpec(_binary(torch.eq)),
    "Greater": OpSpec(_binary(torch.gt)),
    "Less": OpSpec(_binary(torch.lt)),
    "Where": OpSpec(_where),
    "MatMul": OpSpec(_binary(torch.matmul)),
    "Gemm": OpSpec(_gemm),
    "Flatten": OpSpec(_flatten),
    "Reshape": OpSpec(_reshape, frozenset({1})),
    "Transpose": OpSpec(_transpose),
    "Concat": OpSpec(_concat),
    "Split": OpSpec(_split, frozenset({1})),
    "Slice": OpSpec(_slice, frozenset({1, 2, 3, 4})),
    "Squeeze": OpSpec(_squeeze, frozenset({1})),
    "Unsqueeze": OpSpec(_unsqueeze, frozenset({1})),
    "Gather": OpSpec(_gather),
    "Shape": OpSpec(_shape),
    "ConstantOfShape": OpSpec(_constant_of_shape, frozenset({0})),
    "Cast": OpSpec(_cast, check=_check_cast),
    "Identity": OpSpec(_identity),
    "Dropout": OpSpec(_dropout),
    "Resize": OpSpec(_resize, frozenset({1, 2, 3}), check=_check_resize),
    "Upsample": OpSpec(_upsample, frozenset({1}), check=_check_resize),
    "MaxPool": OpSpec(_max_pool, check=_check_max_pool),
    "AveragePool": OpSpec(_average_pool),
    "GlobalAveragePool": OpSpec(_global_average_pool),
    "ReduceMean": OpSpec(_reduce(torch.mean), frozenset({1})),
    "ReduceSum": OpSpec(_reduce(torch.sum), frozenset({1})),
    "Pad": OpSpec(_pad, frozenset({1, 2, 3}), check=_check_pad),
    "Expand": OpSpec(_expand, frozenset({1})),
}
"""Supported default-domain operators (``Constant`` is handled at load time)."""

# Never folded at load time: their constant target shapes are subject to the batch rule.
_NO_FOLD = frozenset({"Reshape", "Expand", "ConstantOfShape", "Resize"})

_HOST_CTX_DEVICE = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# The module


def _attributes(node: onnx.NodeProto) -> Attrs:
    """Node attributes as Python values (strings decoded, tensors as numpy arrays)."""
    attrs: Attrs = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        attrs[attr.name] = value
    attrs["_num_outputs"] = len(node.output)
    return attrs


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a ``Constant`` node."""
    attrs = _attributes(node)
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    if "value" in attrs:
        return np.asarray(attrs["value"])
    raise UnsupportedOperatorError({"Constant(non-tensor value)": node.name})


def _toposort(nodes: Sequence[onnx.NodeProto], available: Iterable[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced before it is used (stable)."""
    ready = set(available) | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in ready})
            raise ValueError(f"the ONNX graph is not a DAG or lacks values: {missing[:5]}")
        pending = rest
    return ordered


def _fold_batchnorm(
    nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray], keep: set[str]
) -> list[onnx.NodeProto]:
    """Merge ``Conv -> BatchNormalization`` pairs into one Conv with new constant weights.

    Args:
        nodes: Topologically sorted nodes.
        consts: Constant values by name; the folded weights are added to it.
        keep: Value names that must stay observable (graph outputs).

    Returns:
        The node list with each foldable BatchNormalization gone.
    """
    consumers: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producer = {out: node for node in nodes for out in node.output}
    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for node in nodes:
        if node.op_type != "BatchNormalization" or _check_batch_norm(_attributes(node), node):
            continue
        conv = producer.get(node.input[0])
        if (
            conv is None
            or conv.op_type != "Conv"
            or id(conv) in replaced
            or consumers.get(conv.output[0], 0) != 1
            or conv.output[0] in keep
            or not all(i in consts for i in list(conv.input[1:]) + list(node.input[1:]) if i)
            or consts[conv.input[1]].dtype != np.float32
        ):
            continue
        weight = consts[conv.input[1]].astype(np.float64)
        bias = (
            consts[conv.input[2]].astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else 0.0
        )
        scale, shift, mean, var = (consts[i].astype(np.float64) for i in node.input[1:5])
        factor = scale / np.sqrt(var + _attributes(node).get("epsilon", 1e-5))
        stem = f"{conv.name or conv.output[0]}::bnfold"
        consts[stem + ".w"] = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(
            np.float32
        )
        consts[stem + ".b"] = ((bias - mean) * factor + shift).astype(np.float32)
        fused = onnx.NodeProto()
        fused.CopyFrom(conv)
        del fused.input[:]
        fused.input.extend([conv.input[0], stem + ".w", stem + ".b"])
        del fused.output[:]
        fused.output.append(node.output[0])
        replaced[id(conv)] = fused
        dropped.add(id(node))
    return [replaced.get(id(n), n) for n in nodes if id(n) not in dropped]


@dataclass(frozen=True, slots=True)
class _Step:
    """One node ready to run.

    Attributes:
        fn: The operator function.
        attrs: Its attributes.
        refs: Per input: ``(kind, key)`` with kind 0 = run-time value, 1 = buffer, 2 = host
            constant tensor, 3 = host numpy parameter, 4 = omitted, 5 = host value used as data
            by a device step (moved to the device, floats cast to the working dtype).
        outputs: Output value names ('' for unused optional outputs).
        host: Run on the host in float32 (shape arithmetic).
        release: Values to drop once the step ran.
        name: The node's name, for error messages.
    """

    fn: Callable[..., Any]
    attrs: Attrs
    refs: tuple[tuple[int, Any], ...]
    outputs: tuple[str, ...]
    host: bool
    release: tuple[str, ...]
    name: str


class OnnxModule(torch.nn.Module):
    """An ONNX graph run eagerly by torch (see the module docstring for the value model).

    Attributes:
        input_names: Graph inputs that are not initializers, in graph order.
        output_names: Graph outputs, in graph order.
        opset: The default-domain opset the graph was exported with.
    """

    def __init__(self, model: onnx.ModelProto, *, fold_batchnorm: bool = True) -> None:
        """Prepare the graph.

        Args:
            model: The ONNX model.
            fold_batchnorm: Fold inference BatchNormalization into the Conv that feeds it.

        Raises:
            UnsupportedOperatorError: The graph uses operators this importer does not implement.
        """
        super().__init__()
        graph = model.graph
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        _check_supported(graph.node)
        self._host_ctx = _Ctx(self.opset, torch.float32, _HOST_CTX_DEVICE, None)

        consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        graph_inputs = [v for v in graph.input if v.name not in consts]
        self.input_names: list[str] = [v.name for v in graph_inputs]
        self.output_names: list[str] = [v.name for v in graph.output]
        self._float_inputs = {
            v.name for v in graph_inputs if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        }
        first_dims = graph_inputs[0].type.tensor_type.shape.dim if graph_inputs else []
        self._fixed_batch1 = (
            bool(first_dims)
            and first_dims[0].HasField("dim_value")
            and first_dims[0].dim_value == 1
        )

        nodes = _toposort(graph.node, list(consts) + self.input_names)
        nodes = self._fold_constants(nodes, consts)
        if fold_batchnorm:
            nodes = _fold_batchnorm(nodes, consts, set(self.output_names))
        self._build_steps(nodes, consts)

    # ---- load-time passes

    def _fold_constants(
        self, nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray]
    ) -> list[onnx.NodeProto]:
        """Evaluate ``Constant`` nodes and nodes whose inputs are all constants, on the host."""
        ctx = self._host_ctx
        remaining = []
        for node in nodes:
            if node.op_type == "Constant":
                consts[node.output[0]] = _constant_value(node)
                continue
            inputs = [i for i in node.input if i]
            if node.op_type in _NO_FOLD or not all(i in consts for i in inputs):
                remaining.append(node)
                continue
            spec = OPS[node.op_type]
            args: list[Value] = []
            for position, name in enumerate(node.input):
                if not name:
                    args.append(None)
                elif position in spec.host_inputs:
                    args.append(consts[name])
                else:
                    args.append(_to_torch(consts[name]))
            result = spec.fn(ctx, _attributes(node), *args)
            results = (result,) if isinstance(result, torch.Tensor) else result
            for name, value in zip(node.output, results):
                if name:
                    consts[name] = value.contiguous().numpy()
        return remaining

    def _build_steps(self, nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray]) -> None:
        """Turn nodes into steps, register buffers and plan when values are released."""
        last_use: dict[str, int] = {}
        for index, node in enumerate(nodes):
            for name in node.input:
                last_use[name] = index
        keep = set(self.output_names)
        host_values: set[str] = set()
        self._buffer_keys: dict[str, str] = {}
        self._host_tensors: dict[str, torch.Tensor] = {}
        self._probe: str | None = None
        steps = []
        for index, node in enumerate(nodes):
            spec = OPS[node.op_type]
            attrs = _attributes(node)
            present = [i for i in node.input if i]
            host = node.op_type == "Shape" or (
                any(i in host_values for i in present)
                and all(i in host_values or i in consts for i in present)
            )
            if node.op_type == "ConstantOfShape":
                value = attrs.get("value", np.zeros(1, np.float32))
                host = not np.issubdtype(value.dtype, np.floating)
            if host:
                host_values.update(o for o in node.output if o)
            refs: list[tuple[int, Any]] = []
            for position, name in enumerate(node.input):
                if not name:
                    refs.append((4, None))
                elif name in host_values and not host and position not in spec.host_inputs:
                    refs.append((5, name))
                elif name not in consts:
                    refs.append((0, name))
                elif position in spec.host_inputs:
                    refs.append((3, consts[name]))
                elif host:
                    if name not in self._host_tensors:
                        self._host_tensors[name] = _to_torch(consts[name])
                    refs.append((2, name))
                else:
                    refs.append((1, self._buffer(name, consts[name])))
            release = [
                name
                for name in dict.fromkeys(node.input)
                if name and name not in consts and name not in keep and last_use[name] == index
            ]
            release += [o for o in node.output if o and o not in last_use and o not in keep]
            steps.append(
                _Step(
                    spec.fn,
                    attrs,
                    tuple(refs),
                    tuple(node.output),
                    host,
                    tuple(release),
                    node.name or node.op_type,
                )
            )
        self._steps = steps
        self._output_consts = {
            name: self._buffer(name, consts[name]) for name in self.output_names if name in consts
        }

    def _buffer(self, name: str, value: np.ndarray) -> str:
        """Register a constant as a buffer (once) and return its attribute name."""
        if name not in self._buffer_keys:
            key = f"const_{len(self._buffer_keys)}"
            self.register_buffer(key, _to_torch(value))
            self._buffer_keys[name] = key
            if self._probe is None and value.dtype == np.float32:
                self._probe = key
        return self._buffer_keys[name]

    # ---- running

    def _bind(
        self, args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Map positional and named arguments to graph inputs, or raise a clear ValueError."""
        if len(args) > len(self.input_names):
            raise ValueError(
                f"the model takes {len(self.input_names)} inputs {self.input_names}, "
                f"got {len(args)}"
            )
        feeds = dict(zip(self.input_names, args))
        unknown = [k for k in kwargs if k not in self.input_names]
        twice = [k for k in kwargs if k in feeds]
        feeds.update(kwargs)
        missing = [k for k in self.input_names if k not in feeds]
        if unknown or twice or missing:
            raise ValueError(
                f"the model expects inputs {self.input_names}; unknown: {unknown}, "
                f"given twice: {twice}, missing: {missing}"
            )
        return feeds

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> list[torch.Tensor]:
        """Run the graph.

        Args:
            *args: Graph inputs in graph-input order.
            **kwargs: Graph inputs by name.

        Returns:
            The graph outputs, in graph-output order.
        """
        feeds = self._bind(args, kwargs)
        probe = self._buffers[self._probe] if self._probe else None
        float_dtype = probe.dtype if probe is not None else torch.float32
        first = feeds[self.input_names[0]] if self.input_names else None
        device = (
            probe.device
            if probe is not None
            else (first.device if first is not None else _HOST_CTX_DEVICE)
        )
        batch = int(first.shape[0]) if first is not None and first.dim() > 0 else 1
        ctx = _Ctx(
            self.opset, float_dtype, device, batch if self._fixed_batch1 and batch != 1 else None
        )
        host_ctx = self._host_ctx
        env: dict[str, torch.Tensor] = {
            name: t.to(float_dtype) if name in self._float_inputs and t.dtype != float_dtype else t
            for name, t in feeds.items()
        }
        buffers, host_tensors = self._buffers, self._host_tensors
        for step in self._steps:
            inputs = []
            for kind, key in step.refs:
                if kind == 0:
                    inputs.append(env[key])
                elif kind == 1:
                    inputs.append(buffers[key])
                elif kind == 2:
                    inputs.append(host_tensors[key])
                elif kind == 3:
                    inputs.append(key)
                elif kind == 5:
                    value = env[key]
                    inputs.append(
                        value.to(
                            device,
                            float_dtype if value.is_floating_point() else value.dtype,
                            non_blocking=True,
                        )
                    )
                else:
                    inputs.append(None)
            try:
                result = step.fn(host_ctx if step.host else ctx, step.attrs, *inputs)
            except Exception as exc:
                raise RuntimeError(f"ONNX node {step.name!r} failed: {exc}") from exc
            if isinstance(result, torch.Tensor):
                env[step.outputs[0]] = result
            else:
                for name, value in zip(step.outputs, result):
                    if name:
                        env[name] = value
            for name in step.release:
                del env[name]
        return [
            buffers[self._output_consts[name]] if name in self._output_consts else env[name]
            for name in self.output_names
        ]

    def extra_repr(self) -> str:
        return (
            f"inputs={self.input_names}, outputs={self.output_names}, "
            f"nodes={len(self._steps)}, opset={self.opset}"
        )


def _check_supported(nodes: Iterable[onnx.NodeProto]) -> None:
    """Raise :class:`UnsupportedOperatorError` listing every unsupported op (variant)."""
    unsupported: dict[str, str] = {}
    for node in nodes:
        label: str | None
        if node.domain not in ("", "ai.onnx"):
            label = f"{node.domain}.{node.op_type}"
        elif node.op_type == "Constant":
            label = None
        elif node.op_type not in OPS:
            label = node.op_type
        else:
            check = OPS[node.op_type].check
            label = check(_attributes(node), node) if check else None
        if label and label not in unsupported:
            unsupported[label] = node.name or node.output[0]
    if unsupported:
        raise UnsupportedOperatorError(unsupported)
