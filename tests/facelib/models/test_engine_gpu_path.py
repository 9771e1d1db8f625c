"""The engines' GPU path: batch buckets, channels-last, CUDA graphs, the reduced-precision check,
onnxruntime's IOBinding and the TensorRT engine. What the CPU can prove runs here on the CPU; what
needs CUDA is marked ``needs_cuda``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from facestream.facelib.models.engines import Buckets, OrtEngine, TorchEngine, create_engine, tensorrt_options
from facestream.facelib.models.factory import DEFAULT_BUCKETS, ModelSettings, default_tensorrt_cache
from facestream.pipeline.config import FieldError
from facestream.pipeline.errors import ConfigError, ModelError
from facestream.settings import load_settings
from tests import modelgen
from tests.conftest import run_cli
from tests.facelib.syncs import count_host_syncs

needs_cuda = pytest.mark.needs_cuda
skip_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# name -> (generator, kwargs, per-item input shapes)
FAMILIES: dict[str, tuple[Callable[..., str], dict[str, object], dict[str, tuple[int, ...]]]] = {
    "scrfd": (modelgen.make_scrfd, {}, {"input.1": (3, 96, 128)}),
    "arcface": (modelgen.make_arcface, {}, {"input.1": (3, 112, 112)}),
    "landmark_2d106": (modelgen.make_landmark_2d106, {}, {"data": (3, 192, 192)}),
    "inswapper": (modelgen.make_inswapper, {}, {"target": (3, 128, 128), "source": (512,)}),
}
GPU_FAMILIES = ("scrfd", "arcface", "inswapper")


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("gpu_path")
    return {name: make(root / f"{name}.onnx", scale="tiny", **kw) for name, (make, kw, _) in FAMILIES.items()}


def _feeds(family: str, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feeds = {}
    for name, shape in FAMILIES[family][2].items():
        x = torch.rand((batch, *shape), generator=g)
        feeds[name] = torch.nn.functional.normalize(x - 0.5, dim=1) if name == "source" else x * 2 - 1
    return feeds


def _close(got: list[torch.Tensor], expected: list[torch.Tensor], rtol: float = 1e-5) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=rtol, atol=rtol * (float(e.abs().max()) or 1.0))


def _model(path: Path, nodes: list, inits: list, shape: list) -> str:
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], initializer=inits)
    opsets = [helper.make_opsetid("", 13)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets)), path)
    return str(path)


def _scaled(path: Path, *factors: float) -> str:
    """y = x * f1 * f2 * ...: float32 keeps it, float16 overflows once a partial product passes 65504
    (powers of two: exact in both)."""
    inits = [numpy_helper.from_array(np.array(f, np.float32), f"f{i}") for i, f in enumerate(factors)]
    names = ["x", *(f"t{i}" for i in range(len(factors) - 1)), "y"]
    nodes = [helper.make_node("Mul", [names[i], f"f{i}"], [names[i + 1]]) for i in range(len(factors))]
    return _model(path, nodes, inits, ["N", 8])


# ---------------------------------------------------------------------------------------------- buckets


def test_bucket_plan_and_validation() -> None:
    buckets = Buckets(DEFAULT_BUCKETS)
    assert buckets.plan(1) == [(1, 1)] and buckets.plan(3) == [(3, 4)] and buckets.plan(32) == [(32, 32)]
    assert buckets.plan(70) == [(32, 32), (32, 32), (6, 8)]
    assert Buckets((4, 8)).plan(1) == [(1, 4)]
    for bad in ((), (2, 1), (1, 1, 2), (0, 1), (1.5,), (True, 2)):
        with pytest.raises(ValueError, match="ascending"):
            Buckets(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_padded_buckets_give_the_unpadded_outputs(paths: dict[str, str], family: str) -> None:
    """The model sees bucket sizes only; the outputs are those of one unpadded run (SCRFD's heads
    merge the batch into rows; inswapper's graph fixes batch 1 and shares a 1-item source)."""
    plain = create_engine(paths[family], engine="torch")
    padded = create_engine(paths[family], engine="torch")
    padded.buckets = Buckets((1, 2, 4, 8))  # the CPU engine has none; as on CUDA
    seen: list[int] = []
    forward = padded.module.forward
    padded.module.forward = lambda **kw: (seen.append(next(iter(kw.values())).shape[0]), forward(**kw))[1]
    for batch in (1, 3, 8, 9):
        feeds = _feeds(family, batch, seed=batch)
        _close(padded(**feeds), plain(**feeds))
    if family == "inswapper":
        feeds = _feeds(family, 3)
        feeds["source"] = feeds["source"][:1]
        _close(padded(**feeds), plain(**feeds))
    assert set(seen) <= {1, 2, 4, 8} and seen[:4] == [1, 4, 8, 8]


def test_the_cpu_path_is_unchanged(paths: dict[str, str]) -> None:
    engine = create_engine(paths["arcface"], engine="torch")
    assert engine.buckets is None and engine._graphs is None and not engine.channels_last
    assert engine._twin is None and not engine.fell_back
    weight = next(b for b in engine.module.buffers() if b.dim() == 4)
    assert weight.is_contiguous()


@pytest.mark.parametrize("family", GPU_FAMILIES)
def test_channels_last_gives_the_same_outputs(paths: dict[str, str], family: str) -> None:
    model = onnx.load(paths[family])
    plain = TorchEngine(model, source=family)
    last = TorchEngine(model, source=family, channels_last=True)
    weights = [b for b in last.module.buffers() if b.dim() == 4 and b.shape[1] > 1 and b.shape[2] * b.shape[3] > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                           for w in weights)
    feeds = _feeds(family, 3)
    assert last._place(feeds[next(iter(feeds))]).is_contiguous(memory_format=torch.channels_last)
    _close(last(**feeds), plain(**feeds))


@pytest.mark.parametrize("family", GPU_FAMILIES)
def test_forward_never_waits_for_the_device(paths: dict[str, str], family: str) -> None:
    """A CUDA graph can hold only device work: the forward reads no device value on the host, and
    copies no host value to the device (no step takes a host value as data)."""
    engine = create_engine(paths[family], engine="torch")
    feeds = _feeds(family, 2)
    with count_host_syncs() as counts:
        engine.module(**feeds)
    assert not counts
    assert not [step.name for step in engine.module._steps if not step.host and any(k == 5 for k, _ in step.refs)]


# ---------------------------------------------------------------------------------------------- precision


def test_float16_that_overflows_falls_back_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _scaled(tmp_path / "overflow.onnx", 2.0**10, 2.0**10, 2.0**-20)  # x * 2**20 in the middle: inf
    engine = create_engine(path, engine="torch", dtype="float16")
    reference = create_engine(path, engine="torch")
    assert isinstance(engine, TorchEngine) and engine._twin is not None  # built before it is needed
    x = torch.rand(4, 8)
    with caplog.at_level(logging.WARNING):
        (first,) = engine(x)
        (second,) = engine(x * 2)
    warnings = [r.message for r in caplog.records if "using float32" in r.message]
    assert len(warnings) == 1 and "overflow.onnx: float16 output differs" in warnings[0]
    assert engine.fell_back and engine.dtype == torch.float32 and engine._twin is None
    assert torch.equal(first, reference(x)[0]) and torch.equal(second, reference(x * 2)[0])
    assert {b.dtype for b in engine.module.buffers() if b.is_floating_point()} == {torch.float32}


def test_bfloat16_far_off_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(x + 1000) - 1000 in bfloat16 loses x (8 bits of mantissa): finite, but far off."""
    inits = [numpy_helper.from_array(np.array(1000, np.float32), "k")]
    nodes = [helper.make_node("Add", ["x", "k"], ["t"]), helper.make_node("Sub", ["t", "k"], ["y"])]
    path = _model(tmp_path / "cancel.onnx", nodes, inits, ["N", 8])
    engine = create_engine(path, engine="torch", dtype="bfloat16")
    x = torch.rand(2, 8)
    with caplog.at_level(logging.WARNING):
        (y,) = engine(x)
    assert engine.fell_back and len([r for r in caplog.records if "bfloat16 output differs" in r.message]) == 1
    torch.testing.assert_close(y, x, rtol=0, atol=1e-4)


def test_later_output_that_is_not_finite_is_checked_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _scaled(tmp_path / "later.onnx", 2.0**10, 2.0**10, 2.0**-20)
    engine = create_engine(path, engine="torch", dtype="float16")
    x = torch.rand(2, 8)
    with caplog.at_level(logging.WARNING):
        (small,) = engine(x / 100)  # at most 1e4 in the middle: fine in float16
        assert not engine.fell_back and engine._checked and engine._twin is not None
        (big,) = engine(x + 1)  # over 1e6: inf in float16
    assert engine.fell_back and len([r for r in caplog.records if "using float32" in r.message]) == 1
    torch.testing.assert_close(small, x / 100, rtol=1e-3, atol=0)
    torch.testing.assert_close(big, x + 1)


def test_reduced_precision_that_agrees_is_kept(paths: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(paths["arcface"], engine="torch", dtype="float16")
    feeds = _feeds("arcface", 4)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            (low,) = engine(**feeds)
    assert not engine.fell_back and engine.dtype == torch.float16 and not caplog.records
    (full,) = create_engine(paths["arcface"], engine="torch")(**feeds)
    assert low.dtype == torch.float32
    assert float(torch.nn.functional.cosine_similarity(low, full).min()) > 0.99
    unchecked = create_engine(paths["arcface"], engine="torch", dtype="float16", check=False)
    assert unchecked._twin is None


# ---------------------------------------------------------------------------------------------- IOBinding


def _bound(path: str) -> tuple[OrtEngine, OrtEngine]:
    """The same model with and without IOBinding, on the CPU."""
    plain = create_engine(path, engine="onnxruntime", providers=["CPUExecutionProvider"])
    bound = create_engine(path, engine="onnxruntime", providers=["CPUExecutionProvider"])
    assert isinstance(bound, OrtEngine) and not plain.bind  # the CPU's default: numpy views
    bound.bind = True
    return plain, bound


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_iobinding_gives_the_same_outputs(paths: dict[str, str], family: str, batch: int) -> None:
    plain, bound = _bound(paths[family])
    feeds = _feeds(family, batch)
    expected = plain(**feeds)
    _close(bound(**feeds), expected, rtol=0)
    _close(bound(**feeds), expected, rtol=0)  # output shapes known: written into tensors allocated for them
    if family == "inswapper":  # fixed batch 1: item by item, a shared source
        shared = {**feeds, "source": feeds["source"][:1]}
        _close(bound(**shared), plain(**shared), rtol=0)


@pytest.mark.parametrize("bind", [False, True])
def test_inputs_that_are_not_contiguous_or_float32_still_work(paths: dict[str, str], bind: bool) -> None:
    plain, bound = _bound(paths["arcface"])
    bound.bind = bind
    x = _feeds("arcface", 3)["input.1"]
    (expected,) = plain(x)
    strided = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
    assert not strided.is_contiguous()
    _close(bound(strided), [expected], rtol=0)
    _close(bound(x.double()), [expected], rtol=0)
    _close(bound(x.half()), plain(x.half().float()), rtol=0)


def test_iobinding_reads_the_input_in_place(paths: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound input is the caller's tensor itself: no host copy, no numpy."""
    _, bound = _bound(paths["inswapper"])
    pointers: dict[str, list[int]] = {}
    make = bound.session.io_binding

    def spy() -> ort.IOBinding:
        binding = make()
        bind_input = binding.bind_input

        def record(name, device_type, device_id, element_type, shape, buffer_ptr):  # noqa: ANN001, ANN202
            pointers.setdefault(name, []).append(buffer_ptr)
            return bind_input(name, device_type, device_id, element_type, shape, buffer_ptr)

        binding.bind_input = record  # type: ignore[method-assign]
        return binding

    monkeypatch.setattr(bound.session, "io_binding", spy)
    feeds = _feeds("inswapper", 3)
    bound(**feeds)  # learns the output shapes: one more run
    pointers.clear()
    with count_host_syncs() as counts:
        (out,) = bound(**feeds)
    assert not counts, counts
    target, source = feeds["target"], feeds["source"]
    step = target[0].numel() * target.element_size()
    assert pointers["target"] == [target.data_ptr() + i * step for i in range(3)]
    assert pointers["source"] == [source.data_ptr() + i * 512 * 4 for i in range(3)]
    assert out.shape == (3, 3, 128, 128)


def test_numpy_path_counts_its_views(paths: dict[str, str]) -> None:
    """The CPU's default reads numpy views (what the counter sees), the bound path none."""
    plain, bound = _bound(paths["arcface"])
    x = _feeds("arcface", 2)["input.1"]
    plain(x), bound(x)
    with count_host_syncs() as viewed:
        plain(x)
    with count_host_syncs() as bound_counts:
        bound(x)
    assert viewed["numpy"] == 1 and not bound_counts


# ---------------------------------------------------------------------------------------------- TensorRT


def test_tensorrt_options_from_buckets_and_declared_shapes(tmp_path: Path) -> None:
    cache = tmp_path / "trt"
    options = tensorrt_options({"input.1": [None, 3, 112, 112]}, DEFAULT_BUCKETS, cache, fp16=False, device_id=1)
    assert options == {
        "device_id": "1",
        "trt_fp16_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": "input.1:1x3x112x112",
        "trt_profile_opt_shapes": "input.1:8x3x112x112",
        "trt_profile_max_shapes": "input.1:32x3x112x112",
    }
    two = tensorrt_options({"a": ["N", 4], "b": ["N", 2, 2], "c": [1, 5]}, (2, 4), cache)
    assert two["trt_profile_min_shapes"] == "a:2x4,b:2x2x2" and two["trt_profile_max_shapes"] == "a:4x4,b:4x2x2"
    assert two["trt_fp16_enable"] == "True"
    # Image size dynamic too (SCRFD), or nothing dynamic (inswapper): no profile.
    for shapes in ({"input.1": [1, 3, "?", "?"]}, {"target": [1, 3, 128, 128], "source": [1, 512]}):
        assert not [k for k in tensorrt_options(shapes, DEFAULT_BUCKETS, cache) if "profile" in k]


def test_default_tensorrt_cache_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_tensorrt_cache() == tmp_path / "xdg" / "facestream" / "tensorrt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_tensorrt_cache() == tmp_path / ".cache" / "facestream" / "tensorrt"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.skipif("TensorrtExecutionProvider" in ort.get_available_providers(), reason="TensorRT is here")
def test_tensorrt_missing_says_what_to_install(paths: dict[str, str]) -> None:
    for device in ("cpu", "cuda"):
        with pytest.raises(ModelError) as exc:
            create_engine(paths["arcface"], engine="tensorrt", device=device)
        message = _one_line(exc)
        assert message.startswith("models.engine tensorrt needs TensorRT and onnxruntime-gpu: "
                                  "pip install onnxruntime-gpu tensorrt (found onnxruntime ")
        assert "CPUExecutionProvider" in message


def test_tensorrt_provider_without_the_package(paths: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu lists TensorRT, but TensorRT itself is not installed."""
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # importing it fails
    with pytest.raises(ModelError, match="pip install onnxruntime-gpu tensorrt") as exc:
        create_engine(paths["arcface"], engine="tensorrt", device="cuda")
    assert "with TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider" in _one_line(exc)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu is here")
def test_onnxruntime_on_cuda_without_onnxruntime_gpu(paths: dict[str, str]) -> None:
    with pytest.raises(ModelError) as exc:
        create_engine(paths["arcface"], engine="onnxruntime", device="cuda")
    assert _one_line(exc).startswith("models.engine onnxruntime on a CUDA device needs onnxruntime-gpu: "
                                     "pip uninstall onnxruntime && pip install onnxruntime-gpu (found onnxruntime ")
    # Providers named explicitly are taken as they are.
    engine = create_engine(paths["arcface"], engine="onnxruntime", device="cuda", providers=["CPUExecutionProvider"])
    assert engine.providers == ["CPUExecutionProvider"]


# ---------------------------------------------------------------------------------------------- settings


def test_model_settings_for_the_engines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    options = ModelSettings().options(cpu)
    assert (options.engine, options.dtype, options.tf32, options.tensorrt_cache) == ("onnxruntime", "float32", False, None)
    assert options.buckets == DEFAULT_BUCKETS and options.cuda_graphs
    options = ModelSettings(tf32=True, buckets=[1, 4], cuda_graphs=False).options(cuda)  # type: ignore[arg-type]
    assert (options.engine, options.tf32, options.buckets, options.cuda_graphs) == ("torch", True, (1, 4), False)
    trt = ModelSettings(engine="tensorrt").options(cuda)
    assert trt.dtype == "float16" and trt.tensorrt_cache == str(tmp_path / "facestream" / "tensorrt")
    trt = ModelSettings(engine="tensorrt", dtype="float32", cache_dir="/cache").options(cuda)
    assert trt.dtype == "float32" and trt.tensorrt_cache == "/cache"
    for bad in ([], [2, 1], [0, 1], [1, 1]):
        with pytest.raises(FieldError, match="buckets must be positive integers in ascending order"):
            ModelSettings(buckets=bad)  # type: ignore[arg-type]


def test_engine_settings_from_overrides() -> None:
    settings = load_settings(overrides=["models.cuda_graphs=off", "models.buckets=[1, 2, 4]", "models.tf32=true",
                                        "models.engine=tensorrt"])
    models = settings.models
    assert (models.cuda_graphs, models.buckets, models.tf32, models.engine) == (False, (1, 2, 4), True, "tensorrt")
    assert load_settings().models.cuda_graphs == "auto"
    with pytest.raises(ConfigError, match="at models.buckets: must be positive integers in ascending order"):
        load_settings(overrides=["models.buckets=[4, 2]"])
    with pytest.raises(ConfigError, match="at models.cuda_graphs"):
        load_settings(overrides=["models.cuda_graphs=sometimes"])


@pytest.mark.skipif("TensorrtExecutionProvider" in ort.get_available_providers(), reason="TensorRT is here")
def test_cli_tensorrt_without_tensorrt_is_one_line(tmp_path: Path, clip: Callable[..., Path]) -> None:
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    modelgen.make_scrfd(pack / "det_10g.onnx", scale="tiny", seed=1)
    modelgen.make_landmark_2d106(pack / "2d106det.onnx", seed=2)
    modelgen.make_arcface(pack / "w600k_r50.onnx", seed=4)
    out = tmp_path / "out.mp4"
    proc = run_cli("run", str(clip("engines.mp4")), "-o", str(out), "--preset", "analyze", "-q",
                   "--set", "models.pack=insightface", "--set", f"models.dir={pack}",
                   "--set", "models.engine=tensorrt", "--set", f"models.cache_dir={tmp_path / 'trt'}",
                   env={"HOME": str(tmp_path)})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("facestream: error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr
    assert "models.engine tensorrt needs TensorRT and onnxruntime-gpu: pip install onnxruntime-gpu tensorrt" in errors[0]
    assert "Traceback" not in proc.stderr and not out.exists()


# ---------------------------------------------------------------------------------------------- CUDA


@needs_cuda
@skip_no_cuda
@pytest.mark.parametrize("family", GPU_FAMILIES)
def test_cuda_graphs_buckets_and_channels_last_match_eager_float32(
    paths: dict[str, str], family: str, caplog: pytest.LogCaptureFixture
) -> None:
    eager = TorchEngine(onnx.load(paths[family]), source=family, device="cuda", buckets=None, cuda_graphs=False,
                        channels_last=False)
    fast = create_engine(paths[family], engine="torch", device="cuda")
    assert isinstance(fast, TorchEngine) and fast.channels_last and fast.buckets is not None
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32
    with caplog.at_level(logging.WARNING):
        for batch in (1, 3, 8, 9):
            feeds = {k: v.cuda() for k, v in _feeds(family, batch, seed=batch).items()}
            got = fast(**feeds)
            assert all(g.is_cuda and g.dtype == torch.float32 for g in got)
            _close(got, eager(**feeds), rtol=1e-4)
            again = fast(**feeds)  # a replay: fresh outputs, not the static buffers
            assert all(a.data_ptr() != g.data_ptr() for a, g in zip(again, got))
            _close(again, got, rtol=0)
    assert not [r for r in caplog.records if "CUDA graph" in r.message]
    assert fast._graphs is not None and len(fast._graphs) == 3  # buckets 1, 4 and 8 (9 = 8 + 1)


@needs_cuda
@skip_no_cuda
def test_float16_check_on_cuda_parks_the_twin_on_the_host(paths: dict[str, str]) -> None:
    engine = create_engine(paths["arcface"], engine="torch", device="cuda", dtype="float16")
    assert next(engine._twin.module.buffers()).is_cuda  # type: ignore[union-attr]
    engine(**{k: v.cuda() for k, v in _feeds("arcface", 3).items()})
    assert not engine.fell_back and not next(engine._twin.module.buffers()).is_cuda  # type: ignore[union-attr]


@needs_cuda
@skip_no_cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_iobinding_on_cuda_matches_the_cpu(paths: dict[str, str], family: str) -> None:
    cpu = create_engine(paths[family], engine="onnxruntime", providers=["CPUExecutionProvider"])
    gpu = create_engine(paths[family], engine="onnxruntime", device="cuda")
    assert isinstance(gpu, OrtEngine) and gpu.bind and gpu.providers[0] == "CUDAExecutionProvider"
    for batch in (1, 3):
        feeds = _feeds(family, batch)
        got = gpu(**{k: v.cuda() for k, v in feeds.items()})
        assert all(g.is_cuda for g in got)
        _close([g.cpu() for g in got], cpu(**feeds), rtol=1e-4)
