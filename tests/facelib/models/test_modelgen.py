"""The generated models have the real families' signatures and load with insightface's classes."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import modelgen

insightface = pytest.importorskip("insightface")
from insightface.model_zoo import get_model  # noqa: E402

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("modelgen")
    return {
        "scrfd": modelgen.make_scrfd(root / "det.onnx", scale="tiny"),
        "arcface": modelgen.make_arcface(root / "rec.onnx", scale="tiny"),
        "arcface_mxnet": modelgen.make_arcface(
            root / "rec_mx.onnx", scale="tiny", mxnet_style=True
        ),
        "landmark_2d106": modelgen.make_landmark_2d106(root / "2d106det.onnx", scale="tiny"),
        "landmark_3d68": modelgen.make_landmark_3d68(root / "1k3d68.onnx", scale="tiny"),
        "inswapper": modelgen.make_inswapper(root / "inswapper_128.onnx", scale="tiny"),
    }


def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=CPU)


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in value.type.tensor_type.shape.dim
    ]


def _op_types(path: str) -> set[str]:
    return {n.op_type for n in onnx.load(path).graph.node}


def _photo() -> np.ndarray:
    return cv2.imread(
        os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    )


def _letterbox(img: np.ndarray, size: int = 640) -> np.ndarray:
    """What insightface's SCRFD feeds: resized into the top-left of a black square."""
    scale = size / max(img.shape[:2])
    resized = cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale)))
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas


def test_deterministic(tmp_path: Path) -> None:
    a = modelgen.make_inswapper(tmp_path / "a.onnx", seed=1)
    b = modelgen.make_inswapper(tmp_path / "b.onnx", seed=1)
    c = modelgen.make_inswapper(tmp_path / "c.onnx", seed=2)
    assert Path(a).read_bytes() == Path(b).read_bytes() != Path(c).read_bytes()
    d = modelgen.make_scrfd(tmp_path / "d.onnx", seed=1)
    e = modelgen.make_scrfd(tmp_path / "e.onnx", seed=1)
    assert Path(d).read_bytes() == Path(e).read_bytes()


def test_tiny_files_are_small(tiny: dict[str, str]) -> None:
    for path in tiny.values():
        assert os.path.getsize(path) < 2_000_000, path


def test_unknown_scale(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale must be one of"):
        modelgen.make_arcface(tmp_path / "x.onnx", scale="cpu")


def test_scrfd_signature_and_outputs(tiny: dict[str, str], tmp_path: Path) -> None:
    model = onnx.load(tiny["scrfd"])
    assert [v.name for v in model.graph.input] == ["input.1"]
    assert _dims(model.graph.input[0]) == [1, 3, "?", "?"]
    assert {
        "Conv",
        "BatchNormalization",
        "Relu",
        "Add",
        "MaxPool",
        "Resize",
        "Sigmoid",
        "Transpose",
        "Reshape",
    } <= _op_types(tiny["scrfd"])
    outputs = _session(tiny["scrfd"]).run(None, {"input.1": np.zeros((1, 3, 640, 640), np.float32)})
    counts = [80 * 80 * 2, 40 * 40 * 2, 20 * 20 * 2]
    assert [o.shape for o in outputs] == [(n, k) for k in (1, 4, 10) for n in counts]
    assert all(o.min() >= 0 and o.max() <= 1 for o in outputs[:3])

    batched = modelgen.make_scrfd(tmp_path / "b.onnx", batched=True, with_kps=False)
    outputs = _session(batched).run(None, {"input.1": np.zeros((1, 3, 256, 320), np.float32)})
    counts = [32 * 40 * 2, 16 * 20 * 2, 8 * 10 * 2]
    assert [o.shape for o in outputs] == [(1, n, k) for k in (1, 4) for n in counts]
    assert "Shape" in _op_types(batched) and "Gather" in _op_types(batched)

    fixed = onnx.load(modelgen.make_scrfd(tmp_path / "f.onnx", fixed_size=(320, 256)))
    assert _dims(fixed.graph.input[0]) == [1, 3, 256, 320]


def test_scrfd_outputs_are_useful(tiny: dict[str, str]) -> None:
    """Tens to a few hundred anchors pass 0.5 on a photo; boxes mostly 0.5-6 stride units."""
    session = _session(tiny["scrfd"])
    blobs = [
        modelgen._scrfd_blob(_letterbox(img))
        for img in (_photo(), _photo()[:, ::-1], modelgen.synthetic_image(480, 640, seed=9))
    ]
    positives = []
    for blob in blobs:
        outputs = session.run(None, {"input.1": blob})
        scores = np.concatenate(outputs[:3])
        positives.append(int((scores > 0.5).sum()))
        assert (scores < 0.5).mean() > 0.95
        boxes = np.concatenate(outputs[3:6])
        assert ((boxes > 0.5) & (boxes < 6)).mean() > 0.9
    assert 10 <= positives[0] <= 500
    assert len(set(positives)) == 3  # the scores depend on the picture


def test_scrfd_detects_with_insightface(tiny: dict[str, str]) -> None:
    detector = get_model(tiny["scrfd"], providers=CPU)
    assert type(detector).__name__ == "SCRFD"
    assert detector.use_kps and detector.fmc == 3 and detector._num_anchors == 2
    detector.prepare(0, input_size=(640, 640), det_thresh=0.5)
    photo = _photo()
    assert photo.shape == (886, 1280, 3)
    boxes, kps = detector.detect(photo, input_size=(640, 640))
    assert 1 <= len(boxes) <= 150
    assert kps.shape == (len(boxes), 5, 2)
    assert np.all(boxes[:, 4] >= 0.5)
    widths = boxes[:, 2] - boxes[:, 0]
    assert np.all(widths > 0) and np.median(widths) < photo.shape[1] / 4
    flipped, _ = detector.detect(np.ascontiguousarray(photo[:, ::-1]), input_size=(640, 640))
    assert len(flipped) != len(boxes) or not np.allclose(
        np.sort(flipped[:, 4]), np.sort(boxes[:, 4])
    )


@pytest.mark.parametrize("family", ["arcface", "arcface_mxnet"])
def test_arcface(tiny: dict[str, str], family: str) -> None:
    model = onnx.load(tiny[family])
    assert [(v.name, _dims(v)) for v in model.graph.input] == [("input.1", [None, 3, 112, 112])]
    assert [_dims(v) for v in model.graph.output] == [[None, 512]]
    assert {"Conv", "BatchNormalization", "PRelu", "Add", "Flatten", "Gemm"} <= _op_types(
        tiny[family]
    )
    first = [n.name for n in model.graph.node[:8]]
    mxnet = any(n.startswith("Sub") for n in first) and any(n.startswith("Mul") for n in first)
    assert mxnet == (family == "arcface_mxnet")
    recogniser = get_model(tiny[family], providers=CPU)
    assert type(recogniser).__name__ == "ArcFaceONNX"
    assert recogniser.input_mean == (0.0 if mxnet else 127.5)
    feats = recogniser.get_feat([modelgen.synthetic_image(112, 112, seed=s) for s in range(3)])
    assert feats.shape == (3, 512) and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])


@pytest.mark.parametrize(
    "family, width, points, dim", [("landmark_2d106", 212, 106, 2), ("landmark_3d68", 3309, 68, 3)]
)
def test_landmarks(tiny: dict[str, str], family: str, width: int, points: int, dim: int) -> None:
    model = onnx.load(tiny[family])
    assert [(v.name, _dims(v)) for v in model.graph.input] == [("data", [None, 3, 192, 192])]
    assert [(v.name, _dims(v)) for v in model.graph.output] == [("fc1", [None, width])]
    assert {"Conv", "BatchNormalization", "GlobalAveragePool", "Flatten", "Gemm"} <= _op_types(
        tiny[family]
    )
    if family == "landmark_2d106":
        assert any(a.name == "group" and a.i > 1 for n in model.graph.node for a in n.attribute)
    landmark = get_model(tiny[family], providers=CPU)
    assert type(landmark).__name__ == "Landmark"
    assert (landmark.lmk_num, landmark.lmk_dim) == (points, dim)
    blob = modelgen._landmark_blob(11)
    (pred,) = landmark.session.run(None, {"data": blob})
    assert pred.shape == (1, width)
    assert (np.abs(pred) < 1).mean() > 0.95


def test_inswapper(tiny: dict[str, str]) -> None:
    model = onnx.load(tiny["inswapper"])
    assert [(v.name, _dims(v)) for v in model.graph.input] == [
        ("target", [1, 3, 128, 128]),
        ("source", [1, 512]),
    ]
    assert [(v.name, _dims(v)) for v in model.graph.output] == [("output", [1, 3, 128, 128])]
    ops = _op_types(tiny["inswapper"])
    assert {
        "Pad",
        "Conv",
        "ReduceMean",
        "Sub",
        "Mul",
        "Sqrt",
        "Div",
        "Add",
        "Gemm",
        "Resize",
        "Reshape",
        "Expand",
    } <= ops
    assert any(
        n.op_type == "Pad" and any(a.s == b"reflect" for a in n.attribute) for n in model.graph.node
    )
    last = model.graph.initializer[-1]
    assert (
        last.name == "emap"
        and list(last.dims) == [512, 512]
        and last.data_type == TensorProto.FLOAT
    )
    assert all("emap" not in n.input for n in model.graph.node)
    swapper = get_model(tiny["inswapper"], providers=CPU)
    assert type(swapper).__name__ == "INSwapper"
    assert swapper.emap.shape == (512, 512) and swapper.input_size == (128, 128)
    latent = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    latent /= np.linalg.norm(latent)
    target = modelgen.synthetic_image(128, 128, seed=4)[..., ::-1].transpose(2, 0, 1)[None] / 255.0
    (out,) = swapper.session.run(None, {"target": target.astype(np.float32), "source": latent})
    assert out.shape == (1, 3, 128, 128)
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0.05


def test_count_flops_by_hand(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], group=2),
        helper.make_node("ConvTranspose", ["c", "wt"], ["u"], strides=[2, 2]),
        helper.make_node("Flatten", ["u"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
        helper.make_node("MatMul", ["y", "m"], ["z"]),
    ]
    inits = [
        numpy_helper.from_array(np.zeros(s, np.float32), n)
        for n, s in (
            ("w", (6, 2, 3, 3)),
            ("wt", (6, 2, 2, 2)),
            ("g", (5, 2 * 16 * 16)),
            ("m", (5, 7)),
        )
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [helper.make_opsetid("", 13)]
    path = tmp_path / "m.onnx"
    onnx.save(
        helper.make_model(
            graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets)
        ),
        path,
    )
    conv = 3 * 6 * 8 * 8 * 2 * 9
    convt = 3 * 6 * 8 * 8 * 2 * 4
    gemm = 3 * 5 * 512
    matmul = 3 * 7 * 5
    assert modelgen.count_flops(path, {"x": [3, 4, 8, 8]}) == 2 * (conv + convt + gemm + matmul)
    with pytest.raises(ValueError, match="shape of input 'x'"):
        modelgen.count_flops(path, {})


def test_count_flops_per_family(tiny: dict[str, str], tmp_path: Path) -> None:
    sizes = {
        "scrfd": {"input.1": [1, 3, 640, 640]},
        "arcface": {"input.1": [1, 3, 112, 112]},
        "landmark_2d106": {"data": [1, 3, 192, 192]},
        "landmark_3d68": {"data": [1, 3, 192, 192]},
        "inswapper": {"target": [1, 3, 128, 128], "source": [1, 512]},
    }
    for family, shapes in sizes.items():
        assert 1e6 < modelgen.count_flops(tiny[family], shapes) < 0.5e9, family
    batch4 = {"input.1": [4, 3, 112, 112]}
    assert modelgen.count_flops(tiny["arcface"], batch4) == 4 * modelgen.count_flops(
        tiny["arcface"], sizes["arcface"]
    )
    scrfd = modelgen.make_scrfd(tmp_path / "det_10g.onnx", scale="real")
    assert 9e9 < modelgen.count_flops(scrfd, sizes["scrfd"]) < 11e9
    swapper = modelgen.make_inswapper(tmp_path / "inswapper_cpu.onnx", scale="cpu")
    assert 5e9 < modelgen.count_flops(swapper, sizes["inswapper"]) < 10e9


@pytest.mark.slow
def test_count_flops_arcface_real(tmp_path: Path) -> None:
    """IResNet-50: about 12.6 GFLOPs (2 x 6.3 G multiply-adds); a 175 MB file."""
    path = modelgen.make_arcface(tmp_path / "w600k_r50.onnx", scale="real")
    assert 12e9 < modelgen.count_flops(path, {"input.1": [1, 3, 112, 112]}) < 13.5e9
