"""One model-runner interface with three engines: torch (eager ONNX import), onnxruntime, and
onnxruntime on TensorRT.

All take and return torch tensors, so a stage can switch engines with one setting:

* :class:`TorchEngine` runs the graph with :mod:`stages.models.onnx_torch` on the run's device,
  under ``torch.inference_mode()``, at any batch size (see the batch rule there), optionally in
  float16/bfloat16 (checked against float32 on the first batch, see :class:`TorchEngine`). Inputs
  and outputs stay on the device. On CUDA it pads batches to a few fixed sizes (:class:`Buckets`),
  lets cuDNN autotune for them, keeps 4-D tensors channels-last and replays each fixed shape as a
  CUDA graph.
* :class:`OrtEngine` runs an onnxruntime ``InferenceSession`` with the torch tensors bound to it
  directly (IOBinding: no copies through numpy; on CUDA the data stays on the device). Graphs
  with a fixed batch of 1 are run item by item; graphs with a symbolic batch run in one call.
  ``tensorrt`` is this engine with TensorRT first among the providers (:func:`tensorrt_options`).

Example:
    >>> engine = create_engine(  # doctest: +SKIP
    ...     "w600k_r50.onnx", engine="torch", device="cuda", dtype="float16"
    ... )
    >>> (embeddings,) = engine(faces)  # (B, 3, 112, 112) -> [(B, 512) float32]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from facestream.facelib.models.factory import DEFAULT_BUCKETS, DTypeName, default_tensorrt_cache
from facestream.facelib.models.onnx_torch import OnnxModule, load_model_proto
from facestream.pipeline.device import set_tf32
from facestream.pipeline.errors import ModelError

__all__ = [
    "DEFAULT_BUCKETS", "BatchSplitter", "Buckets", "Engine", "OrtEngine", "TorchEngine", "create_engine",
    "default_providers", "tensorrt_options",
]

log = logging.getLogger(__name__)

Dim = int | str | None
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_PROVIDER_PRIORITY = ("CUDAExecutionProvider", "CPUExecutionProvider")
# Initializers at least this large have their payload dropped from ``Engine.model``.
_STRIP_BYTES = 1024
TOLERANCE = 0.03
"""Largest acceptable ``|reduced - float32|`` of an output, as a share of the float32 output's range."""


@runtime_checkable
class Engine(Protocol):
    """What a stage needs from a model runner.

    Attributes:
        input_names: Graph inputs (initializers excluded), in graph order.
        output_names: Graph outputs, in graph order.
        input_shapes: Input name -> dims as declared: int, symbolic name, or None when unnamed.
        device: Where the engine computes (torch) or where it was asked to run (onnxruntime).
        model: The ModelProto's structure; see :func:`create_engine` for its payloads.
    """

    input_names: list[str]
    output_names: list[str]
    input_shapes: dict[str, list[Dim]]
    device: torch.device
    model: onnx.ModelProto

    def __call__(self, *inputs: torch.Tensor, **named: torch.Tensor) -> list[torch.Tensor]:
        """Run the model; inputs positionally in graph order or by name."""
        ...

    def initializers_last(self) -> np.ndarray:
        """The graph's last initializer (inswapper keeps its ``emap`` there)."""
        ...


def default_providers(
    available: list[str] | None = None, *, tensorrt_cache: str | os.PathLike[str] | None = None
) -> list[str | tuple[str, dict[str, str]]]:
    """The execution providers to ask onnxruntime for, best first, among the available ones.

    CUDA, then CPU. TensorRT comes first only given a cache folder: it builds an engine for every
    new input shape (minutes for a large model), and keeps engines and timings there for the next run.

    Args:
        available: Provider names to choose from; ``onnxruntime.get_available_providers()`` if
            omitted.
        tensorrt_cache: Folder for TensorRT's engine and timing caches; TensorRT is used only with one.

    Returns:
        Provider names (TensorRT with its options), in order; onnxruntime falls back along the list.
    """
    available = ort.get_available_providers() if available is None else available
    chosen: list[str | tuple[str, dict[str, str]]] = [p for p in _PROVIDER_PRIORITY if p in available]
    if tensorrt_cache is not None and "TensorrtExecutionProvider" in available:
        folder = os.fspath(tensorrt_cache)
        os.makedirs(folder, exist_ok=True)
        chosen.insert(0, ("TensorrtExecutionProvider", {
            "trt_engine_cache_enable": "True", "trt_engine_cache_path": folder,
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": folder,
        }))
    return chosen or list(available[:1])


def _declared_shapes(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """Declared dims of the graph inputs that are not initializers."""
    inits = {t.name for t in model.graph.initializer}
    shapes: dict[str, list[Dim]] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims: list[Dim] = []
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        shapes[value.name] = dims
    return shapes


def _strip_payloads(model: onnx.ModelProto) -> None:
    """Drop the payload of every large initializer but the last, in place.

    The weights then live only in the engine (module buffers or the onnxruntime session); the
    proto keeps names, types and dims, and the last initializer whole.
    """
    for tensor in list(model.graph.initializer)[:-1]:
        if tensor.ByteSize() >= _STRIP_BYTES:
            for payload in (
                "raw_data",
                "float_data",
                "int32_data",
                "int64_data",
                "double_data",
                "uint64_data",
                "string_data",
            ):
                tensor.ClearField(payload)


def _bind(
    names: list[str], inputs: tuple[torch.Tensor, ...], named: dict[str, torch.Tensor], model: str
) -> dict[str, torch.Tensor]:
    """Map positional and named inputs to the graph's input names, or raise a clear ValueError."""
    feeds = dict(zip(names, inputs))
    unknown = [k for k in named if k not in names or k in feeds]
    feeds.update({k: v for k, v in named.items() if k in names})
    missing = [k for k in names if k not in feeds]
    if len(inputs) > len(names) or unknown or missing:
        raise ValueError(
            f"{model} expects inputs {names}; got {len(inputs)} positional and named "
            f"{sorted(named)} (unknown or repeated: {unknown}, missing: {missing})"
        )
    return feeds


class _Base:
    """Metadata shared by both engines."""

    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        self.model = model
        self.source = source
        self.input_shapes = _declared_shapes(model)
        self.input_names = list(self.input_shapes)
        self.output_names = [v.name for v in model.graph.output]

    def initializers_last(self) -> np.ndarray:
        """The graph's last initializer as a numpy array.

        Raises:
            ValueError: The graph has no initializers.
        """
        if not self.model.graph.initializer:
            raise ValueError(f"{self.source} has no initializers")
        return numpy_helper.to_array(self.model.graph.initializer[-1])

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}({self.source!r}, inputs={self.input_shapes}, device={self.device})"


class Buckets:
    """Runs a batch at a few fixed batch sizes: padded up to the next size, outputs sliced back.

    A batch of ``n`` items runs as one slice padded to the smallest size that holds it (the padding
    repeats the last item); a batch larger than the largest size runs in slices of that size, the
    last one padded. The model so sees only these batch sizes, whatever the batch, which is what
    cuDNN's autotuning, CUDA graphs and TensorRT's profiles need.

    Inputs whose leading dim is the batch are padded; others (a shared input of 1 item) are passed
    as they are. An output whose leading dim is a multiple of the padded size is taken as
    batch-major (the batch, or rows that merge it, as SCRFD's heads) and cut to the real items'
    share; other outputs are returned as they come from the first slice.

    Example:
        >>> buckets = Buckets((1, 2, 4, 8))
        >>> [buckets.plan(n) for n in (1, 3, 8, 11)]
        [[(1, 1)], [(3, 4)], [(8, 8)], [(8, 8), (3, 4)]]
        >>> (y,) = buckets(lambda feeds: [feeds["x"] * 2], {"x": torch.arange(3.0)})
        >>> y.tolist()
        [0.0, 2.0, 4.0]
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        """Args:
            sizes: Positive batch sizes in ascending order.

        Raises:
            ValueError: Empty, not positive integers, or not ascending.
        """
        sizes = tuple(sizes)
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes) \
                or list(sizes) != sorted(set(sizes)):
            raise ValueError(f"batch buckets must be positive integers in ascending order, got {list(sizes)}")
        self.sizes = sizes

    def plan(self, n: int) -> list[tuple[int, int]]:
        """``(items, padded size)`` of each slice of a batch of ``n``."""
        largest = self.sizes[-1]
        slices = [(largest, largest)] * (n // largest)
        if n % largest:
            rest = n % largest
            slices.append((rest, next(s for s in self.sizes if s >= rest)))
        return slices

    def __call__(self, forward: Callable[[dict[str, torch.Tensor]], list[torch.Tensor]],
                 feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """``forward(feeds)`` at the bucket sizes; outputs as an unpadded run would give them."""
        n = max((v.shape[0] for v in feeds.values() if v.dim()), default=1)
        batched = [k for k, v in feeds.items() if v.dim() and v.shape[0] == n]
        parts: list[list[torch.Tensor]] = []
        start = 0
        for items, size in self.plan(n):
            args = dict(feeds)
            for k in batched:
                x = feeds[k][start : start + items]
                if size > items:
                    x = torch.cat([x, x[-1:].expand(size - items, *x.shape[1:])])
                args[k] = x
            outs = forward(args)
            if size > items:
                outs = [o[: o.shape[0] // size * items] if o.dim() and o.shape[0] % size == 0 else o for o in outs]
            parts.append(outs)
            start += items
        if len(parts) == 1:
            return parts[0]
        return [torch.cat(outs) if outs[0].dim() else outs[0] for outs in zip(*parts)]


def _all_finite(outputs: list[torch.Tensor]) -> bool:
    """Whether every float output is free of inf and NaN (one host wait for all of them)."""
    checks = [torch.isfinite(o).all() for o in outputs if o.is_floating_point()]
    return not checks or bool(torch.stack(checks).all())


def _difference(reduced: list[torch.Tensor], full: list[torch.Tensor]) -> float:
    """The largest ``|reduced - full|`` of any float output as a share of that output's range in
    ``full``; ``inf`` where the reduced output is not finite and the float32 one is. Outputs that
    are not finite in float32 either are left out: float32 would not do better there."""
    worst = 0.0
    for r, f in zip(reduced, full):
        if not f.is_floating_point() or not f.numel() or not bool(torch.isfinite(f).all()):
            continue
        if not bool(torch.isfinite(r).all()):
            return math.inf
        span = float((f.max() - f.min()).clamp(min=1e-6))
        worst = max(worst, float((r - f).abs().max()) / span)
    return worst


class TorchEngine(_Base):
    """Runs the graph as an :class:`OnnxModule` on one device.

    On CUDA (each can be turned off; the CPU runs each batch as it comes, eagerly):

    * Batches are padded to fixed sizes (:class:`Buckets`), and cuDNN autotunes its convolutions
      for them (``torch.backends.cudnn.benchmark``, process-wide).
    * 4-D float inputs and the module's 4-D weights are channels-last (what tensor cores read).
    * Each (bucket, input shapes) is captured as a CUDA graph after one warm-up run, into static
      input and output buffers; a call copies its inputs in, replays, and returns clones of the
      outputs (the buffers are reused). A capture that fails leaves the engine eager, with one
      warning.

    Reduced precision (``float16``/``bfloat16``) is checked: a float32 twin of the module is built
    with the engine, and the first batch runs in both. Output that is not finite, or further than
    :data:`TOLERANCE` of its range from float32's, switches the engine to the twin for good, with
    one warning, and the reduced module is let go. Otherwise the twin waits in host memory (its
    device memory freed), and any later output that is not finite is checked again the same way.

    Attributes:
        module: The module (on ``device``, in ``dtype``).
        dtype: Compute dtype of float values; outputs are returned as float32.
        buckets: The batch sizes run on CUDA, or ``None``.
        channels_last: Whether 4-D tensors are kept channels-last.
        fell_back: Whether reduced precision was found wanting and float32 runs instead.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        source: str,
        device: torch.device | str = "cpu",
        dtype: DTypeName = "float32",
        tf32: bool = False,
        buckets: Sequence[int] | None = DEFAULT_BUCKETS,
        cuda_graphs: bool = True,
        channels_last: bool | None = None,
        check: bool = True,
    ) -> None:
        """Build the module and move it.

        Args:
            model: The ModelProto.
            source: Where it came from, for messages.
            device: Device to run on.
            dtype: ``float32``, ``float16`` or ``bfloat16``.
            tf32: On CUDA, let float32 convolutions and matrix products use TensorFloat-32 (set
                process-wide, see :func:`facestream.pipeline.device.set_tf32`); off by default, so
                float32 results match onnxruntime's.
            buckets: On CUDA, the batch sizes to pad to (``None`` or empty: run batches as they
                come); ignored on the CPU.
            cuda_graphs: On CUDA, replay fixed shapes as CUDA graphs; ignored on the CPU.
            channels_last: Keep 4-D tensors channels-last; default: on CUDA only.
            check: Check reduced precision against float32 (see above).
        """
        super().__init__(model, source)
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.dtype = _DTYPES[dtype]
        self.buckets = Buckets(buckets) if cuda and buckets else None
        self.channels_last = cuda if channels_last is None else channels_last
        if cuda:
            set_tf32(tf32)
            if self.buckets is not None:
                torch.backends.cudnn.benchmark = True  # a few fixed shapes: autotune each once
        self.module = self._module(model, self.dtype)
        self._graphs: dict[tuple, tuple] | None = {} if cuda and cuda_graphs else None
        self._pool = None
        self._lock = threading.Lock()
        self.fell_back = False
        self._checked = False
        self._twin: TorchEngine | None = None
        if check and dtype != "float32":
            self._twin = TorchEngine(model, source=source, device=self.device, tf32=tf32, buckets=buckets,
                                     cuda_graphs=cuda_graphs, channels_last=channels_last, check=False)

    def _module(self, model: onnx.ModelProto, dtype: torch.dtype) -> OnnxModule:
        module = OnnxModule(model).to(self.device, dtype).eval()
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def __call__(self, *inputs: torch.Tensor, **named: torch.Tensor) -> list[torch.Tensor]:
        """Run a batch.

        Args:
            *inputs: Tensors in graph-input order (any batch size).
            **named: Tensors by input name.

        Returns:
            Outputs in graph order on ``device``; float outputs are float32.
        """
        feeds = _bind(self.input_names, inputs, named, self.source)
        with torch.inference_mode():
            outputs = self._run(feeds)
            if self._twin is not None and (not self._checked or not _all_finite(outputs)):
                outputs = self._check(feeds, outputs)
            return outputs

    def _run(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        args = {k: self._place(v) for k, v in feeds.items()}
        outputs = self.buckets(self._forward, args) if self.buckets is not None else self._forward(args)
        return [o.float() if o.is_floating_point() else o for o in outputs]

    def _place(self, x: torch.Tensor) -> torch.Tensor:
        """An input on the device, floats in the compute dtype, 4-D floats channels-last if asked."""
        if not x.is_floating_point():
            return x.to(self.device, non_blocking=True)
        layout = torch.channels_last if self.channels_last and x.dim() == 4 else torch.preserve_format
        return x.to(self.device, self.dtype, non_blocking=True, memory_format=layout)

    def _forward(self, args: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """One forward at fixed shapes: eager, or the replay of its CUDA graph."""
        if self._graphs is None:
            return list(self.module(**args))
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in args.items())
        with self._lock:  # the static buffers are shared by every caller
            entry = self._graphs.get(key)
            if entry is None:
                try:
                    entry = self._graphs[key] = self._capture(args)
                except Exception as exc:  # noqa: BLE001 - any failed capture: run eagerly from now on
                    log.warning("%s: CUDA graph capture failed (%s: %s); running eagerly",
                                os.path.basename(self.source), type(exc).__name__, exc)
                    self._graphs = None
                    return list(self.module(**args))
            graph, static_in, static_out = entry
            for k, v in args.items():
                static_in[k].copy_(v)
            graph.replay()
            return [o.clone() for o in static_out]

    def _capture(self, args: dict[str, torch.Tensor]) -> tuple:
        """A CUDA graph of the forward at these shapes, with its static inputs and outputs.

        Warm-up and capture run on a side stream that waits for the current one; nothing here
        makes the host wait for the device (unlike ``torch.cuda.graph``, which synchronises)."""
        static = {k: v.clone() for k, v in args.items()}
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # one memory pool for all of this engine's graphs
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            self.module(**static)  # warm-up outside the capture: cuDNN autotuning, lazy set-up
            graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
            try:
                outputs = list(self.module(**static))
            finally:
                graph.capture_end()
        current.wait_stream(side)
        return graph, static, outputs

    def _check(self, feeds: dict[str, torch.Tensor], outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Compare reduced-precision outputs with the float32 twin's; keep the better engine."""
        twin = self._twin
        assert twin is not None
        with torch.inference_mode(False):
            twin.module.to(self.device)  # back from host memory after an earlier check
        reference = twin._run(feeds)
        error = _difference(outputs, reference)
        self._checked = True
        if error > TOLERANCE:
            log.warning("%s: %s output differs from float32 by %s of its range; using float32",
                        os.path.basename(self.source), str(self.dtype).removeprefix("torch."),
                        "inf %" if math.isinf(error) else f"{100 * error:.1f}%")
            self.module, self.dtype, self._graphs, self._pool = twin.module, torch.float32, twin._graphs, twin._pool
            self._twin, self.fell_back = None, True
            return reference
        if self.device.type != "cpu":  # device memory goes back; the weights wait on the host
            with torch.inference_mode(False):
                twin.module.to("cpu")
            twin._graphs = {} if twin._graphs is not None else None
            twin._pool = None
        return outputs


def _torch_dtype(elem_type: int) -> torch.dtype:
    """The torch dtype of an ONNX tensor element type."""
    if elem_type == onnx.TensorProto.BFLOAT16:
        return torch.bfloat16
    return torch.from_numpy(np.empty(0, onnx.helper.tensor_dtype_to_np_dtype(elem_type))).dtype


def _empty(specs: list[tuple[tuple[int, ...], torch.dtype]], device: torch.device) -> list[torch.Tensor]:
    """Uninitialised tensors of these shapes and dtypes; those of one dtype share one allocation."""
    out: list[torch.Tensor | None] = [None] * len(specs)
    for dtype in {d for _, d in specs}:
        which = [i for i, (_, d) in enumerate(specs) if d == dtype]
        sizes = [math.prod(specs[i][0]) for i in which]
        for i, flat in zip(which, torch.empty(sum(sizes), dtype=dtype, device=device).split(sizes)):
            out[i] = flat.view(specs[i][0])
    return out  # type: ignore[return-value]


class OrtEngine(_Base):
    """Runs the graph with onnxruntime, on torch tensors bound to the session (IOBinding).

    Inputs are bound where they lie (on CUDA, when the session has a CUDA provider; else on the
    host) as contiguous tensors of the graph's element types: a tensor that already is one is
    read in place, never copied to the host or through numpy. Outputs are written into torch
    tensors allocated for them on the same device; the first run at new input shapes runs once
    more to learn the output shapes (taken to depend on the input shapes only, as in the face
    models). A session on the CPU alone reads numpy views of the input tensors instead (``bind``).

    Attributes:
        session: The InferenceSession.
        providers: The providers the session actually uses.
        buckets: Batch sizes batches are padded to (the tensorrt engine), or ``None``.
        bind: Whether tensors are bound to the session (IOBinding) or passed as numpy views.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        source: str,
        path: str | None = None,
        device: torch.device | str = "cpu",
        providers: list[str | tuple[str, dict[str, str]]] | None = None,
        threads: int | None = None,
        spin: bool = True,
        tensorrt_cache: str | os.PathLike[str] | None = None,
        buckets: Sequence[int] | None = None,
        bind: bool | None = None,
    ) -> None:
        """Create the session.

        Args:
            model: The ModelProto.
            source: Where it came from, for messages.
            path: The file, when there is one (the session reads it directly).
            device: Recorded as ``device``; outputs go to the inputs' device.
            providers: Execution providers; :func:`default_providers` if omitted.
            threads: Intra-op threads; onnxruntime's default if omitted.
            spin: Let idle worker threads spin waiting for work (onnxruntime's default). Off, they
                sleep, which leaves the cores to other stages running beside this one.
            tensorrt_cache: With the default providers: TensorRT's cache folder (see
                :func:`default_providers`).
            buckets: Pad batches to these sizes (see :class:`Buckets`), as TensorRT's profiles
                expect.
            bind: Bind torch tensors to the session (IOBinding); default: where the session runs
                on CUDA. A session on the CPU reads numpy views of the tensors instead: as free of
                copies for the inputs, and a few Python calls fewer a run.
        """
        super().__init__(model, source)
        self.device = torch.device(device)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            path if path is not None else model.SerializeToString(),
            sess_options=options,
            providers=providers if providers is not None else default_providers(tensorrt_cache=tensorrt_cache),
        )
        self.providers = self.session.get_providers()
        self.buckets = Buckets(buckets) if buckets else None
        self._cuda = bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(self.providers))
        self.bind = self._cuda if bind is None else bind
        self._types = {
            v.name: v.type.tensor_type.elem_type for v in model.graph.input if v.name in self.input_shapes
        }
        self._dtypes = {name: _torch_dtype(t) for name, t in self._types.items()}
        self._batch1 = {
            name: bool(dims) and dims[0] == 1 for name, dims in self.input_shapes.items()
        }
        # Input (name, shape, dtype) of one run -> each output's shape, element type and torch dtype.
        self._outputs: dict[tuple, list[tuple[tuple[int, ...], int, torch.dtype]]] = {}

    def __call__(self, *inputs: torch.Tensor, **named: torch.Tensor) -> list[torch.Tensor]:
        """Run a batch.

        Args:
            *inputs: Tensors in graph-input order.
            **named: Tensors by input name.

        Returns:
            Outputs in graph order, as float32 (float outputs) on the first input's device. Where
            the graph fixes the batch at 1 and a batch of B > 1 is given, the graph runs once per
            item (inputs with a leading 1 are shared by all items) and the outputs are
            concatenated along their first axis.

        Raises:
            ValueError: Wrong input names, or inconsistent batch sizes.
        """
        feeds = _bind(self.input_names, inputs, named, self.source)
        device = next(iter(feeds.values())).device if feeds else torch.device("cpu")
        where = device if device.type == "cuda" and self._cuda and self.bind else torch.device("cpu")
        tensors = {k: v.detach().to(where, self._dtypes[k]).contiguous() for k, v in feeds.items()}
        if where.type == "cuda":  # onnxruntime reads the inputs on its own stream
            torch.cuda.current_stream(where).synchronize()
        run = (lambda runs: self._bound(where, runs)) if self.bind else self._arrays
        batch = max((t.shape[0] for t in tensors.values() if t.dim()), default=1)
        if batch > 1 and any(self._batch1[k] for k in tensors):
            for name, t in tensors.items():
                if self._batch1[name] and t.shape[0] not in (1, batch):
                    raise ValueError(
                        f"{self.source}: input {name!r} has batch {t.shape[0]}, expected 1 or {batch}"
                    )
            results = run([
                {k: t[i : i + 1] if self._batch1[k] and t.shape[0] == batch else t for k, t in tensors.items()}
                for i in range(batch)
            ])
        elif self.buckets is not None:
            results = self.buckets(lambda padded: run([padded]), tensors)
        else:
            results = run([tensors])
        return [(r.float() if r.is_floating_point() else r).to(device) for r in results]

    def _arrays(self, runs: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Run the session once per feed dict on host arrays (views of the tensors); the outputs
        concatenated along their first axis."""
        parts = [self.session.run(self.output_names, {k: t.numpy() for k, t in feeds.items()}) for feeds in runs]
        results = parts[0] if len(parts) == 1 else [np.concatenate(outs) for outs in zip(*parts)]
        return [torch.from_numpy(r) for r in results]

    def _bound(self, where: torch.device, runs: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Run the session once per feed dict (all of the same shapes), each run's outputs written
        into its share of one tensor per output, along the first axis."""
        binding = self.session.io_binding()
        kind = where.type
        index = where.index if where.index is not None else (torch.cuda.current_device() if kind == "cuda" else 0)
        key = tuple((k, tuple(t.shape), t.dtype) for k, t in runs[0].items())
        shapes = self._outputs.get(key)
        if shapes is None:  # onnxruntime allocates this once; now the shapes are known
            self._bind_inputs(binding, runs[0], kind, index)
            for name in self.output_names:
                binding.bind_output(name, kind, index)
            self.session.run_with_iobinding(binding)
            shapes = self._outputs[key] = [
                (tuple(v.shape()), v.element_type(), _torch_dtype(v.element_type())) for v in binding.get_outputs()
            ]
            binding.clear_binding_outputs()
        outputs = _empty([((len(runs) * s[0], *s[1:]) if s else s, dtype) for s, _, dtype in shapes], where)
        for i, feeds in enumerate(runs):
            self._bind_inputs(binding, feeds, kind, index)
            for name, out, (s, t, _) in zip(self.output_names, outputs, shapes):
                part = out[i * s[0] : (i + 1) * s[0]] if s else out
                binding.bind_output(name, kind, index, t, list(part.shape), part.data_ptr())
            self.session.run_with_iobinding(binding)
        return outputs

    def _bind_inputs(self, binding: ort.IOBinding, feeds: dict[str, torch.Tensor], kind: str, index: int) -> None:
        for name, t in feeds.items():
            binding.bind_input(name, kind, index, self._types[name], list(t.shape), t.data_ptr())


_TENSORRT_INSTALL = "pip install onnxruntime-gpu tensorrt"
_CUDA_INSTALL = "pip uninstall onnxruntime && pip install onnxruntime-gpu"


def _found() -> str:
    return f"found onnxruntime {ort.__version__} with {', '.join(ort.get_available_providers())}"


def require_tensorrt() -> None:
    """Raise a one-line :class:`ModelError` saying what to install, unless onnxruntime has its
    TensorRT provider and TensorRT can be imported (importing it loads its libraries for
    onnxruntime)."""
    ready = "TensorrtExecutionProvider" in ort.get_available_providers()
    if ready:
        try:
            importlib.import_module("tensorrt")
        except Exception:  # noqa: BLE001 - missing, or its libraries do not load
            ready = False
    if not ready:
        raise ModelError(f"models.engine tensorrt needs TensorRT and onnxruntime-gpu: {_TENSORRT_INSTALL} ({_found()})")


def require_cuda_provider() -> None:
    """Raise a one-line :class:`ModelError` saying what to install, unless onnxruntime can run on CUDA."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelError(
            f"models.engine onnxruntime on a CUDA device needs onnxruntime-gpu: {_CUDA_INSTALL} ({_found()})"
        )


def tensorrt_options(
    shapes: dict[str, list[Dim]], buckets: Sequence[int], cache: str | os.PathLike[str], *,
    fp16: bool = True, device_id: int = 0,
) -> dict[str, str]:
    """onnxruntime's TensorRT provider options for one model.

    Engines and timings are cached in ``cache`` (a build takes minutes; the next run loads it).
    Where only the batch dim of the inputs is dynamic, one optimisation profile spans the batch
    buckets: the smallest, the middle one (what TensorRT tunes for) and the largest, each input's
    other dims as declared. Where other dims are dynamic too (SCRFD's image size), no profile is
    given and TensorRT builds for the shapes it meets.

    Example:
        >>> options = tensorrt_options({"input.1": ["N", 3, 112, 112]}, (1, 2, 4, 8), "/c")
        >>> options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]
        ('input.1:1x3x112x112', 'input.1:4x3x112x112', 'input.1:8x3x112x112')
        >>> options["trt_fp16_enable"], options["trt_engine_cache_path"]
        ('True', '/c')
        >>> "trt_profile_min_shapes" in tensorrt_options({"input.1": [1, 3, "?", "?"]}, (1, 2), "/c")
        False
    """
    folder = os.fspath(cache)
    options = {
        "device_id": str(device_id),
        "trt_fp16_enable": str(bool(fp16)),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": folder,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": folder,
    }
    dynamic = {name: dims for name, dims in shapes.items() if any(not isinstance(d, int) for d in dims)}
    if dynamic and all(dims and all(isinstance(d, int) for d in dims[1:]) for dims in dynamic.values()):
        sizes = list(buckets)
        for which, size in (("min", sizes[0]), ("opt", sizes[len(sizes) // 2]),
                            ("max", sizes[-1])):
            options[f"trt_profile_{which}_shapes"] = ",".join(
                f"{name}:{'x'.join(str(d) for d in [size, *dims[1:]])}" for name, dims in dynamic.items()
            )
    return options


def _cuda_providers(device: torch.device, tensorrt: dict[str, str] | None = None) -> list:
    """TensorRT (with its options, if given), then CUDA, then the CPU, all on ``device``."""
    index = device.index if device.index is not None else 0
    chosen: list = [("CUDAExecutionProvider", {"device_id": str(index)}), "CPUExecutionProvider"]
    return [("TensorrtExecutionProvider", tensorrt), *chosen] if tensorrt is not None else chosen


def create_engine(
    path: str | os.PathLike[str] | onnx.ModelProto,
    *,
    engine: Literal["torch", "onnxruntime", "tensorrt"],
    device: torch.device | str = "cpu",
    dtype: DTypeName = "float32",
    providers: list[str] | None = None,
    threads: int | None = None,
    model: onnx.ModelProto | None = None,
    spin: bool = True,
    tf32: bool = False,
    tensorrt_cache: str | os.PathLike[str] | None = None,
    buckets: Sequence[int] | None = DEFAULT_BUCKETS,
    cuda_graphs: bool = True,
    check: bool = True,
) -> TorchEngine | OrtEngine:
    """Load an ONNX model once and wrap it in the chosen engine.

    When this function parses the file, the engine's ``.model`` keeps the graph but drops the
    payload of every large initializer except the last (the weights live in the engine, not
    twice); ``initializers_last()`` returns that last one (inswapper's ``emap``). A ModelProto
    passed in is used as is and left untouched.

    Args:
        path: The ``.onnx`` file, or a ModelProto.
        engine: ``torch`` (eager import, any device/dtype, any batch), ``onnxruntime``, or
            ``tensorrt`` (onnxruntime with TensorRT first, on CUDA).
        device: Torch device to run on (``torch``, ``tensorrt``; ``onnxruntime`` runs on CUDA
            when it is a CUDA device). onnxruntime returns outputs on the inputs' device.
        dtype: Compute dtype for ``torch``; ``tensorrt`` builds float16 engines unless it is
            ``float32``; ``onnxruntime`` runs the graph as stored (float32 only).
        providers: onnxruntime execution providers; default: the engine's own choice (see
            :func:`default_providers`, :func:`tensorrt_options`).
        threads: onnxruntime intra-op threads. The torch engine uses torch's process-wide
            thread setting (``torch.set_num_threads``), which an engine does not change.
        spin: onnxruntime: let idle worker threads spin (see :class:`OrtEngine`).
        tf32: torch on CUDA: TensorFloat-32 for float32 (see :class:`TorchEngine`).
        tensorrt_cache: The folder for TensorRT's engine and timing caches (``tensorrt``: default
            ``$XDG_CACHE_HOME/facestream/tensorrt``; ``onnxruntime``: TensorRT is used only with one).
        buckets: Batch sizes to pad to: torch on CUDA, and ``tensorrt`` (its profile).
        cuda_graphs: torch on CUDA: replay fixed shapes as CUDA graphs.
        check: torch: check float16/bfloat16 against float32 (see :class:`TorchEngine`).
        model: The file's ModelProto, already parsed (e.g. to check its signature): used instead
            of parsing ``path`` again, and treated as owned.

    Returns:
        The engine.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not a valid ONNX model, an unknown engine or dtype, or a dtype onnxruntime
            cannot run.
        ModelError: The onnxruntime or TensorRT packages this engine and device need are missing
            (one line saying what to install).
        UnsupportedOperatorError: ``torch`` was asked for a graph it cannot run.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    if engine not in ("torch", "onnxruntime", "tensorrt"):
        raise ValueError(f"engine must be 'torch', 'onnxruntime' or 'tensorrt', got {engine!r}")
    if engine == "onnxruntime" and dtype != "float32":
        raise ValueError(
            f"the onnxruntime engine runs the graph as stored (float32); use engine 'torch' "
            f"for {dtype}"
        )
    device = torch.device(device)
    if engine == "tensorrt":
        require_tensorrt()
        if device.type != "cuda":
            raise ModelError(f"models.engine tensorrt runs on a CUDA device, not {device}")
    elif engine == "onnxruntime" and device.type == "cuda" and providers is None:
        require_cuda_provider()
    owned = not isinstance(path, onnx.ModelProto)
    source = os.fspath(path) if owned else "<ModelProto>"  # type: ignore[arg-type]
    if model is None or not owned:
        model = load_model_proto(path)
    result: TorchEngine | OrtEngine
    if engine == "torch":
        result = TorchEngine(model, source=source, device=device, dtype=dtype, tf32=tf32, buckets=buckets,
                             cuda_graphs=cuda_graphs, check=check)
    else:
        ort_buckets = None
        if providers is None and engine == "tensorrt":
            folder = os.fspath(tensorrt_cache if tensorrt_cache is not None else default_tensorrt_cache())
            os.makedirs(folder, exist_ok=True)
            ort_buckets = buckets or DEFAULT_BUCKETS
            options = tensorrt_options(_declared_shapes(model), ort_buckets, folder, fp16=dtype != "float32",
                                       device_id=device.index or 0)
            providers = _cuda_providers(device, options)
        elif providers is None and device.type == "cuda":
            trt = default_providers(tensorrt_cache=tensorrt_cache)[0] if tensorrt_cache is not None else None
            providers = _cuda_providers(device, trt[1] if isinstance(trt, tuple) else None)
        if owned:
            # onnxruntime reads the weights from the file: drop the parsed copy first, so that a
            # large model is not held three times while its session is built.
            _strip_payloads(model)
        result = OrtEngine(
            model,
            source=source,
            path=source if owned else None,
            device=device,
            providers=providers,
            threads=threads,
            spin=spin,
            tensorrt_cache=tensorrt_cache,
            buckets=ort_buckets,
        )
    if owned:
        _strip_payloads(model)
    return result


class BatchSplitter:
    """Runs a batched forward in slices, and makes running out of device memory a condition.

    A forward runs on slices of at most ``limit`` items (``None``: the whole batch). When one raises
    ``torch.OutOfMemoryError``, the cached blocks are handed back, the slice is halved and run again;
    the smaller limit stays for later batches, and every halving is counted in ``retries``. Only a
    single item that does not fit is an error.

    Example:
        >>> split = BatchSplitter(limit=2)
        >>> [t.tolist() for t in split(lambda x: [x * 2], torch.arange(5))]
        [[0, 2, 4, 6, 8]]
    """

    def __init__(self, limit: int | None = None, *, name: str = "model") -> None:
        self.limit = limit
        self.name = name
        self.retries = 0

    def __call__(self, forward: Callable[..., list[torch.Tensor]], *inputs: torch.Tensor,
                 most: int | None = None) -> list[torch.Tensor]:
        """``forward(*slices)`` over the inputs' first axis (at most ``most`` items a slice as well);
        its outputs concatenated along theirs."""
        n = inputs[0].shape[0]
        parts: list[list[torch.Tensor]] = []
        start = 0
        while start < n:
            step = min(self.limit or n, most or n, n - start)
            try:
                parts.append(forward(*(x[start : start + step] for x in inputs)))
                start += step
                continue
            except torch.OutOfMemoryError:
                if step == 1:
                    raise
            # Out of the except block, so that the failed forward's tensors are released first.
            self.retries += 1
            self.limit = step // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("%s: out of device memory on %d items; retrying %d at a time", self.name, step, self.limit)
        return parts[0] if len(parts) == 1 else [torch.cat(outs) for outs in zip(*parts)]
