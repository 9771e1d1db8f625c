"""One model-runner interface with two engines: torch (eager ONNX import) and onnxruntime.

Both take and return torch tensors, so a stage can switch engines with one setting:

* :class:`TorchEngine` runs the graph with :mod:`stages.models.onnx_torch` on the run's device,
  under ``torch.inference_mode()``, at any batch size (see the batch rule there), optionally in
  float16/bfloat16. Inputs and outputs stay on the device.
* :class:`OrtEngine` runs an onnxruntime ``InferenceSession``. Graphs with a fixed batch of 1 are
  run item by item and the outputs concatenated; graphs with a symbolic batch run in one call.

Example:
    >>> engine = create_engine(  # doctest: +SKIP
    ...     "w600k_r50.onnx", engine="torch", device="cuda", dtype="float16"
    ... )
    >>> (embeddings,) = engine(faces)  # (B, 3, 112, 112) -> [(B, 512) float32]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from facestream.facelib.models.factory import DTypeName
from facestream.facelib.models.onnx_torch import OnnxModule, load_model_proto
from facestream.pipeline.device import set_tf32

__all__ = ["BatchSplitter", "Engine", "OrtEngine", "TorchEngine", "create_engine", "default_providers"]

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


class TorchEngine(_Base):
    """Runs the graph as an :class:`OnnxModule` on one device.

    Attributes:
        module: The module (on ``device``, in ``dtype``).
        dtype: Compute dtype of float values; outputs are returned as float32.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        source: str,
        device: torch.device | str = "cpu",
        dtype: DTypeName = "float32",
        tf32: bool = False,
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
        """
        super().__init__(model, source)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            set_tf32(tf32)
        self.dtype = _DTYPES[dtype]
        self.module = OnnxModule(model).to(self.device, self.dtype).eval()

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
            args = {
                k: v.to(
                    self.device, self.dtype if v.is_floating_point() else v.dtype, non_blocking=True
                )
                for k, v in feeds.items()
            }
            outputs = self.module(**args)
            return [o.float() if o.is_floating_point() else o for o in outputs]


class OrtEngine(_Base):
    """Runs the graph with onnxruntime.

    Attributes:
        session: The InferenceSession.
        providers: The providers the session actually uses.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        source: str,
        path: str | None = None,
        device: torch.device | str = "cpu",
        providers: list[str] | None = None,
        threads: int | None = None,
        spin: bool = True,
        tensorrt_cache: str | os.PathLike[str] | None = None,
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
        self._np_types = {
            v.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
            for v in model.graph.input
            if v.name in self.input_shapes
        }
        self._batch1 = {
            name: bool(dims) and dims[0] == 1 for name, dims in self.input_shapes.items()
        }

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
        arrays = {
            k: np.ascontiguousarray(
                v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).numpy(),
                dtype=self._np_types[k],
            )
            for k, v in feeds.items()
        }
        batch = max((a.shape[0] for a in arrays.values() if a.ndim), default=1)
        if batch > 1 and any(self._batch1[k] for k in arrays):
            for name, a in arrays.items():
                if self._batch1[name] and a.shape[0] not in (1, batch):
                    raise ValueError(
                        f"{self.source}: input {name!r} has batch {a.shape[0]}, "
                        f"expected 1 or {batch}"
                    )
            runs = [
                self.session.run(
                    self.output_names,
                    {
                        k: a[i : i + 1] if self._batch1[k] and a.shape[0] == batch else a
                        for k, a in arrays.items()
                    },
                )
                for i in range(batch)
            ]
            results = [np.concatenate(parts) for parts in zip(*runs)]
        else:
            results = self.session.run(self.output_names, arrays)
        return [
            torch.from_numpy(r.astype(np.float32) if r.dtype.kind == "f" else r).to(device)
            for r in results
        ]


def create_engine(
    path: str | os.PathLike[str] | onnx.ModelProto,
    *,
    engine: Literal["torch", "onnxruntime"],
    device: torch.device | str = "cpu",
    dtype: DTypeName = "float32",
    providers: list[str] | None = None,
    threads: int | None = None,
    model: onnx.ModelProto | None = None,
    spin: bool = True,
    tf32: bool = False,
    tensorrt_cache: str | os.PathLike[str] | None = None,
) -> TorchEngine | OrtEngine:
    """Load an ONNX model once and wrap it in the chosen engine.

    When this function parses the file, the engine's ``.model`` keeps the graph but drops the
    payload of every large initializer except the last (the weights live in the engine, not
    twice); ``initializers_last()`` returns that last one (inswapper's ``emap``). A ModelProto
    passed in is used as is and left untouched.

    Args:
        path: The ``.onnx`` file, or a ModelProto.
        engine: ``torch`` (eager import, any device/dtype, any batch) or ``onnxruntime``.
        device: Torch device to run on (``torch``); recorded as ``device`` for onnxruntime, which
            returns outputs on the inputs' device.
        dtype: Compute dtype for ``torch``; onnxruntime runs the graph as stored (float32 only).
        providers: onnxruntime execution providers; default: :func:`default_providers`.
        threads: onnxruntime intra-op threads. The torch engine uses torch's process-wide
            thread setting (``torch.set_num_threads``), which an engine does not change.
        spin: onnxruntime: let idle worker threads spin (see :class:`OrtEngine`).
        tf32: torch on CUDA: TensorFloat-32 for float32 (see :class:`TorchEngine`).
        tensorrt_cache: onnxruntime: TensorRT's cache folder; without one TensorRT is not used.
        model: The file's ModelProto, already parsed (e.g. to check its signature): used instead
            of parsing ``path`` again, and treated as owned.

    Returns:
        The engine.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not a valid ONNX model, an unknown engine or dtype, or a dtype onnxruntime
            cannot run.
        UnsupportedOperatorError: ``torch`` was asked for a graph it cannot run.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    source = "<ModelProto>" if isinstance(path, onnx.ModelProto) else os.fspath(path)
    if engine not in ("torch", "onnxruntime"):
        raise ValueError(f"engine must be 'torch' or 'onnxruntime', got {engine!r}")
    if engine == "onnxruntime" and dtype != "float32":
        raise ValueError(
            f"the onnxruntime engine runs the graph as stored (float32); use engine 'torch' "
            f"for {dtype}"
        )
    owned = not isinstance(path, onnx.ModelProto)
    source = os.fspath(path) if owned else "<ModelProto>"  # type: ignore[arg-type]
    if model is None or not owned:
        model = load_model_proto(path)
    result: TorchEngine | OrtEngine
    if engine == "torch":
        result = TorchEngine(model, source=source, device=device, dtype=dtype, tf32=tf32)
    else:
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
