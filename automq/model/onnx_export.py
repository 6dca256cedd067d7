"""ONNX export of an extracted candidate model: QuantizeLinear/DequantizeLinear around every quantized layer.

The exported graph computes what the PyTorch model computes: each conv/linear reads ``DequantizeLinear`` of its
integer (or FP8) weight codes, per output channel, and ``DequantizeLinear(QuantizeLinear(x))`` of its input, per
tensor, with the learned LSQ scales as the ONNX scales and zero points 0 (``uint8``/``uint4`` after a ReLU6); the
input's ``QuantizeLinear`` has scale 1 after a ``Mul`` by ``1/s`` (see :func:`_input_nodes`), so its codes are the
project's bit for bit. Each BatchNorm is folded into its conv: the weight scales times its factor, and a bias.
Where an 8-bit conv's output goes straight into another 8-bit layer's input quantizer, that quantizer follows the
conv as a plain ``QuantizeLinear(s)``, and ONNX Runtime runs the conv on integers (``QLinearConv``, see the
"integer kernels" section); the others run as ``DequantizeLinear`` + float ``Conv``. An integer conv requantizes
its output with its own rounding, so :func:`deployable_onnx` keeps it only where the top-1 answers stay PyTorch's.
Weight formats without an ONNX type (int2/3/5/6, FP6/FP4, MX, fp16/bf16) are stored as float weights already
rounded to their grid, and integer activation formats without one as ``Mul, Clip, Round, Mul`` (the project's
``round(clamp(x * (1/s)))  * s`` op for op); both are listed as simulated in the model's metadata.

How: the model is traced by the TorchScript exporter with every quantizer replaced by an identity whose
``symbolic`` leaves an ``automq::Mark`` node; each mark is then rewritten with the ``onnx.helper`` API. The
TorchScript exporter is used (not torch 2.14's default dynamo exporter) because it traces timm's EfficientNet as
is and turns an ``autograd.Function`` into a node without the extra ``onnxscript`` dependency, and a custom node
on a weight keeps it from folding BatchNorm into weights that must stay on their grid.

:func:`check_onnx` runs the graph in ONNX Runtime next to the PyTorch model; :func:`export_onnx` writes the file
only when they agree.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import Tensor, nn

from automq.errors import AutomqError
from automq.io import atomic_write_bytes
from automq.numerics.formats import CastFormat, FloatElement, get_format
from automq.numerics.quant import QuantConv2d, QuantLinear, Quantizer
from automq.space.candidate import Candidate

__all__ = ["OPSET", "OnnxCheck", "OnnxExportError", "check_onnx", "compare_onnx", "deployable_onnx", "export_onnx",
           "integer_convs", "optimized_graph", "quantized_graph", "requantize_output", "to_onnx"]

OPSET = 21  # INT4/UINT4 QDQ needs opset 21 (FLOAT8 needs 19)
_TRACE_OPSET = 20  # the newest the TorchScript exporter writes; opset 21 only widened the types of its ops
MIN_TOP1_AGREEMENT = 0.995  # of the images checked
# Of the images checked: see logit_tolerance. The others had an activation on a rounding boundary, where the two
# runtimes' last-bit differences (sums in another order, BN rounded once or twice) round to neighbouring codes: 3-4%
# of the Fashion-MNIST test images for int8 candidates of the 3-epoch demo supernet (onnx_export.md), up to 19.5%
# for uniform int8 on the 8-epoch fidelity supernet, whose top-1 still agreed on 99.93% (latency_table.md); a wrong
# graph (one layer's scale off) fails on all or nearly all, so half the images is the bound.
MIN_WITHIN_TOLERANCE = 0.5
# ONNX element types of the formats that QuantizeLinear/DequantizeLinear carry: (signed, unsigned).
QDQ_TYPES: dict[str, tuple[int, int]] = {
    "int8": (TensorProto.INT8, TensorProto.UINT8),
    "int4": (TensorProto.INT4, TensorProto.UINT4),
    "fp8_e4m3": (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FN),
    "fp8_e5m2": (TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2),
}
_MARK = "Mark"
_MARK_DOMAIN = "automq"


class OnnxExportError(AutomqError):
    """The model cannot be exported to ONNX, or ONNX Runtime does not compute what PyTorch computes."""


@dataclass(frozen=True)
class _Operand:
    """One quantized operand of one layer: what an ``automq::Mark`` node of the traced graph stands for."""

    layer: str
    kind: str  # "weight" or "input"
    quantizer: Quantizer
    fmt: str
    tensor: Tensor | None  # the float weight; None for an input


class _MarkFn(torch.autograd.Function):
    """The identity, exported as an ``automq::Mark`` node tagged with the operand's index."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, tag: int) -> Tensor:  # type: ignore[override]
        return x

    @staticmethod
    def symbolic(g: Any, x: Any, tag: int) -> Any:
        out = g.op(f"{_MARK_DOMAIN}::{_MARK}", x, tag_i=tag)
        out.setType(x.type())  # the conv symbolic needs the rank of its weight
        return out


class _Marker(nn.Module):
    """Stands in for a quantizer while tracing (``forward(x, fmt)`` like :class:`Quantizer`)."""

    def __init__(self, tag: int) -> None:
        super().__init__()
        self.tag = tag

    def forward(self, x: Tensor, fmt: str) -> Tensor:
        return _MarkFn.apply(x, self.tag)


# ---------------------------------------------------------------------------------------------- export
def to_onnx(model: nn.Module, candidate: Candidate, example: Tensor, *, integer_kernels: bool = True
            ) -> onnx.ModelProto:
    """The ONNX graph (opset 21, batch dimension dynamic) of an extracted ``model`` of ``candidate``.

    ``example`` is one input batch (its shape is traced). The model's quantizer scales must be initialised (an
    extracted model of a trained supernet is). ``integer_kernels``: write the 8-bit layers so that ONNX Runtime runs
    them as integer convs where the network allows it (see :func:`quantized_graph`). Raises
    :class:`OnnxExportError` for an activation format that ONNX cannot express and for a non-positive learned scale.
    """
    proto, layers = quantized_graph(model, example, integer_kernels=integer_kernels)
    simulated = sorted({fmt for layer in layers.values() for fmt in layer["simulated"]})
    helper.set_model_props(proto, {
        "automq.candidate": candidate.to_json(),
        "automq.layers": json.dumps(layers),
        "automq.simulated_formats": ",".join(simulated),
    })
    onnx.checker.check_model(proto, full_check=True)
    return proto


def quantized_graph(model: nn.Module, example: Tensor, *, integer_kernels: bool = True
                    ) -> tuple[onnx.ModelProto, dict[str, dict[str, Any]]]:
    """The Q/DQ graph of any module holding :class:`QuantConv2d` / :class:`QuantLinear` layers, and per layer how
    each operand was written (``{"weight": "int8: QDQ ...", "input": ..., "simulated": [...]}``).

    BatchNorms are folded into the convs' weight scales and biases. ``integer_kernels``: an 8-bit conv whose output
    goes straight into another 8-bit layer's input quantizer gets that quantizer right after it, so that ONNX
    Runtime fuses it into an integer conv (see the "integer kernels" section below); without it every quantizer
    gives the project's codes bit for bit and every conv runs in float.

    :func:`to_onnx` exports a whole candidate with it; :mod:`automq.latency` times one layer at a time built by
    the same code, so a latency table measures the nodes the exported model runs.
    """
    traced, operands = _marked_copy(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter's deprecation notices; the choice of exporter is explained above
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(traced, (example,), buffer, dynamo=False, opset_version=_TRACE_OPSET,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    layers = _rewrite_marks(proto.graph, operands)
    _fold_batch_norms(proto.graph)
    if integer_kernels:
        _quantize_integer_outputs(proto.graph)
    _drop_unused_initializers(proto.graph)
    del proto.opset_import[:]
    proto.opset_import.append(helper.make_opsetid("", OPSET))
    proto.producer_name = "automq"
    return proto, layers


def _marked_copy(model: nn.Module) -> tuple[nn.Module, list[_Operand]]:
    """An eval-mode copy of ``model`` whose quantizers are :class:`_Marker` s, and what each marker's tag stands
    for (the operands keep ``model``'s own quantizers and weights)."""
    traced = copy.deepcopy(model).eval()
    operands: list[_Operand] = []
    for name, layer in model.named_modules():
        if not isinstance(layer, (QuantConv2d, QuantLinear)):
            continue
        copied = traced.get_submodule(name)
        for kind, attr, fmt, tensor in (("weight", "w_quant", layer.w_fmt, layer.weight),
                                        ("input", "a_quant", layer.a_fmt, None)):
            setattr(copied, attr, _Marker(len(operands)))
            operands.append(_Operand(name, kind, getattr(layer, attr), fmt, tensor))
    return traced, operands


def _rewrite_marks(graph: onnx.GraphProto, operands: list[_Operand]) -> dict[str, dict[str, Any]]:
    """Replace every mark node by its Q/DQ (or simulated) nodes in place; returns the per-layer metadata."""
    nodes: list[onnx.NodeProto] = []
    renames: dict[str, str] = {}  # the output of a mark replaced by no node -> the tensor to read instead
    layers: dict[str, dict[str, Any]] = {}
    for node in graph.node:
        if node.domain != _MARK_DOMAIN:
            nodes.append(node)
            continue
        operand = operands[helper.get_attribute_value(node.attribute[0])]
        prefix = f"{operand.layer}.{operand.kind}"
        if operand.kind == "weight":
            new_nodes, initializers, how = _weight_nodes(operand, prefix, node.output[0])
            if not new_nodes:  # float values, also a graph input: see _weight_nodes
                (values,) = initializers
                graph.input.append(helper.make_tensor_value_info(values.name, values.data_type, values.dims))
                renames[node.output[0]] = values.name
        else:
            new_nodes, initializers, how = _input_nodes(operand, prefix, node.input[0], node.output[0])
            if not new_nodes:  # an fp32 input
                renames[node.output[0]] = node.input[0]
        nodes.extend(new_nodes)
        graph.initializer.extend(initializers)
        entry = layers.setdefault(operand.layer, {"simulated": []})
        entry[operand.kind] = f"{operand.fmt}: {how}"
        if how.startswith("simulated"):
            entry["simulated"].append(operand.fmt)
    for node in nodes:
        node.input[:] = [renames.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(nodes)
    return layers


def _scale(operand: _Operand) -> Tensor:
    """The learned scale of the operand's format, float32; refused unless initialised and positive."""
    if not bool(getattr(operand.quantizer, f"initialised_{operand.fmt}").all()):
        # PyTorch would initialise it from the first images it sees, so ONNX cannot hold the same value yet
        raise OnnxExportError(f"{operand.layer}: the {operand.fmt} scale of its {operand.kind} was never "
                              "initialised; run the model on calibration images first (automq export's BN "
                              "recalibration does)")
    scale = operand.quantizer.scale(operand.fmt).detach().float()
    if not bool((scale > 0).all()):
        raise OnnxExportError(f"{operand.layer}: the learned {operand.fmt} scale of its {operand.kind} has "
                              "non-positive entries, which ONNX cannot store; retrain or pick another candidate")
    return scale


def _weight_nodes(operand: _Operand, prefix: str, output: str) -> tuple[list, list, str]:
    """The weight as codes + ``DequantizeLinear`` (axis 0) computing ``output``, or as float values already on
    its grid (no nodes, one initializer); new tensors are named ``prefix_*``.

    Float values are also listed as graph inputs (with the initializer as their default), so that ONNX Runtime
    does not treat them as constants: it would fold BN and the next layer's ``1/s`` into them and then, seeing a
    float conv between two ``QuantizeLinear``, re-quantize them to int8 with scales of its own (its
    ``WeightBiasQuantization``), which computes another network.
    """
    assert operand.tensor is not None
    fmt = get_format(operand.fmt)
    scale = _scale(operand) if fmt.learnable_scale else None
    with torch.no_grad():
        rounded = operand.quantizer(operand.tensor, operand.fmt).float()  # the project's own rounding
    if scale is None or operand.fmt not in QDQ_TYPES:
        how = "float" if fmt.is_identity else f"simulated (float weights on the {operand.fmt} grid)"
        return [], [_tensor(f"{prefix}_{operand.fmt}", rounded)], how
    codes = rounded / scale.view([-1] + [1] * (rounded.dim() - 1))  # exact: see _codes
    elem_type = QDQ_TYPES[operand.fmt][0]
    code_tensor, scale_tensor = _codes(f"{prefix}_codes", codes, elem_type), _tensor(f"{prefix}_scale", scale)
    zero = _codes(f"{prefix}_zero_point", torch.zeros_like(scale), elem_type)
    node = helper.make_node("DequantizeLinear", [code_tensor.name, scale_tensor.name, zero.name], [output], axis=0)
    return [node], [code_tensor, scale_tensor, zero], f"QDQ {_type_name(elem_type)} per channel"


def _input_nodes(operand: _Operand, prefix: str, source: str, output: str) -> tuple[list, list, str]:
    """The quantized input ``output`` of ``source``: ``Mul(1/s), QuantizeLinear(1), DequantizeLinear(s)`` (per
    tensor), or simulated by float ops; no nodes for an fp32 input. New tensors are named ``prefix_*``.

    ``QuantizeLinear`` divides by its scale, the project multiplies by the float32 reciprocal (faster); the two
    round differently when ``x / s`` lies within an ulp of a rounding boundary, so the reciprocal is applied by a
    ``Mul`` and the ``QuantizeLinear`` scale is 1: the codes are then the project's, bit for bit.
    """
    fmt = get_format(operand.fmt)
    if fmt.is_identity:
        return [], [], "float"
    if isinstance(fmt, CastFormat):  # fp16 / bf16: a round trip through the dtype, as torch's .to()
        elem_type = TensorProto.BFLOAT16 if fmt.dtype == torch.bfloat16 else TensorProto.FLOAT16
        nodes = [helper.make_node("Cast", [source], [f"{prefix}_cast"], to=elem_type),
                 helper.make_node("Cast", [f"{prefix}_cast"], [output], to=TensorProto.FLOAT)]
        return nodes, [], f"simulated ({operand.fmt} by a Cast round trip)"
    if operand.fmt not in QDQ_TYPES and fmt.family not in ("int", "float"):
        raise OnnxExportError(f"{operand.layer}: its input format {operand.fmt} has no ONNX equivalent (only "
                              f"{', '.join(QDQ_TYPES)}, other integer and float widths, fp16/bf16 and fp32 do; MX "
                              "block scales are not simulated); pick a candidate whose activation formats are among "
                              "those")
    scale = _scale(operand).reshape(())
    inverse, scale_tensor = _tensor(f"{prefix}_inverse_scale", scale.reciprocal()), _tensor(f"{prefix}_scale", scale)
    scaled = helper.make_node("Mul", [source, inverse.name], [f"{prefix}_scaled"])
    if operand.fmt in QDQ_TYPES:
        elem_type = QDQ_TYPES[operand.fmt][0 if operand.quantizer.signed else 1]
        unit = _tensor(f"{prefix}_unit_scale", torch.ones(()))
        zero = _codes(f"{prefix}_zero_point", torch.zeros(()), elem_type)
        nodes = [scaled,
                 helper.make_node("QuantizeLinear", [scaled.output[0], unit.name, zero.name], [f"{prefix}_codes"]),
                 helper.make_node("DequantizeLinear", [f"{prefix}_codes", scale_tensor.name, zero.name], [output])]
        return nodes, [inverse, unit, zero, scale_tensor], f"QDQ {_type_name(elem_type)} per tensor"
    low, high = fmt.bounds(operand.quantizer.signed)
    bounds = [_tensor(f"{prefix}_low", torch.tensor(low)), _tensor(f"{prefix}_high", torch.tensor(high))]
    clip = helper.make_node("Clip", [scaled.output[0], bounds[0].name, bounds[1].name], [f"{prefix}_clipped"])
    if fmt.family == "int":
        nodes = [scaled, clip,
                 helper.make_node("Round", [f"{prefix}_clipped"], [f"{prefix}_rounded"]),  # half to even, as torch
                 helper.make_node("Mul", [f"{prefix}_rounded", scale_tensor.name], [output])]
        return nodes, [inverse, *bounds, scale_tensor], f"simulated ({operand.fmt} grid by Mul, Clip, Round, Mul)"
    grid_nodes, grid_values = _float_grid_nodes(fmt.element, prefix, f"{prefix}_clipped", f"{prefix}_rounded")
    nodes = [scaled, clip, *grid_nodes, helper.make_node("Mul", [f"{prefix}_rounded", scale_tensor.name], [output])]
    return (nodes, [inverse, *bounds, *grid_values, scale_tensor],
            f"simulated ({operand.fmt} grid by Mul, Clip, its step per binade, Round, Mul)")


def _float_grid_nodes(element: FloatElement, prefix: str, source: str, output: str) -> tuple[list, list]:
    """Nodes rounding ``source`` (already clipped to the element's range) to the nearest element, half to even, as
    :meth:`~automq.numerics.formats.FloatElement.round_` does: the step is ``2^(e - M)`` with ``e`` the exponent of
    the value's binade (``emin`` below it, the subnormals), built as ``2^(emin - M)`` doubled once per power of two
    ``2^k`` (``emin < k <= emax``) that ``|x|`` reaches: comparisons with powers of two, products by 1 or 2 and a
    division by a power of two are all exact in float32, so ``Round(x / step) * step`` is the project's value bit for
    bit (ONNX has no bit cast to read the exponent, which is how PyTorch does it)."""
    one, two = _tensor(f"{prefix}_one", torch.ones(())), _tensor(f"{prefix}_two", torch.full((), 2.0))
    step = _tensor(f"{prefix}_step_min", torch.tensor(2.0 ** (element.emin - element.man_bits)))
    values, nodes = [one, two, step], [helper.make_node("Abs", [source], [f"{prefix}_magnitude"])]
    current = step.name
    for k in range(element.emin + 1, element.emax + 1):
        power = _tensor(f"{prefix}_binade_{k}", torch.tensor(2.0**k))
        values.append(power)
        nodes += [helper.make_node("GreaterOrEqual", [f"{prefix}_magnitude", power.name], [f"{prefix}_reaches_{k}"]),
                  helper.make_node("Where", [f"{prefix}_reaches_{k}", two.name, one.name], [f"{prefix}_doubles_{k}"]),
                  helper.make_node("Mul", [current, f"{prefix}_doubles_{k}"], [f"{prefix}_step_{k}"])]
        current = f"{prefix}_step_{k}"
    nodes += [helper.make_node("Div", [source, current], [f"{prefix}_in_steps"]),
              helper.make_node("Round", [f"{prefix}_in_steps"], [f"{prefix}_rounded_steps"]),
              helper.make_node("Mul", [f"{prefix}_rounded_steps", current], [output])]
    return nodes, values


def _type_name(elem_type: int) -> str:
    return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.")


def _tensor(name: str, values: Tensor) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(values.detach().float().cpu().numpy(), name)


def _codes(name: str, codes: Tensor, elem_type: int) -> onnx.TensorProto:
    """``codes`` (float32, each within a float32 ulp of a code) as an ONNX tensor of ``elem_type``.

    ``codes`` are ``(c * s) / s`` for a code ``c`` and the float32 product that the project computed, so they
    are within one float32 ulp of ``c``: rounding to the integer (or casting to FP8, nearest) recovers ``c``
    exactly, and ``DequantizeLinear``'s ``c * s`` reproduces the project's product bit for bit.
    """
    dims = list(codes.shape)
    if elem_type in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2):
        dtype = torch.float8_e4m3fn if elem_type == TensorProto.FLOAT8E4M3FN else torch.float8_e5m2
        raw = codes.to(dtype).view(torch.uint8).cpu().numpy().tobytes()
        return helper.make_tensor(name, elem_type, dims, raw, raw=True)
    return helper.make_tensor(name, elem_type, dims, torch.round(codes).to(torch.int64).flatten().tolist())


# ---------------------------------------------------------------------------------------------- integer kernels
# ONNX Runtime runs a conv on integers (QLinearConv) only where it finds DequantizeLinear(x) and DequantizeLinear(w)
# feeding the Conv and a QuantizeLinear right after it, all 8-bit (its QDQ selectors); a Clip between the Conv and
# the QuantizeLinear is dropped only when the quantized range lies inside it. The traced graph has a BatchNorm after
# every Conv and reaches the next layer's codes through Mul(1/s) and a unit-scale QuantizeLinear (bit-exact codes,
# see _input_nodes), so none of its convs matched. The two rewrites below make them match where the network allows
# it: an 8-bit layer whose output goes only (through its BatchNorm and ReLU6; no residual add reads it too, no
# pooling comes first) into another 8-bit layer's input quantizer, as automq.cost.integer_kernel prices it. What
# this buys end to end is measured in experiments/results/latency_table.md.
_INTEGER_KERNEL_TYPES = (TensorProto.INT8, TensorProto.UINT8)


def _fold_batch_norms(graph: onnx.GraphProto) -> None:
    """Fold each BatchNormalization that follows a Conv with dequantized weights into that Conv: the weights'
    per-channel scales times ``gamma / sqrt(var + eps)`` (the integer codes stay as they are, on their grid) and a
    float bias ``beta - mean * gamma / sqrt(var + eps)``. The same network, rounded once less."""
    producers, consumers, values = _graph_index(graph)
    removed = []
    for bn in [node for node in graph.node if node.op_type == "BatchNormalization"]:
        conv = producers.get(bn.input[0])
        weight = producers.get(conv.input[1]) if conv is not None and conv.op_type == "Conv" else None
        if (weight is None or weight.op_type != "DequantizeLinear" or len(conv.input) > 2
                or len(consumers[conv.output[0]]) != 1 or not all(name in values for name in bn.input[1:])):
            continue
        gamma, beta, mean, var = (values[name].astype(np.float64) for name in bn.input[1:])
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma / np.sqrt(var + epsilon)
        _set_initializer(graph, weight.input[1], (values[weight.input[1]] * factor).astype(np.float32))
        bias = f"{conv.name or conv.output[0]}_folded_bias"
        graph.initializer.append(onnx.numpy_helper.from_array((beta - mean * factor).astype(np.float32), bias))
        conv.input.append(bias)
        conv.output[0] = bn.output[0]
        removed.append(bn)
    for node in removed:
        graph.node.remove(node)


def _quantize_integer_outputs(graph: onnx.GraphProto) -> None:
    """Give each 8-bit Conv whose output reaches the next layer's 8-bit input quantizer directly (``Conv, [Clip,]
    Mul(1/s), QuantizeLinear(1)``) a plain ``QuantizeLinear(s)`` instead, which ONNX Runtime fuses into an integer
    conv. ``QuantizeLinear`` divides by ``s`` where the project multiplies by ``1/s``, so a code can differ by one
    where ``x / s`` lies within a float32 ulp of a rounding boundary, as an integer conv's own requantization does
    anyway. The Clip (the ReLU6) is left out where it cannot change a code: where ``6 / s`` rounds to the largest
    code, which the quantizer's cap (``input_max``, :class:`~automq.numerics.quant.Quantizer`) ensures for every
    input read from a ReLU6: ``255 s <= 6``. Where it can (a model trained without the cap, whose ranges ended up
    to 0.5% above 6), the chain is kept and the conv stays in float: leaving it out there too (code 255 for every
    value above 6, where the model has 254) moved uniform int8's test accuracy on the fidelity supernet by more
    than the issue's 0.1-point bound, a bias on every saturated activation rather than a rounding difference."""
    producers, consumers, values = _graph_index(graph)
    removed = []
    for mul in [node for node in graph.node if node.op_type == "Mul" and node.output[0].endswith(".input_scaled")]:
        (quantize,) = consumers[mul.output[0]]
        if quantize.op_type != "QuantizeLinear" or _zero_point_type(values, quantize) not in _INTEGER_KERNEL_TYPES:
            continue
        source, clip = mul.input[0], None
        if producers.get(source) is not None and producers[source].op_type == "Clip":
            clip = producers[source]
            source = clip.input[0]
        conv = producers.get(source)
        if conv is None or conv.op_type != "Conv" or not _runs_on_integers(conv, producers, values):
            continue
        if len(consumers[source]) != 1 or (clip is not None and len(consumers[clip.output[0]]) != 1):
            continue
        prefix = mul.output[0].removesuffix("_scaled")
        scale = float(values[f"{prefix}_scale"])
        if clip is not None and not _clip_redundant(clip, values, scale, _zero_point_type(values, quantize)):
            continue
        quantize.input[0], quantize.input[1] = source, f"{prefix}_scale"
        removed += [mul] + ([clip] if clip is not None else [])
    for node in removed:
        graph.node.remove(node)


def requantize_output(proto: onnx.ModelProto, scale: float, *, signed: bool) -> None:
    """Quantize the one output of ``proto`` to int8 (``signed``) or uint8 with ``scale`` and dequantize it again,
    in place: what the next layer's 8-bit input quantizer does to a layer's output in a whole model, so that a
    one-layer model of :mod:`automq.latency` runs as the integer conv it is there."""
    graph = proto.graph
    (output,) = graph.output
    source = f"{output.name}_float"
    for node in graph.node:
        node.output[:] = [source if name == output.name else name for name in node.output]
    elem_type = TensorProto.INT8 if signed else TensorProto.UINT8
    graph.initializer.extend([_tensor("output_scale", torch.tensor(scale)),
                              _codes("output_zero_point", torch.zeros(()), elem_type)])
    graph.node.extend([
        helper.make_node("QuantizeLinear", [source, "output_scale", "output_zero_point"], ["output_codes"]),
        helper.make_node("DequantizeLinear", ["output_codes", "output_scale", "output_zero_point"], [output.name])])


def _runs_on_integers(conv: onnx.NodeProto, producers: dict[str, onnx.NodeProto], values: dict[str, Any]) -> bool:
    """Whether ``conv`` reads 8-bit dequantized input and weights (ONNX Runtime's integer conv needs both)."""
    inputs = [producers.get(name) for name in conv.input[:2]]
    return all(node is not None and node.op_type == "DequantizeLinear"
               and _zero_point_type(values, node) in _INTEGER_KERNEL_TYPES for node in inputs)


def _clip_redundant(clip: onnx.NodeProto, values: dict[str, Any], scale: float, elem_type: int) -> bool:
    """Whether quantizing with ``scale`` to ``elem_type`` (zero point 0) gives the same codes with or without
    ``clip`` before it: each bound rounds to a code at or beyond the type's saturation."""
    if len(clip.input) < 3 or not all(name in values for name in clip.input[1:3]):
        return False
    low, high = (float(values[name]) for name in clip.input[1:3])
    info = np.iinfo(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    return low / scale < info.min + 0.5 and high / scale > info.max - 0.5  # half to even: 254.5 rounds to 254


def _zero_point_type(values: dict[str, Any], node: onnx.NodeProto) -> int | None:
    """The element type of a QuantizeLinear/DequantizeLinear's codes (its zero point's), ``None`` if unknown."""
    zero = values.get(node.input[2]) if len(node.input) > 2 else None
    return None if zero is None else helper.np_dtype_to_tensor_dtype(zero.dtype)


def _graph_index(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]],
                                                  dict[str, Any]]:
    """Each tensor's producing node, each tensor's consuming nodes, and the initializers' values by name."""
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for output in graph.output:
        consumers.setdefault(output.name, []).append(helper.make_node("Identity", [output.name], ["graph output"]))
    values = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer
              if init.data_type not in (TensorProto.INT4, TensorProto.UINT4)}
    values.update({node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t) for node in graph.node
                   if node.op_type == "Constant" and node.attribute[0].name == "value"})  # the tracer's Clip bounds
    # the tracer stores equal initializers once and aliases the others by Identity (a fresh BN's ones and zeros)
    values.update({node.output[0]: values[node.input[0]] for node in graph.node
                   if node.op_type == "Identity" and node.input[0] in values})
    return producers, consumers, values


def _set_initializer(graph: onnx.GraphProto, name: str, values: np.ndarray) -> None:
    (init,) = [init for init in graph.initializer if init.name == name]
    init.CopyFrom(onnx.numpy_helper.from_array(values, name))


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the float weights that the Q/DQ rewrite replaced (the tracer may also alias them by Identity)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        dead_nodes = [node for node in graph.node if node.op_type == "Identity" and node.output[0] not in used]
        dead_inits = [init for init in graph.initializer if init.name not in used]
        if not dead_nodes and not dead_inits:
            return
        for node in dead_nodes:
            graph.node.remove(node)
        for init in dead_inits:
            graph.initializer.remove(init)


# ---------------------------------------------------------------------------------------------- check
@dataclass(frozen=True)
class OnnxCheck:
    """ONNX Runtime against PyTorch on the same images."""

    images: int
    torch_accuracy: float
    onnx_accuracy: float
    top1_agreement: float  # fraction of images with the same top-1 class
    within_tolerance: float  # fraction of images whose logits all differ by at most logit_tolerance
    max_abs_diff: float  # largest |logit difference| over all images
    simulated_formats: tuple[str, ...]
    integer_convs: tuple[int, int] = (0, 0)  # (run by ONNX Runtime on integer kernels, all): see integer_convs
    # the integer-conv graph's top-1 agreement where deployable_onnx fell back to float convs for it, else None
    integer_top1_agreement: float | None = None

    @property
    def passed(self) -> bool:
        """Whether :func:`check_onnx` accepts the graph: :data:`MIN_WITHIN_TOLERANCE`, :data:`MIN_TOP1_AGREEMENT`."""
        return self.within_tolerance >= MIN_WITHIN_TOLERANCE and self.top1_agreement >= MIN_TOP1_AGREEMENT

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "simulated_formats": list(self.simulated_formats), "passed": self.passed}


def logit_tolerance(model: nn.Module, logits: Tensor) -> Tensor:
    """Per image, the float32 rounding two correct runs of ``model`` may differ by: ``eps * K * max|logit|``.

    ``K`` counts the terms accumulated along the network (the sum over layers of the reduction length
    ``in_channels/groups * kh * kw``): a reordered float32 sum changes its result by at most ``eps`` times the
    number of its terms, relative to their magnitude. It does not cover an activation that lies on a rounding
    boundary in one run and not in the other and so moves by a whole quantization step; the share of images
    allowed to exceed it (:data:`MIN_WITHIN_TOLERANCE`) and the top-1 agreement bound that.
    """
    terms = sum(layer.weight[0].numel() for layer in model.modules() if isinstance(layer, (QuantConv2d, QuantLinear)))
    return torch.finfo(torch.float32).eps * terms * logits.abs().amax(1).clamp_min(1.0)


def check_onnx(proto: onnx.ModelProto, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> OnnxCheck:
    """:func:`compare_onnx`, refused unless :attr:`OnnxCheck.passed`.

    Raises :class:`OnnxExportError` when fewer than :data:`MIN_WITHIN_TOLERANCE` of the images have logits within
    :func:`logit_tolerance` of PyTorch's, or when the top-1 classes agree on fewer than :data:`MIN_TOP1_AGREEMENT`.
    """
    return _passed(compare_onnx(proto, model, batches))


def _passed(check: OnnxCheck) -> OnnxCheck:
    if not check.passed:
        raise OnnxExportError(
            f"ONNX Runtime does not compute what PyTorch computes on {check.images} images: logits within the "
            f"float32 tolerance on {check.within_tolerance:.2%} (at least {MIN_WITHIN_TOLERANCE:.1%} required; "
            f"largest difference {check.max_abs_diff:.3g}), top-1 agreement {check.top1_agreement:.2%} (at least "
            f"{MIN_TOP1_AGREEMENT:.1%} required); nothing was written (please report this with the candidate)")
    return check


@torch.no_grad()
def compare_onnx(proto: onnx.ModelProto, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *,
                 written: onnx.ModelProto | None = None) -> OnnxCheck:
    """Run ``proto`` in ONNX Runtime and ``model`` (put in eval mode) in PyTorch on ``batches`` of (images, labels).

    Twice: the graph as written (``written``, default ``proto``; ONNX Runtime's optimisations off, so that every
    QuantizeLinear, DequantizeLinear and float Conv runs as such) must compute PyTorch's logits within
    :func:`logit_tolerance`, which checks every scale and code of the export; ``proto`` as deployed (optimised:
    integer convs where ONNX Runtime fuses them) gives the accuracy and the top-1 agreement, since an integer conv
    requantizes its output with its own rounding and so moves some activations by one code in nearly every image.
    Only measures; :func:`check_onnx` decides. Benchmarks read the figures of a graph the export would refuse here.
    """
    written, deployed = _session(written or proto, optimized=False), _session(proto, optimized=True)
    model = model.eval()
    images = torch_correct = onnx_correct = agree = within = 0
    max_abs_diff = 0.0
    for inputs, labels in batches:
        reference = model(inputs).float()
        exact = torch.from_numpy(written.run(["logits"], {"images": inputs.numpy()})[0])
        outputs = torch.from_numpy(deployed.run(["logits"], {"images": inputs.numpy()})[0])
        diff = (exact - reference).abs().amax(1)
        images += len(labels)
        within += int((diff <= logit_tolerance(model, reference)).sum())
        max_abs_diff = max(max_abs_diff, float(diff.max()))
        torch_correct += int((reference.argmax(1) == labels).sum())
        onnx_correct += int((outputs.argmax(1) == labels).sum())
        agree += int((reference.argmax(1) == outputs.argmax(1)).sum())
    if images == 0:
        raise OnnxExportError("the ONNX check got no images; give it at least one batch of the test split")
    simulated = proto_metadata(proto)["automq.simulated_formats"]
    return OnnxCheck(images, torch_correct / images, onnx_correct / images, agree / images, within / images,
                     max_abs_diff, tuple(fmt for fmt in simulated.split(",") if fmt), integer_convs(proto))


def _session(proto: onnx.ModelProto | bytes, *, optimized: bool) -> Any:
    """An ONNX Runtime CPU session of ``proto``, with all graph optimisations or none."""
    import onnxruntime as ort  # deferred: only the check and the timing need the runtime

    options = ort.SessionOptions()
    options.log_severity_level = 3  # not one warning per simulated weight (they are graph inputs on purpose)
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = proto if isinstance(proto, bytes) else proto.SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def integer_convs(proto: onnx.ModelProto) -> tuple[int, int]:
    """``(integer, all)``: how many of the model's convs ONNX Runtime runs on integer kernels (``QLinearConv``)
    on this machine, read from the graph it optimises, and how many convs the model has."""
    fused = sum(node.op_type == "QLinearConv" for node in optimized_graph(proto).graph.node)
    return fused, sum(node.op_type == "Conv" for node in proto.graph.node)


def optimized_graph(proto: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """The graph ONNX Runtime runs for ``proto`` (a model or its file) on this machine's CPU, all optimisations
    on: what its fusions made of it."""
    import tempfile

    import onnxruntime as ort

    model = str(proto) if isinstance(proto, (str, Path)) else proto.SerializeToString()
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # simulated weights are graph inputs on purpose; not one warning each
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def proto_metadata(proto: onnx.ModelProto) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict (``automq.candidate``, ``automq.layers``, ...)."""
    return {prop.key: prop.value for prop in proto.metadata_props}


def export_onnx(
    model: nn.Module, candidate: Candidate, path: str | Path, batches: Iterable[tuple[Tensor, Tensor]]
) -> OnnxCheck:
    """Export ``model`` to ``path`` after checking it against PyTorch on ``batches`` (:func:`deployable_onnx`).

    Nothing is written when the check fails.
    """
    proto, check = deployable_onnx(model, candidate, batches)
    atomic_write_bytes(path, proto.SerializeToString())
    return check


def deployable_onnx(model: nn.Module, candidate: Candidate, batches: Iterable[tuple[Tensor, Tensor]]
                    ) -> tuple[onnx.ModelProto, OnnxCheck]:
    """The graph :func:`export_onnx` writes, and its check. The exact graph (``integer_kernels=False``: the
    project's codes everywhere) must pass :func:`check_onnx`'s bound on logits, or the export is refused
    (:class:`OnnxExportError`); the graph with integer convs is written where its top-1 answers agree with
    PyTorch's on :data:`MIN_TOP1_AGREEMENT` of ``batches``, else (their requantization moved too many decisions, as
    on a model whose logits lie close together) the exact one."""
    batches = list(batches)
    if not batches:
        raise OnnxExportError("the ONNX export needs images to check the model on; give it the test split")
    example = batches[0][0][:1]
    exact = to_onnx(model, candidate, example, integer_kernels=False)
    integer = to_onnx(model, candidate, example)
    check = compare_onnx(integer, model, batches, written=exact)
    if not check.passed and check.integer_convs[0]:
        check = replace(compare_onnx(exact, model, batches), integer_top1_agreement=check.top1_agreement)
        return exact, _passed(check)
    return integer, _passed(check)
