"""ONNX export (automq.model.onnx_export): the graph holds the QuantizeLinear/DequantizeLinear types each format
asks for, ONNX Runtime computes what PyTorch computes (bit for bit where the quantizers are), simulated formats
are named in the metadata, and a graph that does not match the model is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from automq.cli import main
from automq.model import onnx_export
from automq.model.onnx_export import OPSET, OnnxCheck, OnnxExportError, check_onnx, compare_onnx, export_onnx, to_onnx
from automq.cost import integer_kernel
from automq.model.arch import layer_specs
from automq.model.supernet import Supernet, load_model
from automq.numerics.formats import get_format

from _spaces import SpaceFactory

EPS32 = float(torch.finfo(torch.float32).eps)
FORMATS = {"weights": ["int4", "int8", "fp8_e4m3", "fp8_e5m2", "int2", "fp4_e2m1", "mxfp4_e2m1"],
           "activations": ["int4", "int8", "fp8_e4m3", "fp8_e5m2", "int6", "fp4_e2m1", "fp6_e3m2", "fp6_e2m3", "fp16",
                           "bf16", "mxint8"]}
# Whether each layer's input can be negative in the tiny space's largest network, read off timm's MobileNetV2: the
# normalised image, the DS block's output (its conv_pw has no activation) and every IR block's output are signed;
# what follows a ReLU6 (or the pooled ReLU6 output the classifier reads) is not.
SIGNED_INPUT = {
    "conv_stem": True, "blocks.0.0.conv_dw": False, "blocks.0.0.conv_pw": False,
    "blocks.1.0.conv_pw": True, "blocks.1.0.conv_dw": False, "blocks.1.0.conv_pwl": False,
    "blocks.1.1.conv_pw": True, "blocks.1.1.conv_dw": False, "blocks.1.1.conv_pwl": False,
    "conv_head": True, "classifier": False,
}
# The BatchNorm after each layer of the same network (timm's names), which the export folds into the layer's weight
# scales and a bias; the classifier has none.
NORM_AFTER = {
    "conv_stem": "bn1", "blocks.0.0.conv_dw": "blocks.0.0.bn1", "blocks.0.0.conv_pw": "blocks.0.0.bn2",
    **{f"blocks.1.{j}.{conv}": f"blocks.1.{j}.{norm}" for j in (0, 1)
       for conv, norm in (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))},
    "conv_head": "bn2", "classifier": None,
}
# (weight codes, signed input codes, unsigned input codes) per format with an ONNX QDQ type
QDQ = {
    "int8": (TensorProto.INT8, TensorProto.INT8, TensorProto.UINT8),
    "int4": (TensorProto.INT4, TensorProto.INT4, TensorProto.UINT4),
    "fp8_e4m3": (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FN),
    "fp8_e5m2": (TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2),
}


@pytest.fixture(scope="module")
def supernet(tiny_space: SpaceFactory) -> Supernet:
    """A supernet whose BNs hold statistics like a trained one's. A fresh BN (mean 0, var 1) maps the few
    distinct outputs of a coarse conv (int2 weights x int6 inputs) onto the next quantizer's grid so that
    whole groups of them lie within an ulp of its rounding boundaries, where a reordered float sum flips them."""
    torch.manual_seed(0)
    supernet = Supernet(tiny_space(formats=FORMATS)).eval()
    with torch.no_grad():
        for bn in (m for m in supernet.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.5)
    return supernet


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def calibrated(supernet: Supernet, w_fmt: str, a_fmt: str, images: torch.Tensor, arch: str = "largest"):
    """The extracted network ``arch`` in ``w_fmt``/``a_fmt``, its scales initialised on ``images``."""
    candidate = supernet.space.uniform(w_fmt, a_fmt, arch)
    model = supernet.extract(candidate).eval()
    with torch.no_grad():
        model(images)
    return model, candidate


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def layer_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [node for node in graph.node if node.op_type in ("Conv", "Gemm")]


def with_outputs(proto: onnx.ModelProto, names: list[str]) -> ort.InferenceSession:
    """A session on a copy of ``proto`` that also returns the tensors ``names``."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("fmt", list(QDQ))
def test_each_layer_reads_dequantized_codes_of_its_format(supernet, images, fmt) -> None:
    model, candidate = calibrated(supernet, fmt, fmt, images)
    graph = to_onnx(model, candidate, images[:1]).graph
    made_by, initializers = producers(graph), {init.name: init for init in graph.initializer}
    weight_type, signed_type, unsigned_type = QDQ[fmt]
    names = [name for name, module in model.named_modules() if hasattr(module, "w_quant")]
    assert names == list(SIGNED_INPUT) and len(layer_nodes(graph)) == len(names)
    for name, node in zip(names, layer_nodes(graph)):
        weight_dq = made_by[node.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        assert onnx.helper.get_attribute_value(weight_dq.attribute[0]) == 0  # axis: per output channel
        codes, scale = initializers[weight_dq.input[0]], initializers[weight_dq.input[1]]
        out_channels = model.get_submodule(name).weight.shape[0]
        assert (codes.data_type, list(scale.dims)) == (weight_type, [out_channels])
        input_dq = made_by[node.input[0]]
        quantize = made_by[input_dq.input[0]]
        assert (input_dq.op_type, quantize.op_type) == ("DequantizeLinear", "QuantizeLinear")
        expected = signed_type if SIGNED_INPUT[name] else unsigned_type
        assert initializers[quantize.input[2]].data_type == expected, name  # the zero point sets the type
        assert numpy_helper.to_array(initializers[quantize.input[2]]).astype(np.float32) == 0
        assert list(initializers[input_dq.input[1]].dims) == []  # one scale per tensor


def test_the_model_says_int4_needs_opset_21(supernet, images) -> None:
    model, candidate = calibrated(supernet, "int4", "int4", images)
    proto = to_onnx(model, candidate, images[:1])
    assert [(op.domain, op.version) for op in proto.opset_import] == [("", OPSET)] and OPSET == 21


def folded_factor(model: torch.nn.Module, name: str) -> np.ndarray:
    """gamma / sqrt(var + eps) of the BatchNorm after layer ``name``, per output channel (1 without one)."""
    if NORM_AFTER[name] is None:
        return np.ones(1)
    norm = model.get_submodule(NORM_AFTER[name])
    return (norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)).detach().numpy()


@pytest.mark.parametrize("fmt", list(QDQ))
def test_weight_codes_are_pytorch_s_and_their_scales_carry_the_folded_batch_norm(supernet, images, fmt) -> None:
    """Codes times the learned scales are the weights PyTorch uses, bit for bit; the ONNX scales are the learned
    ones times the BatchNorm's factor (float64), rounded once to float32: within half a float32 ulp."""
    model, candidate = calibrated(supernet, fmt, fmt, images)
    graph = to_onnx(model, candidate, images[:1]).graph
    made_by, initializers = producers(graph), {init.name: init for init in graph.initializer}
    for (name, module), node in zip(((n, m) for n, m in model.named_modules() if hasattr(m, "w_quant")),
                                    layer_nodes(graph)):
        weight_dq = made_by[node.input[1]]
        codes = numpy_helper.to_array(initializers[weight_dq.input[0]]).astype(np.float32)  # onnx's own decoding
        learned = module.w_quant.scales[fmt].detach().numpy()
        with torch.no_grad():
            used = module.w_quant(module.weight, fmt).numpy()
        np.testing.assert_array_equal(codes * learned.reshape([-1] + [1] * (codes.ndim - 1)), used, err_msg=name)
        scale = numpy_helper.to_array(initializers[weight_dq.input[1]])
        np.testing.assert_allclose(scale, learned * folded_factor(model, name), rtol=EPS32 / 2, atol=0, err_msg=name)


def test_fp8_codes_are_e4m3fn_bytes(supernet, images) -> None:
    """The stored bytes, decoded by ml_dtypes (not onnx), times the learned scales are the weights PyTorch uses."""
    model, candidate = calibrated(supernet, "fp8_e4m3", "fp8_e4m3", images)
    initializers = {init.name: init for init in to_onnx(model, candidate, images[:1]).graph.initializer}
    codes = initializers["conv_stem.weight_codes"]
    decoded = np.frombuffer(codes.raw_data, dtype=ml_dtypes.float8_e4m3fn).astype(np.float32).reshape(codes.dims)
    learned = model.conv_stem.w_quant.scales["fp8_e4m3"].detach().numpy()
    with torch.no_grad():
        used = model.conv_stem.w_quant(model.conv_stem.weight, "fp8_e4m3").numpy()
    np.testing.assert_array_equal(decoded * learned.reshape(-1, 1, 1, 1), used)


def test_input_codes_are_pytorch_s_even_where_dividing_by_the_scale_rounds_differently(supernet, images) -> None:
    """Images whose pixels lie one float32 ulp either side of every int8 rounding boundary of the stem's input:
    there ``x / s`` (QuantizeLinear's arithmetic) and ``x * (1/s)`` (the project's) round to different codes for
    many pixels, and the exported graph must give the project's."""
    model, candidate = calibrated(supernet, "int8", "int8", images)
    scale = float(model.conv_stem.a_quant.scales["int8"].detach())
    boundaries = (np.arange(-128, 127, dtype=np.float32) + np.float32(0.5)) * np.float32(scale)
    near = np.concatenate([np.nextafter(boundaries, np.float32(np.inf)), np.nextafter(boundaries, -np.float32(np.inf)),
                           boundaries])
    pixels = torch.from_numpy(np.resize(near, 4 * 16 * 16).reshape(4, 1, 16, 16))
    by_division = torch.round(pixels / scale).clamp(-128, 127)
    with torch.no_grad():
        expected = model.conv_stem.a_quant(pixels, "int8")
    assert (by_division * scale != expected).sum() > 10  # the two arithmetics do disagree on these pixels
    proto = to_onnx(model, candidate, images[:1])
    stem_input = layer_nodes(proto.graph)[0].input[0]
    got = with_outputs(proto, [stem_input]).run([stem_input], {"images": pixels.numpy()})[0]
    np.testing.assert_array_equal(got, expected.numpy())


def test_fp8_input_codes_round_ties_to_even_and_saturate_like_pytorch(supernet, images) -> None:
    """The first divergence of issue 19's refused candidate was an FP8 input on an exact E4M3 tie (232, between 224
    and 240) in ONNX Runtime and one float32 ulp above it in PyTorch. Both runtimes must give the E4M3 value of the
    same x / s: ties to the even mantissa, saturation at 448, subnormal ties; expected codes worked out by hand. The
    scale is a power of two so that x / s is exact and the pixels land on the ties."""
    model, candidate = calibrated(supernet, "fp8_e4m3", "fp8_e4m3", images)
    scale = 2.0**-6
    with torch.no_grad():
        model.conv_stem.a_quant.scales["fp8_e4m3"].fill_(scale)
    cases = {  # x / s -> E4M3 code
        232.0: 224.0,  # tie between 224 (mantissa 110, even) and 240 (111)
        float(np.nextafter(np.float32(232), np.float32(np.inf))): 240.0,  # one float32 ulp above it
        248.0: 256.0,  # tie between 240 (111) and 256 (1.000 x 2^8, even)
        -232.0: -224.0,
        464.0: 448.0, 1e6: 448.0, -1e6: -448.0,  # saturation to the largest E4M3 value, not NaN
        2.0**-10: 0.0,  # tie between 0 and the smallest subnormal 2^-9: 0 is even
        3 * 2.0**-10: 2.0**-8,  # tie between 2^-9 (001) and 2^-8 (010)
    }
    pixels = torch.tensor(np.resize(np.array(list(cases)) * scale, 16 * 16), dtype=torch.float32).reshape(1, 1, 16, 16)
    expected = np.resize(np.array(list(cases.values())) * scale, 16 * 16).astype(np.float32).reshape(1, 1, 16, 16)
    with torch.no_grad():
        np.testing.assert_array_equal(model.conv_stem.a_quant(pixels, "fp8_e4m3").numpy(), expected)
    proto = to_onnx(model, candidate, images[:1])
    stem_input = layer_nodes(proto.graph)[0].input[0]
    np.testing.assert_array_equal(with_outputs(proto, [stem_input]).run([stem_input], {"images": pixels.numpy()})[0],
                                  expected)


# The smallest network has one IR block, whose conv_pwl output reaches conv_head's QuantizeLinear through bn3
# alone: there ONNX Runtime would fold BN and 1/s into a constant float (simulated) weight and re-quantize it.
@pytest.mark.parametrize("w_fmt, a_fmt, arch", [
    ("int8", "int8", "largest"), ("int4", "int4", "largest"), ("fp8_e4m3", "fp8_e4m3", "largest"),
    ("fp8_e5m2", "fp8_e5m2", "largest"),
    ("int2", "int6", "largest"), ("mxfp4_e2m1", "int6", "largest"),
    ("int2", "int4", "smallest"), ("mxfp4_e2m1", "fp8_e4m3", "smallest"), ("fp4_e2m1", "int8", "smallest"),
])
def test_onnx_runtime_logits_equal_pytorch_s_within_float32_summation_error(supernet, images, w_fmt, a_fmt,
                                                                           arch) -> None:
    """Without integer kernels (every quantizer gives the project's codes, every conv runs in float)."""
    model, candidate = calibrated(supernet, w_fmt, a_fmt, images, arch)
    proto = to_onnx(model, candidate, images[:1], integer_kernels=False)
    outputs = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"images": images.numpy()})[0]
    with torch.no_grad():
        reference = model(images).numpy()
    # Both sides sum the same products in other orders: each conv/linear output may differ by eps x its number of
    # terms (relative to the terms' magnitudes, here bounded by the logits'), and these errors add up layer by layer.
    terms = sum(m.weight[0].numel() for m in model.modules() if hasattr(m, "w_quant"))
    tolerance = EPS32 * terms * np.abs(reference).max(1, keepdims=True).clip(min=1.0)
    assert (np.abs(outputs - reference) <= tolerance).all()


def with_int8_ranges(model: torch.nn.Module, top_code: int = 255, *, capped: bool = True) -> torch.nn.Module:
    """``model`` with every unsigned int8 input's learned scale putting ReLU6's bound 6 at code ``top_code`` (255:
    as for most layers of a trained supernet; 254: a range learned past 6, as 4 layers of the fidelity supernet
    had). ``capped=False`` removes the quantizers' cap at 6 (``input_max``), so that 254 is the scale used."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "a_quant") and not module.a_quant.signed:
                module.a_quant.scales["int8"].fill_(6 / top_code)
                if not capped:
                    module.a_quant.input_max = None
    return model


# by hand: the DS block and block 1.1 add their inputs, so the stem's, the DS block's and blocks 1.0's and 1.1's last
# convs also feed an add, and the head is pooled; the other 5 feed the next layer alone, each through a ReLU6
@pytest.mark.parametrize("top_code, capped, integer", [(255, True, 5), (254, True, 5), (254, False, 0)])
def test_int8_layers_that_feed_int8_layers_run_on_integer_kernels_within_one_code(supernet, images, top_code, capped,
                                                                                 integer) -> None:
    """ONNX Runtime runs an integer conv (QLinearConv) for each layer the cost model prices as one
    (automq.cost.integer_kernel) where leaving out the ReLU6 changes no code: always with the quantizers' cap at 6
    (a range learned past 6 is used as ending at 6, code 255), and without it only where 6 is at code 255 (at 254
    the ReLU6 would move values above 6 from code 254 to 255, so the conv stays in float).
    Integer accumulation is exact, so the stem's output codes (its input is the image, the same in both runs)
    differ from the float graph's by at most one code."""
    model, candidate = calibrated(supernet, "int8", "int8", images)
    proto = to_onnx(with_int8_ranges(model, top_code, capped=capped), candidate, images[:1])
    assert sum(map(integer_kernel, layer_specs(supernet.space, candidate))) == 5
    assert onnx_export.integer_convs(proto) == (integer, 10)
    codes = "blocks.0.0.conv_dw.input_codes"  # the stem's output, quantized for the depthwise conv
    deployed = with_outputs(proto, [codes]).run([codes], {"images": images.numpy()})[0].astype(int)
    written = onnx.ModelProto.FromString(proto.SerializeToString())
    written.graph.output.extend([onnx.helper.make_empty_tensor_value_info(codes)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(written.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        [codes], {"images": images.numpy()})[0].astype(int)
    assert np.abs(deployed - exact).max() <= 1 and (deployed == exact).mean() > 0.99


def test_the_export_falls_back_to_float_convs_where_integer_ones_change_the_answers(supernet, images,
                                                                                   monkeypatch) -> None:
    """An integer graph that does not pass the check (here: every requantization off by 3x) is replaced by the
    exact one, and the check says so; the exact graph runs no integer conv."""
    model, candidate = calibrated(supernet, "int8", "int8", images)
    labels = model(images).argmax(1)
    requantize = onnx_export._quantize_integer_outputs

    def off_by_three(graph: onnx.GraphProto) -> None:
        requantize(graph)
        made_by, values = producers(graph), {init.name: init for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "QuantizeLinear" and made_by.get(node.input[0], node).op_type == "Conv":
                wrong = 3 * numpy_helper.to_array(values[node.input[1]])
                graph.initializer.append(numpy_helper.from_array(wrong, f"{node.input[1]}_wrong"))
                node.input[1] = f"{node.input[1]}_wrong"

    monkeypatch.setattr(onnx_export, "_quantize_integer_outputs", off_by_three)
    proto, check = onnx_export.deployable_onnx(with_int8_ranges(model), candidate, [(images, labels)])
    assert check.passed and check.integer_convs == (0, 10) and check.integer_top1_agreement < 0.995
    assert onnx_export.integer_convs(proto) == (0, 10)


def test_simulated_formats_are_named_in_the_metadata(supernet, images) -> None:
    model, candidate = calibrated(supernet, "int2", "int6", images)
    proto = to_onnx(model, candidate, images[:1])
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    assert metadata["automq.simulated_formats"] == "int2,int6"
    assert json.loads(metadata["automq.candidate"]) == json.loads(candidate.to_json())
    stem = json.loads(metadata["automq.layers"])["conv_stem"]
    assert stem["simulated"] == ["int2", "int6"] and stem["weight"].startswith("int2: simulated")
    assert not [node for node in proto.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    check = check_onnx(proto, model, [(images, torch.zeros(len(images), dtype=torch.long))])
    assert check.simulated_formats == ("int2", "int6") and check.within_tolerance == 1.0


def test_a_graph_with_a_wrong_scale_is_refused_and_not_written(supernet, images, monkeypatch, tmp_path) -> None:
    model, candidate = calibrated(supernet, "int8", "int8", images)
    labels = model(images).argmax(1)
    true_scale = onnx_export._scale
    monkeypatch.setattr(onnx_export, "_scale",
                        lambda operand: true_scale(operand) * (1.5 if operand.layer == "conv_head" else 1.0))
    path = tmp_path / "model.onnx"
    with pytest.raises(OnnxExportError, match="ONNX Runtime does not compute what PyTorch computes on 64 images"):
        export_onnx(model, candidate, path, [(images, labels)])
    assert not path.exists()


def test_compare_onnx_measures_a_graph_that_check_onnx_would_refuse(supernet, images, monkeypatch) -> None:
    """Benchmarks read the figures of a refused graph: the same wrong scale as above, measured without raising."""
    model, candidate = calibrated(supernet, "int8", "int8", images)
    labels = model(images).argmax(1)  # PyTorch's top-1 is the label: its accuracy is 1 and ORT's is the agreement
    assert check_onnx(to_onnx(model, candidate, images[:1]), model, [(images, labels)]).passed
    true_scale = onnx_export._scale
    monkeypatch.setattr(onnx_export, "_scale",
                        lambda operand: true_scale(operand) * (1.5 if operand.layer == "conv_head" else 1.0))
    check = compare_onnx(to_onnx(model, candidate, images[:1]), model, [(images, labels)])
    assert not check.passed and check.images == 64 and check.torch_accuracy == 1.0
    assert check.onnx_accuracy == check.top1_agreement and check.within_tolerance < onnx_export.MIN_WITHIN_TOLERANCE


def test_an_activation_format_without_an_onnx_equivalent_is_one_clear_error(supernet, images) -> None:
    model, candidate = calibrated(supernet, "int8", "mxint8", images)
    with pytest.raises(OnnxExportError, match="conv_stem: its input format mxint8 has no ONNX equivalent"):
        to_onnx(model, candidate, images[:1])


ML_DTYPES = {"fp4_e2m1": ml_dtypes.float4_e2m1fn, "fp6_e3m2": ml_dtypes.float6_e3m2fn,
             "fp6_e2m3": ml_dtypes.float6_e2m3fn, "fp16": np.float16, "bf16": ml_dtypes.bfloat16}


def grid_probes(dtype: Any, rng: np.random.Generator) -> np.ndarray:
    """Values (float32) that a rounding to ``dtype`` can get wrong: every tie between neighbouring positive values
    (for the 16-bit types, 2,000 random ones) and one float32 ulp either side, with their negatives, the largest
    value and beyond it, zero, and random values over the range."""
    finfo = ml_dtypes.finfo(dtype)
    if finfo.bits == 16:
        codes = rng.integers(1, np.array(finfo.max, dtype=dtype).view(np.uint16), 2000).astype(np.uint16)
        low, high = codes.view(dtype).astype(np.float32), (codes + 1).view(dtype).astype(np.float32)
    else:
        grid = np.unique(np.linspace(0, float(finfo.max), 4001).astype(dtype).astype(np.float32))
        low, high = grid[:-1], grid[1:]
    ties = low + (high - low) / 2  # exact: float32 has more mantissa bits than every one of these types
    near = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(0)), low])
    beyond = min(1.5 * float(finfo.max), float(np.finfo(np.float32).max))
    edges = np.array([0.0, float(finfo.max), beyond, 1e30 if finfo.bits < 16 else beyond], np.float32)
    spread = rng.uniform(-float(finfo.max), float(finfo.max), 1000).astype(np.float32)
    return np.concatenate([near, -near, edges, -edges, spread])


@pytest.mark.parametrize("fmt", list(ML_DTYPES))
def test_simulated_float_inputs_are_the_dtype_s_values_bit_for_bit(supernet, images, fmt) -> None:
    """A float input format without an ONNX type is simulated by float ops (the step of each binade, Round) or, for
    fp16/bf16, a Cast round trip. Fed the stem every tie between neighbouring values and one ulp either side,
    saturation and subnormals, ONNX Runtime must give what ml_dtypes' cast gives (after clipping to the largest
    value for the scaled formats, which saturate), as PyTorch does. The scale is a power of two, so x / s is exact."""
    model, candidate = calibrated(supernet, "int8", fmt, images)
    dtype, scaled = ML_DTYPES[fmt], get_format(fmt).learnable_scale
    scale = 2.0**-3 if scaled else 1.0
    if scaled:
        with torch.no_grad():
            model.conv_stem.a_quant.scales[fmt].fill_(scale)
    probes = grid_probes(dtype, np.random.default_rng(3))
    limit = float(ml_dtypes.finfo(dtype).max)
    values = np.clip(probes, -limit, limit) if scaled else probes
    with np.errstate(over="ignore"):  # fp16 overflows to inf, as torch's cast does
        expected = values.astype(dtype).astype(np.float32) * np.float32(scale)
    pixels = np.resize(probes * np.float32(scale), -(-probes.size // 256) * 256).reshape(-1, 1, 16, 16)
    expected = np.resize(expected, pixels.size).reshape(pixels.shape)
    with torch.no_grad():
        np.testing.assert_array_equal(model.conv_stem.a_quant(torch.from_numpy(pixels), fmt).numpy(), expected)
    proto = to_onnx(model, candidate, images[:1])
    stem_input = layer_nodes(proto.graph)[0].input[0]
    got = with_outputs(proto, [stem_input]).run([stem_input], {"images": pixels})[0]
    np.testing.assert_array_equal(got, expected)
    assert fmt in {prop.key: prop.value for prop in proto.metadata_props}["automq.simulated_formats"]


def test_an_uninitialised_scale_is_refused(supernet, images) -> None:
    model = supernet.extract(supernet.space.uniform("int8", "int8")).eval()  # never run: no activation scales yet
    with pytest.raises(OnnxExportError, match="conv_stem: the int8 scale of its weight was never initialised"):
        to_onnx(model, supernet.space.uniform("int8", "int8"), images[:1])


# ---------------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def run_dir(tiny_space: SpaceFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx_cli")
    changes = {"dataset": {"val_size": 64}, "training": {"epochs": 1, "batch_size": 32, "num_random": 1},
               "search": {"eval_size": 64, "calib_size": 32}}
    space_file = Path(tiny_space(changes, folder=folder).source)
    assert main(["train-supernet", str(space_file), "--out", str(folder / "run"), "--subset", "64"]) == 0
    return folder / "run"


def test_cli_export_writes_an_onnx_model_that_onnx_runtime_runs_like_the_pt(run_dir, tmp_path, capsys) -> None:
    pt, onnx_path = tmp_path / "model.pt", tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "largest", "--out", str(pt), "--calib-images", "64", "--onnx",
                 str(onnx_path), "--measure"]) == 0
    out = capsys.readouterr().out
    assert "ONNX model (opset 21, QuantizeLinear/DequantizeLinear) written to" in out
    timed = re.search(r"end-to-end latency in ONNX Runtime \(1 thread\(s\), batch 1, median of 100 runs after 20\): "
                      r"([0-9.]+) ms", out)
    assert timed is not None and float(timed.group(1)) > 0, out
    model, candidate = load_model(pt)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(batch).numpy()
    outputs = session.run(["logits"], {"images": batch.numpy()})[0]
    assert outputs.shape == reference.shape == (8, 10)
    assert (outputs.argmax(1) == reference.argmax(1)).all()
    stored = {prop.key: prop.value for prop in onnx.load(onnx_path).metadata_props}["automq.candidate"]
    assert json.loads(stored) == json.loads(candidate.to_json())


def test_cli_export_refuses_a_mismatching_onnx_model_with_one_error_line(run_dir, tmp_path, capsys,
                                                                          monkeypatch) -> None:
    true_scale = onnx_export._scale
    monkeypatch.setattr(onnx_export, "_scale",
                        lambda operand: true_scale(operand) * (2.0 if operand.layer == "conv_head" else 1.0))
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "largest", "--out", str(tmp_path / "model.pt"), "--onnx",
                 str(onnx_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("automq: error: ONNX Runtime does not compute what PyTorch computes on 200 images")
    assert err.count("\n") == 1 and not onnx_path.exists()


def test_the_check_accepts_rounding_boundary_flips_on_a_fifth_of_the_images() -> None:
    """Uniform int8 on the 8-epoch fidelity supernet (latency_table.md): logits within the float32 tolerance on only
    80.53% of the 10,000 test images (the rest had an activation on a rounding boundary), top-1 agreement 99.93%,
    accuracy 88.94% vs 88.92%: a correct graph, which the old 90% bound refused. A wrong graph stays refused."""
    measured = {"images": 10000, "torch_accuracy": 0.8894, "onnx_accuracy": 0.8892, "max_abs_diff": 0.2986,
                "simulated_formats": ()}
    assert OnnxCheck(top1_agreement=0.9993, within_tolerance=0.8053, **measured).passed
    assert not OnnxCheck(top1_agreement=0.9993, within_tolerance=0.02, **measured).passed  # logits off everywhere
    assert not OnnxCheck(top1_agreement=0.994, within_tolerance=0.99, **measured).passed  # top-1 below 99.5%
