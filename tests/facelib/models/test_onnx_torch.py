"""Operator-by-operator agreement of the ONNX -> torch importer with onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from facestream.facelib.models.onnx_torch import ORT_HINT, OnnxModule, UnsupportedOperatorError, load_onnx

INT_MAX = np.iinfo(np.int64).max
needs_cuda = pytest.mark.needs_cuda
skip_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@dataclass(frozen=True)
class C:
    """A node input that is an initializer (constant) rather than a graph input."""

    value: np.ndarray


@dataclass
class Case:
    """One small graph: a node (or nodes) with inputs, run by both runtimes."""

    op: str
    args: list[Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 13
    n_out: int = 1
    atol: float = 1e-5


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def build(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The one-node model of a case and its feeds."""
    inputs, inits, names, feeds = [], [], [], {}
    for i, arg in enumerate(case.args):
        if arg is None:
            names.append("")
        elif isinstance(arg, C):
            inits.append(numpy_helper.from_array(arg.value, f"c{i}"))
            names.append(f"c{i}")
        else:
            arg = np.asarray(arg)
            elem = helper.np_dtype_to_tensor_dtype(arg.dtype)
            inputs.append(helper.make_tensor_value_info(f"x{i}", elem, arg.shape))
            names.append(f"x{i}")
            feeds[f"x{i}"] = arg
    outs = [f"y{i}" for i in range(case.n_out)]
    node = helper.make_node(case.op, names, outs, name="node0", **case.attrs)
    graph = helper.make_graph(
        [node], "g", inputs, [helper.make_empty_tensor_value_info(o) for o in outs], inits
    )
    return make_model(graph, case.opset), feeds


def make_model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(
        graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets)
    )


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_torch(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
    module = OnnxModule(model)
    with torch.inference_mode():
        return module(**{k: torch.from_numpy(v) for k, v in feeds.items()})


def assert_same(expected: list[np.ndarray], got: list[torch.Tensor], atol: float) -> None:
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        g_np = g.detach().cpu().numpy()
        assert g_np.shape == e.shape, (g_np.shape, e.shape)
        assert g_np.dtype == e.dtype, (g_np.dtype, e.dtype)
        if e.dtype.kind in "biu":
            np.testing.assert_array_equal(g_np, e)
        else:
            np.testing.assert_allclose(g_np, e, rtol=1e-5, atol=atol)


X4 = _rand(2, 4, 9, 11)
X8 = _rand(2, 8, 12, 12)
POS = np.abs(_rand(2, 3, 4, 5)) + 0.1

CASES: dict[str, Case] = {
    # Conv
    "conv_pads": Case("Conv", [X4, C(_rand(6, 4, 3, 3)), C(_rand(6))], {"pads": [1, 1, 1, 1]}),
    "conv_stride2": Case(
        "Conv", [X4, C(_rand(6, 4, 3, 3)), C(_rand(6))], {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    ),
    "conv_depthwise": Case("Conv", [X8, C(_rand(8, 1, 3, 3))], {"group": 8, "pads": [1, 1, 1, 1]}),
    "conv_groups2": Case("Conv", [X8, C(_rand(4, 4, 3, 3))], {"group": 2}),
    "conv_dilation": Case(
        "Conv", [X8, C(_rand(5, 8, 3, 3)), C(_rand(5))], {"dilations": [2, 2], "pads": [2, 2, 2, 2]}
    ),
    "conv_asym_pads": Case(
        "Conv", [X4, C(_rand(3, 4, 3, 3))], {"pads": [0, 1, 2, 0], "strides": [2, 1]}
    ),
    "conv_same_upper": Case(
        "Conv", [X4, C(_rand(3, 4, 4, 4))], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}
    ),
    "conv_same_lower": Case(
        "Conv", [X4, C(_rand(3, 4, 4, 4))], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}
    ),
    "conv_valid": Case("Conv", [X4, C(_rand(3, 4, 3, 3))], {"auto_pad": "VALID"}),
    "conv_7x7": Case(
        "Conv",
        [_rand(1, 3, 20, 20), C(_rand(4, 3, 7, 7)), C(_rand(4))],
        {"kernel_shape": [7, 7], "strides": [2, 2], "pads": [3, 3, 3, 3]},
    ),
    "conv_1d": Case("Conv", [_rand(2, 4, 10), C(_rand(3, 4, 3))], {"pads": [1, 1]}),
    "conv_dynamic_weight": Case("Conv", [X4, _rand(3, 4, 1, 1)]),
    # ConvTranspose
    "convt_s2_k4_p1": Case(
        "ConvTranspose",
        [X4, C(_rand(4, 3, 4, 4)), C(_rand(3))],
        {"strides": [2, 2], "pads": [1, 1, 1, 1]},
    ),
    "convt_outpad": Case(
        "ConvTranspose",
        [X4, C(_rand(4, 3, 3, 3))],
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    ),
    "convt_groups": Case(
        "ConvTranspose", [X8, C(_rand(8, 2, 3, 3)), C(_rand(4))], {"group": 2, "strides": [2, 2]}
    ),
    "convt_asym_pads": Case(
        "ConvTranspose",
        [X4, C(_rand(4, 3, 3, 3)), C(_rand(3))],
        {"strides": [2, 2], "pads": [0, 1, 1, 2]},
    ),
    "convt_output_shape": Case(
        "ConvTranspose",
        [X4, C(_rand(4, 3, 3, 3)), C(_rand(3))],
        {"strides": [2, 2], "output_shape": [18, 22]},
    ),
    "convt_same_upper": Case(
        "ConvTranspose", [X4, C(_rand(4, 3, 4, 4))], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}
    ),
    # Normalisation and activations
    "batchnorm_9": Case(
        "BatchNormalization",
        [X4, C(_rand(4)), C(_rand(4)), C(_rand(4)), C(POS.reshape(-1)[:4])],
        {"epsilon": 1e-3},
        opset=9,
    ),
    "batchnorm_15": Case(
        "BatchNormalization",
        [X4, C(_rand(4)), C(_rand(4)), C(_rand(4)), C(POS.reshape(-1)[:4])],
        opset=15,
    ),
    "batchnorm_2d": Case(
        "BatchNormalization",
        [_rand(5, 4), C(_rand(4)), C(_rand(4)), C(_rand(4)), C(POS.reshape(-1)[:4])],
    ),
    "instancenorm": Case(
        "InstanceNormalization", [X4, C(_rand(4)), C(_rand(4))], {"epsilon": 1e-4}
    ),
    "prelu_c11": Case("PRelu", [X4, C(_rand(4, 1, 1))]),
    "prelu_c_2d": Case("PRelu", [_rand(5, 4), C(_rand(4))]),
    "prelu_scalar": Case("PRelu", [X4, C(_f32(0.25))]),
    "prelu_numpy_broadcast": Case("PRelu", [X4, C(_rand(11))]),
    "relu": Case("Relu", [X4]),
    "leakyrelu": Case("LeakyRelu", [X4], {"alpha": 0.2}),
    "leakyrelu_default": Case("LeakyRelu", [X4]),
    "sigmoid": Case("Sigmoid", [X4]),
    "tanh": Case("Tanh", [X4]),
    "hardsigmoid": Case("HardSigmoid", [X4], {"alpha": 0.3, "beta": 0.4}),
    "softmax_11_coerce": Case("Softmax", [X4], {"axis": 1}, opset=11),
    "softmax_11_default": Case("Softmax", [X4], opset=11),
    "softmax_13_axis1": Case("Softmax", [X4], {"axis": 1}),
    "softmax_13_default": Case("Softmax", [X4]),
    "clip_attrs_6": Case("Clip", [X4], {"min": -0.5, "max": 0.7}, opset=6),
    "clip_inputs": Case("Clip", [X4, C(np.float32(-0.5)), C(np.float32(0.5))]),
    "clip_min_only": Case("Clip", [X4, C(np.float32(0.1))]),
    "clip_max_only": Case("Clip", [X4, None, C(np.float32(0.1))]),
    "clip_none": Case("Clip", [X4]),
    "clip_dynamic": Case("Clip", [X4, np.float32(-0.2), np.float32(0.3)]),
    # Elementwise
    "add_broadcast": Case("Add", [X4, C(_rand(4, 1, 1))]),
    "sub": Case("Sub", [X4, _rand(11)]),
    "mul": Case("Mul", [X4, C(np.float32(0.5))]),
    "div": Case("Div", [X4, POS[:1, :1, :1, :1] + X4 * 0]),
    "div_int": Case("Div", [_i64(7, -7, 9, 4), _i64(2, 2, -4, 3)]),
    "pow_scalar": Case("Pow", [POS, C(np.float32(2.0))]),
    "pow_tensor": Case("Pow", [POS, _rand(5) * 0.5]),
    "pow_int_exp": Case("Pow", [POS, C(np.int64(3))], opset=15),
    "sqrt": Case("Sqrt", [POS]),
    "neg": Case("Neg", [X4]),
    "exp": Case("Exp", [X4]),
    "abs": Case("Abs", [X4]),
    "erf": Case("Erf", [X4]),
    "floor": Case("Floor", [X4 * 3]),
    "ceil": Case("Ceil", [X4 * 3]),
    "max3": Case("Max", [X4, _rand(11), C(_rand(4, 1, 1))]),
    "min2": Case("Min", [X4, _rand(2, 4, 9, 11, seed=3)]),
    "equal": Case("Equal", [_i64(1, 2, 3, 4), _i64(1, 0, 3, 0)]),
    "greater": Case("Greater", [X4, C(np.float32(0.1))]),
    "less": Case("Less", [X4, _rand(11)]),
    "where": Case("Where", [X4 > 0, X4, C(np.float32(-1.0))]),
    # Matrix products and shapes
    "matmul_2d": Case("MatMul", [_rand(5, 7), C(_rand(7, 3))]),
    "matmul_batched": Case("MatMul", [_rand(2, 3, 5, 7), _rand(7, 4)]),
    "gemm_transB": Case("Gemm", [_rand(5, 7), C(_rand(3, 7)), C(_rand(3))], {"transB": 1}),
    "gemm_transA": Case("Gemm", [_rand(7, 5), C(_rand(7, 3)), C(_rand(1, 3))], {"transA": 1}),
    "gemm_alpha_beta": Case(
        "Gemm",
        [_rand(5, 7), C(_rand(3, 7)), C(_rand(5, 3))],
        {"transB": 1, "alpha": 0.5, "beta": 2.0},
    ),
    "gemm_no_c": Case("Gemm", [_rand(5, 7), C(_rand(7, 3))], {"alpha": 1.5}),
    "flatten_1": Case("Flatten", [X4]),
    "flatten_0": Case("Flatten", [X4], {"axis": 0}),
    "flatten_neg": Case("Flatten", [X4], {"axis": -1}),
    "reshape_zero_minus1": Case("Reshape", [X4, C(_i64(0, -1, 11))]),
    "reshape_dynamic": Case("Reshape", [X4, _i64(-1, 4)]),
    "reshape_allowzero": Case(
        "Reshape", [np.zeros((0, 6), np.float32), C(_i64(0, 3, 2))], {"allowzero": 1}, opset=14
    ),
    "transpose_default": Case("Transpose", [X4]),
    "transpose_perm": Case("Transpose", [X4], {"perm": [0, 2, 3, 1]}),
    "concat": Case("Concat", [X4, C(_rand(2, 3, 9, 11))], {"axis": 1}),
    "concat_neg_axis": Case("Concat", [X4, _rand(2, 4, 9, 2)], {"axis": -1}),
    "split_attr_11": Case("Split", [X8], {"axis": 1, "split": [2, 6]}, opset=11, n_out=2),
    "split_input_13": Case("Split", [X8, C(_i64(3, 5))], {"axis": 1}, n_out=2),
    "split_equal": Case("Split", [X8], {"axis": 2}, n_out=3),
    "split_num_outputs_18": Case(
        "Split", [_rand(2, 7)], {"axis": 1, "num_outputs": 3}, opset=18, n_out=3
    ),
    "slice_attrs_9": Case(
        "Slice", [X4], {"starts": [1, 2], "ends": [3, -1], "axes": [1, 3]}, opset=9
    ),
    "slice_negative": Case("Slice", [X4, C(_i64(-3, 1)), C(_i64(INT_MAX, -2)), C(_i64(2, -1))]),
    "slice_steps": Case(
        "Slice", [X4, C(_i64(0, 1)), C(_i64(INT_MAX, 10)), C(_i64(2, 3)), C(_i64(2, 3))]
    ),
    "slice_negative_steps": Case(
        "Slice", [X4, C(_i64(-1, 8)), C(_i64(-INT_MAX, 0)), C(_i64(-1, 2)), C(_i64(-1, -3))]
    ),
    "slice_dynamic": Case("Slice", [X4, _i64(1), _i64(3), _i64(1)]),
    "squeeze_attr_11": Case("Squeeze", [_rand(2, 1, 3, 1)], {"axes": [1, -1]}, opset=11),
    "squeeze_input_13": Case("Squeeze", [_rand(2, 1, 3, 1), C(_i64(1))]),
    "squeeze_all": Case("Squeeze", [_rand(2, 1, 3, 1)]),
    "unsqueeze_attr_11": Case("Unsqueeze", [_rand(2, 3)], {"axes": [0, 3]}, opset=11),
    "unsqueeze_input_13": Case("Unsqueeze", [_rand(2, 3), C(_i64(-1, 1))]),
    "gather_scalar": Case("Gather", [X4, C(np.int64(2))], {"axis": 1}),
    "gather_vector_neg": Case("Gather", [X4, C(_i64(0, -1, 3))], {"axis": 3}),
    "gather_2d": Case("Gather", [_rand(6, 5), _i64(1, 2, 0, 5).reshape(2, 2)]),
    "shape": Case("Shape", [X4]),
    "shape_start_end_15": Case("Shape", [X4], {"start": 1, "end": -1}, opset=15),
    "constant_of_shape_float": Case(
        "ConstantOfShape", [C(_i64(2, 3))], {"value": numpy_helper.from_array(_f32(1.5))}
    ),
    "constant_of_shape_int": Case(
        "ConstantOfShape", [_i64(3, 2)], {"value": numpy_helper.from_array(_i64(7))}
    ),
    "constant_of_shape_default": Case("ConstantOfShape", [C(_i64(4))]),
    "cast_float_int": Case("Cast", [X4 * 5], {"to": TensorProto.INT64}),
    "cast_int_float": Case("Cast", [_i64(1, 2, 3)], {"to": TensorProto.FLOAT}),
    "cast_float_bool": Case("Cast", [np.round(X4)], {"to": TensorProto.BOOL}),
    "identity": Case("Identity", [X4]),
    "dropout": Case("Dropout", [X4], opset=11),
    # Pooling and reductions
    "maxpool_k3s2p1": Case(
        "MaxPool", [X8], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    ),
    "maxpool_ceil": Case(
        "MaxPool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}
    ),
    "maxpool_asym": Case("MaxPool", [X4], {"kernel_shape": [3, 3], "pads": [0, 0, 1, 2]}),
    "maxpool_dilation": Case(
        "MaxPool", [X8], {"kernel_shape": [2, 2], "dilations": [2, 2]}, opset=12
    ),
    "maxpool_same_upper": Case(
        "MaxPool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}
    ),
    "maxpool_1d": Case("MaxPool", [_rand(2, 3, 10)], {"kernel_shape": [3], "strides": [2]}),
    "avgpool_exclude_pad": Case(
        "AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    ),
    "avgpool_include_pad": Case(
        "AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}
    ),
    "avgpool_asym_exclude": Case(
        "AveragePool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 2, 1]}
    ),
    "avgpool_asym_include": Case(
        "AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1], "count_include_pad": 1}
    ),
    "avgpool_ceil": Case(
        "AveragePool", [X8], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}
    ),
    "global_avgpool": Case("GlobalAveragePool", [X4]),
    "reducemean_attr": Case("ReduceMean", [X4], {"axes": [2, 3]}),
    "reducemean_nokeep": Case("ReduceMean", [X4], {"axes": [-1], "keepdims": 0}),
    "reducemean_all": Case("ReduceMean", [X4]),
    "reducemean_input_18": Case("ReduceMean", [X4, C(_i64(1, 2))], opset=18),
    "reducesum_input_13": Case("ReduceSum", [X4, C(_i64(1))], {"keepdims": 0}),
    "reducesum_attr_11": Case("ReduceSum", [X4], {"axes": [0, 2]}, opset=11),
    "reducesum_noop": Case(
        "ReduceSum", [X4, C(np.zeros(0, np.int64))], {"noop_with_empty_axes": 1}
    ),
    # Pad and Expand
    "pad_constant": Case(
        "Pad", [X4, C(_i64(0, 0, 1, 2, 0, 0, 3, 1)), C(np.float32(0.5))], opset=11
    ),
    "pad_reflect": Case(
        "Pad", [X4, C(_i64(0, 0, 3, 3, 0, 0, 3, 3))], {"mode": "reflect"}, opset=11
    ),
    "pad_edge": Case("Pad", [X4, C(_i64(0, 0, 1, 2, 0, 0, 2, 1))], {"mode": "edge"}, opset=13),
    "pad_attrs_10": Case("Pad", [X4], {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": 2.0}, opset=10),
    "pad_negative": Case("Pad", [X4, C(_i64(0, 0, -1, 1, 0, 0, 1, -2))], opset=13),
    "pad_reflect_3d": Case("Pad", [_rand(2, 5, 7), C(_i64(0, 0, 2, 0, 0, 3))], {"mode": "reflect"}),
    "pad_axes_18": Case(
        "Pad", [X4, C(_i64(1, 2, 2, 1)), None, C(_i64(2, 3))], {"mode": "edge"}, opset=18
    ),
    "pad_dynamic": Case("Pad", [X4, _i64(0, 0, 1, 1, 0, 0, 1, 1)], opset=13),
    "expand": Case("Expand", [_rand(3, 1), C(_i64(2, 3, 4))]),
    "expand_bidirectional": Case("Expand", [_rand(3, 1), C(_i64(1, 4))]),
}

_RESIZE_X = _rand(2, 3, 5, 7)
for coord in (
    "half_pixel",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
):
    for rounding in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        for tag, scales in (
            ("up2", _f32(1, 1, 2, 2)),
            ("down", _f32(1, 1, 0.6, 0.5)),
            ("up1.5", _f32(1, 1, 1.5, 1.7)),
        ):
            CASES[f"resize_nearest_{coord}_{rounding}_{tag}"] = Case(
                "Resize",
                [_RESIZE_X, C(np.zeros(0, np.float32)), C(scales)],
                {
                    "mode": "nearest",
                    "coordinate_transformation_mode": coord,
                    "nearest_mode": rounding,
                },
            )
for coord in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
    for tag, scales in (
        ("up2", _f32(1, 1, 2, 2)),
        ("down", _f32(1, 1, 0.6, 0.5)),
        ("up1.5", _f32(1, 1, 1.5, 1.7)),
    ):
        CASES[f"resize_linear_{coord}_{tag}"] = Case(
            "Resize",
            [_RESIZE_X, C(np.zeros(0, np.float32)), C(scales)],
            {"mode": "linear", "coordinate_transformation_mode": coord},
        )
    CASES[f"resize_linear_{coord}_sizes"] = Case(
        "Resize",
        [_RESIZE_X, None, None, C(_i64(2, 3, 11, 4))],
        {"mode": "linear", "coordinate_transformation_mode": coord},
        opset=13,
    )
CASES["resize_nearest_sizes"] = Case(
    "Resize",
    [_RESIZE_X, C(np.zeros(0, np.float32)), C(np.zeros(0, np.float32)), C(_i64(2, 3, 10, 14))],
    {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
    opset=11,
)
CASES["resize_nearest_dynamic_sizes"] = Case(
    "Resize", [_RESIZE_X, None, None, _i64(2, 3, 9, 3)], {"mode": "nearest"}
)
CASES["resize_10_nearest"] = Case(
    "Resize", [_RESIZE_X, C(_f32(1, 1, 2, 3))], {"mode": "nearest"}, opset=10
)
CASES["resize_10_nearest_down"] = Case(
    "Resize", [_RESIZE_X, C(_f32(1, 1, 0.5, 0.6))], {"mode": "nearest"}, opset=10
)
CASES["resize_10_linear"] = Case(
    "Resize", [_RESIZE_X, C(_f32(1, 1, 2, 1.5))], {"mode": "linear"}, opset=10
)
CASES["upsample_9_nearest"] = Case(
    "Upsample", [_RESIZE_X, C(_f32(1, 1, 2, 2))], {"mode": "nearest"}, opset=9
)
CASES["upsample_9_linear"] = Case(
    "Upsample", [_RESIZE_X, C(_f32(1, 1, 2, 3))], {"mode": "linear"}, opset=9
)
CASES["upsample_7_attr"] = Case(
    "Upsample", [_RESIZE_X], {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 2.0]}, opset=7
)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_operator_matches_onnxruntime(case: Case) -> None:
    model, feeds = build(case)
    assert_same(run_ort(model, feeds), run_torch(model, feeds), case.atol)


def _chain_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[str],
    inits: list[onnx.TensorProto] = (),
    opset: int = 13,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_empty_tensor_value_info(o) for o in outputs], list(inits)
    )
    return make_model(graph, opset)


def test_constant_node_and_folding() -> None:
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(_f32(2.0, 3.0))),
        helper.make_node("Constant", [], ["s"], value_ints=[1, 2]),
        helper.make_node("Unsqueeze", ["k", "ax"], ["k2"]),  # folded at load time
        helper.make_node("Reshape", ["x", "s"], ["xr"]),
        helper.make_node("Mul", ["xr", "k2"], ["y"]),
    ]
    model = _chain_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        ["y", "k"],
        [numpy_helper.from_array(_i64(1), "ax")],
    )
    feeds = {"x": _f32(1.0, -1.0)}
    assert_same(run_ort(model, feeds), run_torch(model, feeds), 1e-6)


@pytest.mark.parametrize("size", [(32, 48), (64, 64), (40, 24)])
def test_shape_subgraph_is_dynamic(size: tuple[int, int]) -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape; Shape -> Cast -> Mul -> Resize sizes."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Slice", ["shape", "two", "four"], ["hw"]),
        helper.make_node("Cast", ["hw"], ["hwf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["hwf", "half"], ["hw2f"]),
        helper.make_node("Cast", ["hw2f"], ["hw2"], to=TensorProto.INT64),
        helper.make_node("Slice", ["shape", "zero1", "two"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw2"], ["sizes"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["small"], mode="nearest"),
    ]
    inits = [
        numpy_helper.from_array(np.int64(0), "zero"),
        numpy_helper.from_array(_i64(0), "axes0"),
        numpy_helper.from_array(_i64(-1, 4), "tail"),
        numpy_helper.from_array(_i64(0), "zero1"),
        numpy_helper.from_array(_i64(2), "two"),
        numpy_helper.from_array(_i64(4), "four"),
        numpy_helper.from_array(np.float32(0.5), "half"),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, "h", "w"])
    model = _chain_model(nodes, [x_info], ["flat", "small"], inits)
    module = OnnxModule(model)
    for batch in (1, 3):
        feeds = {"x": _rand(batch, 2, *size)}
        with torch.inference_mode():
            got = module(torch.from_numpy(feeds["x"]))
        assert_same(run_ort(model, feeds), got, 1e-6)


def _batch1_model() -> onnx.ModelProto:
    """A graph exported with a hard-coded batch of 1 in Reshape, Expand and ConstantOfShape."""
    nodes = [
        helper.make_node("Gemm", ["z", "w", "b"], ["style"], transB=1),
        helper.make_node("Reshape", ["style", "shape_style"], ["style4"]),
        helper.make_node("Expand", ["style4", "shape_map"], ["style_map"]),
        helper.make_node(
            "ConstantOfShape", ["shape_map"], ["zeros"], value=numpy_helper.from_array(_f32(0.25))
        ),
        helper.make_node("Add", ["x", "style_map"], ["xs"]),
        helper.make_node("Concat", ["xs", "zeros"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "shape_out"], ["y"]),
        helper.make_node("Reshape", ["cat", "shape_rows"], ["rows"]),
    ]
    inits = [
        numpy_helper.from_array(_rand(3, 5), "w"),
        numpy_helper.from_array(_rand(3), "b"),
        numpy_helper.from_array(_i64(1, 3, 1, 1), "shape_style"),
        numpy_helper.from_array(_i64(1, 3, 4, 4), "shape_map"),
        numpy_helper.from_array(_i64(1, -1), "shape_out"),
        numpy_helper.from_array(_i64(-1, 2), "shape_rows"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 5]),
    ]
    return _chain_model(nodes, inputs, ["y", "rows"], inits)


def test_batch_rule_matches_separate_runs() -> None:
    model = _batch1_model()
    x, z = _rand(5, 3, 4, 4), _rand(5, 5)
    with torch.inference_mode():
        y, rows = OnnxModule(model)(torch.from_numpy(x), torch.from_numpy(z))
    assert y.shape == (5, 96) and rows.shape == (5 * 48, 2)
    parts = [run_ort(model, {"x": x[i : i + 1], "z": z[i : i + 1]}) for i in range(5)]
    np.testing.assert_allclose(
        y.numpy(), np.concatenate([p[0] for p in parts]), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        rows.numpy(), np.concatenate([p[1] for p in parts]), rtol=1e-5, atol=1e-5
    )


def test_batch_rule_inactive_for_batch1_and_symbolic_graphs() -> None:
    model = _batch1_model()
    x, z = _rand(1, 3, 4, 4), _rand(1, 5)
    assert_same(run_ort(model, {"x": x, "z": z}), run_torch(model, {"x": x, "z": z}), 1e-5)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with torch.inference_mode(), pytest.raises(RuntimeError, match="Reshape"):
        OnnxModule(model)(torch.from_numpy(_rand(2, 3, 4, 4)), torch.from_numpy(_rand(2, 5)))


def test_batchnorm_folding_is_exact_enough() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(a, n)
        for n, a in (
            ("w", _rand(6, 4, 3, 3)),
            ("b", _rand(6)),
            ("s", _rand(6)),
            ("t", _rand(6)),
            ("m", _rand(6)),
            ("v", np.abs(_rand(6)) + 0.5),
        )
    ]
    model = _chain_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 9, 11])], ["y"], inits
    )
    folded = OnnxModule(model)
    assert len(folded._steps) == 1
    unfolded = OnnxModule(model, fold_batchnorm=False)
    assert len(unfolded._steps) == 2
    x = torch.from_numpy(X4)
    expected = run_ort(model, {"x": X4})
    with torch.inference_mode():
        assert_same(expected, folded(x), 1e-5)
        assert_same(expected, unfolded(x), 1e-5)


def test_initializers_are_buffers_and_half_works() -> None:
    case = CASES["conv_pads"]
    model, feeds = build(case)
    module = OnnxModule(model)
    assert {b.dtype for b in module.buffers()} == {torch.float32}
    assert len(list(module.buffers())) == 2
    module = module.to(torch.bfloat16)
    with torch.inference_mode():
        (y,) = module(torch.from_numpy(feeds["x0"]))  # float32 input is cast to the module dtype
    assert y.dtype == torch.bfloat16
    np.testing.assert_allclose(y.float().numpy(), run_ort(model, feeds)[0], rtol=0.05, atol=0.1)


def test_intermediates_are_released() -> None:
    """Every intermediate is dropped right after its last consumer (graph outputs are kept)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Neg", ["a"], ["b"]),
        helper.make_node("Exp", ["b"], ["c"]),
        helper.make_node("Add", ["c", "a"], ["y"]),
    ]
    model = _chain_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])], ["y", "b"]
    )
    releases = [step.release for step in OnnxModule(model)._steps]
    assert releases == [("x",), (), (), ("c", "a")]


def test_host_values_follow_the_module_dtype() -> None:
    """Shape arithmetic stays float32 on the host; used as data it adopts the module's dtype."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "three"], ["w"], axis=0),
        helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x", "wf"], ["xs"]),
        helper.make_node("Conv", ["xs", "k"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.int64(3), "three"),
        numpy_helper.from_array(_rand(2, 4, 1, 1), "k"),
    ]
    model = _chain_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "h", "w"])],
        ["y"],
        inits,
    )
    module = OnnxModule(model)
    assert [s.host for s in module._steps] == [True, True, True, False, False]
    expected = run_ort(model, {"x": X4})
    with torch.inference_mode():
        (y,) = module.to(torch.bfloat16)(torch.from_numpy(X4))
    assert y.dtype == torch.bfloat16
    np.testing.assert_allclose(y.float().numpy(), expected[0], rtol=0.05, atol=0.05)


def test_inputs_by_name_position_and_wrong_names() -> None:
    model = _batch1_model()
    module = OnnxModule(model)
    assert module.input_names == ["x", "z"] and module.output_names == ["y", "rows"]
    x, z = torch.from_numpy(_rand(1, 3, 4, 4)), torch.from_numpy(_rand(1, 5))
    with torch.inference_mode():
        by_position = module(x, z)
        by_name = module(z=z, x=x)
        mixed = module(x, z=z)
    for a, b, c in zip(by_position, by_name, mixed):
        assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(ValueError, match=r"expects inputs \['x', 'z'\].*unknown: \['image'\]"):
        module(image=x, z=z)
    with pytest.raises(ValueError, match="missing"):
        module(x)
    with pytest.raises(ValueError, match="takes 2 inputs"):
        module(x, z, z)


def test_unsupported_operators_are_listed_with_the_hint() -> None:
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_1"),
        helper.make_node("Tile", ["v", "reps"], ["t"], name="tile_1"),
        helper.make_node("Tile", ["t", "reps"], ["t2"], name="tile_2"),
        helper.make_node("Resize", ["t2", "", "sc"], ["y"], name="resize_cubic", mode="cubic"),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    inits = [
        numpy_helper.from_array(_i64(2), "k"),
        numpy_helper.from_array(_i64(1, 2), "reps"),
        numpy_helper.from_array(_f32(1, 2), "sc"),
    ]
    model = _chain_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])], ["z"], inits
    )
    with pytest.raises(UnsupportedOperatorError) as err:
        OnnxModule(model)
    message = str(err.value)
    assert "TopK" in message and "topk_1" in message
    assert "Tile" in message and "tile_1" in message and "tile_2" not in message
    assert "Resize(mode=cubic)" in message and "Relu" not in message
    assert ORT_HINT in message
    assert isinstance(err.value, ValueError)
    assert set(err.value.operators) == {"TopK", "Tile", "Resize(mode=cubic)"}


def test_foreign_domain_is_unsupported() -> None:
    node = helper.make_node("FusedConv", ["x"], ["y"], domain="com.microsoft", name="fc")
    model = _chain_model(
        [node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])], ["y"]
    )
    with pytest.raises(UnsupportedOperatorError, match=r"com\.microsoft\.FusedConv"):
        OnnxModule(model)


@pytest.mark.parametrize("content", [b"this is not an onnx model\n", bytes(range(256)) * 8, b""])
def test_invalid_file_gives_value_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}.*not a valid ONNX model"):
        load_onnx(path)


def test_load_from_path_and_proto(tmp_path: Path) -> None:
    model, feeds = build(CASES["conv_stride2"])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with torch.inference_mode():
        a = load_onnx(path)(torch.from_numpy(feeds["x0"]))[0]
        b = load_onnx(model)(torch.from_numpy(feeds["x0"]))[0]
    assert torch.equal(a, b)


@needs_cuda
@skip_no_cuda
def test_runs_on_cuda() -> None:
    model = _batch1_model()
    module = OnnxModule(model).cuda()
    x, z = _rand(4, 3, 4, 4), _rand(4, 5)
    with torch.inference_mode():
        y, rows = module(torch.from_numpy(x).cuda(), torch.from_numpy(z).cuda())
        y_cpu, rows_cpu = OnnxModule(model)(torch.from_numpy(x), torch.from_numpy(z))
    assert y.is_cuda and rows.is_cuda
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rows.cpu(), rows_cpu, rtol=1e-4, atol=1e-4)
