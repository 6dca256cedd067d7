"""ONNX export of an extracted candidate model: QuantizeLinear/DequantizeLinear around every quantized layer.

The exported graph computes what the PyTorch model computes: each conv/linear reads ``DequantizeLinear`` of its
integer (or FP8) weight codes, per output channel, and ``DequantizeLinear(QuantizeLinear(x))`` of its input, per
tensor, with the learned LSQ scales as the ONNX scales and zero points 0 (``uint8``/``uint4`` after a ReLU6); the
input's ``QuantizeLinear`` has scale 1 after a ``Mul`` by ``1/s`` (see :func:`_input_nodes`), so its codes are the
project's bit for bit. ONNX Runtime 1.32 runs these convs as ``DequantizeLinear`` + float ``Conv``: it fuses a
``QLinearConv`` only where the conv's output is quantized too, and the model's conv outputs stay float through BN
and ReLU6 until the next layer quantizes them.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper
from torch import Tensor, nn

from automq.errors import AutomqError
from automq.io import atomic_write_bytes
from automq.numerics.formats import get_format
from automq.numerics.quant import QuantConv2d, QuantLinear, Quantizer
from automq.space.candidate import Candidate

__all__ = ["OPSET", "OnnxCheck", "OnnxExportError", "check_onnx", "compare_onnx", "export_onnx", "quantized_graph",
           "to_onnx"]

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
def to_onnx(model: nn.Module, candidate: Candidate, example: Tensor) -> onnx.ModelProto:
    """The ONNX graph (opset 21, batch dimension dynamic) of an extracted ``model`` of ``candidate``.

    ``example`` is one input batch (its shape is traced). The model's quantizer scales must be initialised (an
    extracted model of a trained supernet is). Raises :class:`OnnxExportError` for an activation format that
    ONNX cannot express and for a non-positive learned scale.
    """
    proto, layers = quantized_graph(model, example)
    simulated = sorted({fmt for layer in layers.values() for fmt in layer["simulated"]})
    helper.set_model_props(proto, {
        "automq.candidate": candidate.to_json(),
        "automq.layers": json.dumps(layers),
        "automq.simulated_formats": ",".join(simulated),
    })
    onnx.checker.check_model(proto, full_check=True)
    return proto


def quantized_graph(model: nn.Module, example: Tensor) -> tuple[onnx.ModelProto, dict[str, dict[str, Any]]]:
    """The Q/DQ graph of any module holding :class:`QuantConv2d` / :class:`QuantLinear` layers, and per layer how
    each operand was written (``{"weight": "int8: QDQ ...", "input": ..., "simulated": [...]}``).

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
    scale = operand.quantizer.scales[operand.fmt].detach().float()
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
    if operand.fmt not in QDQ_TYPES and fmt.family != "int":
        raise OnnxExportError(f"{operand.layer}: its input format {operand.fmt} has no ONNX equivalent (only "
                              f"{', '.join(QDQ_TYPES)}, other integer widths and fp32 do); pick a candidate "
                              "whose activation formats are among those")
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
    bits = fmt.bits
    low, high = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if operand.quantizer.signed else (0.0, 2.0**bits - 1)
    bounds = [_tensor(f"{prefix}_low", torch.tensor(low)), _tensor(f"{prefix}_high", torch.tensor(high))]
    nodes = [scaled,
             helper.make_node("Clip", [scaled.output[0], bounds[0].name, bounds[1].name], [f"{prefix}_clipped"]),
             helper.make_node("Round", [f"{prefix}_clipped"], [f"{prefix}_rounded"]),  # half to even, as torch
             helper.make_node("Mul", [f"{prefix}_rounded", scale_tensor.name], [output])]
    return nodes, [inverse, *bounds, scale_tensor], f"simulated ({operand.fmt} grid by Mul, Clip, Round, Mul)"


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
    check = compare_onnx(proto, model, batches)
    if not check.passed:
        raise OnnxExportError(
            f"ONNX Runtime does not compute what PyTorch computes on {check.images} images: logits within the "
            f"float32 tolerance on {check.within_tolerance:.2%} (at least {MIN_WITHIN_TOLERANCE:.1%} required; "
            f"largest difference {check.max_abs_diff:.3g}), top-1 agreement {check.top1_agreement:.2%} (at least "
            f"{MIN_TOP1_AGREEMENT:.1%} required); nothing was written (please report this with the candidate)")
    return check


@torch.no_grad()
def compare_onnx(proto: onnx.ModelProto, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> OnnxCheck:
    """Run ``proto`` in ONNX Runtime and ``model`` (put in eval mode) in PyTorch on ``batches`` of (images, labels).

    Only measures; :func:`check_onnx` decides. Benchmarks read the figures of a graph the export would refuse here.
    """
    import onnxruntime as ort  # deferred: only the check needs the runtime

    options = ort.SessionOptions()
    options.log_severity_level = 3  # not one warning per simulated weight (they are graph inputs on purpose)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    model = model.eval()
    images = torch_correct = onnx_correct = agree = within = 0
    max_abs_diff = 0.0
    for inputs, labels in batches:
        reference = model(inputs).float()
        outputs = torch.from_numpy(session.run(["logits"], {"images": inputs.numpy()})[0])
        diff = (outputs - reference).abs().amax(1)
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
                     max_abs_diff, tuple(fmt for fmt in simulated.split(",") if fmt))


def proto_metadata(proto: onnx.ModelProto) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict (``automq.candidate``, ``automq.layers``, ...)."""
    return {prop.key: prop.value for prop in proto.metadata_props}


def export_onnx(
    model: nn.Module, candidate: Candidate, path: str | Path, batches: Iterable[tuple[Tensor, Tensor]]
) -> OnnxCheck:
    """Export ``model`` to ``path`` after checking it against PyTorch on ``batches`` (:func:`check_onnx`).

    Nothing is written when the check fails.
    """
    batches = list(batches)
    if not batches:
        raise OnnxExportError("the ONNX export needs images to check the model on; give it the test split")
    proto = to_onnx(model, candidate, batches[0][0][:1])
    check = check_onnx(proto, model, batches)
    atomic_write_bytes(path, proto.SerializeToString())
    return check
