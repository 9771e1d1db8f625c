"""The two engines agree on every generated model family, at batch 1 and batch 8."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from facestream.facelib.models.engines import Engine, OrtEngine, TorchEngine, create_engine, default_providers
from facestream.facelib.models.onnx_torch import ORT_HINT, UnsupportedOperatorError
from tests import modelgen

needs_cuda = pytest.mark.needs_cuda
skip_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# name -> (generator, kwargs, per-item input shapes)
FAMILIES: dict[str, tuple[Callable[..., str], dict[str, object], dict[str, tuple[int, ...]]]] = {
    "scrfd": (modelgen.make_scrfd, {}, {"input.1": (3, 96, 128)}),
    "scrfd_batched": (modelgen.make_scrfd, {"batched": True}, {"input.1": (3, 64, 96)}),
    "scrfd_nokps_fixed": (
        modelgen.make_scrfd,
        {"with_kps": False, "fixed_size": (96, 64)},
        {"input.1": (3, 64, 96)},
    ),
    "arcface": (modelgen.make_arcface, {}, {"input.1": (3, 112, 112)}),
    "arcface_mxnet": (modelgen.make_arcface, {"mxnet_style": True}, {"input.1": (3, 112, 112)}),
    "landmark_2d106": (modelgen.make_landmark_2d106, {}, {"data": (3, 192, 192)}),
    "landmark_3d68": (modelgen.make_landmark_3d68, {}, {"data": (3, 192, 192)}),
    "inswapper": (modelgen.make_inswapper, {}, {"target": (3, 128, 128), "source": (512,)}),
}


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("engines")
    return {
        name: make(root / f"{name}.onnx", scale="tiny", **kw)
        for name, (make, kw, _) in FAMILIES.items()
    }


def _feeds(
    shapes: dict[str, tuple[int, ...]], batch: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feeds = {}
    for name, shape in shapes.items():
        x = torch.rand((batch, *shape), generator=g)
        if name == "source":  # a normalised latent
            x = torch.nn.functional.normalize(x - 0.5, dim=1)
        elif name == "input.1" or name == "data":
            x = x * 2 - 1
        feeds[name] = x
    return feeds


def _close(got: list[torch.Tensor], expected: list[torch.Tensor], rtol: float = 1e-4) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype == torch.float32
        scale = float(e.abs().max()) or 1.0
        torch.testing.assert_close(g, e, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_torch_matches_onnxruntime(paths: dict[str, str], family: str, batch: int) -> None:
    shapes = FAMILIES[family][2]
    feeds = _feeds(shapes, batch)
    torch_engine = create_engine(paths[family], engine="torch")
    ort_engine = create_engine(
        paths[family], engine="onnxruntime", providers=["CPUExecutionProvider"]
    )
    expected = ort_engine(**feeds)
    _close(torch_engine(**feeds), expected)
    _close(torch_engine(*feeds.values()), expected)
    if batch > 1:  # onnxruntime's batch equals separate runs (fixed-batch graphs run item by item)
        singles = [ort_engine(**{k: v[i : i + 1] for k, v in feeds.items()}) for i in range(batch)]
        _close(expected, [torch.cat(parts) for parts in zip(*singles)], rtol=1e-6)


def test_inswapper_batch_matches_separate_onnxruntime_runs(paths: dict[str, str]) -> None:
    feeds = _feeds(FAMILIES["inswapper"][2], 8, seed=3)
    (batched,) = create_engine(paths["inswapper"], engine="torch")(**feeds)
    session = create_engine(paths["inswapper"], engine="onnxruntime").session
    for i in range(8):
        (single,) = session.run(None, {k: v[i : i + 1].numpy() for k, v in feeds.items()})
        torch.testing.assert_close(
            batched[i : i + 1], torch.from_numpy(single), rtol=1e-5, atol=1e-5
        )


def test_inswapper_shared_source_broadcasts(paths: dict[str, str]) -> None:
    feeds = _feeds(FAMILIES["inswapper"][2], 4, seed=5)
    feeds["source"] = feeds["source"][:1]
    got = create_engine(paths["inswapper"], engine="torch")(**feeds)
    expected = create_engine(paths["inswapper"], engine="onnxruntime")(**feeds)
    _close(got, expected)
    assert got[0].shape == (4, 3, 128, 128)


def test_engine_metadata(paths: dict[str, str]) -> None:
    for kind in ("torch", "onnxruntime"):
        engine = create_engine(paths["inswapper"], engine=kind)
        assert isinstance(engine, Engine)
        assert engine.input_names == ["target", "source"]
        assert engine.output_names == ["output"]
        assert engine.input_shapes == {"target": [1, 3, 128, 128], "source": [1, 512]}
        assert engine.device == torch.device("cpu")
        emap = engine.initializers_last()
        assert emap.shape == (512, 512) and emap.dtype == np.float32
        reference = numpy_helper.to_array(onnx.load(paths["inswapper"]).graph.initializer[-1])
        np.testing.assert_array_equal(emap, reference)
        big = [t for t in engine.model.graph.initializer[:-1] if t.dims and np.prod(t.dims) > 1024]
        assert big and all(not t.raw_data for t in big)  # weights are not kept twice
    scrfd = create_engine(paths["scrfd"], engine="torch")
    assert scrfd.input_shapes == {"input.1": [1, 3, "?", "?"]}
    assert scrfd.output_names[:3] == ["score_8", "score_16", "score_32"]
    assert create_engine(paths["arcface"], engine="onnxruntime").input_shapes == {
        "input.1": [None, 3, 112, 112]
    }


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
def test_wrong_input_names(paths: dict[str, str], kind: str) -> None:
    engine = create_engine(paths["inswapper"], engine=kind)
    target = torch.rand(1, 3, 128, 128)
    with pytest.raises(ValueError, match=r"expects inputs \['target', 'source'\]"):
        engine(target=target, latent=torch.rand(1, 512))
    with pytest.raises(ValueError, match="missing"):
        engine(target)


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
def test_invalid_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        create_engine(path, engine=kind)


def test_unsupported_operator_points_to_onnxruntime(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Tile", ["x", "reps"], ["t"], name="tile0"),
        helper.make_node("Relu", ["t"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([2, 1], np.int64), "reps")],
    )
    path = tmp_path / "tile.onnx"
    opsets = [helper.make_opsetid("", 13)]
    onnx.save(
        helper.make_model(
            graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets)
        ),
        path,
    )
    with pytest.raises(UnsupportedOperatorError, match=r"Tile.*tile0") as err:
        create_engine(path, engine="torch")
    assert ORT_HINT in str(err.value)
    (y,) = create_engine(path, engine="onnxruntime")(torch.ones(2, 3))
    assert y.shape == (4, 3)


def test_bad_arguments(paths: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="float32"):
        create_engine(paths["arcface"], engine="onnxruntime", dtype="float16")
    with pytest.raises(ValueError, match="engine must be"):
        create_engine(paths["arcface"], engine="tensorflow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype must be"):
        create_engine(paths["arcface"], engine="torch", dtype="int8")  # type: ignore[arg-type]


def test_onnxruntime_options(paths: dict[str, str], tmp_path: Path) -> None:
    engine = create_engine(paths["arcface"], engine="onnxruntime", threads=1)
    assert isinstance(engine, OrtEngine)
    assert engine.session.get_session_options().intra_op_num_threads == 1
    assert engine.providers[-1] == "CPUExecutionProvider"
    available = [
        "AzureExecutionProvider",
        "CPUExecutionProvider",
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
    ]
    # TensorRT without an engine cache would rebuild its engine for every new shape: CUDA first.
    assert default_providers(available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert default_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    cache = tmp_path / "trt"
    first, *rest = default_providers(available, tensorrt_cache=cache)
    assert rest == ["CUDAExecutionProvider", "CPUExecutionProvider"] and cache.is_dir()
    name, options = first
    assert name == "TensorrtExecutionProvider"
    assert options["trt_engine_cache_enable"] == "True" and options["trt_engine_cache_path"] == str(cache)
    assert default_providers(["CPUExecutionProvider"], tensorrt_cache=cache) == ["CPUExecutionProvider"]


def test_engine_from_model_proto(paths: dict[str, str]) -> None:
    feeds = _feeds(FAMILIES["landmark_2d106"][2], 2)
    expected = create_engine(paths["landmark_2d106"], engine="onnxruntime")(**feeds)
    for kind in ("torch", "onnxruntime"):
        proto = onnx.load(paths["landmark_2d106"])
        before = proto.SerializeToString()
        _close(create_engine(proto, engine=kind)(**feeds), expected)
        assert proto.SerializeToString() == before  # the caller's proto is left untouched


def _half_supported(dtype: torch.dtype) -> bool:
    try:
        torch.nn.functional.conv2d(
            torch.ones(1, 1, 3, 3, dtype=dtype), torch.ones(1, 1, 3, 3, dtype=dtype)
        )
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_on_cpu_stays_close(paths: dict[str, str], dtype: str) -> None:
    if not _half_supported({"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]):
        pytest.skip(f"this torch build has no CPU {dtype} convolution")
    feeds = _feeds(FAMILIES["arcface"][2], 4)
    (reference,) = create_engine(paths["arcface"], engine="torch")(**feeds)
    engine = create_engine(paths["arcface"], engine="torch", dtype=dtype)
    assert isinstance(engine, TorchEngine)
    assert {b.dtype for b in engine.module.buffers() if b.is_floating_point()} == {
        getattr(torch, dtype)
    }
    (low,) = engine(**feeds)
    assert low.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(low, reference, dim=1)
    assert float(cosine.min()) > 0.99
    torch.testing.assert_close(low, reference, rtol=0.1, atol=0.1 * float(reference.abs().max()))


@needs_cuda
@skip_no_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_torch_engine_on_cuda(paths: dict[str, str], dtype: str) -> None:
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default; the engine turns it off
    for family in ("scrfd", "arcface", "inswapper"):
        feeds = _feeds(FAMILIES[family][2], 4)
        expected = create_engine(paths[family], engine="onnxruntime")(**feeds)
        engine = create_engine(paths[family], engine="torch", device="cuda", dtype=dtype)
        got = engine(**{k: v.cuda() for k, v in feeds.items()})
        assert all(g.is_cuda and g.dtype == torch.float32 for g in got)
        tol = 1e-4 if dtype == "float32" else 3e-2
        _close([g.cpu() for g in got], expected, rtol=tol)
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
