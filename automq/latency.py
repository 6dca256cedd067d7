"""Latency tables measured with ONNX Runtime on this machine, and the end-to-end time of an exported model.

A table has one entry per layer configuration a space can produce (:func:`automq.cost.latency_key`: shape x
``(w_fmt, a_fmt)``). Each configuration is built as a one-layer model by the exporter's own Q/DQ code
(:func:`automq.model.onnx_export.quantized_graph`): the quantized conv (with the BatchNorm and, where the network
has one, the ReLU6 that follow it) or the classifier, timed in an ``InferenceSession`` with ``threads`` intra-op
threads and sequential execution, ``warmup`` runs discarded, the median of ``runs`` kept.

Every run is fed a different random input (:func:`time_model`). ONNX Runtime's CPU kernels convert to and from
FP8 one element at a time, with a branch per element that depends on its value; converting the same small tensor
again and again lets the CPU's branch predictor learn those outcomes. A whole model converts far more values per
run than the predictor can hold, so a one-layer model timed on one repeated input ran its FP8 layers up to 3.7x
faster than the whole model does (12,288 values: 45 us on one input, 167 us on inputs that change; int8 runs
branch-free vector code, 8.5 us either way), and the table underestimated FP8 candidates by 28% (issue 19).

Only the formats ONNX Runtime executes natively have a speed of their own: int8, int4 and FP8 weights and
inputs (``QuantizeLinear``/``DequantizeLinear``). The others are simulated by the exporter and run on another path,
measured once per shape and shared: weights without an ONNX type as float weights on their grid (the fp32
path), integer inputs without one as ``Mul, Clip, Round, Mul``; FP6/FP4 and fp16/bf16 inputs each on the ops
that simulate them (one measurement per format); MX inputs, which the export refuses, on the fp32 path. The
table's ``_simulated_formats`` lists them.

A one-layer session pays a fixed cost per call (binding the input, allocating the output) that a whole model pays
once, and the sum of layers misses the residual adds and the pooling. So an identity model of the network's input
is timed too: its median is subtracted from every layer's and stored once as :data:`automq.cost.LATENCY_OVERHEAD_KEY`,
which :class:`automq.cost.CostModel` adds to each candidate's sum.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automq.cost import INTEGER_KERNEL_FORMAT, LATENCY_OVERHEAD_KEY, integer_kernel, latency_key
from automq.errors import AutomqError
from automq.io import atomic_write_json
from automq.model.arch import LayerSpec, layer_specs
from automq.numerics.formats import get_format

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from automq.space.space import SearchSpace

__all__ = ["LatencyError", "LayerConfig", "Timing", "build_latency_table", "layer_configurations",
           "measure_onnx", "time_model", "write_latency_table"]

FLOAT_PATH = "fp32"


class LatencyError(AutomqError):
    """A latency measurement cannot be made (a bad option, an unreadable model, a table that cannot be written)."""


@dataclass(frozen=True)
class Timing:
    """How each model is timed: ``threads`` intra-op threads, ``warmup`` discarded runs, the median of ``runs``."""

    threads: int = 1
    warmup: int = 20
    runs: int = 100

    def __post_init__(self) -> None:
        for name in ("threads", "runs"):
            if getattr(self, name) < 1:
                raise LatencyError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise LatencyError(f"--warmup must be at least 0, got {self.warmup}")


@dataclass(frozen=True)
class LayerConfig:
    """One layer configuration to measure: its spec and whether a ReLU6 follows it in the network."""

    spec: LayerSpec
    relu6: bool

    @property
    def path(self) -> tuple[Any, ...]:
        """What ONNX Runtime executes: the shape and the formats as run (simulated ones on their shared path)."""
        shape = dataclasses.astuple(dataclasses.replace(self.spec, name="", a_signed=False, w_fmt="", a_fmt="",
                                                        out_fmt=None))
        return (shape, self.relu6, _weight_path(self.spec.w_fmt), _input_path(self.spec.a_fmt),
                integer_kernel(self.spec))


def _weight_path(fmt: str) -> str:
    from automq.model.onnx_export import QDQ_TYPES

    return fmt if fmt in QDQ_TYPES else FLOAT_PATH


def _input_path(fmt: str) -> str:
    """The input format as run: its own QDQ type, one shared simulated-integer path (the same four ops for every
    width; measured with the first such format met), its own simulated float grid or fp16/bf16 cast (the ops
    depend on the format), or fp32 (MX inputs, which the export cannot express)."""
    from automq.model.onnx_export import QDQ_TYPES

    family = get_format(fmt).family
    if family == "int" and fmt not in QDQ_TYPES:
        return "int (simulated)"
    return FLOAT_PATH if family == "mx" else fmt


def layer_configurations(space: SearchSpace) -> list[LayerConfig]:
    """Every distinct layer configuration (one per :func:`latency_key`) that a candidate of ``space`` can have.

    A block's layer shapes depend only on the width, the stage, the block's position and its own kernel and
    expansion (its input channels are the stage's, never a neighbour's choice), so the deepest network at each
    width with each stage's blocks set to each of its (kernel, expansion) pairs holds every shape; each shape then
    takes every format pair of its layer's menu. Where a layer alone feeds the next one and that layer's menu has
    int8 inputs, its int8/int8 pair also runs as an integer conv (:func:`automq.cost.integer_kernel`); whether it
    does can depend on the stage's depth (the last block of a shallower stage feeds the next stage's first block,
    in the deepest network it may feed a residual block), so each stage is also taken at each of its depths.
    """
    configs: dict[str, LayerConfig] = {}
    for width, (stage, choice, depth) in itertools.product(space.network.width_mult, _stage_choices(space)):
        specs = layer_specs(space, space.build(_deepest_with(width, stage, *choice, depth)))
        for spec, following in zip(specs, specs[1:] + [None]):
            relu6 = following is not None and not following.a_signed  # an unsigned input comes out of a ReLU6
            # what the output meets: an integer-kernel consumer (int8 input), or anything else (None)
            outputs = {None} if spec.out_fmt is None else {
                fmt if fmt == INTEGER_KERNEL_FORMAT else None for fmt in space.layer_menu(following.name)[1]}
            for w_fmt, a_fmt, out_fmt in itertools.product(*space.layer_menu(spec.name), outputs):
                config = LayerConfig(dataclasses.replace(spec, w_fmt=w_fmt, a_fmt=a_fmt, out_fmt=out_fmt), relu6)
                configs.setdefault(latency_key(config.spec), config)
    return list(configs.values())


def _stage_choices(space: SearchSpace) -> list[tuple[int, tuple[int, int], int]]:
    return [(i, choice, depth) for i, stage in enumerate(space.network.stages)
            for choice in itertools.product(stage.kernel_size, stage.expand_ratio) for depth in stage.depth]


def _deepest_with(width: float, stage: int, kernel_size: int, expand_ratio: int, depth: int) -> Callable[..., Any]:
    """A :meth:`SearchSpace.build` pick: the deepest network at ``width``, but stage ``stage`` ``depth`` blocks
    deep with the given kernel and expansion, every other decision its first choice."""
    chosen = {"kernel_size": kernel_size, "expand_ratio": expand_ratio}

    def pick(name: str, kind: str, choices: tuple) -> Any:
        if kind == "width_mult":
            return width
        if kind == "depth":
            return depth if name == f"stages.{stage}.depth" else max(choices)
        if name.startswith(f"blocks.{stage}.") and kind in chosen:
            return chosen[kind]
        return choices[0]

    return pick


# ---------------------------------------------------------------------------------------------- graphs
def layer_graph(config: LayerConfig, count: int = 1) -> tuple[onnx.ModelProto, np.ndarray]:
    """The one-layer ONNX model of ``config`` (formats as run, see :attr:`LayerConfig.path`) and ``count``
    different random inputs for it, stacked on a new first axis (standard normal, in [0, 6] after a ReLU6)."""
    import torch
    from torch import nn

    from automq.model.onnx_export import quantized_graph, requantize_output
    from automq.numerics.quant import QuantConv2d, QuantLinear

    spec = config.spec
    w_fmt, a_fmt = _weight_path(spec.w_fmt), _input_path(spec.a_fmt)
    a_fmt = spec.a_fmt if a_fmt == "int (simulated)" else a_fmt
    generator = torch.Generator().manual_seed(0)
    if spec.kind == "linear":
        layer: nn.Module = QuantLinear(spec.in_ch, spec.out_ch, w_formats=[w_fmt], a_formats=[a_fmt],
                                       a_signed=spec.a_signed)
        inputs = torch.randn(count, 1, spec.in_ch, generator=generator)
    else:
        conv = QuantConv2d(spec.in_ch, spec.out_ch, spec.kernel_size, spec.stride, spec.kernel_size // 2,
                           groups=spec.groups, bias=False, w_formats=[w_fmt], a_formats=[a_fmt],
                           a_signed=spec.a_signed)
        layer = nn.Sequential(conv, nn.BatchNorm2d(spec.out_ch), *([nn.ReLU6()] if config.relu6 else []))
        inputs = torch.randn(count, 1, spec.in_ch, spec.in_hw, spec.in_hw, generator=generator)
    if not spec.a_signed:
        inputs = inputs.clamp(0, 6)
    with torch.no_grad():
        outputs = layer.eval()(inputs[0])  # initialises the quantizers' scales from it, as calibration would
    proto, _ = quantized_graph(layer, inputs[0])
    if integer_kernel(spec):  # the next layer's int8 input quantizer, which makes it an integer conv
        # after a ReLU6 the scale whose range ends at 6 (ONNX Runtime then drops the ReLU6), else the output's range
        scale = 6 / 255 if config.relu6 else float(outputs.abs().max()) / 127
        requantize_output(proto, scale, signed=not config.relu6)
        return _integer_conv_alone(proto, spec, count)
    return proto, inputs.numpy()


def _integer_conv_alone(proto: onnx.ModelProto, spec: LayerSpec, count: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """The integer conv (``QLinearConv``) ONNX Runtime makes of a one-layer graph, alone, with ``count`` random
    code inputs: in a whole model consecutive integer convs pass their codes on in ONNX Runtime's layout, so the
    quantize, layout transposes and dequantize around a one-layer model are not paid there."""
    import numpy as np
    import onnx
    from onnx import helper

    from automq.model.onnx_export import optimized_graph

    optimized = optimized_graph(proto)
    (conv,) = [node for node in optimized.graph.node if node.op_type == "QLinearConv"]
    values = {init.name: init for init in optimized.graph.initializer}
    dtype = onnx.numpy_helper.to_array(values[conv.input[2]]).dtype  # the input's zero point: uint8 or int8
    channels_last = any(a.name == "channels_last" and a.i for a in conv.attribute)

    def shape(channels: int, size: int) -> list[int]:
        return [1, size, size, channels] if channels_last else [1, channels, size, size]

    elem_type = helper.np_dtype_to_tensor_dtype(dtype)
    inputs = [helper.make_tensor_value_info(conv.input[0], elem_type, shape(spec.in_ch, spec.in_hw))]
    outputs = [helper.make_tensor_value_info(conv.output[0], elem_type, shape(spec.out_ch, spec.out_hw))]
    graph = helper.make_graph([conv], "integer conv", inputs, outputs,
                              [values[name] for name in conv.input if name in values])
    model = helper.make_model(graph, opset_imports=optimized.opset_import, ir_version=optimized.ir_version)
    info = np.iinfo(dtype)
    codes = np.random.default_rng(0).integers(info.min, info.max + 1, size=(count, *shape(spec.in_ch, spec.in_hw)))
    return model, codes.astype(dtype)


def identity_graph(shape: tuple[int, ...]) -> onnx.ModelProto:
    """A model that returns its input: what one session call costs with no layer in it."""
    from onnx import TensorProto, helper

    from automq.model.onnx_export import OPSET

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "identity",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(shape))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


# ---------------------------------------------------------------------------------------------- timing
def time_model(proto: onnx.ModelProto | bytes, inputs: np.ndarray, timing: Timing) -> float:
    """Median milliseconds of one ``InferenceSession.run`` of ``proto`` (see :class:`Timing`).

    ``inputs`` stacks the model's inputs on a new first axis; run ``i`` is fed ``inputs[i % len(inputs)]``, so
    give ``timing.warmup + timing.runs`` of them where the values matter (FP8: see the module's docstring).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = timing.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # simulated weights are graph inputs on purpose; not one warning each
    model = proto if isinstance(proto, bytes) else proto.SerializeToString()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feeds = itertools.cycle({name: values} for values in inputs)
    for _ in range(timing.warmup):
        session.run(None, next(feeds))
    samples = []
    for _ in range(timing.runs):
        feed = next(feeds)
        start = time.perf_counter()
        session.run(None, feed)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def measure_onnx(path: str | Path, timing: Timing, images: np.ndarray | None = None) -> float:
    """Median end-to-end milliseconds of the exported model at ``path`` on one image (batch 1) per run: the
    ``images`` (a batch) in turn when given, else a different standard normal noise image each run (seed 0)."""
    import numpy as np
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path))
    except (OSError, DecodeError) as exc:
        raise LatencyError(f"{path}: cannot read the ONNX model ({exc}); give a file written by automq export "
                           "--onnx") from None
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = [dim.dim_value if dim.dim_value > 0 else 1 for dim in dims]  # the dynamic batch axis: one image
    if images is None:
        images = np.random.default_rng(0).standard_normal([timing.warmup + timing.runs, *shape]).astype(np.float32)
    else:
        images = images[:, None]  # one image per run
    return time_model(proto.SerializeToString(), images, timing)


# ---------------------------------------------------------------------------------------------- the table
def build_latency_table(space: SearchSpace, timing: Timing, progress: bool = True) -> dict[str, Any]:
    """``{latency_key: ms}`` for every configuration of ``space``, the overhead, and ``_``-prefixed metadata."""
    import numpy as np
    import onnxruntime as ort

    from automq.model.onnx_export import QDQ_TYPES

    started = time.perf_counter()
    configs = layer_configurations(space)
    input_shape = (1, space.dataset.in_chans, space.dataset.input_size, space.dataset.input_size)
    overhead = time_model(identity_graph(input_shape), np.zeros((1, *input_shape), np.float32), timing)
    measured: dict[tuple[Any, ...], float] = {}
    table: dict[str, Any] = {}
    for index, config in enumerate(configs, 1):
        if config.path not in measured:
            graph, inputs = layer_graph(config, timing.warmup + timing.runs)
            measured[config.path] = max(time_model(graph, inputs, timing) - overhead, 0.0)
        table[latency_key(config.spec)] = measured[config.path]
        if progress:
            _progress(index, len(configs), len(measured), started)
    simulated = sorted({fmt for c in configs for fmt in (c.spec.w_fmt, c.spec.a_fmt)
                        if fmt not in QDQ_TYPES and not get_format(fmt).is_identity})  # no ONNX type: float ops
    metadata = {
        "_machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}",
        "_runtime": f"onnxruntime {ort.__version__}, CPUExecutionProvider, sequential",
        "_threads": timing.threads, "_warmup": timing.warmup, "_runs": timing.runs,
        "_load_average": list(os.getloadavg()),
        "_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "_space": space.name, "_configurations": len(configs), "_measured": len(measured),
        "_wall_time_s": round(time.perf_counter() - started, 1),
        "_simulated_formats": simulated,
        "_method": "median ms per layer (conv + BN [+ ReLU6], requantized to int8 where it runs as an integer "
                   "conv, or the classifier), a different random input each run, minus the identity model's median; "
                   "simulated formats share the path they run on; the identity median is the overhead entry",
    }
    return {**metadata, LATENCY_OVERHEAD_KEY: overhead, **table}


def _progress(done: int, total: int, measured: int, started: float) -> None:
    """One progress line on stderr, rewritten in place about every 2% (not once per layer into a log file)."""
    if done != total and done % max(1, total // 50):
        return
    width = 30
    filled = width * done // total
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} configurations, {measured} measured, "
          f"{time.perf_counter() - started:.0f} s", end="\n" if done == total else "", file=sys.stderr, flush=True)


def write_latency_table(space: SearchSpace, path: str | Path, timing: Timing, progress: bool = True) -> dict:
    """Measure :func:`build_latency_table` and write it to ``path`` (atomically); returns the table."""
    path = Path(path)
    if not path.parent.is_dir():
        raise LatencyError(f"{path}: its folder {path.parent} does not exist; create it or give another --out")
    table = build_latency_table(space, timing, progress)
    atomic_write_json(path, table)
    return table
